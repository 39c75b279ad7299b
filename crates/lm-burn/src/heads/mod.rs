//! Twist heads on the frozen base model's last hidden state h_t (spec §2), outputting one raw
//! value per vocabulary token:
//! - linear d_in -> V, or an MLP d_in -> H -> H -> V with ReLU (initialisation
//!   N(0, 2/(fan_in + fan_out)), bias 0; optionally the output layer at zero);
//! - through the base model's own frozen output embedding E (V x d, tied to the input embedding
//!   in SmolLM2 and GPT-2): raw_t(v) = e_v · (A x_t) + b_v with A (d x d_in) and b (V) trained,
//!   both starting at zero so that psi = 1 and the twisted proposal is p0 at step 0; optionally
//!   of low rank, A = U W^T (U: d x r starting at zero, W: d_in x r random), so that a few
//!   hundred thousand parameters (or d·r + d_in·r + V) are trained instead of tens of millions.
//!   Optionally the bias is gated by the input ([`BiasGate`]): raw_t(v) = e_v · (A x_t) +
//!   g(x_t) b_v with g a learned scalar, 1 at the start, so that the head can turn the
//!   context-free bias down where the prefix no longer needs it.
//!   E is not part of the head: it is read from the base model when the head is built or
//!   attached ([`TwistHead::attach_base_model`]), and a fingerprint of it is kept to refuse
//!   another model's.
//!
//! Optionally conditional (infilling): a d-vector h_c encoding the conditioning tokens
//! ([`CondEncoding`]: the last final-norm hidden state of c encoded alone, the mean of those
//! states, or the mean of c's rows of the output embedding) is concatenated to each position's
//! hidden state (x_t = [h_t, h_c], d_in = 2d). A
//! checkpoint is one safetensors file (weights, metadata in its header, optionally the
//! optimiser's state) renamed into place, so that a reader sees the old one or the new one.

mod checkpoint;

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::{Twist, TwistInput};

pub use checkpoint::{CHECKPOINT_FORMAT, Checkpoint, META_KEY, OPTIMIZER_TENSOR};

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
    /// raw(v) = e_v · (A x) + b_v through the base model's frozen output embedding E, with A
    /// of full rank or of rank [`HeadConfig::rank`]; starts at zero (q = p0).
    Embedding,
}

/// How an embedding head's bias b is scaled by a learned scalar of the input x:
/// raw(v) = e_v · (A x) + g(x) b_v, with w [d_in] and c starting at zero so that g = 1 and
/// the head starts as the ungated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BiasGate {
    /// g = 2 sigmoid(w · x + c), in (0, 2).
    Sigmoid,
    /// g = 1 + w · x + c, unbounded.
    Linear,
}

/// How a conditional head encodes its conditioning tokens c = c_1..c_m into h_c \[d\].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CondEncoding {
    /// The final-norm hidden state at c's last position, c encoded alone (what comes after c).
    #[default]
    Last,
    /// The mean over c's positions of those hidden states (what c's tokens predict).
    MeanHidden,
    /// The mean of c's rows e_{c_i} of the output embedding: through an embedding head,
    /// e_v · (alpha h_c) raises the tokens of c and their neighbours, a copy feature.
    MeanEmbedding,
}

impl CondEncoding {
    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::MeanHidden => "mean-hidden",
            Self::MeanEmbedding => "mean-embedding",
        }
    }
}

/// Everything that defines a head's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// The architecture.
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
    /// Embedding heads always start at zero.
    #[serde(default)]
    pub zero_output: bool,
    /// Embedding heads: the rank r of A = U W^T; `None` for a full d x d_in matrix A.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Embedding heads: the fingerprint of the base model's output embedding the head was
    /// built on ([`embedding_fingerprint`]); attaching another model's is an error.
    #[serde(default)]
    pub base_fingerprint: Option<u64>,
    /// Embedding heads: the bias scaled by a learned gate of the input (`None`: not gated).
    #[serde(default)]
    pub bias_gate: Option<BiasGate>,
    /// Conditional heads: how the conditioning tokens become h_c.
    #[serde(default)]
    pub cond_encoding: CondEncoding,
}

