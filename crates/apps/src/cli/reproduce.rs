//! `tsmc reproduce` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use twist_learn::{Method, ReplayForm};

use super::fit::FitArgs;
use super::groups::{HeadArgs, MethodArg, ModelArgs, at_least};
use crate::commands::reproduce::ReproduceSettings;
use crate::presets::{ExactMethod, Preset};

/// Arguments of `tsmc reproduce`.
#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// The task preset (`tsmc tasks` lists them).
    #[arg(long, value_parser = parse_preset)]
    task: &'static Preset,
    /// Output tokens T (default: the paper's T for the task).
    #[arg(long, short = 't')]
    tokens: Option<usize>,
    /// Conditioning tokens m for infilling (default: the paper's).
    #[arg(long)]
    cond_tokens: Option<usize>,
    /// Methods to train (comma-separated; default: the task's methods).
    #[arg(long, value_enum, value_delimiter = ',')]
    methods: Vec<MethodArg>,
    /// Number of seeds (each: fresh exact samples, fresh heads, fresh draws).
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Twist updates per method and seed.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Particles per update.
    #[arg(long, short = 'k', default_value_t = 16)]
    particles: usize,
    /// Adam learning rate (constant). Through the output embedding one step moves log psi by
    /// up to about 3e4 times the rate on SmolLM2: 1e-4 overshoots, 1e-5 is what every measured
    /// improvement over p0 used (docs/training.md).
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    #[command(flatten)]
    head: HeadArgs,
    /// Particles K of the bounds on log Z.
    #[arg(long, default_value_t = 64)]
    eval_particles: usize,
    /// Draws from q for F_q.
    #[arg(long, default_value_t = 64)]
    fq_samples: usize,
    /// Exact samples per seed for G_q (infilling: conditioning sequences per seed).
    #[arg(long, default_value_t = 32)]
    exact_samples: usize,
    /// CTL's positives: replay this many exact samples per seed, drawn with the evaluation's
    /// but kept apart from them (0: the one-sample form's importance-weighted draws from q).
    /// Fixed-potential tasks only.
    #[arg(long, default_value_t = 0)]
    replay_samples: usize,
    /// With --replay-samples: CTL's positives are conditional SMC with the current twist around
    /// one replayed sample per update (its K final particles, weighted) instead of K replayed
    /// samples.
    #[arg(long)]
    replay_csmc: bool,
    /// With --replay-samples: one pool, drawn once from its own random stream, shared by every
    /// seed (a larger pool for the same rejection time; the intervals over seeds then leave
    /// out the pool's own randomness).
    #[arg(long)]
    replay_shared: bool,
    #[command(flatten)]
    fit: FitArgs,
    /// Exact samples per seed that seed the upper bounds (conditional SMC, SIS).
    #[arg(long, default_value_t = 3)]
    upper_samples: usize,
    /// Runs per lower bound.
    #[arg(long, default_value_t = 2)]
    lower_runs: usize,
    /// Give up collecting exact samples after this many draws from p0.
    #[arg(long, default_value_t = 50_000)]
    max_draws: usize,
    /// Per seed, also run bootstrap SMC with the particles that the twisted samplers' SMC time
    /// buys (K scaled by their seconds a run over bootstrap SMC's at --eval-particles), for the
    /// SMC table's equal-time column.
    #[arg(long)]
    equal_time: bool,
    /// Infilling: also evaluate p0 and each trained head with an exact final twist,
    /// psi_T(s_<T, v) = p0(c | prompt, s_<T, v) on each particle's top N tokens under p0 (the
    /// log of the p0-weighted mean of phi elsewhere): the samplers `lookahead` and `ctl+lookahead`.
    /// Costs N teacher-forced passes of the prompt, T and c per particle at step T.
    #[arg(long, value_name = "N")]
    lookahead: Option<usize>,
    /// With --lookahead: of a particle's top N tokens, score only the likeliest that hold this
    /// share of p0's mass (in (0, 1]; `tsmc sample --lookahead-mass`).
    #[arg(long, value_name = "P", requires = "lookahead")]
    lookahead_mass: Option<f64>,
    #[command(flatten)]
    model: ModelArgs,
    /// Output directory (records.jsonl, table.md, summary.json, smc.svg; default
    /// reproduce-TASK).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Only rebuild table.md, summary.json and smc.svg from the output directory's records.jsonl (e.g.
    /// after a run was stopped part-way); the other options should be those of the run.
    #[arg(long)]
    table_only: bool,
}

