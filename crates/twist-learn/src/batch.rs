//! A training batch: K sampled sequences with, for every step t, the base model's and the
//! twist's rows over the vocabulary at the sequence's prefix, from one teacher-forced pass; and
//! the trait of twists that learn from a batch (the two refer to each other, so they share
//! this module).

use smc_core::batch::{HiddenStates, LogTable, TokenBuffer};
use smc_core::logspace::log_sum_exp_sum;
use smc_core::model::{LanguageModel, StepOutput, Twist, TwistInput};
use smc_core::{Result, SmcError};

pub use crate::method::Parameterization;

/// The common length T of training sequences: at least one sequence, all of the same positive
/// length.
fn check_sequences(sequences: &[Vec<u32>]) -> Result<usize> {
    let horizon = sequences.first().map_or(0, Vec::len);
    if horizon == 0 || sequences.iter().any(|s| s.len() != horizon) {
        return Err(SmcError::InvalidConfig {
            field: "training sequences",
            expected: "at least one, all of the same positive length".into(),
            found: format!("{} sequences", sequences.len()),
        });
    }
    Ok(horizon)
}

/// A twist with trainable parameters. `raw` gives the outputs r_t(s_{<t}, v) whose image under
/// the parameterisation is log psi (`log_psi` must equal `parameterization().apply(raw)`: a
/// recorded sampling run keeps the raw outputs it drew with); `apply_gradient` takes d loss / d r for every step of a
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
        let (p0, raw) = (self.log_p0[t - 1].row(k), self.raw[t - 1].row(k));
        match self.param {
            // No copy of the row: this runs K T times per update over V entries.
            Parameterization::Identity => log_sum_exp_sum(p0, raw),
            Parameterization::LogSigmoid => log_sum_exp_sum(p0, &self.log_psi_row(k, t)),
        }
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

    /// Builds a batch from the steps a sampling run recorded ([`crate::record::Recorder`]) for
    /// its final `sequences`, with their `log_phi` as the run computed it: no pass of the base
    /// model and no call of the potential. Steps without the twist's raw outputs (drawn from
    /// p0, or from a teacher-forced pass) get them from the stored hidden states.
    pub fn from_recorded<W: TrainableTwist + ?Sized>(
        twist: &W,
        prompt: &[u32],
        sequences: &[Vec<u32>],
        steps: Vec<RecordedStep>,
        log_phi: Vec<f64>,
    ) -> Result<Self> {
        let k = sequences.len();
        let horizon = check_sequences(sequences)?;
        if steps.len() != horizon || steps.iter().any(|s| s.rows() != k) || log_phi.len() != k {
            return Err(SmcError::InvalidConfig {
                field: "recorded steps",
                expected: format!("{horizon} steps of {k} rows and {k} values of log phi"),
                found: format!(
                    "{} steps of {:?} rows and {} values",
                    steps.len(),
                    steps.iter().map(RecordedStep::rows).collect::<Vec<_>>(),
                    log_phi.len()
                ),
            });
        }
        let tokens = TokenBuffer::from_rows(sequences);
        let (mut log_p0, mut raw, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
        let mut prefixes = TokenBuffer::new(k, horizon);
        for (t, step) in (1..=horizon).zip(steps) {
            let r = match step.raw {
                Some(r) => r,
                None => twist.raw(&TwistInput {
                    step: t,
                    horizon,
                    prompt,
                    prefixes: &prefixes,
                    hidden: step.output.hidden.as_ref(),
                })?,
            };
            log_p0.push(step.output.log_probs);
            raw.push(r);
            hidden.push(step.output.hidden);
            let column: Vec<u32> = sequences.iter().map(|s| s[t - 1]).collect();
            prefixes.push(&column);
        }
        Ok(Self {
            tokens,
            log_p0,
            raw,
            hidden,
            log_phi,
            param: twist.parameterization(),
        })
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
        let horizon = check_sequences(sequences)?;
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

/// One step of a run as the loss needs it: the base model's output at the prefix, and the
/// twist's raw outputs there if the twist was evaluated (drawing from p0 does not evaluate it).
#[derive(Debug, Clone)]
pub struct RecordedStep {
    /// log p0 rows and hidden states.
    pub output: StepOutput,
    /// The twist's raw outputs r_t(s_{<t}, v).
    pub raw: Option<LogTable>,
}

impl RecordedStep {
    /// Steps from a teacher-forced pass ([`LanguageModel::teacher_forced`]): the states of
    /// sequences that were not sampled (exact samples), computed once and reusable across
    /// updates, since the base model is frozen.
    pub fn from_outputs(outputs: Vec<StepOutput>) -> Vec<Self> {
        outputs
            .into_iter()
            .map(|output| Self { output, raw: None })
            .collect()
    }

    /// The rows of `self` then those of `other` (a batch of two runs' sequences); the raw
    /// outputs and hidden states are kept where both have them.
    pub fn stack(self, other: Self) -> Result<Self> {
        Ok(Self {
            output: StepOutput {
                log_probs: concat(self.output.log_probs, &other.output.log_probs)?,
                hidden: match (self.output.hidden, other.output.hidden) {
                    (Some(mut x), Some(y)) if x.dim == y.dim => {
                        x.data.extend_from_slice(&y.data);
                        x.rows += y.rows;
                        Some(x)
                    }
                    _ => None,
                },
            },
            raw: match (self.raw, other.raw) {
                (Some(x), Some(y)) => Some(concat(x, &y)?),
                _ => None,
            },
        })
    }

    /// Number of sequences.
    pub fn rows(&self) -> usize {
        self.output.log_probs.rows()
    }
}

/// The rows of `a` then those of `b`.
fn concat(a: LogTable, b: &LogTable) -> Result<LogTable> {
    if a.cols() != b.cols() {
        return Err(SmcError::InvalidConfig {
            field: "columns of stacked tables",
            expected: a.cols().to_string(),
            found: b.cols().to_string(),
        });
    }
    let (rows, cols) = (a.rows() + b.rows(), a.cols());
    let mut data = a.into_vec();
    data.extend_from_slice(b.as_slice());
    Ok(LogTable::from_vec(rows, cols, data).expect("shape"))
}
