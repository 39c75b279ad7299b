//! The training loop: sample, recompute the twist on the samples, take a loss step.

use serde::{Deserialize, Serialize};
use smc_core::model::{LanguageModel, Potential, Twist, checked_log_phi};
use smc_core::seed::{self, label};
use smc_core::smc::{
    Proposal, SmcConfig, SmcOutput, rng_from_seed, run_csmc, run_smc, sample_base,
};

use crate::error::{Result, TrainError};

use crate::batch::{Batch, RecordedStep, TrainableTwist};
use crate::losses::{Roles, loss_and_grads, targets_for};
use crate::method::Method;
use crate::record::Recorder;

/// Training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The loss.
    pub method: Method,
    /// Number of twist updates.
    pub steps: usize,
    /// Sequences per update (K; SIXO uses K positives and K negatives).
    pub batch_size: usize,
    /// Output tokens T.
    pub horizon: usize,
    /// Constant learning rate.
    pub learning_rate: f64,
    /// Master seed: update i draws its samples with `derive(seed, label::UPDATE, start_step + i)`
    /// ([`smc_core::seed`]).
    pub seed: u64,
    /// Updates done before this call (a resumed run): update i of this call is update
    /// `start_step + i` of the run and draws that update's samples, so a run resumed from a
    /// checkpoint (with the optimiser's state) continues exactly as one run straight through.
    #[serde(default)]
    pub start_step: usize,
    /// Where an update's base-model rows and hidden states come from.
    #[serde(default)]
    pub batch: BatchSource,
}

/// Where a training batch's base-model rows (log p0) and hidden states come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchSource {
    /// Kept from the sampling run ([`crate::record`]), gathered along each final particle's
    /// lineage, with the twist's raw outputs and log phi the run computed: the base model runs
    /// once per update.
    #[default]
    Sampled,
    /// A second, teacher-forced pass of the base model over the drawn sequences, with the twist
    /// and the potential evaluated again (the first implementation; kept for comparison).
    TeacherForced,
}

/// One update's record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Update index (1-based).
    pub step: usize,
    /// The loss on the update's batch.
    pub loss: f64,
}

/// The evaluation steps of the reference's exponential schedule: 1, 2, 4, 8, ... up to `total`
/// (and `total` itself).
pub fn exponential_schedule(total: usize) -> Vec<usize> {
    let mut out: Vec<usize> = std::iter::successors(Some(1usize), |&x| x.checked_mul(2))
        .take_while(|&x| x <= total)
        .collect();
    if out.last() != Some(&total) && total > 0 {
        out.push(total);
    }
    out
}

/// One update's batch and the roles of its sequences, drawn with `seed` (the update's seed):
/// from q (or p0, as `cfg.method` wants), with the base model's rows either kept from the
/// draw or from a second pass ([`BatchSource`] `cfg.batch`).
pub fn draw_batch<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    seed: u64,
) -> Result<(Batch, Roles)> {
    let draw = Draw {
        lm,
        twist,
        potential,
        prompt,
        batch_size: cfg.batch_size,
        horizon: cfg.horizon,
        source: cfg.batch,
    };
    Ok(match cfg.method {
        Method::Ctl | Method::Dpg => (
            draw.finish(draw.sample_q(seed)?)?,
            Roles::Proposal(Proposal::Twisted),
        ),
        Method::Rl => (draw.finish(draw.sample_q(seed)?)?, Roles::Uniform),
        Method::Fudge => (draw.finish(draw.sample_p0(seed)?)?, Roles::Uniform),
        Method::Sixo => {
            let positives = draw.sample_q(seed)?;
            let negatives = draw.sample_p0(seed::derive(seed, label::SIXO_NEGATIVES, 0))?;
            (
                draw.finish(positives.append(negatives)?)?,
                Roles::Contrast {
                    proposal: Proposal::Twisted,
                    positives: cfg.batch_size,
                },
            )
        }
    })
}

/// Sequences drawn for a batch, with what the draw recorded (empty for
/// [`BatchSource::TeacherForced`]).
pub(crate) struct Drawn {
    pub(crate) sequences: Vec<Vec<u32>>,
    pub(crate) steps: Vec<RecordedStep>,
    pub(crate) log_phi: Vec<f64>,
}

impl Drawn {
    /// These sequences followed by `other`'s.
    pub(crate) fn append(mut self, other: Drawn) -> Result<Drawn> {
        self.sequences.extend(other.sequences);
        self.log_phi.extend(other.log_phi);
        self.steps = if self.steps.is_empty() || other.steps.is_empty() {
            Vec::new()
        } else {
            self.steps
                .into_iter()
                .zip(other.steps)
                .map(|(a, b)| a.stack(b))
                .collect::<smc_core::Result<_>>()?
        };
        Ok(self)
    }
}

/// The draws of one update.
pub(crate) struct Draw<'a, L, W: ?Sized> {
    pub(crate) lm: &'a L,
    pub(crate) twist: &'a W,
    pub(crate) potential: &'a dyn Potential,
    pub(crate) prompt: &'a [u32],
    pub(crate) batch_size: usize,
    pub(crate) horizon: usize,
    pub(crate) source: BatchSource,
}

