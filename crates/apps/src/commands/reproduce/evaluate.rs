//! One sampler's evaluation on a seed's tasks, and the exact samples it is measured on.

use anyhow::{Result, bail};

use lm_burn::BurnLm;
use smc_bounds::{EvalPlan, Method as BoundMethod};
use smc_core::lookahead::FinalLookahead;
use smc_core::model::{Potential, Twist};
use smc_core::seed;
use smc_core::smc::rng_from_seed;
use twist_learn::HeadTrainable;

use super::records::{BoundRule, Record, ReproduceSettings, TaskEval};
use crate::presets::{ExactMethod, Preset};
use crate::setup::sampler;

pub(super) struct Ctx<'a> {
    pub lm: &'a BurnLm,
    pub prompt: &'a [u32],
    pub horizon: usize,
    pub args: &'a ReproduceSettings,
}

pub(super) struct Task<'a> {
    pub potential: Box<dyn Potential + 'a>,
    pub conditioning: Option<Vec<u32>>,
    pub exact: Vec<Vec<u32>>,
    /// Exact samples for CTL to replay, never among `exact` (the evaluation's).
    pub replay: Vec<Vec<u32>>,
}

/// Draws from p0 per rejection batch: as wide as the bf16 products go, which are fastest at
/// hundreds of rows (docs/benchmarks.md).
const REJECTION_BATCH: usize = 256;

/// `n` exact samples by rejection from the stream `rng_seed` (fewer when `--max-draws` ran
/// out; none is an error): a seed's evaluation samples followed by its replay pool, or a pool
/// shared by every seed.
pub(super) fn collect_exact(
    ctx: &Ctx<'_>,
    preset: &Preset,
    phi: &dyn Potential,
    rng_seed: u64,
    n: usize,
) -> Result<smc_bounds::Collected> {
    let collect = match preset.exact {
        ExactMethod::ClassRejection => smc_bounds::rejection_class::<BurnLm>,
        _ => smc_bounds::rejection_indicator::<BurnLm>,
    };
    let mut rng = rng_from_seed(rng_seed);
    let collected = collect(
        ctx.lm,
        ctx.prompt,
        ctx.horizon,
        phi,
        n,
        REJECTION_BATCH,
        ctx.args.max_draws,
        &mut rng,
    )?;
    if collected.samples.is_empty() {
        bail!(
            "no exact sample of {:?} in {} draws from p0: raise --max-draws",
            preset.potential,
            collected.draws
        );
    }
    Ok(collected)
}

/// Every task's evaluation with the bounds at K = `particles` and F_q from `fq_draws` draws
/// (the run's --eval-particles and --fq-samples; bootstrap SMC at equal time takes its own K
/// and one draw, since only its bounds are used).
/// A sampler's record for one seed: `twist`'s proposal (p0's with `None`) evaluated at the run's
/// --eval-particles and --fq-samples.
pub(super) fn record(
    ctx: &Ctx<'_>,
    twist: Option<&mut HeadTrainable>,
    tasks: &[Task<'_>],
    seed: u64,
    sampler: String,
    train_seconds: f64,
    lookahead: Option<usize>,
) -> Result<Record> {
    let a = ctx.args;
    let (k, draws) = (a.eval_particles, a.fq_samples);
    Ok(Record {
        seed,
        sampler,
        train_seconds,
        tasks: evaluate(ctx, twist, tasks, seed, k, draws, lookahead)?,
        particles: None,
    })
}

pub(super) fn evaluate(
    ctx: &Ctx<'_>,
    mut twist: Option<&mut HeadTrainable>,
    tasks: &[Task<'_>],
    seed: u64,
    particles: usize,
    fq_draws: usize,
    lookahead: Option<usize>,
) -> Result<Vec<TaskEval>> {
    let a = ctx.args;
    let mut out = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        if let (Some(t), Some(c)) = (twist.as_deref_mut(), &task.conditioning) {
            t.head_mut().set_conditioning(ctx.lm, c)?;
        }
        let tw = twist.as_deref().map(|t| t as &dyn Twist);
        // The exact final twist wraps the head (or p0) on infilling's continuation c.
        let look = match (lookahead, &task.conditioning) {
            (Some(n), Some(c)) => {
                let look = FinalLookahead::new(ctx.lm, c.clone(), n, tw)?;
                Some(match a.lookahead_mass {
                    Some(p) => look.with_mass(p)?,
                    None => look,
                })
            }
            _ => None,
        };
        let tw = look.as_ref().map(|l| l as &dyn Twist).or(tw);
        // The lookahead's final step has already scored phi for the candidates drawn.
        let reused = look.as_ref().map(FinalLookahead::potential);
        let phi: &dyn Potential = match &reused {
            Some(p) => p,
            None => task.potential.as_ref(),
        };
        let sampler = sampler(ctx.lm, ctx.prompt, ctx.horizon, phi, tw);
        // One plan per (seed, task), shared by every sampler: common random numbers, so the
        // samplers' differences are paired. The bounds are the SMC pair declared in advance
        // (BoundRule::Smc); the upper bounds' references are the first exact samples in the
        // order they were drawn.
        let plan = EvalPlan {
            fq_draws,
            lower_runs: a.lower_runs.max(1),
            upper_refs: a.upper_samples.max(1),
            lower_methods: vec![BoundMethod::Smc],
            upper_methods: vec![BoundMethod::Smc],
            ..EvalPlan::new(
                particles,
                seed::derive(
                    seed::derive(0, seed::label::APP_EVAL, seed),
                    seed::label::EVAL_TASK,
                    i as u64,
                ),
            )
        };
        let e = sampler.evaluate(&task.exact, &plan)?;
        let smc_seconds = e
            .lower
            .iter()
            .map(|r| r.seconds / r.values.len().max(1) as f64)
            .sum();
        out.push(TaskEval {
            f_q: e.f_q,
            g_q: e.g_q,
            lower: e.log_z.lower.mean,
            upper: e.log_z.upper.mean,
            rule: BoundRule::Smc,
            lower_runs: e.log_z.lower_values.clone(),
            smc_seconds,
        });
    }
    Ok(out)
}

pub(super) fn print_record(rec: &Record) {
    let n = rec.tasks.len() as f64;
    let mean = |f: &dyn Fn(&TaskEval) -> f64| rec.tasks.iter().map(f).sum::<f64>() / n;
    let k = rec
        .particles
        .map_or(String::new(), |k| format!(" at K = {k}"));
    eprintln!(
        "seed {} {:<6} F_q {:>8.3}  G_q {:>8.3}  log Z in [{:.3}, {:.3}]{k}  (train {:.0} s, SMC {:.2} s a run)",
        rec.seed,
        rec.sampler,
        mean(&|t| t.f_q.mean),
        mean(&|t| t.g_q.mean),
        mean(&|t| t.lower),
        mean(&|t| t.upper),
        rec.train_seconds,
        mean(&|t| t.smc_seconds)
    );
}