/// The files `tsmc reproduce` writes into `--out-dir` pass the rule every output passes
/// (`crate::output`): none may be the model or inside its directory, a link or a special file.
/// With `--table-only` records.jsonl is an input and only table.md, summary.json and smc.svg are written
/// (summary.json is read whole before it is replaced, as a resumed checkpoint is).
fn check_out_dir(out_dir: &std::path::Path, model: &str, table_only: bool) -> Result<()> {
    if std::fs::symlink_metadata(out_dir).is_ok_and(|m| !m.is_dir()) && !out_dir.is_dir() {
        bail!(
            "--out-dir {} exists and is not a directory",
            out_dir.display()
        );
    }
    let model_path = crate::output::model_input(model);
    let (records, table, summary, svg) = (
        out_dir.join("records.jsonl"),
        out_dir.join("table.md"),
        out_dir.join("summary.json"),
        out_dir.join("smc.svg"),
    );
    let mut inputs = vec![("--model", model_path.as_path())];
    let mut outputs = vec![
        ("table.md in --out-dir", table.as_path()),
        ("summary.json in --out-dir", summary.as_path()),
        ("smc.svg in --out-dir", svg.as_path()),
    ];
    if table_only {
        inputs.push(("records.jsonl in --out-dir", records.as_path()));
    } else {
        outputs.insert(0, ("records.jsonl in --out-dir", records.as_path()));
    }
    crate::output::check_outputs(&outputs, &inputs)
}

fn parse_preset(name: &str) -> Result<&'static Preset> {
    crate::presets::preset(name)
}

impl ReproduceArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<ReproduceSettings> {
        let Self {
            task: preset,
            tokens,
            cond_tokens,
            methods,
            seeds,
            steps,
            particles,
            lr,
            head,
            eval_particles,
            fq_samples,
            exact_samples,
            replay_samples,
            replay_csmc,
            replay_shared,
            fit,
            upper_samples,
            lower_runs,
            max_draws,
            equal_time,
            lookahead,
            lookahead_mass,
            model,
            out_dir,
            table_only,
        } = self;
        let methods: Vec<Method> = if methods.is_empty() {
            preset
                .methods
                .iter()
                .map(|m| m.parse())
                .collect::<Result<_, String>>()
                .map_err(anyhow::Error::msg)?
        } else {
            methods.into_iter().map(Method::from).collect()
        };
        if preset.exact == ExactMethod::JointAncestral && methods.iter().any(|&m| m != Method::Ctl)
        {
            bail!("the infilling tasks train with ctl only (conditional-SMC positives)");
        }
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--lr must be a positive number, found {lr}");
        }
        if replay_samples > 0 && preset.exact == ExactMethod::JointAncestral {
            bail!(
                "--replay-samples is for fixed-potential tasks; {} trains on conditional-SMC \
                 positives around each continuation's exact sample",
                preset.name
            );
        }
        if replay_samples == 0 {
            if replay_csmc {
                bail!("--replay-csmc needs exact samples to replay: give --replay-samples N");
            }
            if replay_shared {
                bail!("--replay-shared needs exact samples to replay: give --replay-samples N");
            }
        }
        let fit = fit.settings()?;
        if fit.is_some() && replay_samples == 0 {
            bail!("--fit-epochs fits the heads to CTL's replay pool: give --replay-samples N");
        }
        // Rejection accepts at most one sample per draw.
        match exact_samples.checked_add(replay_samples) {
            Some(n) if n <= max_draws => {}
            _ => bail!(
                "--exact-samples {exact_samples} plus --replay-samples {replay_samples} exceed \
                 --max-draws {max_draws}: rejection cannot accept more samples than it draws"
            ),
        }
        if replay_samples > 0 && !methods.contains(&Method::Ctl) {
            bail!("--replay-samples gives CTL its positives, but ctl is not among --methods");
        }
        let cond_tokens = cond_tokens.or(preset.cond_tokens);
        if head.cond_encoding.is_some() && cond_tokens.is_none() {
            bail!(
                "--cond-encoding is for conditional (infilling) heads; {} trains unconditional ones",
                preset.name
            );
        }
        if let Some(n) = lookahead {
            if preset.exact != ExactMethod::JointAncestral {
                bail!(
                    "--lookahead scores the continuation c of infilling tasks; {} has none",
                    preset.name
                );
            }
            if n == 0 {
                bail!("--lookahead needs at least one candidate token, found 0");
            }
        }
        if let Some(p) = lookahead_mass
            && !(p > 0.0 && p <= 1.0)
        {
            bail!("--lookahead-mass must lie in (0, 1], found {p}");
        }
        let out_dir =
            out_dir.unwrap_or_else(|| PathBuf::from(format!("reproduce-{}", preset.name)));
        check_out_dir(&out_dir, &model.model, table_only)?;
        Ok(ReproduceSettings {
            preset,
            tokens: at_least("--tokens", tokens.unwrap_or(preset.tokens), 1)?,
            cond_tokens,
            methods,
            seeds: at_least("--seeds", seeds, 1)?,
            steps: at_least("--steps", steps, 1)?,
            particles: at_least("--particles", particles, 2)?,
            lr,
            head: head.choice()?,
            eval_particles: at_least("--eval-particles", eval_particles, 2)?,
            fq_samples: at_least("--fq-samples", fq_samples, 1)?,
            exact_samples: at_least("--exact-samples", exact_samples, 1)?,
            replay_samples,
            replay_form: if replay_csmc {
                ReplayForm::Csmc
            } else {
                ReplayForm::Direct
            },
            replay_shared,
            fit,
            upper_samples,
            lower_runs,
            max_draws,
            model: model.choice()?,
            out_dir,
            table_only,
            equal_time,
            lookahead,
            lookahead_mass,
        })
    }
}
