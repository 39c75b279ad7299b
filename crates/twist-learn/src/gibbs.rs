//! CTL with conditional-SMC positives (spec §5, the infilling variant) for any potential: the
//! reference particle is the state of a particle Gibbs chain that the updates carry along.
//! Where an exact sample seeds the chain (infilling), the positives are those of the spec; where
//! none exists, the chain starts at a draw from the twisted proposal and, since particle Gibbs
//! leaves sigma invariant, its states approach sigma as it runs, giving positives that are
//! closer to sigma than the one-sample form's importance-weighted draws from q.

use smc_core::logspace::normalized_weights;
use smc_core::model::{LanguageModel, Potential, Twist};
use smc_core::resampling::Scheme;
use smc_core::seed::{self, label};
use smc_core::smc::{Proposal, SmcConfig, rng_from_seed, run_smc};

use crate::batch::{Batch, TrainableTwist};
use crate::error::{Result, TrainError};
use crate::losses::{Roles, log_psi_weights, loss_and_grads, normalized_over, targets_for};
use crate::method::Method;
use crate::train::{BatchSource, Draw, TrainConfig, TrainRecord, check_config};

/// What one update learned from and where the chain moved.
#[derive(Debug, Clone, PartialEq)]
pub struct CsmcUpdate {
    /// The CTL loss of the update's batch.
    pub loss: f64,
    /// The chain's next state: a final particle of the conditional SMC run drawn by its weight.
    pub next_reference: Vec<u32>,
}

/// One CTL update whose positives are the K final particles of conditional SMC around
/// `reference` (weighted by their final weights) and whose negatives are K draws from the
/// twisted proposal (weighted by the intermediate weights Wbar_t^psi); returns the loss and the
/// particle Gibbs step's next reference. `seed` is the update's seed: the positives, the
/// negatives and the pick draw from streams derived from it ([`smc_core::seed`]).
/// `source` says where the batch's base-model rows come from ([`BatchSource`]).
#[allow(clippy::too_many_arguments)]
pub fn ctl_csmc_update<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    batch_size: usize,
    learning_rate: f64,
    seed: u64,
    reference: &[u32],
    source: BatchSource,
) -> Result<CsmcUpdate> {
    let (k, horizon) = (batch_size, reference.len());
    let draw = Draw {
        lm,
        twist: &*twist,
        potential,
        prompt,
        batch_size: k,
        horizon,
        source,
    };
    let (positives, csmc) = draw.run(
        &SmcConfig::twisted(k, horizon).with_seed(seed::derive(seed, label::CSMC_POSITIVES, 0)),
        Some(reference),
    )?;
    let (negatives, _) = draw.run(
        &SmcConfig::sis(k, horizon, Proposal::Twisted).with_seed(seed::derive(
            seed,
            label::CSMC_NEGATIVES,
            0,
        )),
        None,
    )?;
    let w_final = normalized_weights(&csmc.log_w);
    let mut pick_rng = rng_from_seed(seed::derive(seed, label::CSMC_PICK, 0));
    let pick = Scheme::Multinomial.resample(&w_final, 1, &mut pick_rng)[0];
    let next_reference = csmc.tokens[pick].clone();
    let batch = draw.finish(positives.append(negatives)?)?;
    let loss = ctl_step(
        twist,
        prompt,
        &batch,
        w_final,
        learning_rate,
        "CTL (conditional-SMC positives)",
    )?;
    Ok(CsmcUpdate {
        loss,
        next_reference,
    })
}

