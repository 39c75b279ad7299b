//! CTL with exact positives replayed from a pool (spec §5 with exact samples of sigma): each
//! update draws its K positives uniformly, with replacement, from exact samples (for example
//! `tsmc exact`'s rejection samples), weighted 1/K each, so the positive half of the gradient,
//! E_sigma[grad log psi], is estimated without bias, unlike the one-sample form's
//! self-normalised weights or a particle Gibbs chain that may sit on one sequence. The negatives
//! are K draws from the twisted proposal, weighted by the intermediate weights Wbar_t^psi, as
//! in [`crate::gibbs`].
//!
//! [`ReplayForm::Csmc`] instead draws one exact sample per update and makes it the reference
//! of conditional SMC with the current twist, whose K final particles, weighted, are the
//! positives (spec §5's infilling variant, for any potential with exact samples): since
//! conditional SMC leaves sigma invariant, a particle drawn by those weights around a
//! reference from sigma is from sigma, so the weighted positives estimate E_sigma[grad log psi]
//! without bias, and they include the twisted proposal's own draws that sigma favours, not
//! only the pool's sequences.

use rand::RngExt;
use smc_core::model::{LanguageModel, Potential};
use smc_core::seed::{self, label};
use smc_core::smc::{Proposal, SmcConfig, rng_from_seed};

use smc_core::batch::TokenBuffer;

use crate::batch::{RecordedStep, TrainableTwist};
use crate::error::{Result, TrainError};
use crate::gibbs::{ctl_csmc_update, ctl_step};
use crate::method::Method;
use crate::train::{BatchSource, Draw, Drawn, TrainConfig, TrainRecord, check_config};

/// One CTL update with `batch_size` positives drawn uniformly with replacement from `pool`
/// (exact samples of sigma, each of the horizon's length) and `batch_size` negatives from the
/// twisted proposal; returns the loss. The positives were not drawn by this run, so their
/// base-model rows come from a teacher-forced pass; with [`BatchSource::Sampled`] that pass
/// covers only them and the negatives' rows are the ones their sampling run recorded, with
/// [`BatchSource::TeacherForced`] one pass covers all 2K sequences.
#[allow(clippy::too_many_arguments)]
pub fn ctl_replay_update<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    batch_size: usize,
    learning_rate: f64,
    seed: u64,
    pool: &[Vec<u32>],
    source: BatchSource,
) -> Result<f64> {
    let k = batch_size;
    let horizon = pool.first().map_or(0, Vec::len);
    let mut pick = rng_from_seed(seed::derive(seed, label::EXACT_REPLAY, 0));
    let sequences: Vec<Vec<u32>> = (0..k)
        .map(|_| pool[pick.random_range(0..pool.len())].clone())
        .collect();
    let draw = Draw {
        lm,
        twist: &*twist,
        potential,
        prompt,
        batch_size: k,
        horizon,
        source,
    };
    let (negatives, _) = draw.run(
        &SmcConfig::sis(k, horizon, Proposal::Twisted).with_seed(seed::derive(
            seed,
            label::CSMC_NEGATIVES,
            0,
        )),
        None,
    )?;
    let positives = match source {
        BatchSource::Sampled => {
            let log_phi = potential.log_phi(prompt, &TokenBuffer::from_rows(&sequences))?;
            Drawn {
                steps: RecordedStep::from_outputs(lm.teacher_forced(prompt, &sequences)?),
                sequences,
                log_phi,
            }
        }
        BatchSource::TeacherForced => Drawn {
            sequences,
            steps: Vec::new(),
            log_phi: Vec::new(),
        },
    };
    let batch = draw.finish(positives.append(negatives)?)?;
    ctl_step(
        twist,
        prompt,
        &batch,
        vec![1.0 / k as f64; k],
        learning_rate,
        "CTL (replayed exact positives)",
    )
}

/// How replayed exact samples become CTL's positives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayForm {
    /// K samples of the pool, uniformly with replacement, weight 1/K each.
    #[default]
    Direct,
    /// One sample of the pool per update as the reference of conditional SMC with the current
    /// twist; its K final particles, weighted, are the positives.
    Csmc,
}

/// CTL for a fixed potential with positives replayed from `pool`, exact samples of sigma
/// (`cfg.method` must be CTL; every sample of length `cfg.horizon`; `cfg.batch` says where the
/// negatives' rows come from, see [`ctl_replay_update`]; `form` how the pool becomes
/// positives). `on_step(step, twist, loss)` runs after each update; its error type is the
/// caller's (see [`crate::train::train`]).
#[allow(clippy::too_many_arguments)]
pub fn train_ctl_replay<L, W, E, F>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    pool: &[Vec<u32>],
    form: ReplayForm,
    mut on_step: F,
) -> Result<Vec<TrainRecord>, E>
where
    L: LanguageModel,
    W: TrainableTwist,
    E: From<TrainError>,
    F: FnMut(usize, &W, f64) -> Result<(), E>,
{
    if cfg.method != Method::Ctl {
        return Err(TrainError::config(
            "method for replayed exact positives",
            "ctl",
            format!("{:?}", cfg.method),
        )
        .into());
    }
    check_config(cfg)?;
    if pool.is_empty() {
        return Err(TrainError::config("exact samples to replay", "at least one", "none").into());
    }
    if let Some(bad) = pool.iter().find(|s| s.len() != cfg.horizon) {
        return Err(TrainError::config(
            "exact sample length",
            format!("T = {}", cfg.horizon),
            format!("{} tokens", bad.len()),
        )
        .into());
    }
    if form == ReplayForm::Csmc && cfg.batch_size < 2 {
        // Conditional SMC needs the reference and at least one free particle.
        return Err(
            TrainError::config("batch size", "K >= 2", format!("K = {}", cfg.batch_size)).into(),
        );
    }
    let mut records = Vec::with_capacity(cfg.steps);
    for step in 1..=cfg.steps {
        let seed = seed::derive(cfg.seed, label::UPDATE, (cfg.start_step + step) as u64);
        let (k, lr) = (cfg.batch_size, cfg.learning_rate);
        let update = match form {
            ReplayForm::Direct => {
                ctl_replay_update(lm, twist, potential, prompt, k, lr, seed, pool, cfg.batch)
            }
            ReplayForm::Csmc => {
                let mut pick = rng_from_seed(seed::derive(seed, label::EXACT_REPLAY, 0));
                let reference = &pool[pick.random_range(0..pool.len())];
                ctl_csmc_update(
                    lm, twist, potential, prompt, k, lr, seed, reference, cfg.batch,
                )
                .map(|u| u.loss)
            }
        };
        let loss = update.map_err(|e| match e {
            TrainError::NonFiniteLoss { loss, value, .. } => {
                TrainError::NonFiniteLoss { loss, step, value }
            }
            other => other,
        })?;
        records.push(TrainRecord { step, loss });
        on_step(step, twist, loss)?;
    }
    Ok(records)
}
