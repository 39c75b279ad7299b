//! `tsmc train` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use twist_learn::{BatchSource, Method};

use super::fit::FitArgs;
use super::groups::{HeadArgs, MethodArg, ModelArgs, PositivesArg, PromptArgs, at_least};
use crate::commands::train::{TrainSettings, TrainTask};
use crate::potentials::PotentialSpec;
use crate::training::Positives;

/// Arguments of `tsmc train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The task: infilling (conditional twists; each update draws T + m tokens from p0),
    /// infilling-fixed (one continuation c drawn with --task-seed, its exact sample s* held out
    /// and measured after training through a particle Gibbs chain), or potential (a fixed
    /// --potential such as toxicity:beta=1; evaluate with `tsmc bounds --twist`).
    #[arg(long, value_enum, default_value_t = TaskArg::Infilling)]
    task: TaskArg,
    /// The method (infilling: ctl).
    #[arg(long, value_enum, default_value_t = MethodArg::Ctl)]
    method: MethodArg,
    /// The potential of the `potential` task (as for `tsmc sample`).
    #[arg(long, default_value = "toxicity:beta=1")]
    potential: PotentialSpec,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Output tokens T.
    #[arg(long, short = 't', default_value_t = 10)]
    tokens: usize,
    /// Conditioning tokens m.
    #[arg(long, default_value_t = 5)]
    cond_tokens: usize,
    /// Particles per update.
    #[arg(long, short = 'k', default_value_t = 16)]
    particles: usize,
    /// Number of updates.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Adam learning rate (constant). Through the output embedding one step moves log psi by
    /// up to about 3e4 times the rate on SmolLM2: 1e-4 overshoots, 1e-5 is what every measured
    /// improvement over p0 used (docs/training.md).
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    #[command(flatten)]
    head: HeadArgs,
    /// Evaluate at these updates of this run (comma-separated, at most --steps; a resumed run
    /// counts from its first update; default: 0, 1, 2, 4, 8, ... and the last).
    #[arg(long, value_delimiter = ',')]
    eval_at: Vec<usize>,
    /// Conditioning sequences per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_tasks: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the head (safetensors; metadata beside it as .json), after every evaluation.
    #[arg(long, default_value = "twist-head.safetensors")]
    checkpoint: PathBuf,
    /// Continue from this checkpoint (head, Adam's state and step count).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Training curve (JSON lines).
    #[arg(long, default_value = "train-curve.jsonl")]
    out: PathBuf,
    /// Exact samples (`tsmc exact`) for the `potential` task: evaluates p0 and the twist at the
    /// evaluation steps by F_q, G_q, G_q - F_q and both KL estimates (log Z from p0's bounds).
    #[arg(long)]
    exact: Option<PathBuf>,
    /// Draws from q for F_q at each evaluation (`potential` task with --exact).
    #[arg(long, default_value_t = 64)]
    fq_samples: usize,
    /// CTL's positives for `potential` and `infilling-fixed`: `sis` (the one-sample form:
    /// draws from q weighted by sigma~/q), `gibbs` (conditional SMC around the state of a
    /// particle Gibbs chain carried across updates, started at a draw from q) or, for
    /// `potential`, `exact` (the exact samples of --replay, replayed) or `exact-csmc`
    /// (conditional SMC around one of them per update, its final particles weighted).
    #[arg(long, value_enum, default_value_t = PositivesArg::Sis)]
    positives: PositivesArg,
    /// Exact samples (`tsmc exact`, another file than --exact's, which evaluates: training on
    /// them would bias the evaluation) replayed as CTL's positives with `--positives exact` or
    /// `exact-csmc`.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// `infilling-fixed`: which (s*, c) pair to draw (default: --seed).
    #[arg(long)]
    task_seed: Option<u64>,
    /// `infilling-fixed`: particle Gibbs sweeps from the held-out s* (exact samples for G_q).
    #[arg(long, default_value_t = 32)]
    gibbs_sweeps: usize,
    /// `infilling-fixed`: particles of the evaluation's bounds and particle Gibbs sweeps.
    #[arg(long, default_value_t = 32)]
    eval_particles: usize,
    /// Where an update's base-model rows and hidden states come from: `sampled` (kept from the
    /// sampling run, one base-model pass per update) or `teacher-forced` (a second pass over
    /// the drawn sequences, as before; for comparison).
    #[arg(long, value_enum, default_value_t = BatchSourceArg::Sampled)]
    batch_source: BatchSourceArg,
    #[command(flatten)]
    fit: FitArgs,
}

/// Where a training batch's base-model rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BatchSourceArg {
    /// Kept from the sampling run.
    Sampled,
    /// A second, teacher-forced pass.
    TeacherForced,
}

/// The task of `tsmc train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// Conditional twists for infilling.
    Infilling,
    /// One infilling task, its exact sample held out.
    InfillingFixed,
    /// A fixed --potential.
    Potential,
}

