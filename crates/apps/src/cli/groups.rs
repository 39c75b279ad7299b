//! Argument groups shared by several commands (flattened into each), and the typed choices of
//! the command line. Each group turns into the settings type its commands take.

use clap::{Args, ValueEnum};

use lm_burn::heads::{BiasGate, CondEncoding, HeadKind};
use smc_core::resampling::Scheme;

use crate::setup::ModelChoice;
use crate::training::{HeadChoice, Positives};
use twist_learn::BiasOptimizer;

/// The model and where it runs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// `default` (SmolLM2-135M-Instruct, fetched once), a Hugging Face model directory or a
    /// .gguf file; `tsmc sample`, `exact` and `bounds` also run on served models: http://HOST:PORT, a
    /// comma-separated list of replicas, or @FILE naming a file of their URLs.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The compute backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// The most memory (GiB) a run may plan to use; default: the memory available now. A run
    /// whose particles and tokens would need more is refused before it allocates anything.
    #[arg(long, value_name = "GIB")]
    pub memory_budget: Option<f64>,
    /// How decoding steps read the weights: `f32`, or `q8`, a quantised copy (blocks of 32 with
    /// a minimum and a step; 4-bit levels where a block has at most 16) for steps of at most
    /// 128 particles on a CPU with AVX-512: about 3x faster at one particle, 1.3x at 16. A GGUF
    /// file's Q4_0, Q4_1 and Q8_0 weights (the default model's) are kept exactly; float weights
    /// move by at most 1/510 of their block's range. Costs up to 1.25 bytes per weight of
    /// memory beside the f32 weights (118 MiB for the default model). `int8` (experimental)
    /// also rounds each product's activations to 8 bits (blocks of 32, as llama.cpp does) and
    /// multiplies as integers: a little faster than q8 at one particle, no faster beyond, and
    /// log-probabilities move by up to a few tenths of a nat. `bf16` rounds the q8 weights and
    /// the activations to bf16 in steps of 5 to 512 particles (AVX-512 BF16): 1.4-1.7x q8 at
    /// 16-256 particles, next-token distributions within KL 3e-4 of f32 (docs/benchmarks.md).
    #[arg(long, value_enum, default_value_t = WeightsArg::F32)]
    pub weights: WeightsArg,
}

impl ModelArgs {
    /// The validated model choice.
    pub fn choice(self) -> anyhow::Result<ModelChoice> {
        let memory_budget = match self.memory_budget {
            None => None,
            Some(g) if g.is_finite() && g > 0.0 && g < 1e9 => {
                Some((g * (1u64 << 30) as f64) as u64)
            }
            Some(g) => anyhow::bail!("--memory-budget must be a positive number of GiB, found {g}"),
        };
        Ok(ModelChoice {
            model: self.model,
            backend: self.backend.into(),
            memory_budget,
            weights: self.weights.into(),
        })
    }
}

/// The prompt the samples continue.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// The prompt text.
    #[arg(long, default_value = "Once upon a time, there was a")]
    pub prompt: String,
}

impl PromptArgs {
    /// The prompt, checked non-empty.
    pub fn prompt(self) -> anyhow::Result<String> {
        if self.prompt.is_empty() {
            anyhow::bail!("--prompt is empty: SMC needs a prompt to condition on");
        }
        Ok(self.prompt)
    }
}

