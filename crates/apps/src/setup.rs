//! Set-up shared by the commands that run a language model: the model, the prompt and a saved
//! twist head. `tsmc sample` may also run on a served model ([`load_any`]); the other commands
//! run the model here.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lm_burn::heads::TwistHead;
use lm_burn::{Backend, BurnLm, Device, ModelTokenizer};
use smc_bounds::Sampler;
use smc_core::feynman_kac::Resampling;
use smc_core::model::{Potential, Twist};
use smc_core::smc::Proposal;

use crate::model::{Model, ServedModel, TokenizerCheck, check_tokenizer, is_served};

/// Which model to run, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// `default`, a Hugging Face model directory or a .gguf file.
    pub model: String,
    /// The compute backend.
    pub backend: Backend,
    /// The most memory a run may need, in bytes (`None`: the memory available now).
    pub memory_budget: Option<u64>,
    /// How decoding steps read the weights.
    pub weights: lm_burn::WeightFormat,
}

/// A loaded model with its tokenised prompt.
pub struct Loaded {
    /// The model.
    pub lm: BurnLm,
    /// The prompt's token ids (never empty).
    pub prompt: Vec<u32>,
    /// The device the model lives on.
    pub device: Device,
}

/// Loads the chosen model and tokenises a non-empty `prompt`.
pub fn load_model_and_prompt(choice: &ModelChoice, prompt: &str) -> Result<Loaded> {
    if prompt.is_empty() {
        bail!("--prompt is empty: SMC needs a prompt to condition on");
    }
    if is_served(&choice.model) {
        bail!(
            "--model {}: this command runs the model here (it needs its forward pass, or \
             samples and weights that assume complete next-token distributions); a served \
             model works with tsmc sample, exact and bounds",
            choice.model
        );
    }
    let device = choice.backend.device().map_err(anyhow::Error::msg)?;
    let lm = BurnLm::load(&choice.model, &device)
        .and_then(|lm| lm.with_weight_format(choice.weights))
        .with_context(|| format!("loading model {:?}", choice.model))?;
    let ids = lm.tokenizer()?.encode(prompt)?;
    if ids.is_empty() {
        bail!("the prompt {prompt:?} has no tokens");
    }
    Ok(Loaded {
        lm,
        prompt: ids,
        device,
    })
}

impl Loaded {
    /// Checks, before anything is allocated, that `particles` sequences of `tokens` generated
    /// tokens fit the model's context and the memory budget: the keys and values (the prompt's
    /// once, the particles' with room for the cache to double) and the K x V tables of a step (log p0, twist,
    /// proposal in f64, logits in f32). The error gives the estimate and what to change.
    pub fn check_size(&self, choice: &ModelChoice, particles: usize, tokens: usize) -> Result<()> {
        check_local_size(
            &self.lm,
            self.prompt.len(),
            choice.memory_budget,
            particles,
            tokens,
        )
    }
}

/// [`Loaded::check_size`] for a model run here.
fn check_local_size(
    lm: &BurnLm,
    prompt_len: usize,
    memory_budget: Option<u64>,
    particles: usize,
    tokens: usize,
) -> Result<()> {
    lm.check_horizon(prompt_len, tokens)?;
    let d = lm.dims();
    // Per position: keys and values of every layer in f32. The prompt's are stored once for
    // all particles; each particle's own positions may take twice their size while the cache
    // doubles.
    let per_position = (d.layers * 2 * d.kv_heads * d.head_dim * 4) as f64;
    let kv = per_position * (prompt_len as f64 + 2.0 * particles as f64 * tokens as f64);
    let tables = particles as f64 * d.vocab as f64 * (3.0 * 8.0 + 2.0 * 4.0);
    let need = kv + tables;
    let (budget, source) = budget(memory_budget);
    if need > budget {
        bail!(
            "{particles} particles of {tokens} tokens need about {:.1} GiB (keys and values {:.1} GiB, K x V tables {:.1} GiB) but {source} is {:.1} GiB: lower the particle count or raise --memory-budget (GiB)",
            need / GIB,
            kv / GIB,
            tables / GIB,
            budget / GIB
        );
    }
    Ok(())
}