impl TrainArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<TrainSettings> {
        let Self {
            task,
            method,
            potential,
            model,
            prompt,
            tokens,
            cond_tokens,
            particles,
            steps,
            lr,
            head,
            eval_at,
            eval_tasks,
            seed,
            checkpoint,
            resume,
            out,
            exact,
            fq_samples,
            positives,
            replay,
            task_seed,
            gibbs_sweeps,
            eval_particles,
            batch_source,
            fit,
        } = self;
        let method: Method = method.into();
        let positives: Positives = positives.into();
        let prompt = prompt.prompt()?;
        let tokens = at_least("--tokens", tokens, 1)?;
        let particles = at_least("--particles", particles, 2)?;
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr must be a positive number, found {lr}");
        }
        if positives == Positives::Gibbs && method != Method::Ctl {
            bail!(
                "--positives gibbs is for --method ctl (conditional-SMC positives); found {}",
                crate::training::method_name(method)
            );
        }
        let replays = matches!(positives, Positives::Exact | Positives::ExactCsmc);
        let name = positives.name();
        match &replay {
            None if replays => {
                bail!("--positives {name} replays the exact samples of --replay FILE: give one")
            }
            Some(_) if replays && method != Method::Ctl => bail!(
                "--positives {name} is for --method ctl; found {}",
                crate::training::method_name(method)
            ),
            Some(_) if replays && !matches!(task, TaskArg::Potential) => {
                bail!("--positives {name} is for --task potential")
            }
            Some(r) if replays && exact.as_deref() == Some(r.as_path()) => bail!(
                "--replay {} is also --exact: the evaluation would measure the samples it trained on; write another file with `tsmc exact --seed ...`",
                r.display()
            ),
            Some(_) if !replays => {
                bail!("--replay is for --positives exact or exact-csmc")
            }
            _ => {}
        }
        let fit = fit.settings()?;
        if fit.is_some() {
            if replay.is_none() {
                bail!(
                    "--fit-epochs fits the head to the exact samples CTL replays: give --positives exact --replay FILE"
                );
            }
            if resume.is_some() {
                bail!(
                    "--fit-epochs fits a fresh head before training; --resume continues a trained one"
                );
            }
        }
        if checkpoint.extension().is_some_and(|e| e == "json") {
            bail!(
                "--checkpoint {} ends in .json, the name of the metadata written beside the weights: use a .safetensors name",
                checkpoint.display()
            );
        }
        // The checkpoint may be the file resumed from (read whole before it is replaced), but
        // no output may be any other input.
        let model_path = crate::output::model_input(&model.model);
        let metadata_copy = checkpoint.with_extension("json");
        let mut inputs = vec![("--model", model_path.as_path())];
        if !matches!(task, TaskArg::Infilling) && head.cond_encoding.is_some() {
            bail!(
                "--cond-encoding is for the conditional heads of --task infilling; this task \
                 trains an unconditional one"
            );
        }
        if let TaskArg::Potential = task {
            inputs.extend(exact.as_deref().map(|e| ("--exact", e)));
            inputs.extend(replay.as_deref().map(|r| ("--replay", r)));
        }
        crate::output::check_outputs(
            &[
                ("--out", &out),
                ("--checkpoint", &checkpoint),
                ("the metadata copy of --checkpoint", &metadata_copy),
            ],
            &inputs,
        )?;
        if let Some(resume) = &resume {
            crate::output::check_outputs(&[("--out", &out)], &[("--resume", resume)])?;
        }
        let schedule = || twist_learn::train::exponential_schedule(steps);
        let (task, eval_at) = match task {
            TaskArg::Infilling => {
                if method != Method::Ctl {
                    bail!(
                        "the infilling task trains with --method ctl (conditional-SMC positives); found {}",
                        crate::training::method_name(method)
                    );
                }
                at_least("--cond-tokens", cond_tokens, 1)?;
                let eval_at = if eval_at.is_empty() {
                    std::iter::once(0).chain(schedule()).collect()
                } else {
                    eval_at
                };
                let eval_tasks = at_least("--eval-tasks", eval_tasks, 1)?;
                (TrainTask::Infilling { eval_tasks }, eval_at)
            }
            TaskArg::InfillingFixed => {
                at_least("--cond-tokens", cond_tokens, 1)?;
                let task = TrainTask::InfillingFixed {
                    task_seed: task_seed.unwrap_or(seed),
                    gibbs_sweeps: at_least("--gibbs-sweeps", gibbs_sweeps, 1)?,
                    eval_particles: at_least("--eval-particles", eval_particles, 2)?,
                };
                (
                    task,
                    if eval_at.is_empty() {
                        schedule()
                    } else {
                        eval_at
                    },
                )
            }
            TaskArg::Potential => (
                TrainTask::Potential {
                    potential,
                    exact,
                    replay,
                },
                if eval_at.is_empty() {
                    schedule()
                } else {
                    eval_at
                },
            ),
        };
        // Evaluations count this run's updates; an entry past them would be silently skipped.
        if let Some(&late) = eval_at.iter().find(|&&i| i > steps) {
            bail!(
                "--eval-at {late} is past --steps {steps}: evaluations count this run's updates \
                 (1 to {steps}), also when it resumes from a checkpoint"
            );
        }
        Ok(TrainSettings {
            task,
            method,
            positives,
            model: model.choice()?,
            prompt,
            tokens,
            cond_tokens,
            particles,
            steps,
            lr,
            head: head.choice()?,
            eval_at,
            fq_samples: at_least("--fq-samples", fq_samples, 2)?,
            seed,
            checkpoint,
            resume,
            out,
            fit,
            batch: match batch_source {
                BatchSourceArg::Sampled => BatchSource::Sampled,
                BatchSourceArg::TeacherForced => BatchSource::TeacherForced,
            },
        })
    }
}