/// The shape and initialisation of a fresh twist head.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Twist head")]
pub struct HeadArgs {
    /// The head's architecture: `embedding` (the default: e_v · (A h) + b_v through the base
    /// model's frozen output embedding, A and b starting at zero so q = p0; every measured
    /// improvement over p0 used it), `low-rank:R` (the same with A of rank R), `linear`
    /// (hidden state -> vocabulary, tens of millions of parameters starting away from p0) or
    /// `mlp` (three layers).
    #[arg(long, default_value = "embedding")]
    pub head: HeadArg,
    /// Initialisation: `xavier` (every layer N(0, 2/(fan_in + fan_out)), the spec's) or
    /// `zero-output` (the output layer at 0, so the twisted proposal starts at p0).
    #[arg(long, value_enum, default_value_t = InitArg::Xavier)]
    pub init: InitArg,
    /// Learning rate of an embedding head's per-token bias b (default: --lr). Adam moves b_v
    /// by about its rate per update, log psi through A by up to about 3e4 times its rate on
    /// SmolLM2, so b wants a rate hundreds of times larger (docs/training.md).
    #[arg(long)]
    pub bias_lr: Option<f64>,
    /// How b is stepped at --bias-lr: `adam` (with the rest of the head: every b_v with any
    /// gradient moves by about the rate) or `sgd` (in proportion to its gradient, the gap
    /// between the token's frequency among positives and negatives, with rates of order 1 to
    /// 16; the gradient is clipped so that no b_v moves more than 0.1 nats an update, so gaps
    /// above 0.1 / rate all move by 0.1).
    #[arg(long, value_enum, default_value_t = BiasOptimArg::Adam)]
    pub bias_optim: BiasOptimArg,
    /// Scale an embedding head's bias by a learned gate of the hidden state,
    /// e_v · (A h) + g(h) b_v: `sigmoid` (g = 2 sigmoid(w · h + c), in (0, 2)) or `linear`
    /// (g = 1 + w · h + c); w and c start at zero (g = 1) and train at --lr. Lets the head
    /// turn b down where the prefix no longer needs it.
    #[arg(long, value_enum, default_value_t = BiasGateArg::None)]
    pub bias_gate: BiasGateArg,
    /// Adam learning rate of the gate's w and c (default: --lr). At --lr 1e-5 the gate stays
    /// near 1 for hundreds of updates.
    #[arg(long)]
    pub gate_lr: Option<f64>,
    /// How a conditional (infilling) head encodes the conditioning tokens c into the vector
    /// h_c it reads beside h_t: `last` (the hidden state after c, c encoded alone), `mean-hidden`
    /// (the mean of c's hidden states) or `mean-embedding` (the mean of c's output-embedding
    /// vectors, so that e_v · (A h_c) can copy c's tokens). Default `last`; a resumed head keeps
    /// its own.
    #[arg(long, value_enum)]
    pub cond_encoding: Option<CondEncodingArg>,
}

/// How a conditional head encodes its conditioning tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CondEncodingArg {
    /// The final-norm hidden state at c's last position.
    Last,
    /// The mean of c's final-norm hidden states.
    MeanHidden,
    /// The mean of c's output-embedding vectors.
    MeanEmbedding,
}

/// Whether and how an embedding head's bias is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BiasGateArg {
    /// No gate: e_v · (A h) + b_v.
    None,
    /// g = 2 sigmoid(w · h + c).
    Sigmoid,
    /// g = 1 + w · h + c.
    Linear,
}

/// How an embedding head's per-token bias is stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BiasOptimArg {
    /// Adam, the head's own optimiser.
    Adam,
    /// Plain gradient descent.
    Sgd,
}

