//! The settings and records of `tsmc reproduce`: what one evaluation stores, and a row of the
//! table built from them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use smc_bounds::Estimate;
use twist_learn::Method;

use crate::presets::Preset;
use crate::setup::ModelChoice;
use crate::training::{FitSettings, HeadChoice};

/// The validated settings of `tsmc reproduce`.
#[derive(Debug, Clone)]
pub struct ReproduceSettings {
    /// The task preset.
    pub preset: &'static Preset,
    /// Output tokens T.
    pub tokens: usize,
    /// Conditioning tokens m (infilling presets only).
    pub cond_tokens: Option<usize>,
    /// Methods to train.
    pub methods: Vec<Method>,
    /// Seeds (each: fresh exact samples, fresh heads, fresh draws).
    pub seeds: usize,
    /// Updates per method and seed.
    pub steps: usize,
    /// Particles per update.
    pub particles: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// The heads.
    pub head: HeadChoice,
    /// Particles K of the bounds on log Z.
    pub eval_particles: usize,
    /// Draws from q for F_q.
    pub fq_samples: usize,
    /// Exact samples per seed (infilling: conditioning sequences per seed).
    pub exact_samples: usize,
    /// Exact samples per seed replayed as CTL's positives (0: its one-sample form), apart from
    /// the evaluation's.
    pub replay_samples: usize,
    /// How CTL turns them into positives.
    pub replay_form: twist_learn::ReplayForm,
    /// One pool of `replay_samples`, drawn once, for every seed (instead of one per seed).
    pub replay_shared: bool,
    /// Fit every head to the replay pool before its method trains (`None`: no fit).
    pub fit: Option<FitSettings>,
    /// Exact samples per seed that seed the upper bounds.
    pub upper_samples: usize,
    /// Runs per lower bound.
    pub lower_runs: usize,
    /// Give up collecting exact samples after this many draws.
    pub max_draws: usize,
    /// The model.
    pub model: ModelChoice,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Only rebuild the table from the records.
    pub table_only: bool,
    /// Per seed, also run bootstrap SMC with as many particles as the twisted samplers' SMC
    /// time buys (the SMC table's equal-time column).
    pub equal_time: bool,
    /// Infilling: also evaluate p0 and every head with the exact final lookahead twist over
    /// this many candidates.
    pub lookahead: Option<usize>,
    /// With `lookahead`: score only the likeliest candidates holding this share of p0's mass.
    pub lookahead_mass: Option<f64>,
}

/// One sampler's evaluation for one seed (infilling: averaged over the seed's tasks, with the
/// per-task values kept so that log Z can be pinned per task).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The seed.
    pub seed: u64,
    /// "p0" or the method.
    pub sampler: String,
    /// Seconds spent training (0 for p0).
    pub train_seconds: f64,
    /// Per task (one task for a fixed potential): F_q, G_q and the best lower and upper bounds.
    pub tasks: Vec<TaskEval>,
    /// The particles of this evaluation's SMC bounds when they are not the run's
    /// `--eval-particles`: bootstrap SMC at equal time ([`EQUAL_TIME`]), whose F_q (one draw)
    /// and G_q are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub particles: Option<usize>,
}

/// The sampler name of bootstrap SMC given the twisted samplers' SMC time (its `particles`).
pub const EQUAL_TIME: &str = "p0-equal-time";

/// A sampler's numbers on one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEval {
    /// F_q = E_q[log sigma~ - log q].
    pub f_q: Estimate,
    /// G_q = E_sigma[log sigma~ - log q].
    pub g_q: Estimate,
    /// This sampler's lower bound on log Z for the task (a mean over runs; see `rule`).
    pub lower: f64,
    /// This sampler's upper bound on log Z for the task (a mean over exact samples).
    pub upper: f64,
    /// Which estimator `lower` and `upper` are.
    #[serde(default)]
    pub rule: BoundRule,
    /// log Zhat of each SMC run behind `lower` (empty in records written before they were
    /// kept): their spread is the variance of log Zhat at the evaluation's K.
    #[serde(default)]
    pub lower_runs: Vec<f64>,
    /// Wall-clock seconds of one SMC run behind `lower`, averaged over the runs (0 in records
    /// written before it was kept).
    #[serde(default)]
    pub smc_seconds: f64,
}

/// How a record's `lower` and `upper` were formed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundRule {
    /// Records written before the rule was stored: the larger of the SIS and SMC lower bounds
    /// and the smaller of the upper ones, a selection between two noisy estimates of the same
    /// sampler (biased inwards by at most their noise; the table says so).
    #[default]
    TightestOfSisSmc,
    /// The SMC lower bound and the conditional-SMC upper bound, declared in advance: each is a
    /// bound in expectation by construction.
    Smc,
}

/// A row of the final table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "p0" or the method.
    pub sampler: String,
    /// KL(q‖σ) over seeds.
    pub kl_q_sigma: Estimate,
    /// KL(σ‖q) over seeds.
    pub kl_sigma_q: Estimate,
    /// F_q over seeds.
    pub f_q: Estimate,
    /// G_q over seeds.
    pub g_q: Estimate,
    /// KL(q‖σ) minus p0's, paired by seed (= F_q of p0 - F_q; free of log Z).
    pub delta_kl_q_sigma: Estimate,
    /// KL(σ‖q) minus p0's, paired by seed (= G_q - G_q of p0, on the same exact samples).
    pub delta_kl_sigma_q: Estimate,
    /// The two paired differences of each seed, in seed order: (seed, ΔKL(q‖σ), ΔKL(σ‖q)).
    pub delta_per_seed: Vec<(u64, f64, f64)>,
    /// Mean training time per seed.
    pub train_seconds: f64,
}
