//! Training twist heads on a burn language model: the loss gradients with respect to the raw
//! outputs are pushed through the head with burn's autodiff (no gradient reaches the frozen
//! base model, whose hidden states enter as constants) and Adam updates the head.

use burn::optim::{
    AdamConfig as BurnAdamConfig, GradientsParams, ModuleOptimizer, SgdConfig as BurnSgdConfig,
};
use burn::tensor::{Tensor, TensorData};
use lm_burn::heads::TwistHead;
use smc_core::batch::LogTable;
use smc_core::model::{Twist, TwistInput};
use smc_core::{Result, SmcError};

use crate::error::TrainError;

use crate::adam::AdamConfig;
use crate::batch::{Batch, TrainableTwist};
use crate::method::Parameterization;

/// How an embedding head's per-token bias b is stepped when it has its own learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiasOptimizer {
    /// Adam, with the rest of the head's state: every b_v that gets any gradient moves by
    /// about the rate, however small the gradient (a token seen once, with a tiny importance
    /// weight, among the negatives is pushed down as far as a frequent one).
    #[default]
    Adam,
    /// Plain gradient descent: b_v moves in proportion to its gradient, which for CTL is the
    /// gap between the token's frequency among the positives and its weighted frequency among
    /// the negatives (moment matching), so rare tokens barely move. No state. A step moves
    /// no b_v by more than [`MAX_SGD_BIAS_STEP`] (the gradient is clipped by value): losses
    /// whose gradients are in nats rather than frequencies (RL's squared error) would
    /// otherwise diverge at a rate made for frequency gaps.
    Sgd,
}

/// The largest move of any b_v in one plain gradient step, in nats.
pub const MAX_SGD_BIAS_STEP: f64 = 0.1;

