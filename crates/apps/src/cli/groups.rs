//! Argument groups shared by several commands (flattened into each), and the typed choices of
//! the command line. Each group turns into the settings type its commands take.

use clap::{Args, ValueEnum};

use smc_core::resampling::Scheme;

pub use super::head::HeadArgs;
use crate::setup::ModelChoice;
use crate::training::Positives;

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
