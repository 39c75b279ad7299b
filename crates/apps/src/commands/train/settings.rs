//! The validated settings of `tsmc train`.

use std::path::PathBuf;

use twist_learn::{BatchSource, Method, TrainConfig};

use crate::potentials::PotentialSpec;
use crate::setup::ModelChoice;
use crate::training::{FitSettings, HeadChoice, Positives};

/// What `tsmc train` learns a twist for.
#[derive(Debug, Clone)]
pub enum TrainTask {
    /// Conditional twists for infilling: each update draws T + m tokens from p0 (CTL).
    Infilling {
        /// Conditioning sequences per evaluation.
        eval_tasks: usize,
    },
    /// One continuation c drawn with the task seed; its exact sample held out and measured after
    /// training through a particle Gibbs chain.
    InfillingFixed {
        /// Which (s*, c) pair to draw.
        task_seed: u64,
        /// Particle Gibbs sweeps from the held-out s*.
        gibbs_sweeps: usize,
        /// Particles of the evaluation's bounds and sweeps.
        eval_particles: usize,
    },
    /// A fixed potential, any method.
    Potential {
        /// The potential.
        potential: PotentialSpec,
        /// Exact samples (`tsmc exact`) for evaluation along the way.
        exact: Option<PathBuf>,
        /// Exact samples replayed as CTL's positives (`--positives exact`).
        replay: Option<PathBuf>,
    },
}

/// The validated settings of `tsmc train`.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// The task.
    pub task: TrainTask,
    /// The method.
    pub method: Method,
    /// CTL's positives (gibbs only with CTL).
    pub positives: Positives,
    /// The model.
    pub model: ModelChoice,
    /// The prompt.
    pub prompt: String,
    /// Output tokens T (at least 1).
    pub tokens: usize,
    /// Conditioning tokens m (infilling tasks; at least 1).
    pub cond_tokens: usize,
    /// Particles per update (at least 2).
    pub particles: usize,
    /// Updates.
    pub steps: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// The head.
    pub head: HeadChoice,
    /// Evaluate (and checkpoint) at these updates.
    pub eval_at: Vec<usize>,
    /// Draws from q for F_q at each evaluation.
    pub fq_samples: usize,
    /// Master seed.
    pub seed: u64,
    /// Where the head is written.
    pub checkpoint: PathBuf,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// Training curve (JSONL).
    pub out: PathBuf,
    /// Where an update's base-model rows come from.
    pub batch: BatchSource,
    /// Fit the fresh head to the replayed exact samples before training.
    pub fit: Option<FitSettings>,
}

impl TrainSettings {
    /// twist-learn's loop configuration for a run that has done `start_step` updates: the
    /// training streams are derived from `--seed` under their own label.
    pub fn train_config(&self, start_step: usize) -> TrainConfig {
        TrainConfig {
            method: self.method,
            steps: self.steps,
            batch_size: self.particles,
            horizon: self.tokens,
            learning_rate: self.lr,
            seed: smc_core::seed::derive(self.seed, smc_core::seed::label::APP_TRAIN, 0),
            start_step,
            batch: self.batch,
        }
    }
}