/// A twist head with its optimiser.
pub struct HeadTrainable {
    head: TwistHead,
    optim: ModuleOptimizer,
    param: Parameterization,
    bias_lr: Option<f64>,
    bias_optimizer: BiasOptimizer,
    bias_sgd: ModuleOptimizer,
    gate_lr: Option<f64>,
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
        Self {
            head,
            optim,
            param,
            bias_lr: None,
            bias_optimizer: BiasOptimizer::Adam,
            bias_sgd: BurnSgdConfig::new().init(),
            gate_lr: None,
        }
    }

    /// Gives the gate of a gated bias (`gate.weight` w and `gate.bias` c) its own Adam rate
    /// (`None`: the common one). At the rate A tolerates, w moves by about 1e-3 a coordinate
    /// in 150 updates and c by as little, so g(x) stays near 1 (docs/training.md). Heads
    /// without a gate ignore it.
    pub fn with_gate_lr(mut self, gate_lr: Option<f64>) -> Self {
        self.gate_lr = gate_lr;
        self
    }

    /// The gate's own learning rate, if it has one.
    pub fn gate_lr(&self) -> Option<f64> {
        self.gate_lr
    }

    /// Chooses how the per-token bias is stepped when it has its own rate
    /// ([`HeadTrainable::with_bias_lr`]); without one it follows the common Adam.
    pub fn with_bias_optimizer(mut self, optimizer: BiasOptimizer) -> Self {
        self.bias_optimizer = optimizer;
        self
    }

    /// How the per-token bias is stepped.
    pub fn bias_optimizer(&self) -> BiasOptimizer {
        self.bias_optimizer
    }

    /// Gives an embedding head's per-token bias b its own learning rate (`None`: the common
    /// one). Adam moves every parameter by about its learning rate per step whatever the
    /// gradient's scale, and one step of A moves log psi by up to lr·‖h‖₁‖e_v‖₁ (about
    /// 3e4·lr on SmolLM2) against lr for b_v: at the rate A tolerates, b would barely move
    /// (docs/training.md). Other heads have no such bias and ignore it.
    pub fn with_bias_lr(mut self, bias_lr: Option<f64>) -> Self {
        self.bias_lr = bias_lr;
        self
    }

    /// The per-token bias's own learning rate, if it has one.
    pub fn bias_lr(&self) -> Option<f64> {
        self.bias_lr
    }

    /// The head.
    pub fn head(&self) -> &TwistHead {
        &self.head
    }

    /// Writes a checkpoint as one file: the head (see `TwistHead::save_checkpoint`) with Adam's
    /// state inside it, through a temporary renamed into place (a reader sees the old checkpoint
    /// or the new one, never weights without their optimiser state).
    pub fn save_checkpoint(
        &self,
        path: &std::path::Path,
        metadata: &serde_json::Value,
    ) -> Result<(), TrainError> {
        let bytes = self
            .optim
            .into_bytes()
            .map_err(|source| TrainError::OptimizerState {
                path: path.to_path_buf(),
                source,
            })?;
        self.head.save_checkpoint(path, metadata, Some(&bytes))?;
        Ok(())
    }

    /// Resumes from a checkpoint written by [`HeadTrainable::save_checkpoint`], on `device`
    /// (an autodiff device), with Adam's state, which must be there and belong to the head's
    /// parameters (matched by id and shape): a checkpoint without it, or with another head's, is
    /// an error rather than a silent restart of Adam. Returns the trainable twist and the stored
    /// metadata.
    pub fn resume(
        path: &std::path::Path,
        device: &burn::tensor::Device,
        param: Parameterization,
        adam: AdamConfig,
    ) -> Result<(Self, serde_json::Value), TrainError> {
        let ckpt = TwistHead::load_checkpoint(path, device)?;
        let bytes = ckpt.optimizer.ok_or_else(|| {
            optim_error(
                &ckpt.path,
                "the optimiser state saved with the head (the checkpoints of `tsmc train` carry it)",
                "none: a head saved without it cannot resume training with Adam's state",
            )
        })?;
        check_optimizer_state(&ckpt.path, &bytes, &ckpt.head.parameters())?;
        let mut me = Self::new(ckpt.head, param, adam);
        let optim = std::mem::replace(&mut me.optim, BurnAdamConfig::new().init());
        me.optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|source| TrainError::OptimizerState {
                path: ckpt.path.clone(),
                source,
            })?;
        Ok((me, ckpt.metadata))
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
        let mut params = self.backward(batch, grads)?;
        let mut module = self.head.module.clone();
        if let (Some(gate_lr), Some(gate)) = (self.gate_lr, &self.head.module.gate) {
            // A third step of the same Adam (one state per parameter) for w and c alone.
            let mut gate_grads = GradientsParams::new();
            if let Some(g) = params.remove::<2>(gate.weight.id) {
                gate_grads.register(gate.weight.id, g);
            }
            if let Some(g) = params.remove::<1>(gate.bias.id) {
                gate_grads.register(gate.bias.id, g);
            }
            module = self.optim.step(gate_lr, module, gate_grads);
        }
        let bias = self.head.module.out_bias.as_ref().map(|b| b.id);
        self.head.module = match (self.bias_lr, bias) {
            (Some(bias_lr), Some(id)) => {
                // Two steps of the same optimiser (one state per parameter): a parameter
                // without a gradient in a step keeps its value and its state.
                let mut bias_grads = GradientsParams::new();
                if let Some(g) = params.remove::<1>(id) {
                    let g = match self.bias_optimizer {
                        BiasOptimizer::Adam => g,
                        BiasOptimizer::Sgd => {
                            let c = MAX_SGD_BIAS_STEP / bias_lr;
                            g.clamp(-c, c)
                        }
                    };
                    bias_grads.register(id, g);
                }
                let module = self.optim.step(learning_rate, module, params);
                match self.bias_optimizer {
                    BiasOptimizer::Adam => self.optim.step(bias_lr, module, bias_grads),
                    BiasOptimizer::Sgd => self.bias_sgd.step(bias_lr, module, bias_grads),
                }
            }
            _ => self.optim.step(learning_rate, module, params),
        };
        Ok(())
    }
}

impl HeadTrainable {
    /// The gradients of the loss with respect to the head's parameters, given its gradients
    /// `grads[t-1]` (K x V) with respect to the raw outputs of `batch` at step t: one
    /// differentiable forward pass over the batch's stored hidden states and a backward pass.
    fn backward(&self, batch: &Batch, grads: &[LogTable]) -> Result<GradientsParams> {
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
        let out = self.head.forward(x)?;
        let g = Tensor::<2>::from_data(TensorData::new(g, [rows, v]), &device);
        // d/dθ sum(out * g) = sum_{rows, v} g * d out / dθ: the loss gradient by the chain rule.
        let surrogate = (out * g).sum();
        let gradients = surrogate.backward();
        Ok(GradientsParams::from_grads(gradients, &self.head.module))
    }

    /// The gradient of the loss with respect to each parameter (named as in
    /// `HeadConfig::param_specs`, row-major values; zeros where the loss does not reach it),
    /// given the gradients `grads` with respect to the raw outputs of `batch` (as for
    /// [`TrainableTwist::apply_gradient`]); the head is not changed. For gradient checks.
    pub fn parameter_gradients(
        &self,
        batch: &Batch,
        grads: &[LogTable],
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let params = self.backward(batch, grads)?;
        self.named_gradients(&params)
    }