fn budget(memory_budget: Option<u64>) -> (f64, &'static str) {
    match memory_budget {
        Some(b) => (b as f64, "--memory-budget"),
        None => (available_memory() as f64, "the memory available now"),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Where `tsmc sample` finds its model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A model run here.
    Local(ModelChoice),
    /// A model served over HTTP.
    Served(ServedModel),
}

/// A model of either backend with its tokenizer and the tokenised prompt.
pub struct LoadedAny {
    /// The model.
    pub lm: Model,
    /// Its tokenizer, vocabulary size and end tokens.
    pub text: ModelTokenizer,
    /// The prompt's token ids (never empty).
    pub prompt: Vec<u32>,
    /// The device of a local model.
    pub device: Option<Device>,
    /// How the local tokenizer of a served model was checked against the server's.
    pub tokenizer_check: Option<TokenizerCheck>,
    memory_budget: Option<u64>,
}

/// Loads the model of `source`: a local one as [`load_model_and_prompt`] does; a served one
/// by loading its tokenizer here (not the weights), connecting to every server and checking
/// that the tokenizer gives the server's ids on the prompt and a few probe texts.
pub fn load_any(source: &ModelSource, prompt: &str) -> Result<LoadedAny> {
    match source {
        ModelSource::Local(choice) => {
            let Loaded { lm, prompt, device } = load_model_and_prompt(choice, prompt)?;
            Ok(LoadedAny {
                text: ModelTokenizer::of(&lm)?,
                lm: Model::Local(Box::new(lm)),
                prompt,
                device: Some(device),
                tokenizer_check: None,
                memory_budget: choice.memory_budget,
            })
        }
        ModelSource::Served(served) => {
            if prompt.is_empty() {
                bail!("--prompt is empty: SMC needs a prompt to condition on");
            }
            let text = ModelTokenizer::load(&served.tokenizer)
                .with_context(|| format!("loading the tokenizer {:?}", served.tokenizer))?;
            let lm = served.connect(&text)?;
            let check = check_tokenizer(&lm, &text.tokenizer, prompt)?;
            if check == TokenizerCheck::Unchecked {
                eprintln!(
                    "warning: the server has no /tokenize endpoint: the tokenizer {} is not checked against it",
                    text.name
                );
            }
            let ids = text.tokenizer.encode(prompt)?;
            if ids.is_empty() {
                bail!("the prompt {prompt:?} has no tokens");
            }
            Ok(LoadedAny {
                lm: Model::Served(lm),
                text,
                prompt: ids,
                device: None,
                tokenizer_check: Some(check),
                memory_budget: served.memory_budget,
            })
        }
    }
}

impl LoadedAny {
    /// Checks, before anything is allocated, that `particles` sequences of `tokens` generated
    /// tokens fit: for a local model as [`Loaded::check_size`]; for a served one, the K x V
    /// tables of a step held here (the server checks its own context length).
    pub fn check_size(&self, particles: usize, tokens: usize) -> Result<()> {
        match &self.lm {
            Model::Local(lm) => {
                check_local_size(lm, self.prompt.len(), self.memory_budget, particles, tokens)
            }
            Model::Served(_) => {
                let need = particles as f64 * self.text.vocab as f64 * 3.0 * 8.0;
                let (budget, source) = budget(self.memory_budget);
                if need > budget {
                    bail!(
                        "{particles} particles need about {:.1} GiB of K x V tables here but {source} is {:.1} GiB: lower the particle count or raise --memory-budget (GiB)",
                        need / GIB,
                        budget / GIB
                    );
                }
                Ok(())
            }
        }
    }
}

/// Checks, before anything is allocated, that a fit to `samples` exact samples of `tokens`
/// tokens (`--fit-epochs`) fits the memory budget: it keeps every sample's log p0 rows and
/// hidden states in f32 (T x (V + d) each), and its teacher-forced passes hold 64 samples'
/// rows in f64 at a time. The error gives the estimate and what to change.
pub fn check_fit_size(
    lm: &BurnLm,
    choice: &ModelChoice,
    samples: usize,
    tokens: usize,
) -> Result<()> {
    let d = lm.dims();
    let kept = samples as f64 * tokens as f64 * (d.vocab + d.hidden) as f64 * 4.0;
    let pass = 64.0 * tokens as f64 * d.vocab as f64 * 8.0;
    let need = kept + pass;
    let (budget, source) = budget(choice.memory_budget);
    if need > budget {
        bail!(
            "--fit-epochs keeps {samples} exact samples' log p0 rows and hidden states in memory, about {:.1} GiB, but {source} is {:.1} GiB: replay fewer samples or raise --memory-budget (GiB)",
            need / GIB,
            budget / GIB
        );
    }
    Ok(())
}

/// MemAvailable from /proc/meminfo, or 16 GiB where it cannot be read.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(16 << 30, |kib| kib.saturating_mul(1024))
}

/// Loads a twist head saved by `tsmc train` for `lm`; a conditional (infilling) head is
/// conditioned on `conditioning` (the text of an `infilling:TEXT` potential), which it needs.
pub fn load_twist(
    path: &Path,
    lm: &BurnLm,
    device: &Device,
    conditioning: Option<&str>,
) -> Result<TwistHead> {
    let (mut head, _) = TwistHead::load(path, device)
        .with_context(|| format!("loading twist {}", path.display()))?;
    head.attach_base_model(lm)
        .with_context(|| format!("loading twist {}", path.display()))?;
    if head.config.conditioning.is_some() {
        let text = conditioning.with_context(|| {
            format!(
                "{} is a conditional (infilling) twist: use --potential infilling:TEXT",
                path.display()
            )
        })?;
        head.set_conditioning(lm, &lm.tokenizer()?.encode(text)?)?;
    }
    if head.config.vocab_size != lm.dims().vocab {
        bail!(
            "twist {} has {} outputs, the model's vocabulary has {}",
            path.display(),
            head.config.vocab_size,
            lm.dims().vocab
        );
    }
    Ok(head)
}

/// The sampler the commands measure: p0 as the proposal without a twist, the twisted proposal
/// with one, and the default resampling (multinomial, adaptive).
pub fn sampler<'a>(
    lm: &'a BurnLm,
    prompt: &'a [u32],
    horizon: usize,
    potential: &'a dyn Potential,
    twist: Option<&'a dyn Twist>,
) -> Sampler<'a, BurnLm> {
    Sampler {
        lm,
        prompt,
        horizon,
        potential,
        twist,
        proposal: if twist.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: Resampling::default(),
    }
}
