//! The traits through which language models, twists and potentials plug into the SMC drivers.
//!
//! In the Feynman–Kac reading of twisted SMC, the language model with a twist is the Markov
//! kernel (the proposal M_t), and the twists and the potential make the potential functions G_t.
//! The drivers in [`crate::smc`] put them together; nothing here knows about tensors.

use crate::batch::{HiddenStates, LogTable, TokenBuffer};
use crate::error::{Result, SmcError};

/// What a decoding session returns for one step: the next-token log-probabilities of every
/// particle, and optionally the hidden states that twist heads read.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// `K x V` table of log p0(v | prompt, s_{<t}); each row is a normalised log-distribution,
    /// unless the session says otherwise ([`DecodeSession::log_probs_normalised`]).
    pub log_probs: LogTable,
    /// The base model's last hidden state at the position that predicts s_t, if the model has one.
    pub hidden: Option<HiddenStates>,
}

/// A base language model p0 that decodes K particles in a batch.
pub trait LanguageModel {
    /// Per-run decoding state of K particles (e.g. a KV cache shared over the prompt).
    type Session<'a>: DecodeSession
    where
        Self: 'a;

    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;

    /// Starts decoding `num_particles` continuations of `prompt` (the prompt is processed once).
    fn start(&self, prompt: &[u32], num_particles: usize) -> Result<Self::Session<'_>>;

    /// Teacher forcing: for K given sequences of T tokens (all the same length), the T step
    /// outputs a decoding session returns when it is fed these tokens (element t-1 predicts
    /// s_t). The default replays a session step by step; a model with a full forward pass
    /// should override it with one batched pass, which is much faster.
    fn teacher_forced(&self, prompt: &[u32], sequences: &[Vec<u32>]) -> Result<Vec<StepOutput>> {
        let horizon = sequences.first().map_or(0, Vec::len);
        if sequences.iter().any(|s| s.len() != horizon) {
            return Err(crate::error::SmcError::InvalidConfig {
                field: "teacher-forced sequences",
                expected: format!("all of length {horizon}"),
                found: "sequences of different lengths".into(),
            });
        }
        let mut session = self.start(prompt, sequences.len())?;
        session.reserve(horizon)?;
        let mut outputs = Vec::with_capacity(horizon);
        for t in 0..horizon {
            outputs.push(session.next_log_probs()?);
            let column: Vec<u32> = sequences.iter().map(|s| s[t]).collect();
            session.push(&column)?;
        }
        Ok(outputs)
    }

    /// log p0(continuation | prompt, s) for each sequence s (all the same length): a
    /// continuation potential's value, and the lookahead twist's scores. The default sums
    /// [`LanguageModel::teacher_forced`] rows; a model with a pass that computes only the
    /// continuation's rows should override it.
    fn score_continuation(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
        continuation: &[u32],
    ) -> Result<Vec<f64>> {
        let start = sequences.first().map_or(0, Vec::len);
        let seqs: Vec<Vec<u32>> = sequences
            .iter()
            .map(|s| s.iter().chain(continuation).copied().collect())
            .collect();
        let steps = self.teacher_forced(prompt, &seqs)?;
        Ok((0..seqs.len())
            .map(|r| {
                continuation
                    .iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        let row = steps[start + j].log_probs.row(r);
                        row[c as usize] - crate::logspace::log_sum_exp(row)
                    })
                    .sum()
            })
            .collect())
    }
}

/// The per-run decoding state of K particles.
pub trait DecodeSession {
    /// Number of particles K.
    fn num_particles(&self) -> usize;

    /// log p0(v | prompt, s_{<t}) for every particle and token, for the tokens pushed so far.
    fn next_log_probs(&mut self) -> Result<StepOutput>;

    /// Appends one token to every particle (`tokens.len() == K`).
    fn push(&mut self, tokens: &[u32]) -> Result<()>;

    /// Reorders the particles: particle k continues from old particle `ancestors[k]`.
    /// Implementations should copy only the rows that change.
    fn reorder(&mut self, ancestors: &[usize]) -> Result<()>;

    /// A new session of `parents.len()` particles, particle j continuing from this session's
    /// particle `parents[j]`: a lookahead scores N candidate tokens after each of K prefixes
    /// by branching K particles into K x N, without decoding the prefixes again. `None` where
    /// the session cannot copy its state (the default); callers then decode from the prompt.
    /// An empty `parents` or one out of range is an error.
    fn branch(&self, parents: &[usize]) -> Result<Option<Self>>
    where
        Self: Sized,
    {
        let _ = parents;
        Ok(None)
    }

    /// Whether every row of [`next_log_probs`](Self::next_log_probs) sums to one (up to
    /// rounding). A session that reports p0 only on a subset of the vocabulary (a serving
    /// engine's top N log-probabilities, `-inf` elsewhere) returns `false`: the base proposal
    /// then samples from the renormalised row and multiplies the incremental weight by the row's
    /// mass M_t = sum_v exp(row[v]), so that weight x proposal = p0 on the subset and the run is
    /// exact SMC for the target restricted to the subset. The twisted proposal always divides by
    /// its own normaliser, so it needs no flag. The default, `true`, keeps the base proposal's
    /// weight psi_t / psi_{t-1} of spec §3 bit for bit.
    fn log_probs_normalised(&self) -> bool {
        true
    }

    /// A hint that at most `tokens` more tokens will be pushed to every particle, given before
    /// the first push: a backend may size its caches once instead of growing them. The
    /// default ignores it; a driver that knows its horizon should give it.
    fn reserve(&mut self, tokens: usize) -> Result<()> {
        let _ = tokens;
        Ok(())
    }