impl HeadArgs {
    /// The head choice, checked: a bias learning rate is a positive number, and only
    /// embedding heads (`embedding`, `low-rank:R`) have the per-token bias it is for.
    pub fn choice(self) -> anyhow::Result<HeadChoice> {
        let (kind, rank) = match self.head {
            HeadArg::Linear => (HeadKind::Linear, None),
            HeadArg::Mlp => (HeadKind::Mlp, None),
            HeadArg::Embedding => (HeadKind::Embedding, None),
            HeadArg::LowRank(r) => (HeadKind::Embedding, Some(r)),
        };
        if let Some(lr) = self.bias_lr {
            if !(lr.is_finite() && lr > 0.0) {
                anyhow::bail!("--bias-lr must be a positive number, found {lr}");
            }
            if kind != HeadKind::Embedding {
                let head = if kind == HeadKind::Mlp {
                    "mlp"
                } else {
                    "linear"
                };
                anyhow::bail!(
                    "--bias-lr is for the per-token bias of --head embedding or low-rank:R; \
                     found --head {head}"
                );
            }
        }
        if self.bias_gate != BiasGateArg::None && kind != HeadKind::Embedding {
            anyhow::bail!(
                "--bias-gate is for the per-token bias of --head embedding or low-rank:R; \
                 found --head {}",
                if kind == HeadKind::Mlp {
                    "mlp"
                } else {
                    "linear"
                }
            );
        }
        if let Some(lr) = self.gate_lr {
            if !(lr.is_finite() && lr > 0.0) {
                anyhow::bail!("--gate-lr must be a positive number, found {lr}");
            }
            if self.bias_gate == BiasGateArg::None {
                anyhow::bail!("--gate-lr is for the gate of --bias-gate sigmoid or linear");
            }
        }
        if self.bias_optim == BiasOptimArg::Sgd && self.bias_lr.is_none() {
            anyhow::bail!(
                "--bias-optim sgd needs --bias-lr: plain gradient descent on b wants a rate of \
                 order 1, far from the head's Adam rate (--lr)"
            );
        }
        Ok(HeadChoice {
            kind,
            rank,
            zero_output: self.init == InitArg::ZeroOutput,
            bias_lr: self.bias_lr,
            bias_optimizer: match self.bias_optim {
                BiasOptimArg::Adam => BiasOptimizer::Adam,
                BiasOptimArg::Sgd => BiasOptimizer::Sgd,
            },
            bias_gate: match self.bias_gate {
                BiasGateArg::None => None,
                BiasGateArg::Sigmoid => Some(BiasGate::Sigmoid),
                BiasGateArg::Linear => Some(BiasGate::Linear),
            },
            gate_lr: self.gate_lr,
            cond_encoding: self.cond_encoding.map(|e| match e {
                CondEncodingArg::Last => CondEncoding::Last,
                CondEncodingArg::MeanHidden => CondEncoding::MeanHidden,
                CondEncodingArg::MeanEmbedding => CondEncoding::MeanEmbedding,
            }),
        })
    }
}

/// How decoding steps read the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// The f32 weights.
    F32,
    /// An 8-bit copy for decoding steps of at most 128 particles.
    Q8,
    /// The 8-bit copy with activations rounded to 8 bits and integer products (AVX-512 VNNI).
    Int8,
    /// The 8-bit copy with weights and activations rounded to bf16 in steps of 5 to 512
    /// particles (AVX-512 BF16): the fastest, within KL 3e-4 of f32 on the default model.
    Bf16,
}

impl From<WeightsArg> for lm_burn::WeightFormat {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::F32 => lm_burn::WeightFormat::F32,
            WeightsArg::Q8 => lm_burn::WeightFormat::Q8,
            WeightsArg::Int8 => lm_burn::WeightFormat::Int8,
            WeightsArg::Bf16 => lm_burn::WeightFormat::Bf16,
        }
    }
}

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// burn's flex CPU backend.
    #[value(alias = "flex")]
    Cpu,
    /// wgpu's best adapter (needs the `wgpu` feature).
    Wgpu,
    /// wgpu on a CPU adapter such as Mesa's software Vulkan (needs the `wgpu` feature).
    WgpuCpu,
    /// CUDA device 0 (needs the `cuda` feature).
    Cuda,
}

impl From<BackendArg> for lm_burn::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => lm_burn::Backend::Cpu,
            BackendArg::Wgpu => lm_burn::Backend::Wgpu,
            BackendArg::WgpuCpu => lm_burn::Backend::WgpuCpu,
            BackendArg::Cuda => lm_burn::Backend::Cuda,
        }
    }
}

/// A twist head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadArg {
    /// One linear layer from the hidden state to the vocabulary.
    Linear,
    /// Three linear layers with ReLU between them.
    Mlp,
    /// Through the base model's frozen output embedding, A of full rank.
    Embedding,
    /// Through the base model's frozen output embedding, A of this rank.
    LowRank(usize),
}