    /// Gradients by parameter name (as in `HeadConfig::param_specs`, row-major; zeros where
    /// none reached the parameter).
    pub(crate) fn named_gradients(
        &self,
        params: &GradientsParams,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        self.head
            .parameters()
            .into_iter()
            .map(|(name, id, shape)| {
                let id = burn::module::ParamId::from(id);
                let values = match shape.len() {
                    2 => params.get::<2>(id).map(|t| t.try_into_vec_as::<f32>()),
                    _ => params.get::<1>(id).map(|t| t.try_into_vec_as::<f32>()),
                };
                let values = match values {
                    Some(v) => v.map_err(|e| {
                        SmcError::backend(
                            "twist head gradients",
                            lm_burn::LmError::ReadBack {
                                what: "twist head gradients",
                                source: e,
                            },
                        )
                    })?,
                    None => vec![0.0; shape.iter().product()],
                };
                Ok((name, values))
            })
            .collect()
    }
}

fn optim_error(path: &std::path::Path, expected: &str, found: impl ToString) -> TrainError {
    TrainError::Lm(lm_burn::LmError::Config {
        path: path.to_path_buf(),
        field: lm_burn::heads::OPTIMIZER_TENSOR.into(),
        expected: expected.into(),
        found: found.to_string(),
    })
}