/// One trainable tensor of a head: its name in checkpoints, its shape and the standard
/// deviation of its initial values (0: it starts at zero).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The name, e.g. `layers.0.weight` or `factors.1`.
    pub name: String,
    /// [in, out] for matrices, \[n\] for biases.
    pub shape: Vec<usize>,
    /// Initial values N(0, init_std^2).
    pub init_std: f64,
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
            rank: None,
            base_fingerprint: None,
            bias_gate: None,
            cond_encoding: CondEncoding::Last,
        }
    }

    /// The head input's size d_in: d, or 2d for a conditional head.
    pub fn input_size(&self) -> usize {
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
            HeadKind::Embedding => Vec::new(),
        }
    }

    /// The trainable tensors in order: `layers.{i}.weight` [in, out] and `layers.{i}.bias`
    /// \[out\] for linear and MLP heads; `factors.0` (A^T [d_in, d], or W [d_in, r] then
    /// `factors.1` = U^T [r, d] at low rank) and `out_bias` \[V\] for embedding heads,
    /// followed by `gate.weight` [d_in, 1] and `gate.bias` \[1\] when the bias is gated.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let spec = |name: String, shape: Vec<usize>, init_std: f64| ParamSpec {
            name,
            shape,
            init_std,
        };
        let (d_in, d) = (self.input_size(), self.hidden_size);
        match self.kind {
            HeadKind::Linear | HeadKind::Mlp => {
                let sizes = self.layer_sizes();
                let last = sizes.len() - 1;
                sizes
                    .into_iter()
                    .enumerate()
                    .flat_map(|(i, (fan_in, fan_out))| {
                        let std = if self.zero_output && i == last {
                            0.0
                        } else {
                            (2.0 / (fan_in + fan_out) as f64).sqrt()
                        };
                        [
                            spec(format!("layers.{i}.weight"), vec![fan_in, fan_out], std),
                            spec(format!("layers.{i}.bias"), vec![fan_out], 0.0),
                        ]
                    })
                    .collect()
            }
            HeadKind::Embedding => {
                let mut out = match self.rank {
                    None => vec![spec("factors.0".into(), vec![d_in, d], 0.0)],
                    // W random and U zero: A = U W^T starts at zero, and U's gradient
                    // (through W^T x) does not vanish there, as it would with both at zero.
                    Some(r) => vec![
                        spec(
                            "factors.0".into(),
                            vec![d_in, r],
                            (1.0 / d_in as f64).sqrt(),
                        ),
                        spec("factors.1".into(), vec![r, d], 0.0),
                    ],
                };
                out.push(spec("out_bias".into(), vec![self.vocab_size], 0.0));
                if self.bias_gate.is_some() {
                    out.push(spec("gate.weight".into(), vec![d_in, 1], 0.0));
                    out.push(spec("gate.bias".into(), vec![1], 0.0));
                }
                out
            }
        }
    }

    /// The number of trained parameters.
    pub fn num_parameters(&self) -> usize {
        self.param_specs()
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
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
    /// Linear and MLP heads: the layers, ReLU between consecutive ones.
    pub layers: Vec<Dense>,
    /// Embedding heads: the factors of A^T, applied in turn to the input rows.
    pub factors: Vec<Param<Tensor<2>>>,
    /// Embedding heads: the per-token bias b \[V\].
    pub out_bias: Option<Param<Tensor<1>>>,
    /// Embedding heads with a gated bias: w [d_in, 1] and c \[1\] of the gate.
    pub gate: Option<Dense>,
    /// The gate's form (set with `gate`).
    #[module(skip)]
    pub gate_form: Option<BiasGate>,
}

/// A head's parameter, matrix or vector.
pub(crate) enum ParamValue {
    Matrix(Param<Tensor<2>>),
    Vector(Param<Tensor<1>>),
}

impl HeadModule {
    /// Assembles a module from its parameters in the order of [`HeadConfig::param_specs`],
    /// each routed by its name there.
    pub(crate) fn assemble(config: &HeadConfig, values: Vec<ParamValue>) -> Self {
        let mut module = HeadModule::empty();
        let mut weight = None;
        let mut gate_weight = None;
        for (spec, v) in config.param_specs().into_iter().zip(values) {
            match (spec.name.as_str(), v) {
                ("gate.weight", ParamValue::Matrix(m)) => gate_weight = Some(m),
                ("gate.bias", ParamValue::Vector(bias)) => {
                    let weight = gate_weight
                        .take()
                        .expect("param_specs: the gate's weight before its bias");
                    module.gate = Some(Dense { weight, bias });
                    module.gate_form = config.bias_gate;
                }
                ("out_bias", ParamValue::Vector(b)) => module.out_bias = Some(b),
                (name, ParamValue::Matrix(m)) if name.starts_with("factors.") => {
                    module.factors.push(m)
                }
                (_, ParamValue::Matrix(m)) => weight = Some(m),
                (_, ParamValue::Vector(bias)) => {
                    let weight = weight
                        .take()
                        .expect("param_specs: a weight before its bias");
                    module.layers.push(Dense { weight, bias });
                }
            }
        }
        module
    }