impl std::str::FromStr for HeadArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "linear, mlp, embedding or low-rank:R (R a rank of at least 1)";
        match s {
            "linear" => Ok(Self::Linear),
            "mlp" => Ok(Self::Mlp),
            "embedding" => Ok(Self::Embedding),
            _ => match s.strip_prefix("low-rank:").map(str::parse::<usize>) {
                Some(Ok(r)) if r >= 1 => Ok(Self::LowRank(r)),
                _ => Err(format!("expected {expected}, found {s:?}")),
            },
        }
    }
}

/// A head initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// Every layer N(0, 2/(fan_in + fan_out)) (the spec's).
    Xavier,
    /// The output layer at zero: q starts at p0.
    ZeroOutput,
}

/// A twist-learning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Contrastive twist learning (the paper's method).
    Ctl,
    /// Soft Q-learning.
    #[value(alias = "soft-q")]
    Rl,
    /// SIXO (density-ratio classification).
    Sixo,
    /// FUDGE (binary cross-entropy against phi).
    Fudge,
    /// DPG (proposal learning by forward KL).
    Dpg,
}

impl From<MethodArg> for twist_learn::Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Ctl => twist_learn::Method::Ctl,
            MethodArg::Rl => twist_learn::Method::Rl,
            MethodArg::Sixo => twist_learn::Method::Sixo,
            MethodArg::Fudge => twist_learn::Method::Fudge,
            MethodArg::Dpg => twist_learn::Method::Dpg,
        }
    }
}

/// CTL's positives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PositivesArg {
    /// The one-sample form: draws from q weighted by sigma~/q.
    Sis,
    /// Conditional SMC around the state of a particle Gibbs chain carried across updates.
    Gibbs,
    /// Exact samples of sigma (`--replay FILE`, written by `tsmc exact`) replayed, K per update
    /// drawn uniformly with replacement, weight 1/K each.
    Exact,
    /// Conditional SMC with the current twist around one exact sample of `--replay FILE` per
    /// update; its K final particles, weighted, are the positives (exact too, and they include
    /// the twisted proposal's own draws that sigma favours).
    ExactCsmc,
}

impl From<PositivesArg> for Positives {
    fn from(p: PositivesArg) -> Self {
        match p {
            PositivesArg::Sis => Positives::Sis,
            PositivesArg::Gibbs => Positives::Gibbs,
            PositivesArg::Exact => Positives::Exact,
            PositivesArg::ExactCsmc => Positives::ExactCsmc,
        }
    }
}

/// A resampling scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeArg {
    /// K independent draws from the normalised weights.
    Multinomial,
    /// One uniform, K evenly spaced points.
    Systematic,
    /// One uniform per stratum.
    Stratified,
    /// Floor(K w) copies, then multinomial on the rest.
    Residual,
}

impl From<SchemeArg> for Scheme {
    fn from(s: SchemeArg) -> Self {
        match s {
            SchemeArg::Multinomial => Scheme::Multinomial,
            SchemeArg::Systematic => Scheme::Systematic,
            SchemeArg::Stratified => Scheme::Stratified,
            SchemeArg::Residual => Scheme::Residual,
        }
    }
}

/// The largest particle count or token count any command accepts before the model's own limits
/// (context length, memory budget) are checked: sizes beyond it only overflow arithmetic.
pub const MAX_COUNT: usize = 1 << 24;

/// Checks that a count is at least `min` (and at most [`MAX_COUNT`]), naming the option.
pub fn at_least(option: &str, value: usize, min: usize) -> anyhow::Result<usize> {
    if value < min {
        anyhow::bail!("{option} must be at least {min}, found {value}");
    }
    if value > MAX_COUNT {
        anyhow::bail!("{option} must be at most {MAX_COUNT}, found {value}");
    }
    Ok(value)
}
