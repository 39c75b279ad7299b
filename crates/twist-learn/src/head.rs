//! Training twist heads on a burn language model: the loss gradients with respect to the raw
//! outputs are pushed through the head with burn's autodiff (no gradient reaches the frozen
//! base model, whose hidden states enter as constants) and Adam updates the head.

use burn::optim::{AdamConfig as BurnAdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Tensor, TensorData};
use lm_burn::heads::TwistHead;
use smc_core::batch::LogTable;
use smc_core::model::{Twist, TwistInput};
use smc_core::{Result, SmcError};

use crate::error::TrainError;

use crate::adam::AdamConfig;
use crate::batch::{Batch, TrainableTwist};
use crate::method::Parameterization;

/// A twist head with its optimiser.
pub struct HeadTrainable {
    head: TwistHead,
    optim: ModuleOptimizer,
    param: Parameterization,
}

impl HeadTrainable {
    /// Wraps a head whose parameters live on an autodiff device.
    pub fn new(mut head: TwistHead, param: Parameterization, adam: AdamConfig) -> Self {
        // The head itself applies the parameterisation when it drives SMC on its own.
        head.config.log_sigmoid = param == Parameterization::LogSigmoid;
        let optim = BurnAdamConfig::new()
            .with_beta_1(adam.beta1 as f32)
            .with_beta_2(adam.beta2 as f32)
            .with_epsilon(adam.eps as f32)
            .init();
        Self { head, optim, param }
    }

    /// The head.
    pub fn head(&self) -> &TwistHead {
        &self.head
    }

    /// Writes a checkpoint: the head (safetensors + JSON metadata, see `TwistHead::save`) and
    /// Adam's state beside it (`.optim`), every file through a temporary renamed into place.
    pub fn save_checkpoint(
        &self,
        path: &std::path::Path,
        metadata: &serde_json::Value,
    ) -> Result<(), TrainError> {
        self.head.save(path, metadata)?;
        let optim_path = path.with_extension("optim");
        let bytes = self
            .optim
            .into_bytes()
            .map_err(|source| TrainError::OptimizerState {
                path: optim_path.clone(),
                source,
            })?;
        lm_burn::heads::write_atomic(&optim_path, &bytes)?;
        Ok(())
    }

    /// Resumes from a checkpoint written by [`HeadTrainable::save_checkpoint`], on `device`
    /// (an autodiff device), restoring Adam's state when its file is present. Returns the
    /// trainable twist and the stored metadata.
    pub fn resume(
        path: &std::path::Path,
        device: &burn::tensor::Device,
        param: Parameterization,
        adam: AdamConfig,
    ) -> Result<(Self, serde_json::Value), TrainError> {
        let (head, meta) = TwistHead::load(path, device)?;
        let mut me = Self::new(head, param, adam);
        let optim_path = path.with_extension("optim");
        if optim_path.exists() {
            let bytes = std::fs::read(&optim_path).map_err(|source| TrainError::Io {
                path: optim_path.clone(),
                source,
            })?;
            let optim = std::mem::replace(&mut me.optim, BurnAdamConfig::new().init());
            me.optim = optim
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|source| TrainError::OptimizerState {
                    path: optim_path.clone(),
                    source,
                })?;
        }
        Ok((me, meta))
    }

    /// The head, mutable (e.g. to change a conditional head's conditioning tokens).
    pub fn head_mut(&mut self) -> &mut TwistHead {
        &mut self.head
    }
}

/// A twist head reads the base model's hidden states: a model or batch without them cannot
/// drive or train it.
fn no_hidden_states(source: &str) -> SmcError {
    SmcError::InvalidConfig {
        field: "hidden states for the twist head",
        expected: "present (the head reads the base model's last hidden state)".into(),
        found: format!("none in {source}"),
    }
}

impl Twist for HeadTrainable {
    fn name(&self) -> &str {
        "twist head"
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        Ok(self.param.apply(self.raw(input)?))
    }
}

impl TrainableTwist for HeadTrainable {
    fn parameterization(&self) -> Parameterization {
        self.param
    }

    fn raw(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        let hidden = input
            .hidden
            .ok_or_else(|| no_hidden_states("the language model's output"))?;
        Ok(self.head.raw(hidden)?)
    }

    fn apply_gradient(
        &mut self,
        _prompt: &[u32],
        batch: &Batch,
        grads: &[LogTable],
        learning_rate: f64,
    ) -> Result<()> {
        let device = self.head.device().clone();
        let mut inputs = Vec::with_capacity(batch.horizon());
        let mut g = Vec::new();
        for (t, grad) in grads.iter().enumerate() {
            let hidden = batch.hidden[t]
                .as_ref()
                .ok_or_else(|| no_hidden_states("the training batch"))?;
            inputs.push(self.head.input(hidden, &device));
            g.extend(grad.as_slice().iter().map(|&x| x as f32));
        }
        let x = Tensor::cat(inputs, 0);
        let rows = x.dims()[0];
        let v = self.head.config.vocab_size;
        let out = self.head.module.forward(x);
        let g = Tensor::<2>::from_data(TensorData::new(g, [rows, v]), &device);
        // d/dθ sum(out * g) = sum_{rows, v} g * d out / dθ: the loss gradient by the chain rule.
        let surrogate = (out * g).sum();
        let gradients = surrogate.backward();
        let params = GradientsParams::from_grads(gradients, &self.head.module);
        let module = self.head.module.clone();
        self.head.module = self.optim.step(learning_rate, module, params);
        Ok(())
    }
}
