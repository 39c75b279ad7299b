//! The training loop: sample, recompute the twist on the samples, take a loss step.

use serde::{Deserialize, Serialize};
use smc_core::model::{LanguageModel, Potential, Twist};
use smc_core::seed::{self, label};
use smc_core::smc::{Proposal, SmcConfig, rng_from_seed, run_smc, sample_base};

use crate::error::{Result, TrainError};

use crate::batch::{Batch, TrainableTwist};
use crate::losses::{Roles, loss_and_grads, targets};
use crate::method::Method;

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

/// The samples one update learns from, and their roles.
fn draw<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, Roles)> {
    let from_q = |seed| -> Result<Vec<Vec<u32>>> {
        let sis = SmcConfig::sis(cfg.batch_size, cfg.horizon, Proposal::Twisted).with_seed(seed);
        Ok(run_smc(lm, Some(twist as &dyn Twist), potential, prompt, &sis)?.tokens)
    };
    let from_p0 = |seed| -> Result<Vec<Vec<u32>>> {
        Ok(sample_base(
            lm,
            prompt,
            cfg.horizon,
            cfg.batch_size,
            &mut rng_from_seed(seed),
        )?
        .0)
    };
    Ok(match cfg.method {
        Method::Ctl | Method::Dpg => (from_q(seed)?, Roles::Proposal(Proposal::Twisted)),
        Method::Rl => (from_q(seed)?, Roles::Uniform),
        Method::Fudge => (from_p0(seed)?, Roles::Uniform),
        Method::Sixo => {
            let mut seqs = from_q(seed)?;
            seqs.extend(from_p0(seed::derive(seed, label::SIXO_NEGATIVES, 0))?);
            (
                seqs,
                Roles::Contrast {
                    proposal: Proposal::Twisted,
                    positives: cfg.batch_size,
                },
            )
        }
    })
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
    let (seqs, roles) = draw(lm, twist, potential, prompt, cfg, seed)?;
    let batch = Batch::teacher_forced(lm, twist, potential, prompt, &seqs)?;
    let tg = targets(&batch, roles);
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
