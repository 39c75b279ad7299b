//! A language-model wrapper that advances a progress bar at every decoding step and times the
//! model's phases, so that any driver of smc-core shows progress and where its time went without
//! knowing about terminals or clocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use smc_core::model::{DecodeSession, LanguageModel, NextToken, StepOutput};

/// Wall time spent in each phase of the model, summed over a run's sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PhaseTimes {
    /// Starting sessions: tokenised prompt through the model once (prefill).
    pub prefill_s: f64,
    /// `push`: the forward pass of the K new tokens through every layer.
    pub forward_s: f64,
    /// `next_log_probs`: the output head, log-softmax and the K x V table handed to SMC.
    pub head_s: f64,
    /// `reorder`: gathering cache rows and hidden states after resampling.
    pub reorder_s: f64,
    /// Tokens pushed (K per step).
    pub tokens: u64,
}

impl PhaseTimes {
    /// The model's share of a run's wall time.
    pub fn model_s(&self) -> f64 {
        self.prefill_s + self.forward_s + self.head_s + self.reorder_s
    }
}

/// Wraps a language model; every session it starts ticks `bar` once per pushed token and adds
/// its phases' times to one [`PhaseTimes`].
pub struct WithProgress<'m, L> {
    lm: &'m L,
    bar: ProgressBar,
    times: Arc<Mutex<PhaseTimes>>,
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
        Self {
            lm,
            bar,
            times: Arc::default(),
        }
    }

    /// Finishes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// The phases' times so far.
    pub fn times(&self) -> PhaseTimes {
        *self.times.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A session that ticks the bar and times its calls.
pub struct ProgressSession<S> {
    inner: S,
    bar: ProgressBar,
    times: Arc<Mutex<PhaseTimes>>,
}

fn add(times: &Mutex<PhaseTimes>, f: impl FnOnce(&mut PhaseTimes)) {
    f(&mut times.lock().unwrap_or_else(|e| e.into_inner()));
}

fn secs(since: Instant) -> f64 {
    Duration::as_secs_f64(&since.elapsed())
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
        let t = Instant::now();
        let inner = self.lm.start(prompt, num_particles)?;
        add(&self.times, |p| p.prefill_s += secs(t));
        Ok(ProgressSession {
            inner,
            bar: self.bar.clone(),
            times: Arc::clone(&self.times),
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
        let t = Instant::now();
        let out = self.inner.next_log_probs();
        add(&self.times, |p| p.head_s += secs(t));
        out
    }
    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        let t = Instant::now();
        self.inner.push(tokens)?;
        add(&self.times, |p| {
            p.forward_s += secs(t);
            p.tokens += tokens.len() as u64;
        });
        self.bar.inc(1);
        Ok(())
    }
    fn log_probs_normalised(&self) -> bool {
        self.inner.log_probs_normalised()
    }
    fn draws_from_p0(&self) -> bool {
        self.inner.draws_from_p0()
    }
    /// Timed as the `head` phase, like the rows it replaces.
    fn draw_from_p0(
        &mut self,
        next: &[NextToken],
        remaining: usize,
        seed: u64,
    ) -> smc_core::Result<Vec<Option<(u32, f64)>>> {
        let t = Instant::now();
        let out = self.inner.draw_from_p0(next, remaining, seed);
        add(&self.times, |p| p.head_s += secs(t));
        out
    }
    fn reserve(&mut self, tokens: usize) -> smc_core::Result<()> {
        self.inner.reserve(tokens)
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        let t = Instant::now();
        let out = self.inner.reorder(ancestors);
        add(&self.times, |p| p.reorder_s += secs(t));
        out
    }
}

/// The CPU time (user + system, all threads) this process has used, in seconds: a cost that
/// other jobs on a shared machine inflate much less than wall time. `None` where it cannot
/// be read.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a rusage into the valid, zeroed buffer it is given.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: initialised above (zeroed, then filled by a successful call).
        let u = unsafe { usage.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Some(secs(u.ru_utime) + secs(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