    fn empty() -> Self {
        HeadModule {
            layers: Vec::new(),
            factors: Vec::new(),
            out_bias: None,
            gate: None,
            gate_form: None,
        }
    }

    /// The parameters in spec order, taken apart (the inverse of [`HeadModule::assemble`]).
    fn into_values(self) -> Vec<ParamValue> {
        let mut out = Vec::new();
        for l in self.layers {
            out.push(ParamValue::Matrix(l.weight));
            out.push(ParamValue::Vector(l.bias));
        }
        out.extend(self.factors.into_iter().map(ParamValue::Matrix));
        out.extend(self.out_bias.map(ParamValue::Vector));
        if let Some(g) = self.gate {
            out.push(ParamValue::Matrix(g.weight));
            out.push(ParamValue::Vector(g.bias));
        }
        out
    }

    /// The parameters in the order of [`HeadConfig::param_specs`], each with its id and
    /// whether it is a matrix.
    pub(crate) fn ordered(&self) -> Vec<(u64, ParamRef<'_>)> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.push((l.weight.id.val(), ParamRef::Matrix(&l.weight)));
            out.push((l.bias.id.val(), ParamRef::Vector(&l.bias)));
        }
        for f in &self.factors {
            out.push((f.id.val(), ParamRef::Matrix(f)));
        }
        if let Some(b) = &self.out_bias {
            out.push((b.id.val(), ParamRef::Vector(b)));
        }
        if let Some(g) = &self.gate {
            out.push((g.weight.id.val(), ParamRef::Matrix(&g.weight)));
            out.push((g.bias.id.val(), ParamRef::Vector(&g.bias)));
        }
        out
    }

    /// Raw outputs for inputs [N, d_in] -> [N, V]; `base` is the output embedding [d, V] of an
    /// embedding head (a constant: no gradient reaches it).
    pub fn forward(&self, mut x: Tensor<2>, base: Option<&Tensor<2>>) -> Result<Tensor<2>> {
        if !self.factors.is_empty() {
            let base = base.ok_or(LmError::NoBaseEmbedding)?;
            // The gate reads the head's input, before the factors overwrite it.
            let gate = match (&self.gate, self.gate_form) {
                (Some(g), Some(form)) => {
                    let z = crate::ops::linear(x.clone(), &g.weight.val(), Some(&g.bias.val()));
                    Some(match form {
                        BiasGate::Sigmoid => sigmoid(z) * 2.0,
                        BiasGate::Linear => z + 1.0,
                    })
                }
                _ => None,
            };
            for f in &self.factors {
                x = x.matmul(f.val());
            }
            // In column blocks, as the model's own output head (faster on flex); E is a
            // constant, so no gradient is kept for its slices.
            x = crate::ops::output_head(x, base);
            if let Some(b) = &self.out_bias {
                let b = b.val().unsqueeze::<2>();
                x = match gate {
                    // [N, 1] times [1, V]: each row's bias scaled by its gate.
                    Some(g) => x + g * b,
                    None => x + b,
                };
            }
            return Ok(x);
        }
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = crate::ops::linear(x, &l.weight.val(), Some(&l.bias.val()));
            if i + 1 < n {
                x = relu(x);
            }
        }
        Ok(x)
    }
}

