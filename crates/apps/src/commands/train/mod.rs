//! `tsmc train`: twist learning on a language model, with a JSONL curve, atomic resumable
//! checkpoints and a progress bar. One file per task: `infilling` (conditional heads),
//! `fixed` (one infilling task with its exact sample held out), `potential` (any potential and
//! method).

pub mod fixed;
pub mod infilling;
pub mod potential;
pub mod settings;

use anyhow::Result;

pub use settings::{TrainSettings, TrainTask};

/// Runs `tsmc train`.
pub fn run(args: &TrainSettings) -> Result<()> {
    match &args.task {
        TrainTask::Infilling { eval_tasks } => infilling::run(args, *eval_tasks),
        TrainTask::InfillingFixed {
            task_seed,
            gibbs_sweeps,
            eval_particles,
        } => fixed::run(
            args,
            fixed::FixedTask {
                task_seed: *task_seed,
                gibbs_sweeps: *gibbs_sweeps,
                eval_particles: *eval_particles,
            },
        ),
        TrainTask::Potential {
            potential,
            exact,
            replay,
        } => potential::run(args, potential, exact.as_deref(), replay.as_deref()),
    }
}