    /// Whether [`draw_from_p0`](Self::draw_from_p0) draws: a serving engine samples from p0
    /// itself, over the whole vocabulary, although its rows cover only the top N. The base
    /// proposal then uses the engine's draws (q = p0 exactly, weights psi_t / psi_{t-1} as in
    /// spec §3) instead of the renormalised rows, wherever no token mask applies. The default,
    /// `false`, keeps every driver on [`next_log_probs`](Self::next_log_probs).
    fn draws_from_p0(&self) -> bool {
        false
    }

    /// The next token of every particle with its log p0, for a session that
    /// [draws from p0](Self::draws_from_p0): drawn from p0(. | prompt, s_{<t}) for
    /// [`NextToken::Draw`], the given token for [`NextToken::Given`] (a reference's), nothing
    /// for [`NextToken::Skip`] (a finished particle). `remaining` is the number of steps left,
    /// this one included: a session may draw that many tokens per particle in one round trip
    /// and hand them out step by step, as long as each handed-out token is a fresh draw from p0
    /// given the particle's current prefix (a [`push`](Self::push) of another token, or a
    /// [`reorder`](Self::reorder) that copies a particle, drops what was drawn ahead for it).
    /// `seed` makes the draws repeat on a deterministic engine. The driver still calls `push`
    /// with the tokens it keeps.
    fn draw_from_p0(
        &mut self,
        next: &[NextToken],
        remaining: usize,
        seed: u64,
    ) -> Result<Vec<Option<(u32, f64)>>> {
        let _ = (next, remaining, seed);
        Err(SmcError::config(
            "drawing from p0 in the model",
            "a session whose draws_from_p0() is true",
            "a session that only returns next-token log-probabilities",
        ))
    }
}

/// What [`DecodeSession::draw_from_p0`] does for one particle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextToken {
    /// Draw the next token from p0.
    Draw,
    /// The next token is given (a conditional SMC's reference, teacher forcing): return it
    /// with its log p0.
    Given(u32),
    /// No token (a finished particle).
    Skip,
}

/// What a twist sees at step t: the particles' tokens s_{1:t-1} and the base model's output.
#[derive(Debug, Clone, Copy)]
pub struct TwistInput<'a> {
    /// The step t (1-based): the twist gives log psi_t(s_{<t}, v) for every token v.
    pub step: usize,
    /// The number of steps T.
    pub horizon: usize,
    /// The prompt s0.
    pub prompt: &'a [u32],
    /// The particles' tokens s_{1:t-1}.
    pub prefixes: &'a TokenBuffer,
    /// The base model's hidden states at the position that predicts s_t, if available.
    pub hidden: Option<&'a HiddenStates>,
}

/// A twist: log psi_t(s_{1:t-1}, v) for every vocabulary token v, for a batch of particles.
///
/// It is queried for t = 1..=T; psi_T approximates phi and is used by the twisted proposal
/// at the last step (the final target uses phi itself).
pub trait Twist {
    /// A short name for error messages and reports.
    fn name(&self) -> &str {
        "twist"
    }

    /// `K x V` table of log psi_t(s_{<t}, v). Values must be finite or `-inf`.
    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable>;
}

/// A potential phi >= 0 on complete outputs, in log space.
pub trait Potential {
    /// A short name for error messages and reports.
    fn name(&self) -> &str {
        "potential"
    }

    /// log phi(s_{1:T}) for each particle's complete output (`-inf` allowed, NaN is an error).
    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>>;
}

/// `potential.log_phi` with its contract checked: one value per particle of `sequences`, none
/// NaN or +inf (`-inf`, phi = 0, is allowed). `step` is the step reported in errors (T).
pub fn checked_log_phi(
    potential: &dyn Potential,
    prompt: &[u32],
    sequences: &TokenBuffer,
    step: usize,
) -> Result<Vec<f64>> {
    let log_phi = potential.log_phi(prompt, sequences)?;
    let k = sequences.num_particles();
    if log_phi.len() != k {
        return Err(SmcError::Shape {
            component: potential.name().to_string(),
            step,
            expected: k,
            found: log_phi.len(),
        });
    }
    if let Some(p) = log_phi
        .iter()
        .position(|x| x.is_nan() || *x == f64::INFINITY)
    {
        return Err(SmcError::InvalidValue {
            component: potential.name().to_string(),
            step,
            particle: p,
            value: log_phi[p],
        });
    }
    Ok(log_phi)
}

impl<T: Twist + ?Sized> Twist for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        (**self).log_psi(input)
    }
}

impl<P: Potential + ?Sized> Potential for &P {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        (**self).log_phi(prompt, sequences)
    }
}

/// The potential phi = 1 (the target is p0 itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitPotential;

impl Potential for UnitPotential {
    fn name(&self) -> &str {
        "unit potential"
    }
    fn log_phi(&self, _prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        Ok(vec![0.0; sequences.num_particles()])
    }
}

/// A potential from a closure over one sequence: `log phi(prompt, s)`.
pub struct FnPotential<F> {
    name: String,
    f: F,
}

impl<F: Fn(&[u32], &[u32]) -> f64> FnPotential<F> {
    /// Wraps `f(prompt, sequence) -> log phi`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

impl<F: Fn(&[u32], &[u32]) -> f64> Potential for FnPotential<F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        Ok(sequences.iter().map(|s| (self.f)(prompt, s)).collect())
    }
}
