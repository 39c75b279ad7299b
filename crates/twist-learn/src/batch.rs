//! A training batch: K sampled sequences with, for every step t, the base model's and the
//! twist's rows over the vocabulary at the sequence's prefix, from one teacher-forced pass; and
//! the trait of twists that learn from a batch (the two refer to each other, so they share
//! this module).

use smc_core::batch::{HiddenStates, LogTable, TokenBuffer};
use smc_core::logspace::log_sum_exp_sum;
use smc_core::model::{LanguageModel, Twist, TwistInput};
use smc_core::{Result, SmcError};

pub use crate::method::Parameterization;

/// A twist with trainable parameters. `raw` gives the outputs r_t(s_{<t}, v) whose image under
/// the parameterisation is log psi; `apply_gradient` takes d loss / d r for every step of a
/// batch (the batch the raw outputs came from) and updates the parameters.
pub trait TrainableTwist: Twist {
    /// How raw outputs map to log psi.
    fn parameterization(&self) -> Parameterization;

    /// K x V raw outputs at step t.
    fn raw(&self, input: &TwistInput<'_>) -> Result<LogTable>;

    /// One optimiser step with gradients `grads[t-1]` (K x V) of the loss w.r.t. the raw
    /// outputs of `batch` at step t.
    fn apply_gradient(
        &mut self,
        prompt: &[u32],
        batch: &Batch,
        grads: &[LogTable],
        learning_rate: f64,
    ) -> Result<()>;
}

/// What the loss functions see of K sequences of T tokens.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The sequences s_{1:T}.
    pub tokens: TokenBuffer,
    /// Per step t (index t-1): K x V log p0(v | prompt, s_{<t}).
    pub log_p0: Vec<LogTable>,
    /// Per step t: K x V raw twist outputs r_t(s_{<t}, v).
    pub raw: Vec<LogTable>,
    /// Per step t: the base model's hidden states the twist read (if any).
    pub hidden: Vec<Option<HiddenStates>>,
    /// log phi(s_{1:T}) per sequence.
    pub log_phi: Vec<f64>,
    /// How raw outputs map to log psi.
    pub param: Parameterization,
}

impl Batch {
    /// Number of sequences K.
    pub fn num_sequences(&self) -> usize {
        self.tokens.num_particles()
    }

    /// Number of steps T.
    pub fn horizon(&self) -> usize {
        self.log_p0.len()
    }

    /// Token s_t of sequence k (t 1-based).
    pub fn token(&self, k: usize, t: usize) -> usize {
        self.tokens.row(k)[t - 1] as usize
    }

    /// log psi_t(s^k_{1:t}) at the sampled token.
    pub fn log_psi_at(&self, k: usize, t: usize) -> f64 {
        self.param.log_psi(self.raw[t - 1].row(k)[self.token(k, t)])
    }

    /// log psi_t(s^k_{<t}, v) for every v.
    pub fn log_psi_row(&self, k: usize, t: usize) -> Vec<f64> {
        self.raw[t - 1]
            .row(k)
            .iter()
            .map(|&r| self.param.log_psi(r))
            .collect()
    }

    /// log of the twisted proposal's normaliser Z_t = sum_v p0(v) psi_t(v) at s^k_{<t}.
    pub fn log_z_t(&self, k: usize, t: usize) -> f64 {
        log_sum_exp_sum(self.log_p0[t - 1].row(k), &self.log_psi_row(k, t))
    }

    /// The prefixes s_{1:t-1} of every sequence as a token buffer.
    pub fn prefixes(&self, t: usize) -> TokenBuffer {
        let rows: Vec<Vec<u32>> = self.tokens.iter().map(|r| r[..t - 1].to_vec()).collect();
        if t == 1 {
            TokenBuffer::new(rows.len(), 0)
        } else {
            TokenBuffer::from_rows(&rows)
        }
    }

    /// Builds a batch for given sequences with one teacher-forced pass of the base model,
    /// evaluating the twist's raw outputs and the potential.
    pub fn teacher_forced<L: LanguageModel, W: TrainableTwist + ?Sized>(
        lm: &L,
        twist: &W,
        potential: &dyn smc_core::model::Potential,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> Result<Self> {
        let k = sequences.len();
        let horizon = sequences.first().map_or(0, Vec::len);
        if k == 0 || horizon == 0 || sequences.iter().any(|s| s.len() != horizon) {
            return Err(SmcError::InvalidConfig {
                field: "training sequences",
                expected: "at least one, all of the same positive length".into(),
                found: format!("{k} sequences"),
            });
        }
        let tokens = TokenBuffer::from_rows(sequences);
        let outputs = lm.teacher_forced(prompt, sequences)?;
        let (mut log_p0, mut raw, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
        let mut prefixes = TokenBuffer::new(k, horizon);
        for (t, out) in (1..=horizon).zip(outputs) {
            let r = twist.raw(&TwistInput {
                step: t,
                horizon,
                prompt,
                prefixes: &prefixes,
                hidden: out.hidden.as_ref(),
            })?;
            log_p0.push(out.log_probs);
            raw.push(r);
            hidden.push(out.hidden);
            let column: Vec<u32> = sequences.iter().map(|s| s[t - 1]).collect();
            prefixes.push(&column);
        }
        let log_phi = potential.log_phi(prompt, &tokens)?;
        Ok(Self {
            tokens,
            log_p0,
            raw,
            hidden,
            log_phi,
            param: twist.parameterization(),
        })
    }
}
