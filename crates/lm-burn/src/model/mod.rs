//! A loaded language model of any supported architecture ([`BurnLm`]) and its implementation
//! of [`smc_core::model::LanguageModel`].
//!
//! The work is split by job: `load` finds and loads a model (`default`, a Hugging Face
//! directory, a `.gguf` file), `score` runs full forward passes (logits, batched scoring,
//! teacher forcing) and `session` decodes K particles step by step over a shared prompt.
//! None of them knows which architecture it drives: they go through [`CausalLm`].

mod load;
mod score;
mod session;

use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use smc_core::model::{LanguageModel, StepOutput};

use crate::arch::CausalLm;
pub use crate::arch::{Dims, WeightFormat};
use crate::error::{LmError, Result};
use crate::tokenizer::Tokenizer;
pub use session::BurnSession;

/// A transformer language model on burn, with its tokenizer when one was found.
#[derive(Debug, Clone)]
pub struct BurnLm {
    // Shared, not copied, by clones: the weights are read-only once loaded.
    model: Arc<dyn CausalLm>,
    tokenizer: Option<Tokenizer>,
    device: Device,
    name: String,
    eos_tokens: Vec<u32>,
    weights: WeightFormat,
}

impl BurnLm {
    /// Wraps a loaded architecture (see [`crate::registry::load`]) and its tokenizer, after
    /// checking that every id the tokenizer produces is in the model's vocabulary
    /// ([`Tokenizer::check_model_vocab`]).
    pub fn new(
        model: Box<dyn CausalLm>,
        tokenizer: Option<Tokenizer>,
        device: &Device,
        name: impl Into<String>,
    ) -> Result<Self> {
        if let Some(t) = &tokenizer {
            t.check_model_vocab(model.dims().vocab)?;
        }
        Ok(Self {
            model: model.into(),
            tokenizer,
            device: device.clone(),
            name: name.into(),
            eos_tokens: Vec::new(),
            weights: WeightFormat::F32,
        })
    }

    /// The same model with these end-of-sequence token ids (those of the vocabulary are kept,
    /// duplicates removed).
    pub fn with_eos_tokens(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        let vocab = self.dims().vocab;
        let mut ids: Vec<u32> = ids.into_iter().filter(|&i| (i as usize) < vocab).collect();
        ids.sort_unstable();
        ids.dedup();
        self.eos_tokens = ids;
        self
    }

    /// The end-of-sequence token ids the model's files declare (GGUF
    /// `tokenizer.ggml.eos_token_id` and `eot_token_id`; config.json `eos_token_id`, a number or
    /// a list); empty when they declare none.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos_tokens
    }

    /// The same model holding its matrices as `format` for decoding ([`WeightFormat`]): an
    /// error, naming the reason, when the architecture or the device cannot, or when the
    /// weights are already shared with a clone of this model.
    pub fn with_weight_format(mut self, format: WeightFormat) -> Result<Self> {
        let model = Arc::get_mut(&mut self.model).ok_or_else(|| LmError::WeightFormat {
            format: format.to_string(),
            reason: "the weights are shared with a clone of this model: set the format first"
                .into(),
        })?;
        model.set_weight_format(format)?;
        self.weights = format;
        Ok(self)
    }

    /// How decoding steps read the weights.
    pub fn weight_format(&self) -> WeightFormat {
        self.weights
    }

    /// The model's name (its path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture.
    pub fn architecture(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    /// The output head's matrix W [d, V] (logits = h W; the tied token embeddings transposed
    /// for SmolLM2 and GPT-2), shared with the model, never copied.
    pub fn output_head(&self) -> Tensor<2> {
        self.model.output_head()
    }

    /// Sizes.
    pub fn dims(&self) -> Dims {
        self.model.dims()
    }

    /// The context length: every sequence the model reads (prompt plus generated tokens) must
    /// fit in positions 0..context.
    pub fn context_length(&self) -> usize {
        self.dims().context
    }

    /// Checks, before any computation, that a prompt of `prompt_len` tokens followed by
    /// `horizon` decoded tokens (each pushed into a session) fits the context length (O(1)).
    pub fn check_horizon(&self, prompt_len: usize, horizon: usize) -> Result<()> {
        let len = prompt_len.saturating_add(horizon);
        self.dims().check_context(len, || {
            format!("a prompt of {prompt_len} tokens followed by {horizon} generated tokens")
        })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tokenizer, or an error if the model came without one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| LmError::NoTokenizer {
            model: self.name.clone(),
        })
    }
}

impl LanguageModel for BurnLm {
    type Session<'a> = BurnSession<'a>;

    fn vocab_size(&self) -> usize {
        self.dims().vocab
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<BurnSession<'_>> {
        Ok(BurnSession::start(self, prompt, num_particles)?)
    }

    fn teacher_forced(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> smc_core::Result<Vec<StepOutput>> {
        Ok(self.teacher_forced_batched(prompt, sequences)?)
    }

    /// One batched pass whose logits are taken at the continuation's positions only.
    fn score_continuation(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
        continuation: &[u32],
    ) -> smc_core::Result<Vec<f64>> {
        let prefixes: Vec<Vec<u32>> = sequences
            .iter()
            .map(|s| prompt.iter().chain(s).copied().collect())
            .collect();
        let conts = vec![continuation.to_vec(); prefixes.len()];
        Ok(self.score(&prefixes, &conts)?)
    }
}

/// Appends the log-softmax of one row of logits, in f64 (one pass for the extremes, one for the
/// sum, one to write). A row holding a NaN or infinite logit (the activations overflowed) is
/// refused with that value, before anything is appended: NaN log-probabilities would otherwise
/// pass silently into the weights of every particle.
fn push_log_softmax(row: &[f32], out: &mut Vec<f64>) -> std::result::Result<(), f64> {
    let (lo, hi) = row
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let max = hi as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    // min/max skip NaN, but a NaN makes the sum NaN; an infinite logit makes lo or hi infinite.
    if !(lo.is_finite() && hi.is_finite() && lse.is_finite()) {
        return Err(first_non_finite(row).unwrap_or(lse));
    }
    out.extend(row.iter().map(|&x| x as f64 - lse));
    Ok(())
}

/// The first NaN or infinite value of `values`.
fn first_non_finite(values: &[f32]) -> Option<f64> {
    values
        .iter()
        .find(|x| !x.is_finite())
        .map(|&x| f64::from(x))
}

/// Reads a tensor back from the device as f32 values, row-major; `what` names it in errors.
fn to_vec<const D: usize>(t: Tensor<D>, what: &'static str) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>().map_err(LmError::read_back(what))
}
