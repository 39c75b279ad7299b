//! A language-model wrapper that advances a progress bar at every decoding step, so that any
//! driver of smc-core shows progress without knowing about terminals.

use indicatif::{ProgressBar, ProgressStyle};
use smc_core::model::{DecodeSession, LanguageModel, StepOutput};

/// Wraps a language model; every session it starts ticks `bar` once per pushed token.
pub struct WithProgress<'m, L> {
    lm: &'m L,
    bar: ProgressBar,
}

impl<'m, L> WithProgress<'m, L> {
    /// A bar of `steps` steps titled `message` (hidden when stderr is not a terminal).
    pub fn new(lm: &'m L, steps: u64, message: &str) -> Self {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} tokens, {elapsed} elapsed, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        Self { lm, bar }
    }

    /// Finishes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A session that ticks the bar.
pub struct ProgressSession<S> {
    inner: S,
    bar: ProgressBar,
}

impl<L: LanguageModel> LanguageModel for WithProgress<'_, L> {
    type Session<'a>
        = ProgressSession<L::Session<'a>>
    where
        Self: 'a;

    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<Self::Session<'_>> {
        self.bar.reset();
        Ok(ProgressSession {
            inner: self.lm.start(prompt, num_particles)?,
            bar: self.bar.clone(),
        })
    }

    fn teacher_forced(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> smc_core::Result<Vec<smc_core::model::StepOutput>> {
        self.lm.teacher_forced(prompt, sequences)
    }
}

impl<S: DecodeSession> DecodeSession for ProgressSession<S> {
    fn num_particles(&self) -> usize {
        self.inner.num_particles()
    }
    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        self.inner.next_log_probs()
    }
    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        self.inner.push(tokens)?;
        self.bar.inc(1);
        Ok(())
    }
    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        self.inner.reorder(ancestors)
    }
}
