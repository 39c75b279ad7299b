//! Infilling with conditional twists (spec §4-5): the target for conditioning tokens c is
//! sigma_c(s) ∝ p0(s | prompt) p0(c | prompt, s). Joint ancestral draws of T + m tokens give
//! exact pairs (s*, c), so CTL's positives come from conditional SMC seeded with s*, and the
//! bidirectional bounds (hence both KL estimates) are available for every c; evaluation
//! averages them over c.

use lm_burn::BurnLm;
use lm_burn::infilling::InfillingPotential;
use serde::{Deserialize, Serialize};
use smc_bounds::{Estimate, EvalPlan, Evaluation, Method as BoundMethod, Sampler, joint_ancestral};
use smc_core::feynman_kac::Resampling;
use smc_core::model::Twist;
use smc_core::seed::{self, label};
use smc_core::smc::{Proposal, rng_from_seed};

use crate::error::{Result, TrainError};
use crate::gibbs::ctl_csmc_update;
use crate::head::HeadTrainable;
use crate::train::{BatchSource, TrainRecord};

/// An infilling task and its training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InfillingConfig {
    /// Output tokens T.
    pub horizon: usize,
    /// Conditioning tokens m.
    pub cond_len: usize,
    /// Particles per update (K positives from conditional SMC and K negatives from q).
    pub batch_size: usize,
    /// Number of updates.
    pub steps: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// Master seed: update i draws its exact pair with `derive(seed, label::INFILLING_PAIR, n)`
    /// and its particles with `derive(seed, label::UPDATE, n)`, n = `start_step + i`
    /// ([`smc_core::seed`]), so no two updates, and no pair and update, share a stream.
    pub seed: u64,
    /// Updates done before this call (a resumed run; see [`crate::TrainConfig::start_step`]).
    #[serde(default)]
    pub start_step: usize,
    /// Where an update's base-model rows and hidden states come from.
    #[serde(default)]
    pub batch: BatchSource,
}

/// One CTL update (number `update` of the run) for a fresh exact pair (s*, c); returns the loss.
fn ctl_update(
    lm: &BurnLm,
    twist: &mut HeadTrainable,
    prompt: &[u32],
    cfg: &InfillingConfig,
    update: u64,
) -> Result<f64> {
    let mut rng = rng_from_seed(seed::derive(cfg.seed, label::INFILLING_PAIR, update));
    let pair = joint_ancestral(lm, prompt, cfg.horizon, cfg.cond_len, 1, &mut rng)?.remove(0);
    let c = pair.conditioning.clone().unwrap_or_default();
    twist.head_mut().set_conditioning(lm, &c)?;
    let phi = InfillingPotential::new(lm, c);
    // Positives: conditional SMC seeded with the exact sample; negatives: draws from q.
    let update = ctl_csmc_update(
        lm,
        twist,
        &phi,
        prompt,
        cfg.batch_size,
        cfg.learning_rate,
        seed::derive(cfg.seed, label::UPDATE, update),
        &pair.tokens,
        cfg.batch,
    )?;
    Ok(update.loss)
}

/// CTL for infilling: each update draws a new (s*, c) pair. `on_step(step, twist, loss)` runs
/// after each update; its error type is the caller's (see [`crate::train::train`]).
pub fn train_infilling_ctl<E, F>(
    lm: &BurnLm,
    twist: &mut HeadTrainable,
    prompt: &[u32],
    cfg: &InfillingConfig,
    mut on_step: F,
) -> Result<Vec<TrainRecord>, E>
where
    E: From<TrainError>,
    F: FnMut(usize, &mut HeadTrainable, f64) -> Result<(), E>,
{
    if cfg.batch_size == 0 || cfg.horizon == 0 {
        return Err(TrainError::config(
            "batch size and horizon",
            ">= 1",
            format!("K = {}, T = {}", cfg.batch_size, cfg.horizon),
        )
        .into());
    }
    if !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(
            TrainError::config("learning rate", "a positive number", cfg.learning_rate).into(),
        );
    }
    let mut records = Vec::with_capacity(cfg.steps);
    for step in 1..=cfg.steps {
        let loss = ctl_update(lm, twist, prompt, cfg, (cfg.start_step + step) as u64)?;
        records.push(TrainRecord { step, loss });
        on_step(step, twist, loss)?;
    }
    Ok(records)
}

