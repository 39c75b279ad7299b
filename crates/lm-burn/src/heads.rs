//! Twist heads on the frozen base model's last hidden state (spec §2): a linear head d -> V or
//! an MLP d -> H -> H -> V with ReLU, outputting one raw value per vocabulary token; optionally
//! conditional (infilling): the hidden state of the conditioning tokens, encoded alone, is
//! concatenated to each position's hidden state. Initialisation N(0, 2/(fan_in + fan_out)),
//! bias 0. Checkpoints are safetensors (weights) plus JSON (metadata), written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::{Twist, TwistInput};

use crate::error::{LmError, Result};
use crate::model::BurnLm;

/// The architecture of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// One linear layer d_in -> V.
    Linear,
    /// Three linear layers d_in -> H -> H -> V with ReLU between them.
    Mlp,
}

/// Everything that defines a head's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Linear or MLP.
    pub kind: HeadKind,
    /// The base model's hidden size d.
    pub hidden_size: usize,
    /// The MLP's width H (d by default).
    pub mlp_width: usize,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Conditioning tokens (infilling): the head input is [h_t, h_c] of size 2d.
    pub conditioning: Option<Vec<u32>>,
    /// log psi = log sigmoid(output) (FUDGE's psi in (0, 1)) instead of log psi = output.
    #[serde(default)]
    pub log_sigmoid: bool,
    /// Start the output layer at zero instead of N(0, 2/(fan_in + fan_out)) (the other layers
    /// keep that initialisation): every log psi starts at 0 (1/2 under log_sigmoid, a constant),
    /// so the twisted proposal starts exactly at p0 instead of p0 with random per-token offsets
    /// of standard deviation about sqrt(2/(fan_in + fan_out))·‖h‖ (docs/training.md).
    #[serde(default)]
    pub zero_output: bool,
}

impl HeadConfig {
    /// A head for `lm` (H = d).
    pub fn for_model(lm: &BurnLm, kind: HeadKind, conditioning: Option<Vec<u32>>) -> Self {
        let d = lm.dims();
        Self {
            kind,
            hidden_size: d.hidden,
            mlp_width: d.hidden,
            vocab_size: d.vocab,
            conditioning,
            log_sigmoid: false,
            zero_output: false,
        }
    }

    fn input_size(&self) -> usize {
        self.hidden_size * if self.conditioning.is_some() { 2 } else { 1 }
    }

    fn layer_sizes(&self) -> Vec<(usize, usize)> {
        let d_in = self.input_size();
        match self.kind {
            HeadKind::Linear => vec![(d_in, self.vocab_size)],
            HeadKind::Mlp => vec![
                (d_in, self.mlp_width),
                (self.mlp_width, self.mlp_width),
                (self.mlp_width, self.vocab_size),
            ],
        }
    }
}

/// One affine layer.
#[derive(Module, Debug)]
pub struct Dense {
    /// [in, out].
    pub weight: Param<Tensor<2>>,
    /// \[out\].
    pub bias: Param<Tensor<1>>,
}

/// The trainable part of a head.
#[derive(Module, Debug)]
pub struct HeadModule {
    /// The layers, ReLU between consecutive ones.
    pub layers: Vec<Dense>,
}

impl HeadModule {
    /// Raw outputs for inputs [N, d_in] -> [N, V].
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = crate::ops::linear(x, &l.weight.val(), Some(&l.bias.val()));
            if i + 1 < n {
                x = relu(x);
            }
        }
        x
    }
}

/// A twist head: the module, its configuration and, for conditional heads, the conditioning
/// tokens' hidden state.
#[derive(Debug, Clone)]
pub struct TwistHead {
    /// The shape.
    pub config: HeadConfig,
    /// The parameters.
    pub module: HeadModule,
    /// The conditioning tokens' final-norm hidden state \[d\] (conditional heads).
    pub cond_hidden: Option<Vec<f32>>,
    device: Device,
}

