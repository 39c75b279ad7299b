//! Batched decoding of K particles after a shared prompt: the prompt is prefilled once with
//! batch 1 and its keys/values shared by every particle; each step is one forward pass for the
//! K new tokens; resampling reorders the per-particle cache rows in place.

use burn::tensor::{Int, Tensor, TensorData};
use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::{DecodeSession, StepOutput};

use super::{BurnLm, to_vec};
use crate::cache::{ParticleCache, PromptCache};
use crate::error::{LmError, Result};
use crate::profile::{Timer, time};

/// Positions the particle cache holds before it first doubles.
const INITIAL_CACHE_CAPACITY: usize = 32;

/// Batched decoding of K particles after a shared prompt.
pub struct BurnSession<'a> {
    lm: &'a BurnLm,
    prompt: PromptCache,
    cache: ParticleCache,
    particles: usize,
    /// Absolute position of the next token to be pushed.
    pos: usize,
    /// Final-norm hidden states [K, d] at the position that predicts the next token.
    hidden: Tensor<2>,
}

impl<'a> BurnSession<'a> {
    /// Prefills `prompt` and prepares `num_particles` particles that all start right after it.
    pub(super) fn start(lm: &'a BurnLm, prompt: &[u32], num_particles: usize) -> Result<Self> {
        if prompt.is_empty() {
            return Err(LmError::EmptySequence {
                what: "the prompt".into(),
            });
        }
        let p = prompt.len();
        lm.dims()
            .check_context(p, || format!("the prompt ({p} tokens)"))?;
        let model = &lm.model;
        let (h, layers) = time("prefill", || crate::cpu::in_pool(|| model.prefill(prompt)))?;
        let d = h.dims()[2];
        let last = h.slice([0..1, p - 1..p, 0..d]).reshape([1, d]);
        let dims = lm.dims();
        Ok(Self {
            lm,
            prompt: PromptCache { layers, len: p },
            cache: ParticleCache::new(
                dims.layers,
                num_particles,
                dims.kv_heads,
                dims.head_dim,
                INITIAL_CACHE_CAPACITY,
                &lm.device,
            ),
            particles: num_particles,
            pos: p,
            hidden: last.repeat_dim(0, num_particles),
        })
    }
}

impl BurnSession<'_> {
    /// Checks that every ancestor or parent index names one of the session's particles.
    fn check_ancestors(&self, ancestors: &[usize]) -> Result<()> {
        match ancestors.iter().find(|&&a| a >= self.particles) {
            Some(&ancestor) => Err(LmError::AncestorOutOfRange {
                ancestor,
                particles: self.particles,
            }),
            None => Ok(()),
        }
    }

    /// Number of generated tokens so far.
    pub fn generated(&self) -> usize {
        self.cache.len()
    }
}

impl DecodeSession for BurnSession<'_> {
    fn num_particles(&self) -> usize {
        self.particles
    }

    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        let v = self.lm.dims().vocab;
        let (model, hidden) = (&self.lm.model, self.hidden.clone());
        let logits = time("head_gemm", || {
            crate::cpu::in_pool(|| model.decode_logits(hidden))
        });
        let logits = time("read_back", || to_vec(logits, "logits"))?;
        let generated = self.cache.len();
        let data = time("log_softmax", || crate::cpu::log_softmax_rows(&logits, v)).map_err(
            |(k, value)| LmError::NonFinite {
                what: format!("a logit of particle {k} after {generated} generated tokens"),
                value,
            },
        )?;
        let hidden = time("read_back", || to_vec(self.hidden.clone(), "hidden states"))?;
        let dim = self.hidden.dims()[1];
        Ok(StepOutput {
            log_probs: LogTable::from_vec(self.particles, v, data).expect("shape"),
            hidden: Some(HiddenStates {
                rows: self.particles,
                dim,
                data: hidden,
            }),
        })
    }

    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        if tokens.len() != self.particles {
            return Err(LmError::LengthMismatch {
                what: "push: tokens (one per particle)".into(),
                expected: self.particles,
                found: tokens.len(),
            }
            .into());
        }
        let (prompt_len, generated) = (self.prompt.len, self.cache.len());
        self.lm.dims().check_context(self.pos + 1, || {
            format!(
                "push: generated token {} after the {prompt_len}-token prompt",
                generated + 1
            )
        })?;
        let (model, pos, prompt, cache) = (&self.lm.model, self.pos, &self.prompt, &mut self.cache);
        self.hidden = crate::cpu::in_pool(|| model.decode(tokens, pos, Some(prompt), cache))?;
        self.pos += 1;
        Ok(())
    }

    fn reserve(&mut self, tokens: usize) -> smc_core::Result<()> {
        self.cache.reserve(tokens);
        Ok(())
    }

    /// The prompt's cache is shared; the generated tokens' rows and hidden states are copied.
    fn branch(&self, parents: &[usize]) -> smc_core::Result<Option<Self>> {
        if parents.is_empty() {
            return Err(LmError::EmptySequence {
                what: "branch: parents".into(),
            }
            .into());
        }
        self.check_ancestors(parents)?;
        let _timer = Timer::start("branch");
        let n = parents.len();
        let idx: Vec<i64> = parents.iter().map(|&a| a as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.lm.device);
        Ok(Some(Self {
            lm: self.lm,
            prompt: self.prompt.clone(),
            cache: self.cache.branch(&idx),
            particles: n,
            pos: self.pos,
            hidden: self.hidden.clone().select(0, idx),
        }))
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        if ancestors.len() != self.particles {
            return Err(LmError::LengthMismatch {
                what: "reorder: ancestors (one per particle)".into(),
                expected: self.particles,
                found: ancestors.len(),
            }
            .into());
        }
        self.check_ancestors(ancestors)?;
        if ancestors.iter().enumerate().all(|(k, &a)| a == k) {
            return Ok(());
        }
        let _timer = Timer::start("reorder");
        self.cache.reorder(ancestors);
        let idx: Vec<i64> = ancestors.iter().map(|&a| a as i64).collect();
        let idx =
            Tensor::<1, Int>::from_data(TensorData::new(idx, [self.particles]), &self.lm.device);
        self.hidden = self.hidden.clone().select(0, idx);
        Ok(())
    }
}