impl<L: LanguageModel, W: TrainableTwist + ?Sized> Draw<'_, L, W> {
    /// Runs SMC with `config` (the twisted proposal, clamped to `reference` for conditional
    /// SMC), recording it when the batch is to be built from the draw; returns the drawn
    /// sequences and the run's output.
    pub(crate) fn run(
        &self,
        config: &SmcConfig,
        reference: Option<&[u32]>,
    ) -> Result<(Drawn, SmcOutput)> {
        let twist = self.twist;
        let out = match self.source {
            BatchSource::TeacherForced => {
                let tw = Some(&twist as &dyn Twist);
                match reference {
                    Some(r) => run_csmc(self.lm, tw, self.potential, self.prompt, config, r)?,
                    None => run_smc(self.lm, tw, self.potential, self.prompt, config)?,
                }
            }
            BatchSource::Sampled => {
                let rec = Recorder::new();
                let (lm, rtw) = (rec.lm(self.lm), rec.twist(twist));
                let tw = Some(&rtw as &dyn Twist);
                let out = match reference {
                    Some(r) => run_csmc(&lm, tw, self.potential, self.prompt, config, r)?,
                    None => run_smc(&lm, tw, self.potential, self.prompt, config)?,
                };
                let steps = rec.take()?;
                return Ok((
                    Drawn {
                        sequences: out.tokens.clone(),
                        steps,
                        log_phi: out.log_phi.clone(),
                    },
                    out,
                ));
            }
        };
        Ok((
            Drawn {
                sequences: out.tokens.clone(),
                steps: Vec::new(),
                log_phi: Vec::new(),
            },
            out,
        ))
    }

    /// K draws from the twisted proposal (SIS).
    pub(crate) fn sample_q(&self, seed: u64) -> Result<Drawn> {
        let sis = SmcConfig::sis(self.batch_size, self.horizon, Proposal::Twisted).with_seed(seed);
        Ok(self.run(&sis, None)?.0)
    }

    /// K draws from p0.
    pub(crate) fn sample_p0(&self, seed: u64) -> Result<Drawn> {
        let mut rng = rng_from_seed(seed);
        let (horizon, k) = (self.horizon, self.batch_size);
        if self.source == BatchSource::TeacherForced {
            let sequences = sample_base(self.lm, self.prompt, horizon, k, &mut rng)?.0;
            return Ok(Drawn {
                sequences,
                steps: Vec::new(),
                log_phi: Vec::new(),
            });
        }
        let rec = Recorder::new();
        let sequences = sample_base(&rec.lm(self.lm), self.prompt, horizon, k, &mut rng)?.0;
        let steps = rec.take()?;
        let buffer = smc_core::batch::TokenBuffer::from_rows(&sequences);
        let log_phi = checked_log_phi(self.potential, self.prompt, &buffer, horizon)?;
        Ok(Drawn {
            sequences,
            steps,
            log_phi,
        })
    }

    /// The batch of `drawn`: from what the draw recorded, or from a teacher-forced pass.
    pub(crate) fn finish(&self, drawn: Drawn) -> Result<Batch> {
        Ok(match self.source {
            BatchSource::Sampled => Batch::from_recorded(
                self.twist,
                self.prompt,
                &drawn.sequences,
                drawn.steps,
                drawn.log_phi,
            )?,
            BatchSource::TeacherForced => Batch::teacher_forced(
                self.lm,
                self.twist,
                self.potential,
                self.prompt,
                &drawn.sequences,
            )?,
        })
    }
}

/// Trains `twist` for `cfg.steps` updates; `on_step(step, twist, loss)` runs after each update
/// (evaluation, checkpoints, progress). The callback's error type is the caller's: it comes
/// back unchanged, and this crate's errors reach the caller through `E: From<TrainError>`.
pub fn train<L, W, E, F>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    mut on_step: F,
) -> Result<Vec<TrainRecord>, E>
where
    L: LanguageModel,
    W: TrainableTwist,
    E: From<TrainError>,
    F: FnMut(usize, &W, f64) -> Result<(), E>,
{
    check_config(cfg)?;
    let mut records = Vec::with_capacity(cfg.steps);
    for step in 1..=cfg.steps {
        let loss = update(lm, twist, potential, prompt, cfg, step)?;
        records.push(TrainRecord { step, loss });
        on_step(step, twist, loss)?;
    }
    Ok(records)
}

/// The checks every training loop makes on its configuration.
pub(crate) fn check_config(cfg: &TrainConfig) -> Result<()> {
    if cfg.batch_size == 0 || cfg.horizon == 0 {
        return Err(TrainError::config(
            "batch size and horizon",
            ">= 1",
            format!("K = {}, T = {}", cfg.batch_size, cfg.horizon),
        ));
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(TrainError::config(
            "learning rate",
            "a positive number",
            cfg.learning_rate,
        ));
    }
    Ok(())
}

/// Update `step` (1-based within the call): sample, recompute, take the loss step.
fn update<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    step: usize,
) -> Result<f64> {
    let seed = seed::derive(cfg.seed, label::UPDATE, (cfg.start_step + step) as u64);
    let (batch, roles) = draw_batch(lm, twist, potential, prompt, cfg, seed)?;
    let tg = targets_for(cfg.method, &batch, roles);
    let (loss, grads) = loss_and_grads(cfg.method, &batch, &tg);
    if !loss.is_finite() {
        return Err(TrainError::NonFiniteLoss {
            loss: format!("{:?}", cfg.method),
            step,
            value: loss,
        });
    }
    twist.apply_gradient(prompt, &batch, &grads, cfg.learning_rate)?;
    Ok(loss)
}