/// Both KL estimates of a proposal, averaged over conditioning sequences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InfillingEval {
    /// KL(q || sigma_c), mean over c with its standard error.
    pub kl_q_sigma: Estimate,
    /// KL(sigma_c || q), mean over c.
    pub kl_sigma_q: Estimate,
    /// Mean half-gap of the log Z_c bounds (the midpoint's largest bias).
    pub half_gap: f64,
    /// The plan's lower bound on log Z_c (SIS in [`infilling_eval_plan`]), mean over c.
    pub log_z_lower: Estimate,
    /// The plan's upper bound on log Z_c (conditional SMC in [`infilling_eval_plan`]), mean
    /// over c.
    pub log_z_upper: Estimate,
    /// F_q = E_q[log sigma~_c - log q], mean over c.
    pub f_q: Estimate,
    /// G_q = E_sigma_c[log sigma~_c - log q], mean over c.
    pub g_q: Estimate,
    /// G_q - F_q = KL(q || sigma_c) + KL(sigma_c || q), mean over c: free of log Z_c, so it
    /// compares proposals without the bounds' bias (paired over the same c at a fixed seed).
    pub kl_sum: Estimate,
}

/// The plan of [`evaluate_infilling`] for each c: K = `particles` for the bounds and
/// `particles` draws for F_q, log Z_c between the SIS lower bound (2 runs) and the
/// conditional-SMC upper bound around the one exact sample s* (declared before any value is
/// seen, never the tightest of several).
pub fn infilling_eval_plan(particles: usize, seed: u64) -> EvalPlan {
    EvalPlan {
        fq_draws: particles,
        particles,
        lower_runs: 2,
        upper_refs: 1,
        lower_methods: vec![BoundMethod::Sis],
        upper_methods: vec![BoundMethod::Smc],
        seed,
        exact_batches: None,
    }
}

/// [`evaluate_infilling_with`] and the plan [`infilling_eval_plan`]`(particles, seed)`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_infilling(
    lm: &BurnLm,
    twist: Option<&mut HeadTrainable>,
    prompt: &[u32],
    horizon: usize,
    cond_len: usize,
    tasks: usize,
    particles: usize,
    seed: u64,
) -> Result<InfillingEval> {
    let plan = infilling_eval_plan(particles, seed);
    evaluate_infilling_with(lm, twist, prompt, horizon, cond_len, tasks, &plan)
}

/// Evaluates the head (or, with `twist = None`, the base model as proposal) on `tasks` fresh
/// pairs (s*, c), each c with [`Sampler::evaluate`] on its exact sample s* and `plan` (whose
/// seed is the master seed: the pairs are drawn with `derive(plan.seed, EVAL_PAIRS, 0)` and
/// task i is evaluated with master seed `derive(plan.seed, EVAL_TASK, i)`, [`smc_core::seed`]).
/// The estimates are means over c, with standard errors from the spread over c (which holds
/// each task's own noise too, since the tasks are independent).
pub fn evaluate_infilling_with(
    lm: &BurnLm,
    mut twist: Option<&mut HeadTrainable>,
    prompt: &[u32],
    horizon: usize,
    cond_len: usize,
    tasks: usize,
    plan: &EvalPlan,
) -> Result<InfillingEval> {
    let mut rng = rng_from_seed(seed::derive(plan.seed, label::EVAL_PAIRS, 0));
    let pairs = joint_ancestral(lm, prompt, horizon, cond_len, tasks, &mut rng)?;
    let mut evals = Vec::with_capacity(pairs.len());
    for (i, pair) in pairs.iter().enumerate() {
        let c = pair.conditioning.clone().unwrap_or_default();
        if let Some(t) = twist.as_deref_mut() {
            t.head_mut().set_conditioning(lm, &c)?;
        }
        let phi = InfillingPotential::new(lm, c);
        let (tw, proposal) = match twist.as_deref() {
            Some(t) => (Some(t as &dyn Twist), Proposal::Twisted),
            None => (None, Proposal::Base),
        };
        let sampler = Sampler {
            lm,
            prompt,
            horizon,
            potential: &phi,
            twist: tw,
            proposal,
            resampling: Resampling::default(),
        };
        let task_plan = EvalPlan {
            seed: seed::derive(plan.seed, label::EVAL_TASK, i as u64),
            ..plan.clone()
        };
        evals.push(sampler.evaluate(std::slice::from_ref(&pair.tokens), &task_plan)?);
    }
    let over_c = |f: &dyn Fn(&Evaluation) -> f64| {
        Estimate::from_values(&evals.iter().map(f).collect::<Vec<_>>())
    };
    Ok(InfillingEval {
        kl_q_sigma: over_c(&|e| e.kl.kl_q_sigma.mean),
        kl_sigma_q: over_c(&|e| e.kl.kl_sigma_q.mean),
        half_gap: over_c(&|e| e.log_z.half_gap()).mean,
        log_z_lower: over_c(&|e| e.log_z.lower.mean),
        log_z_upper: over_c(&|e| e.log_z.upper.mean),
        f_q: over_c(&|e| e.f_q.mean),
        g_q: over_c(&|e| e.g_q.mean),
        kl_sum: over_c(&|e| e.kl_sum.mean),
    })
}