fn normal(rng: &mut impl rand::Rng) -> f64 {
    use rand::RngExt;
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl TwistHead {
    /// A freshly initialised head: weights N(0, 2/(fan_in + fan_out)), biases 0, from `seed`
    /// (with `config.zero_output`, the output layer's weights start at 0).
    /// A conditional head encodes its conditioning tokens with `lm` once.
    pub fn new(lm: &BurnLm, config: HeadConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let sizes = config.layer_sizes();
        let last = sizes.len() - 1;
        let layers = sizes
            .into_iter()
            .enumerate()
            .map(|(i, (fan_in, fan_out))| {
                let zero = config.zero_output && i == last;
                let std = if zero {
                    0.0
                } else {
                    (2.0 / (fan_in + fan_out) as f64).sqrt()
                };
                let w: Vec<f32> = (0..fan_in * fan_out)
                    .map(|_| (std * normal(&mut rng)) as f32)
                    .collect();
                Dense {
                    weight: Param::from_tensor(Tensor::from_data(
                        TensorData::new(w, [fan_in, fan_out]),
                        device,
                    )),
                    bias: Param::from_tensor(Tensor::zeros([fan_out], device)),
                }
            })
            .collect();
        let cond_hidden = match &config.conditioning {
            Some(c) => Some(lm.encode_last_hidden(c)?),
            None => None,
        };
        Ok(Self {
            config,
            module: HeadModule { layers },
            cond_hidden,
            device: device.clone(),
        })
    }

    /// Re-targets a conditional head to new conditioning tokens (encoded alone with `lm`).
    pub fn set_conditioning(&mut self, lm: &BurnLm, conditioning: &[u32]) -> Result<()> {
        if self.config.conditioning.is_none() {
            return Err(LmError::NotConditional);
        }
        self.cond_hidden = Some(lm.encode_last_hidden(conditioning)?);
        self.config.conditioning = Some(conditioning.to_vec());
        Ok(())
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The head input [rows, d_in] for hidden states (with the conditioning vector appended).
    pub fn input(&self, hidden: &HiddenStates, device: &Device) -> Tensor<2> {
        let d = hidden.dim;
        let data = match &self.cond_hidden {
            None => hidden.data.clone(),
            Some(c) => {
                let mut out = Vec::with_capacity(hidden.rows * 2 * d);
                for r in 0..hidden.rows {
                    out.extend_from_slice(hidden.row(r));
                    out.extend_from_slice(c);
                }
                out
            }
        };
        let width = self.config.input_size();
        Tensor::from_data(TensorData::new(data, [hidden.rows, width]), device)
    }

    /// Raw outputs [rows x V] for hidden states, computed without autodiff.
    pub fn raw(&self, hidden: &HiddenStates) -> Result<LogTable> {
        if hidden.dim != self.config.hidden_size {
            return Err(LmError::LengthMismatch {
                what: "twist head: hidden-state size".into(),
                expected: self.config.hidden_size,
                found: hidden.dim,
            });
        }
        let module = self.module.valid();
        let device = self.device.clone().without_autodiff();
        let out = module.forward(self.input(hidden, &device));
        let v = self.config.vocab_size;
        let data: Vec<f64> = out
            .try_into_vec_as::<f32>()
            .map_err(LmError::read_back("twist head outputs"))?
            .into_iter()
            .map(f64::from)
            .collect();
        Ok(LogTable::from_vec(hidden.rows, v, data).expect("shape"))
    }

    /// Writes the head to `path` (safetensors) and `path` with extension `json` (metadata),
    /// each through a temporary file renamed into place.
    pub fn save(&self, path: &Path, metadata: &serde_json::Value) -> Result<()> {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (i, l) in self.module.layers.iter().enumerate() {
            for (name, t) in [
                ("weight", l.weight.val().inner()),
                ("bias", l.bias.val().inner().unsqueeze::<2>()),
            ] {
                let dims = t.dims().to_vec();
                let shape = if name == "bias" { vec![dims[1]] } else { dims };
                let values = t
                    .try_into_vec_as::<f32>()
                    .map_err(LmError::read_back("twist head weights"))?;
                let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.insert(format!("layers.{i}.{name}"), (shape, bytes));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, (s, b))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .expect("consistent"),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| LmError::safetensors(path, "cannot serialise the twist head", e))?;
        let param_ids: BTreeMap<String, u64> = self
            .module
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                [
                    (format!("layers.{i}.weight"), l.weight.id.val()),
                    (format!("layers.{i}.bias"), l.bias.id.val()),
                ]
            })
            .collect();
        let meta = serde_json::json!({
            "head": self.config,
            "cond_hidden": self.cond_hidden,
            "param_ids": param_ids,
            "metadata": metadata,
        });
        write_atomic(path, &bytes)?;
        write_atomic(
            &path.with_extension("json"),
            serde_json::to_string_pretty(&meta)
                .expect("json")
                .as_bytes(),
        )?;
        Ok(())
    }

    /// Reads a head written by [`TwistHead::save`]; returns it and the stored metadata.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, serde_json::Value)> {
        let meta_path = path.with_extension("json");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| LmError::io(&meta_path, e))?;
        let meta: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LmError::json(&meta_path, "invalid JSON", e))?;
        let config: HeadConfig = serde_json::from_value(meta["head"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `head`", e))?;
        let cond_hidden: Option<Vec<f32>> = serde_json::from_value(meta["cond_hidden"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `cond_hidden`", e))?;
        let source = crate::weights::SafetensorsFile::open(path)?;
        let mut loader = crate::weights::Loader::new(&source, device);
        let mut layers = Vec::new();
        // Parameter ids are kept so that a saved optimiser state matches the reloaded head.
        let id_of = |name: &str| {
            meta["param_ids"][name]
                .as_u64()
                .map(burn::module::ParamId::from)
        };
        for (i, (fan_in, fan_out)) in config.layer_sizes().into_iter().enumerate() {
            let (wn, bn) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
            let mut weight = Param::from_tensor(loader.tensor(&wn, [fan_in, fan_out])?);
            let mut bias = Param::from_tensor(loader.tensor(&bn, [fan_out])?);
            if let (Some(w), Some(b)) = (id_of(&wn), id_of(&bn)) {
                weight.id = w;
                bias.id = b;
            }
            layers.push(Dense { weight, bias });
        }
        loader.finish()?;
        Ok((
            Self {
                config,
                module: HeadModule { layers },
                cond_hidden,
                device: device.clone(),
            },
            meta["metadata"].clone(),
        ))
    }
}

/// Writes a file through a temporary sibling renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = PathBuf::from(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tmp.set_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| LmError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))
}

impl Twist for TwistHead {
    fn name(&self) -> &str {
        "twist head"
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> smc_core::Result<LogTable> {
        let hidden = input
            .hidden
            .ok_or_else(|| smc_core::SmcError::backend("twist head", LmError::NoHiddenStates))?;
        let mut table = self.raw(hidden)?;
        if self.config.log_sigmoid {
            for k in 0..table.rows() {
                for x in table.row_mut(k) {
                    *x = smc_core::logspace::log_sigmoid(*x);
                }
            }
        }
        Ok(table)
    }
}