/// One CTL step on a batch whose first K rows are positives with normalised weights `w_pos`
/// and whose last K are negatives from the twisted proposal, weighted by the intermediate
/// weights Wbar_t^psi normalised over the negatives alone (over all 2K rows they can underflow
/// to zero beside the positives'); applies the gradient and returns the loss (`what` names
/// the loss in the error when it is not finite).
pub(crate) fn ctl_step<W: TrainableTwist>(
    twist: &mut W,
    prompt: &[u32],
    batch: &Batch,
    mut w_pos: Vec<f64>,
    learning_rate: f64,
    what: &str,
) -> Result<f64> {
    let k = w_pos.len();
    let mut tg = targets_for(Method::Ctl, batch, Roles::Proposal(Proposal::Twisted));
    w_pos.resize(2 * k, 0.0);
    tg.w_pos = w_pos;
    tg.w_psi = log_psi_weights(batch, Proposal::Twisted)
        .iter()
        .map(|log_w| normalized_over(log_w, k..2 * k))
        .collect();
    let (loss, grads) = loss_and_grads(Method::Ctl, batch, &tg);
    if !loss.is_finite() {
        return Err(TrainError::NonFiniteLoss {
            loss: what.into(),
            step: 1,
            value: loss,
        });
    }
    twist.apply_gradient(prompt, batch, &grads, learning_rate)?;
    Ok(loss)
}

/// CTL for a fixed potential with positives from a particle Gibbs chain carried across updates
/// (`cfg.method` must be CTL). The chain starts at `start`, or, without one, at a draw from
/// the initial twisted proposal picked by its importance weight among `cfg.batch_size`.
/// `on_step(step, twist, loss)` runs after each update; its error type is the caller's (see
/// [`crate::train::train`]).
pub fn train_ctl_particle_gibbs<L, W, E, F>(
    lm: &L,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    start: Option<Vec<u32>>,
    mut on_step: F,
) -> Result<Vec<TrainRecord>, E>
where
    L: LanguageModel,
    W: TrainableTwist,
    E: From<TrainError>,
    F: FnMut(usize, &W, f64) -> Result<(), E>,
{
    let mut state = chain_start(lm, twist, potential, prompt, cfg, start)?;
    let mut records = Vec::with_capacity(cfg.steps);
    for step in 1..=cfg.steps {
        let up = ctl_csmc_update(
            lm,
            twist,
            potential,
            prompt,
            cfg.batch_size,
            cfg.learning_rate,
            seed::derive(cfg.seed, label::UPDATE, (cfg.start_step + step) as u64),
            &state,
            cfg.batch,
        )
        .map_err(|e| match e {
            TrainError::NonFiniteLoss { loss, value, .. } => {
                TrainError::NonFiniteLoss { loss, step, value }
            }
            other => other,
        })?;
        state = up.next_reference;
        records.push(TrainRecord {
            step,
            loss: up.loss,
        });
        on_step(step, twist, up.loss)?;
    }
    Ok(records)
}

/// Checks the settings and returns the chain's first state.
fn chain_start<L: LanguageModel, W: TrainableTwist>(
    lm: &L,
    twist: &W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    start: Option<Vec<u32>>,
) -> Result<Vec<u32>> {
    if cfg.method != Method::Ctl {
        return Err(TrainError::config(
            "method for particle Gibbs positives",
            "ctl",
            format!("{:?}", cfg.method),
        ));
    }
    check_config(cfg)?;
    // Conditional SMC needs the reference and at least one free particle.
    if cfg.batch_size < 2 {
        return Err(TrainError::config(
            "batch size",
            "K >= 2",
            format!("K = {}", cfg.batch_size),
        ));
    }
    match start {
        Some(s) if s.len() == cfg.horizon => Ok(s),
        Some(s) => Err(TrainError::ChainStart {
            found: s.len(),
            expected: cfg.horizon,
        }),
        None => {
            let sis = run_smc(
                lm,
                Some(twist as &dyn Twist),
                potential,
                prompt,
                &SmcConfig::sis(cfg.batch_size, cfg.horizon, Proposal::Twisted)
                    .with_seed(seed::derive(cfg.seed, label::CHAIN_START, 0)),
            )?;
            let w = normalized_weights(&sis.log_w);
            let mut rng = rng_from_seed(seed::derive(cfg.seed, label::CHAIN_START, 1));
            let i = Scheme::Multinomial.resample(&w, 1, &mut rng)[0];
            Ok(sis.tokens[i].clone())
        }
    }
}