/// A borrowed head parameter.
pub(crate) enum ParamRef<'a> {
    Matrix(&'a Param<Tensor<2>>),
    Vector(&'a Param<Tensor<1>>),
}

/// A twist head: the module, its configuration, for conditional heads the conditioning
/// tokens' hidden state, and for embedding heads the base model's output embedding.
#[derive(Debug, Clone)]
pub struct TwistHead {
    /// The shape.
    pub config: HeadConfig,
    /// The parameters.
    pub module: HeadModule,
    /// The conditioning tokens' final-norm hidden state \[d\] (conditional heads).
    pub cond_hidden: Option<Vec<f32>>,
    /// Embedding heads: the base model's output embedding [d, V], shared with the model.
    base: Option<Tensor<2>>,
    device: Device,
}

fn normal(rng: &mut impl rand::Rng) -> f64 {
    use rand::RngExt;
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A fingerprint of an output embedding [d, V]: FNV-1a over its shape and the bits of its
/// values, so that an embedding head refuses a model other than the one it was trained on.
pub fn embedding_fingerprint(base: &Tensor<2>) -> Result<u64> {
    let dims = base.dims();
    let values = base
        .clone()
        .try_into_vec_as::<f32>()
        .map_err(LmError::read_back("output embedding"))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for d in dims {
        eat(&(d as u64).to_le_bytes());
    }
    for v in values {
        eat(&v.to_bits().to_le_bytes());
    }
    Ok(h)
}

/// h_c for conditioning tokens `c` under `encoding` (\[d\]).
pub fn encode_conditioning(lm: &BurnLm, encoding: CondEncoding, c: &[u32]) -> Result<Vec<f32>> {
    match encoding {
        CondEncoding::Last => lm.encode_last_hidden(c),
        CondEncoding::MeanHidden => lm.encode_mean_hidden(c),
        CondEncoding::MeanEmbedding => lm.mean_output_embedding(c),
    }
}

impl TwistHead {
    /// A freshly initialised head from `seed`: linear and MLP weights N(0, 2/(fan_in +
    /// fan_out)), biases 0 (with `config.zero_output`, the output layer's weights start at 0);
    /// embedding heads at zero (q = p0), attached to `lm`'s output embedding. A conditional
    /// head encodes its conditioning tokens with `lm` once.
    pub fn new(lm: &BurnLm, config: HeadConfig, seed: u64, device: &Device) -> Result<Self> {
        validate_shape(&config)?;
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let values = config
            .param_specs()
            .into_iter()
            .map(|spec| match spec.shape[..] {
                [rows, cols] => {
                    let w: Vec<f32> = (0..rows * cols)
                        .map(|_| (spec.init_std * normal(&mut rng)) as f32)
                        .collect();
                    ParamValue::Matrix(Param::from_tensor(Tensor::from_data(
                        TensorData::new(w, [rows, cols]),
                        device,
                    )))
                }
                _ => ParamValue::Vector(Param::from_tensor(Tensor::zeros([spec.shape[0]], device))),
            })
            .collect();
        let cond_hidden = match &config.conditioning {
            Some(c) => Some(encode_conditioning(lm, config.cond_encoding, c)?),
            None => None,
        };
        let mut head = Self {
            module: HeadModule::assemble(&config, values),
            config,
            cond_hidden,
            base: None,
            device: device.clone(),
        };
        head.attach_base_model(lm)?;
        Ok(head)
    }

    /// Gives an embedding head its base model's output embedding (a head read from a
    /// checkpoint needs it before it can be evaluated); nothing for other kinds. The model
    /// must be the one the head was built on: same sizes and the same embedding fingerprint.
    pub fn attach_base_model(&mut self, lm: &BurnLm) -> Result<()> {
        if self.config.kind != HeadKind::Embedding {
            return Ok(());
        }
        let base = lm.output_head();
        let dims = base.dims();
        if dims != [self.config.hidden_size, self.config.vocab_size] {
            return Err(LmError::LengthMismatch {
                what: format!(
                    "embedding twist head: the base model's output embedding [d, V] = {dims:?}"
                ),
                expected: self.config.hidden_size * self.config.vocab_size,
                found: dims[0] * dims[1],
            });
        }
        let found = embedding_fingerprint(&base)?;
        match self.config.base_fingerprint {
            Some(expected) if expected != found => {
                return Err(LmError::BaseModelMismatch {
                    model: lm.name().to_string(),
                    expected,
                    found,
                });
            }
            _ => self.config.base_fingerprint = Some(found),
        }
        self.base = Some(base.without_autodiff());
        Ok(())
    }

    /// Whether the head can be evaluated: anything but an embedding head not yet attached to
    /// its base model ([`TwistHead::attach_base_model`]).
    pub fn is_ready(&self) -> bool {
        self.config.kind != HeadKind::Embedding || self.base.is_some()
    }

    /// Re-targets a conditional head to new conditioning tokens (encoded alone with `lm`).
    pub fn set_conditioning(&mut self, lm: &BurnLm, conditioning: &[u32]) -> Result<()> {
        if self.config.conditioning.is_none() {
            return Err(LmError::NotConditional);
        }
        self.cond_hidden = Some(encode_conditioning(
            lm,
            self.config.cond_encoding,
            conditioning,
        )?);
        self.config.conditioning = Some(conditioning.to_vec());
        Ok(())
    }

    /// Embedding heads: the base model's output embedding [d, V] the head reads (a constant).
    pub fn base_embedding(&self) -> Option<Tensor<2>> {
        self.base.clone()
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

    /// The raw outputs [N, V] of inputs [N, d_in] through the parameters as they are (on an
    /// autodiff device, differentiable).
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        self.module.forward(x, self.base.as_ref())
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
        let out = module.forward(self.input(hidden, &device), self.base.as_ref())?;
        let v = self.config.vocab_size;
        let data: Vec<f64> = out
            .try_into_vec_as::<f32>()
            .map_err(LmError::read_back("twist head outputs"))?
            .into_iter()
            .map(f64::from)
            .collect();
        Ok(LogTable::from_vec(hidden.rows, v, data).expect("shape"))
    }

    /// The parameters by name (see [`HeadConfig::param_specs`]), each with its parameter id
    /// (which keys the optimiser's state) and shape.
    pub fn parameters(&self) -> Vec<(String, u64, Vec<usize>)> {
        self.config
            .param_specs()
            .into_iter()
            .zip(self.module.ordered())
            .map(|(spec, (id, _))| (spec.name, id, spec.shape))
            .collect()
    }
}

impl TwistHead {
    /// Every parameter's values (row-major), named as in [`HeadConfig::param_specs`].
    pub fn parameter_values(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.config
            .param_specs()
            .into_iter()
            .zip(self.module.ordered())
            .map(|(spec, (_, p))| {
                let values = match p {
                    ParamRef::Matrix(w) => w.val().inner().try_into_vec_as::<f32>(),
                    ParamRef::Vector(b) => b.val().inner().try_into_vec_as::<f32>(),
                };
                Ok((
                    spec.name,
                    values.map_err(LmError::read_back("twist head weights"))?,
                ))
            })
            .collect()
    }

    /// Replaces the values of the parameter `name` (row-major, its full size), keeping its
    /// id; for gradient checks and tests.
    pub fn set_parameter(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let specs = self.config.param_specs();
        let Some(i) = specs.iter().position(|s| s.name == name) else {
            return Err(LmError::InvalidHead {
                field: "parameter name".into(),
                expected: specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                found: name.into(),
            });
        };
        let shape = &specs[i].shape;
        if values.len() != shape.iter().product::<usize>() {
            return Err(LmError::LengthMismatch {
                what: format!("values of twist head parameter {name}"),
                expected: shape.iter().product(),
                found: values.len(),
            });
        }
        let data = TensorData::new(values.to_vec(), shape.clone());
        let device = &self.device;
        let module = std::mem::replace(&mut self.module, HeadModule::empty());
        let ordered = module.into_values();
        let replace = |v: ParamValue| match v {
            ParamValue::Matrix(p) => {
                let mut q = Param::from_tensor(Tensor::from_data(data.clone(), device));
                q.id = p.id;
                ParamValue::Matrix(q)
            }
            ParamValue::Vector(p) => {
                let mut q = Param::from_tensor(Tensor::from_data(data.clone(), device));
                q.id = p.id;
                ParamValue::Vector(q)
            }
        };
        let values = ordered
            .into_iter()
            .enumerate()
            .map(|(j, v)| if j == i { replace(v) } else { v })
            .collect();
        self.module = HeadModule::assemble(&self.config, values);
        Ok(())
    }
}

/// Checks the sizes a head is built from (at least 1; a rank only for embedding heads).
pub(crate) fn validate_shape(config: &HeadConfig) -> Result<()> {
    let bad = |field: &str, expected: &str, found: String| {
        Err(LmError::InvalidHead {
            field: field.into(),
            expected: expected.into(),
            found,
        })
    };
    for (field, value) in [
        ("head.hidden_size", config.hidden_size),
        ("head.vocab_size", config.vocab_size),
        ("head.mlp_width", config.mlp_width),
    ] {
        if value == 0 {
            return bad(field, "at least 1", value.to_string());
        }
    }
    match (config.kind, config.rank) {
        (HeadKind::Embedding, Some(r)) if r == 0 || r > config.input_size() => bad(
            "head.rank",
            &format!("1 to d_in = {} (or null: full rank)", config.input_size()),
            r.to_string(),
        ),
        (HeadKind::Linear | HeadKind::Mlp, Some(r)) => bad(
            "head.rank",
            "null (a rank is for embedding heads)",
            r.to_string(),
        ),
        _ => match (config.kind, config.bias_gate) {
            (HeadKind::Linear | HeadKind::Mlp, Some(g)) => bad(
                "head.bias_gate",
                "null (a bias gate is for embedding heads)",
                format!("{g:?}").to_lowercase(),
            ),
            _ => Ok(()),
        },
    }
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
