//! Twist heads on the frozen base model's last hidden state (spec §2): a linear head d -> V or
//! an MLP d -> H -> H -> V with ReLU, outputting one raw value per vocabulary token; optionally
//! conditional (infilling): the hidden state of the conditioning tokens, encoded alone, is
//! concatenated to each position's hidden state. Initialisation N(0, 2/(fan_in + fan_out)),
//! bias 0. A checkpoint is one safetensors file (weights, metadata in its header, optionally the
//! optimiser's state) renamed into place, so that a reader sees the old one or the new one.

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

    /// The parameters by name (`layers.{i}.weight` [in, out], `layers.{i}.bias` \[out\]), each
    /// with its parameter id (which keys the optimiser's state) and shape.
    pub fn parameters(&self) -> Vec<(String, u64, Vec<usize>)> {
        self.config
            .layer_sizes()
            .into_iter()
            .zip(&self.module.layers)
            .enumerate()
            .flat_map(|(i, ((fan_in, fan_out), l))| {
                [
                    (
                        format!("layers.{i}.weight"),
                        l.weight.id.val(),
                        vec![fan_in, fan_out],
                    ),
                    (format!("layers.{i}.bias"), l.bias.id.val(), vec![fan_out]),
                ]
            })
            .collect()
    }

    /// Writes the head to `path` as one file (see [`TwistHead::save_checkpoint`]), without
    /// optimiser state.
    pub fn save(&self, path: &Path, metadata: &serde_json::Value) -> Result<()> {
        self.save_checkpoint(path, metadata, None)
    }

    /// Writes a checkpoint as ONE safetensors file: the weights (tensors `layers.*`), the
    /// optimiser's state when given (raw bytes, tensor `optimizer.state`) and, in the header's
    /// `__metadata__` entry `tsmc.twist_head`, the head's configuration, the conditioning state,
    /// the parameter ids and `metadata`. The file goes through a temporary sibling renamed into
    /// place, so a reader sees the old checkpoint or the new one, never a mix (a run killed
    /// while saving leaves the old one). A copy of the metadata is then written to `path` with
    /// extension `json` for people to read; tsmc never reads it back.
    pub fn save_checkpoint(
        &self,
        path: &Path,
        metadata: &serde_json::Value,
        optimizer: Option<&[u8]>,
    ) -> Result<()> {
        if path.extension().is_some_and(|e| e == "json") {
            return Err(LmError::format(
                path,
                "a checkpoint path ending in .json would be overwritten by its own metadata copy",
            ));
        }
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
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, (s, b))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .expect("consistent"),
                )
            })
            .collect();
        if let Some(state) = optimizer {
            views.push((
                OPTIMIZER_TENSOR.to_string(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U8,
                    vec![state.len()],
                    state,
                )
                .expect("consistent"),
            ));
        }
        let param_ids: BTreeMap<String, u64> = self
            .parameters()
            .into_iter()
            .map(|(name, id, _)| (name, id))
            .collect();
        let meta = serde_json::json!({
            "format": CHECKPOINT_FORMAT,
            "head": self.config,
            "cond_hidden": self.cond_hidden,
            "param_ids": param_ids,
            "optimizer_state": optimizer.is_some(),
            "metadata": metadata,
        });
        let info = std::collections::HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        let bytes = safetensors::serialize(views, Some(info))
            .map_err(|e| LmError::safetensors(path, "cannot serialise the twist head", e))?;
        crate::temporaries::write_atomic(path, &bytes)?;
        let mut copy = meta;
        copy["note"] = serde_json::json!(format!(
            "a copy, for people, of the metadata inside {}; tsmc reads only that file",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        crate::temporaries::write_atomic(
            &path.with_extension("json"),
            serde_json::to_string_pretty(&copy)
                .expect("json")
                .as_bytes(),
        )
    }

    /// Reads a head written by [`TwistHead::save`] or [`TwistHead::save_checkpoint`] (or by an
    /// older tsmc: weights, with the metadata in the `.json` beside them); returns it and the
    /// stored metadata.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, serde_json::Value)> {
        let c = Self::read_checkpoint(path, device, false)?;
        Ok((c.head, c.metadata))
    }

    /// [`TwistHead::load`] with the optimiser state saved with the head, if any (from an older
    /// tsmc: the `.optim` file beside the weights).
    pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
        Self::read_checkpoint(path, device, true)
    }

    fn read_checkpoint(path: &Path, device: &Device, with_optimizer: bool) -> Result<Checkpoint> {
        let file = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
        // SAFETY: read-only mapping; tsmc replaces checkpoints by renaming, never in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LmError::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            LmError::safetensors(path, "not a valid safetensors file (truncated?)", e)
        })?;
        let embedded = header.metadata().as_ref().and_then(|m| m.get(META_KEY));
        let (meta, meta_path, optimizer) = match embedded {
            Some(text) => {
                let meta: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| LmError::json(path, format!("header entry `{META_KEY}`"), e))?;
                if meta["format"] != CHECKPOINT_FORMAT {
                    return Err(config_error(
                        path,
                        "format",
                        format!("{CHECKPOINT_FORMAT} (a twist head checkpoint of this tsmc)"),
                        &meta["format"],
                    ));
                }
                let optimizer = if with_optimizer {
                    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                        LmError::safetensors(path, "not a valid safetensors file (truncated?)", e)
                    })?;
                    match st.tensor(OPTIMIZER_TENSOR) {
                        Ok(v) if v.dtype() == safetensors::Dtype::U8 && v.shape().len() == 1 => {
                            Some(v.data().to_vec())
                        }
                        Ok(v) => {
                            return Err(LmError::Shape {
                                path: path.to_path_buf(),
                                tensor: OPTIMIZER_TENSOR.into(),
                                expected: vec![v.data().len()],
                                found: v.shape().to_vec(),
                            });
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                if with_optimizer && meta["optimizer_state"] == true && optimizer.is_none() {
                    return Err(LmError::MissingTensor {
                        path: path.to_path_buf(),
                        tensor: OPTIMIZER_TENSOR.into(),
                    });
                }
                (meta, path.to_path_buf(), optimizer)
            }
            None => {
                // An older checkpoint: metadata and optimiser state in separate files.
                let meta_path = path.with_extension("json");
                let text = std::fs::read_to_string(&meta_path).map_err(|e| {
                    LmError::format(
                        path,
                        format!(
                            "no `{META_KEY}` entry in the header (not a twist head checkpoint), \
                             and no readable metadata file {} beside it as an older tsmc wrote: {e}",
                            meta_path.display()
                        ),
                    )
                })?;
                let meta: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| LmError::json(&meta_path, "invalid JSON", e))?;
                let optim_path = path.with_extension("optim");
                let optimizer = if with_optimizer && optim_path.exists() {
                    Some(std::fs::read(&optim_path).map_err(|e| LmError::io(&optim_path, e))?)
                } else {
                    None
                };
                (meta, meta_path, optimizer)
            }
        };
        drop(map);
        let config: HeadConfig = serde_json::from_value(meta["head"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `head`", e))?;
        let cond_hidden: Option<Vec<f32>> = serde_json::from_value(meta["cond_hidden"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `cond_hidden`", e))?;
        validate_head(&meta_path, &config, cond_hidden.as_deref())?;
        let ids = param_ids(&meta_path, &meta["param_ids"], &config)?;
        let source = crate::weights::SafetensorsFile::open(path)?;
        let mut loader = crate::weights::Loader::new(&source, device);
        loader.ignore(|n| n == OPTIMIZER_TENSOR);
        let mut layers = Vec::new();
        for (i, (fan_in, fan_out)) in config.layer_sizes().into_iter().enumerate() {
            let (wn, bn) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
            let mut weight = Param::from_tensor(loader.tensor(&wn, [fan_in, fan_out])?);
            let mut bias = Param::from_tensor(loader.tensor(&bn, [fan_out])?);
            // Parameter ids are kept so that a saved optimiser state matches the reloaded head.
            if let Some(ids) = &ids {
                weight.id = burn::module::ParamId::from(ids[&wn]);
                bias.id = burn::module::ParamId::from(ids[&bn]);
            }
            layers.push(Dense { weight, bias });
        }
        loader.finish()?;
        Ok(Checkpoint {
            head: Self {
                config,
                module: HeadModule { layers },
                cond_hidden,
                device: device.clone(),
            },
            metadata: meta["metadata"].clone(),
            optimizer,
            path: path.to_path_buf(),
        })
    }
}

/// A checkpoint as read back by [`TwistHead::load_checkpoint`].
#[derive(Debug)]
pub struct Checkpoint {
    /// The head, its parameters carrying their saved ids.
    pub head: TwistHead,
    /// The metadata stored with it.
    pub metadata: serde_json::Value,
    /// The optimiser's state saved with it (raw bytes), if any.
    pub optimizer: Option<Vec<u8>>,
    /// The checkpoint file.
    pub path: PathBuf,
}

/// The version of the one-file checkpoint layout.
pub const CHECKPOINT_FORMAT: u64 = 2;
/// The safetensors `__metadata__` entry holding a checkpoint's JSON metadata.
pub const META_KEY: &str = "tsmc.twist_head";
/// The tensor holding a checkpoint's optimiser state (raw bytes).
pub const OPTIMIZER_TENSOR: &str = "optimizer.state";

fn config_error(
    path: &Path,
    field: &str,
    expected: impl Into<String>,
    found: impl ToString,
) -> LmError {
    LmError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// Checks a head's configuration and conditioning state before anything is sized from them.
fn validate_head(path: &Path, config: &HeadConfig, cond_hidden: Option<&[f32]>) -> Result<()> {
    for (field, value) in [
        ("head.hidden_size", config.hidden_size),
        ("head.vocab_size", config.vocab_size),
        ("head.mlp_width", config.mlp_width),
    ] {
        if value == 0 {
            return Err(config_error(path, field, "at least 1", value));
        }
    }
    if let Some(c) = &config.conditioning {
        if c.is_empty() {
            return Err(config_error(
                path,
                "head.conditioning",
                "at least one token (or null for an unconditional head)",
                "[]",
            ));
        }
        if let Some(t) = c.iter().find(|&&t| t as usize >= config.vocab_size) {
            return Err(config_error(
                path,
                "head.conditioning",
                format!("token ids below head.vocab_size = {}", config.vocab_size),
                t,
            ));
        }
    }
    match (&config.conditioning, cond_hidden) {
        (Some(_), None) => Err(config_error(
            path,
            "cond_hidden",
            "the conditioning tokens' hidden state (head.conditioning is set)",
            "null",
        )),
        (None, Some(_)) => Err(config_error(
            path,
            "cond_hidden",
            "null: head.conditioning is null, so the head is not conditional",
            "a conditioning state",
        )),
        (Some(_), Some(h)) if h.len() != config.hidden_size => Err(config_error(
            path,
            "cond_hidden",
            format!("{} values (head.hidden_size)", config.hidden_size),
            format!("{} values", h.len()),
        )),
        (Some(_), Some(h)) if h.iter().any(|x| !x.is_finite()) => Err(config_error(
            path,
            "cond_hidden",
            "finite values",
            "a non-finite value",
        )),
        _ => Ok(()),
    }
}

/// The saved parameter ids by name: none for a head saved without them; otherwise exactly one
/// distinct id per parameter.
fn param_ids(
    path: &Path,
    value: &serde_json::Value,
    config: &HeadConfig,
) -> Result<Option<BTreeMap<String, u64>>> {
    if value.is_null() {
        return Ok(None);
    }
    let ids: BTreeMap<String, u64> = serde_json::from_value(value.clone())
        .map_err(|e| LmError::json(path, "field `param_ids`", e))?;
    let names: Vec<String> = (0..config.layer_sizes().len())
        .flat_map(|i| [format!("layers.{i}.weight"), format!("layers.{i}.bias")])
        .collect();
    let expected = || format!("one id for each of {}", names.join(", "));
    if let Some(n) = names.iter().find(|n| !ids.contains_key(*n)) {
        return Err(config_error(
            path,
            "param_ids",
            expected(),
            format!("none for `{n}`"),
        ));
    }
    if let Some(n) = ids.keys().find(|n| !names.contains(n)) {
        return Err(config_error(
            path,
            "param_ids",
            expected(),
            format!("an id for `{n}`, which the head does not have"),
        ));
    }
    let distinct: std::collections::BTreeSet<u64> = ids.values().copied().collect();
    if distinct.len() != ids.len() {
        return Err(config_error(
            path,
            "param_ids",
            "distinct ids",
            format!("{ids:?}"),
        ));
    }
    Ok(Some(ids))
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