/// Checks that an optimiser state (burn's burnpack bytes) belongs to `params` (name, id,
/// shape): every state tensor carries the id of one of them and that parameter's shape, and
/// either every parameter has state or none does (an optimiser that never stepped), except the
/// per-token bias `out_bias`, which Adam never steps when it takes plain gradient steps
/// ([`BiasOptimizer::Sgd`]; resumed with Adam, its state starts fresh). burn itself would
/// ignore state under foreign ids (silently restarting Adam) or fail on a shape mismatch at
/// the next step.
pub fn check_optimizer_state(
    path: &std::path::Path,
    bytes: &[u8],
    params: &[(String, u64, Vec<usize>)],
) -> Result<(), TrainError> {
    let (tensors, scalars) = burnpack_metadata(bytes)
        .map_err(|e| optim_error(path, "a burn optimiser state (burnpack)", e))?;
    let mut with_state = std::collections::BTreeSet::new();
    for (name, shape, id) in &tensors {
        let Some(id) = id else {
            return Err(optim_error(
                path,
                "state tensors that name their parameter",
                format!("`{name}` without a parameter id"),
            ));
        };
        let Some((pname, _, pshape)) = params.iter().find(|(_, pid, _)| pid == id) else {
            return Err(optim_error(
                path,
                &format!(
                    "state for this head's parameters (ids {})",
                    params
                        .iter()
                        .map(|(n, i, _)| format!("{n} = {i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("`{name}` for parameter id {id}: another head's optimiser state"),
            ));
        };
        if shape != pshape {
            return Err(optim_error(
                path,
                &format!("state of shape {pshape:?} for parameter `{pname}`"),
                format!("`{name}` of shape {shape:?}"),
            ));
        }
        with_state.insert(*id);
    }
    if !with_state.is_empty()
        && let Some((pname, _, _)) = params
            .iter()
            .find(|(name, id, _)| !with_state.contains(id) && name != "out_bias")
    {
        return Err(optim_error(
            path,
            "state for every parameter of the head",
            format!("none for `{pname}`"),
        ));
    }
    // Scalars are keyed `{param id}.{what}`; `{id}.__rank` is the rank burn builds the state's
    // tensors with when it loads them (a wrong one panics inside burn at the next step).
    let mut ranked = std::collections::BTreeSet::new();
    for (key, value) in &scalars {
        let param = key
            .split_once('.')
            .and_then(|(id, _)| id.parse::<u64>().ok())
            .and_then(|id| params.iter().find(|(_, pid, _)| *pid == id));
        let Some((pname, id, pshape)) = param else {
            return Err(optim_error(
                path,
                "state scalars for this head's parameters",
                format!("`{key}`: another head's optimiser state"),
            ));
        };
        if key.ends_with(".__rank") {
            if *value != Some(pshape.len() as u64) {
                return Err(optim_error(
                    path,
                    &format!("rank {} for parameter `{pname}`", pshape.len()),
                    format!("`{key}` = {value:?}"),
                ));
            }
            ranked.insert(*id);
        }
    }
    if let Some(id) = with_state.iter().find(|id| !ranked.contains(id)) {
        return Err(optim_error(
            path,
            "the rank of every parameter with state",
            format!("no `{id}.__rank`"),
        ));
    }
    Ok(())
}

/// A state tensor's name, shape and parameter id.
type StateTensor = (String, Vec<usize>, Option<u64>);

/// A state scalar's key and its unsigned value (`None`: another kind of value).
type StateScalar = (String, Option<u64>);

/// The tensors (name, shape, parameter id) and scalars (key, value) of a burnpack buffer:
/// header "NRUB", version (u16), metadata size (u32), then CBOR metadata
/// `{ tensors: { name: { shape, param_id, .. } }, scalars: { key: { UInt: n } }, .. }`.
fn burnpack_metadata(bytes: &[u8]) -> Result<(Vec<StateTensor>, Vec<StateScalar>), String> {
    if bytes.len() < 10 || u32::from_le_bytes(bytes[0..4].try_into().expect("4")) != 0x4255_524E {
        return Err("not a burnpack buffer (no BURN header)".into());
    }
    let size = u32::from_le_bytes(bytes[6..10].try_into().expect("4")) as usize;
    let meta = bytes
        .get(10..10usize.saturating_add(size))
        .ok_or_else(|| format!("metadata of {size} bytes beyond the {} held", bytes.len()))?;
    let mut cbor = Cbor { bytes: meta, at: 0 };
    let root = cbor.value(0)?;
    let tensors = root.get("tensors").ok_or("metadata without `tensors`")?;
    let Cv::Map(entries) = tensors else {
        return Err("`tensors` is not a map".into());
    };
    let tensors = entries
        .iter()
        .map(|(k, d)| {
            let Cv::Text(name) = k else {
                return Err("a tensor name that is not text".to_string());
            };
            let shape = match d.get("shape") {
                Some(Cv::Array(dims)) => dims
                    .iter()
                    .map(|x| match x {
                        Cv::Uint(n) => {
                            usize::try_from(*n).map_err(|_| format!("`{name}`: dimension {n}"))
                        }
                        _ => Err(format!("`{name}`: a dimension that is not an integer")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(format!("`{name}` without a shape")),
            };
            let id = match d.get("param_id") {
                Some(Cv::Uint(id)) => Some(*id),
                None | Some(Cv::Other) => None,
                Some(_) => return Err(format!("`{name}`: a parameter id that is not an integer")),
            };
            Ok((name.clone(), shape, id))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let scalars = match root.get("scalars") {
        None => Vec::new(),
        Some(Cv::Map(entries)) => entries
            .iter()
            .map(|(k, v)| match (k, v.get("UInt")) {
                (Cv::Text(key), Some(Cv::Uint(n))) => Ok((key.clone(), Some(*n))),
                (Cv::Text(key), _) => Ok((key.clone(), None)),
                _ => Err("a scalar name that is not text".to_string()),
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(_) => return Err("`scalars` is not a map".into()),
    };
    Ok((tensors, scalars))
}

/// A CBOR value, as much of it as the check needs.
enum Cv {
    Uint(u64),
    Text(String),
    Array(Vec<Cv>),
    Map(Vec<(Cv, Cv)>),
    Other,
}

impl Cv {
    fn get(&self, key: &str) -> Option<&Cv> {
        match self {
            Cv::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Cv::Text(t) if t == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A bounded CBOR reader: lengths are checked against the bytes left, nesting is limited.
struct Cbor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cbor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated CBOR metadata")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn head(&mut self) -> Result<(u8, u64), String> {
        let b = self.take(1)?[0];
        let (major, info) = (b >> 5, b & 31);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().expect("2"))),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().expect("4"))),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8")),
            _ => return Err(format!("unsupported CBOR item 0x{b:02x}")),
        };
        Ok((major, arg))
    }

    fn count(&self, n: u64) -> Result<usize, String> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.at)
            .ok_or_else(|| format!("a CBOR length of {n} beyond the bytes left"))
    }

    fn value(&mut self, depth: usize) -> Result<Cv, String> {
        if depth > 32 {
            return Err("CBOR metadata nested too deep".into());
        }
        let (major, arg) = self.head()?;
        Ok(match major {
            0 => Cv::Uint(arg),
            1 | 7 => Cv::Other,
            2 => {
                let n = self.count(arg)?;
                self.take(n)?;
                Cv::Other
            }
            3 => {
                let n = self.count(arg)?;
                Cv::Text(String::from_utf8_lossy(self.take(n)?).into_owned())
            }
            4 => {
                let n = self.count(arg)?;
                Cv::Array(
                    (0..n)
                        .map(|_| self.value(depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            5 => {
                let n = self.count(arg)?;
                Cv::Map(
                    (0..n)
                        .map(|_| Ok((self.value(depth + 1)?, self.value(depth + 1)?)))
                        .collect::<Result<_, String>>()?,
                )
            }
            _ => {
                // A tag: its value follows.
                self.value(depth + 1)?
            }
        })
    }
}
