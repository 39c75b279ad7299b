//! `tsmc train`: twist learning on a language model. Today: contrastive twist learning for the
//! infilling task with a conditional head, evaluated by both KL estimates averaged over fresh
//! conditioning sequences; a JSONL curve, atomic resumable checkpoints, a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use lm_burn::Backend;
use lm_burn::heads::{HeadConfig, HeadKind, TwistHead};
use twist_learn::{
    AdamConfig, HeadTrainable, InfillingConfig, InfillingEval, Parameterization,
    evaluate_infilling, train_infilling_ctl,
};

use crate::output::JsonlWriter;

/// Arguments of `tsmc train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The task: infilling (conditional twists; each update draws T + m tokens from p0),
    /// infilling-fixed (one continuation c drawn with --task-seed, its exact sample s* held out
    /// and measured after training through a particle Gibbs chain), or potential (a fixed
    /// --potential such as toxicity:beta=1; evaluate with `tsmc bounds --twist`).
    #[arg(long, default_value = "infilling")]
    pub(crate) task: String,
    /// The method: ctl, rl, sixo, fudge or dpg (infilling: ctl).
    #[arg(long, default_value = "ctl")]
    pub(crate) method: String,
    /// The potential of the `potential` task (as for `tsmc sample`).
    #[arg(long, default_value = "toxicity:beta=1")]
    pub(crate) potential: String,
    /// `default`, a Hugging Face model directory or a .gguf file.
    #[arg(long, default_value = "default")]
    pub(crate) model: String,
    /// The prompt.
    #[arg(long, default_value = "Once upon a time, there was a")]
    pub(crate) prompt: String,
    /// Output tokens T.
    #[arg(long, short = 't', default_value_t = 10)]
    pub(crate) tokens: usize,
    /// Conditioning tokens m.
    #[arg(long, default_value_t = 5)]
    pub(crate) cond_tokens: usize,
    /// Particles per update.
    #[arg(long, short = 'k', default_value_t = 16)]
    pub(crate) particles: usize,
    /// Number of updates.
    #[arg(long, default_value_t = 32)]
    pub(crate) steps: usize,
    /// Adam learning rate (constant; 1e-3 overshoots with the default model's heads, see
    /// docs/training.md).
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) lr: f64,
    /// Head: linear or mlp.
    #[arg(long, default_value = "linear")]
    pub(crate) head: String,
    /// Initialisation: `xavier` (every layer N(0, 2/(fan_in + fan_out)), the spec's) or
    /// `zero-output` (the output layer at 0, so the twisted proposal starts at p0).
    #[arg(long, default_value = "xavier")]
    pub(crate) init: String,
    /// Evaluate at these updates (comma-separated; default: 0, 1, 2, 4, 8, ... and the last).
    #[arg(long, value_delimiter = ',')]
    pub(crate) eval_at: Vec<usize>,
    /// Conditioning sequences per evaluation.
    #[arg(long, default_value_t = 8)]
    pub(crate) eval_tasks: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Where to write the head (safetensors; metadata beside it as .json), after every evaluation.
    #[arg(long, default_value = "twist-head.safetensors")]
    pub(crate) checkpoint: PathBuf,
    /// Continue from this checkpoint (head, Adam's state and step count).
    #[arg(long)]
    pub(crate) resume: Option<PathBuf>,
    /// Training curve (JSON lines).
    #[arg(long, default_value = "train-curve.jsonl")]
    pub(crate) out: PathBuf,
    /// Exact samples (`tsmc exact`) for the `potential` task: evaluates p0 and the twist at the
    /// evaluation steps by F_q, G_q, G_q - F_q and both KL estimates (log Z from p0's bounds).
    #[arg(long)]
    pub(crate) exact: Option<PathBuf>,
    /// Draws from q for F_q at each evaluation (`potential` task with --exact).
    #[arg(long, default_value_t = 64)]
    pub(crate) fq_samples: usize,
    /// CTL's positives for `potential` and `infilling-fixed`: `sis` (the one-sample form:
    /// draws from q weighted by sigma~/q) or `gibbs` (conditional SMC around the state of a
    /// particle Gibbs chain carried across updates, started at a draw from q).
    #[arg(long, default_value = "sis")]
    pub(crate) positives: String,
    /// `infilling-fixed`: which (s*, c) pair to draw (default: --seed).
    #[arg(long)]
    pub(crate) task_seed: Option<u64>,
    /// `infilling-fixed`: particle Gibbs sweeps from the held-out s* (exact samples for G_q).
    #[arg(long, default_value_t = 32)]
    pub(crate) gibbs_sweeps: usize,
    /// `infilling-fixed`: particles of the evaluation's bounds and particle Gibbs sweeps.
    #[arg(long, default_value_t = 32)]
    pub(crate) eval_particles: usize,
    /// cpu, wgpu, wgpu-cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: Backend,
}

#[derive(Serialize)]
struct CurvePoint<'a> {
    step: usize,
    seconds: f64,
    sampler: &'a str,
    eval: InfillingEval,
}

/// The head kind named by `--head`.
pub fn head_kind(name: &str) -> Result<HeadKind> {
    Ok(match name {
        "linear" => HeadKind::Linear,
        "mlp" => HeadKind::Mlp,
        other => bail!("unknown --head {other:?}: expected linear or mlp"),
    })
}

/// The head configuration for `lm` with the `--init` choice.
pub fn head_config(
    lm: &lm_burn::BurnLm,
    kind: HeadKind,
    conditioning: Option<Vec<u32>>,
    init: &str,
) -> Result<HeadConfig> {
    let mut config = HeadConfig::for_model(lm, kind, conditioning);
    config.zero_output = match init {
        "xavier" => false,
        "zero-output" => true,
        other => bail!("unknown --init {other:?}: expected xavier or zero-output"),
    };
    Ok(config)
}

/// Checks `--positives` against the method.
pub fn check_positives(args: &TrainArgs, method: twist_learn::Method) -> Result<()> {
    match args.positives.as_str() {
        "sis" => Ok(()),
        "gibbs" if method == twist_learn::Method::Ctl => Ok(()),
        "gibbs" => bail!(
            "--positives gibbs is for --method ctl (conditional-SMC positives); found {:?}",
            args.method
        ),
        other => bail!("unknown --positives {other:?}: expected sis or gibbs"),
    }
}

/// Trains `twist` with `cfg.method`, CTL's positives as `--positives` says.
pub fn train_with<W: twist_learn::TrainableTwist>(
    positives: &str,
    lm: &lm_burn::BurnLm,
    twist: &mut W,
    potential: &dyn smc_core::model::Potential,
    prompt: &[u32],
    cfg: &twist_learn::TrainConfig,
    on_step: impl FnMut(usize, &W, f64) -> smc_core::Result<()>,
) -> smc_core::Result<Vec<twist_learn::TrainRecord>> {
    if positives == "gibbs" {
        twist_learn::train_ctl_particle_gibbs(lm, twist, potential, prompt, cfg, None, on_step)
    } else {
        twist_learn::train(lm, twist, potential, prompt, cfg, on_step)
    }
}

/// A plain (unconditional) head for `lm`, fresh from `--init` and `--seed`, or resumed from
/// `--resume` (head, Adam's state); returns it with the checkpoint's metadata (null when fresh)
/// and the update count it starts from.
pub fn fresh_or_resumed_head(
    args: &TrainArgs,
    lm: &lm_burn::BurnLm,
    kind: HeadKind,
    param: Parameterization,
    device: &lm_burn::Device,
) -> Result<(HeadTrainable, serde_json::Value, usize)> {
    Ok(match &args.resume {
        Some(path) => {
            let (t, meta) = HeadTrainable::resume(path, device, param, AdamConfig::default())
                .with_context(|| format!("resuming from {}", path.display()))?;
            let step = meta["step"].as_u64().unwrap_or(0) as usize;
            (t, meta, step)
        }
        None => (
            HeadTrainable::new(
                TwistHead::new(
                    lm,
                    head_config(lm, kind, None, &args.init)?,
                    args.seed,
                    device,
                )?,
                param,
                AdamConfig::default(),
            ),
            serde_json::Value::Null,
            0,
        ),
    })
}

/// The progress bar of a training run (current loss, elapsed and remaining time).
pub fn train_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("train {pos}/{len} [{bar:30}] loss {msg} {elapsed}/{eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs `tsmc train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let method: twist_learn::Method = args.method.parse().map_err(anyhow::Error::msg)?;
    match args.task.as_str() {
        "infilling" if method == twist_learn::Method::Ctl => {}
        "infilling" => bail!(
            "the infilling task trains with --method ctl (conditional-SMC positives); found {:?}",
            args.method
        ),
        "potential" => {
            check_positives(args, method)?;
            return train_on_potential(args, method);
        }
        "infilling-fixed" => {
            check_positives(args, method)?;
            return crate::train_fixed::run(args, method);
        }
        other => {
            bail!(
                "unknown --task {other:?}: expected infilling, infilling-fixed or potential (with --potential)"
            )
        }
    }
    if args.prompt.is_empty() || args.tokens == 0 || args.cond_tokens == 0 || args.particles < 2 {
        bail!("need a non-empty --prompt, --tokens >= 1, --cond-tokens >= 1 and --particles >= 2");
    }
    let kind = head_kind(&args.head)?;
    let mut curve = JsonlWriter::create(&args.out)?;
    let (lm, prompt, device) =
        crate::common::load_model_and_prompt(&args.model, args.backend, &args.prompt)?;
    let ad = device.clone().autodiff();
    let (mut twist, start_step) = match &args.resume {
        Some(path) => {
            let (twist, meta) =
                HeadTrainable::resume(path, &ad, Parameterization::Identity, AdamConfig::default())
                    .with_context(|| format!("resuming from {}", path.display()))?;
            (twist, meta["step"].as_u64().unwrap_or(0) as usize)
        }
        None => {
            let placeholder = vec![prompt[0]; args.cond_tokens];
            let head = TwistHead::new(
                &lm,
                head_config(&lm, kind, Some(placeholder), &args.init)?,
                args.seed,
                &ad,
            )?;
            (
                HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default()),
                0,
            )
        }
    };
    let mut eval_at = args.eval_at.clone();
    if eval_at.is_empty() {
        eval_at = std::iter::once(0)
            .chain(twist_learn::train::exponential_schedule(args.steps))
            .collect();
    }
    let eval_seed = args.seed.wrapping_add(1_000_003);
    let started = Instant::now();
    let evaluate = |twist: Option<&mut HeadTrainable>,
                    step: usize,
                    label: &str,
                    curve: &mut JsonlWriter|
     -> Result<InfillingEval> {
        let e = evaluate_infilling(
            &lm,
            twist,
            &prompt,
            args.tokens,
            args.cond_tokens,
            args.eval_tasks,
            args.particles,
            eval_seed,
        )?;
        curve.write(&CurvePoint {
            step,
            seconds: started.elapsed().as_secs_f64(),
            sampler: label,
            eval: e,
        })?;
        eprintln!(
            "step {step:>4} {label:<14} KL(q||sigma) = {}  KL(sigma||q) = {}  sum (G_q - F_q) = {}  log Z in [{:.2}, {:.2}]  F_q = {:.2}  G_q = {:.2}",
            e.kl_q_sigma,
            e.kl_sigma_q,
            e.kl_sum,
            e.log_z_lower.mean,
            e.log_z_upper.mean,
            e.f_q.mean,
            e.g_q.mean
        );
        Ok(e)
    };
    evaluate(None, start_step, "p0 (no twist)", &mut curve)?;
    if eval_at.contains(&0) && start_step == 0 {
        evaluate(Some(&mut twist), 0, "twisted", &mut curve)?;
    }
    let bar = train_bar(args.steps);
    let cfg = InfillingConfig {
        horizon: args.tokens,
        cond_len: args.cond_tokens,
        batch_size: args.particles,
        steps: args.steps,
        learning_rate: args.lr,
        seed: args.seed.wrapping_add(start_step as u64),
    };
    let meta = |step: usize| {
        serde_json::json!({
            "method": "ctl", "task": "infilling", "base_model": lm.name(), "step": step, "seed": args.seed,
            "prompt": args.prompt, "tokens": args.tokens, "cond_tokens": args.cond_tokens, "lr": args.lr,
        })
    };
    train_infilling_ctl(&lm, &mut twist, &prompt, &cfg, |i, tw, loss| {
        bar.inc(1);
        bar.set_message(format!("{loss:.4}"));
        let step = start_step + i;
        if eval_at.contains(&i) {
            bar.suspend(|| -> Result<()> {
                evaluate(Some(tw), step, "twisted", &mut curve)?;
                tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                Ok(())
            })
            .map_err(|e| {
                smc_core::SmcError::backend("evaluation", std::io::Error::other(e.to_string()))
            })?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    twist.save_checkpoint(&args.checkpoint, &meta(start_step + args.steps))?;
    curve.finish()?;
    println!(
        "trained {} CTL updates in {:.0} s; head in {}, curve in {}",
        args.steps,
        started.elapsed().as_secs_f64(),
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

/// Trains a head for a fixed potential with any method through twist-learn's loop; the curve
/// records the loss of every update; checkpoints at the evaluation steps and at the end.
fn train_on_potential(args: &TrainArgs, method: twist_learn::Method) -> Result<()> {
    use twist_learn::TrainConfig;
    if args.prompt.is_empty() || args.tokens == 0 || args.particles < 2 {
        bail!("need a non-empty --prompt, --tokens >= 1 and --particles >= 2");
    }
    let kind = head_kind(&args.head)?;
    let param = Parameterization::for_method(method);
    let mut curve = JsonlWriter::create(&args.out)?;
    let (lm, prompt, device) =
        crate::common::load_model_and_prompt(&args.model, args.backend, &args.prompt)?;
    let phi = crate::potentials::parse(&args.potential, &lm)?;
    let ad = device.clone().autodiff();
    let (mut twist, _, start_step) = fresh_or_resumed_head(args, &lm, kind, param, &ad)?;
    let eval_at: Vec<usize> = if args.eval_at.is_empty() {
        twist_learn::train::exponential_schedule(args.steps)
    } else {
        args.eval_at.clone()
    };
    let cfg = TrainConfig {
        method,
        steps: args.steps,
        batch_size: args.particles,
        horizon: args.tokens,
        learning_rate: args.lr,
        seed: args.seed.wrapping_add(start_step as u64),
    };
    let meta = |step: usize| {
        serde_json::json!({
            "method": args.method, "positives": args.positives, "task": "potential", "potential": args.potential, "base_model": lm.name(),
            "step": step, "seed": args.seed, "prompt": args.prompt, "tokens": args.tokens, "lr": args.lr,
        })
    };
    let started = Instant::now();
    let evaluator = match &args.exact {
        Some(path) => {
            let exact = crate::bounds::read_exact(path, args.tokens)?;
            let e = PotentialEval::new(&lm, &prompt, args.tokens, phi.as_ref(), exact, args)?;
            let p0 = e.evaluate(None, args.seed)?;
            e.report(&mut curve, start_step, "p0 (no twist)", &p0, started)?;
            let init = e.evaluate(Some(&twist), args.seed)?;
            e.report(&mut curve, start_step, "twisted", &init, started)?;
            Some(e)
        }
        None => None,
    };
    let bar = train_bar(args.steps);
    let mut io_error: Option<anyhow::Error> = None;
    train_with(&args.positives, &lm, &mut twist, phi.as_ref(), &prompt, &cfg, |i, tw, loss| {
        bar.inc(1);
        bar.set_message(format!("{loss:.4}"));
        let step = start_step + i;
        let mut record = || -> Result<()> {
            curve.write(&serde_json::json!({ "step": step, "seconds": started.elapsed().as_secs_f64(), "loss": loss }))?;
            if eval_at.contains(&i) {
                tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                if let Some(e) = &evaluator {
                    let eval = e.evaluate(Some(tw), args.seed.wrapping_add(step as u64))?;
                    bar.suspend(|| e.report(&mut curve, step, "twisted", &eval, started))?;
                }
            }
            Ok(())
        };
        if let Err(e) = record() {
            io_error = Some(e);
            return Err(smc_core::SmcError::backend("writing training outputs", std::io::Error::other("see below")));
        }
        Ok(())
    })
    .map_err(|e| io_error.take().unwrap_or_else(|| e.into()))?;
    bar.finish_and_clear();
    twist.save_checkpoint(&args.checkpoint, &meta(start_step + args.steps))?;
    curve.finish()?;
    println!(
        "trained {} {} updates in {:.0} s; head in {} (evaluate with `tsmc bounds --twist`), curve in {}",
        args.steps,
        args.method,
        started.elapsed().as_secs_f64(),
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

/// Evaluation of a proposal for a fixed potential during training: F_q from fresh draws, G_q
/// from exact samples, and both KL estimates around one log Z (the midpoint of p0's SIS lower
/// bound and SIS upper bound at K = 64, computed once).
struct PotentialEval<'a> {
    lm: &'a lm_burn::BurnLm,
    prompt: &'a [u32],
    horizon: usize,
    potential: &'a dyn smc_core::model::Potential,
    exact: Vec<Vec<u32>>,
    fq_samples: usize,
    lower: smc_bounds::Estimate,
    upper: smc_bounds::Estimate,
}

impl<'a> PotentialEval<'a> {
    fn new(
        lm: &'a lm_burn::BurnLm,
        prompt: &'a [u32],
        horizon: usize,
        potential: &'a dyn smc_core::model::Potential,
        exact: Vec<Vec<u32>>,
        args: &TrainArgs,
    ) -> Result<Self> {
        let sampler = Self::sampler_of(lm, prompt, horizon, potential, None);
        let s = args.seed.wrapping_add(77);
        let lower = sampler.lower_bound(smc_bounds::Method::Sis, 64, &[s, s + 1])?;
        let refs = &exact[..exact.len().min(4)];
        let upper = sampler.upper_bound(smc_bounds::Method::Sis, 64, refs, s + 2)?;
        Ok(Self {
            lm,
            prompt,
            horizon,
            potential,
            exact,
            fq_samples: args.fq_samples.max(2),
            lower,
            upper,
        })
    }

    fn sampler_of<'b>(
        lm: &'b lm_burn::BurnLm,
        prompt: &'b [u32],
        horizon: usize,
        potential: &'b dyn smc_core::model::Potential,
        twist: Option<&'b dyn smc_core::model::Twist>,
    ) -> smc_bounds::Sampler<'b, lm_burn::BurnLm> {
        smc_bounds::Sampler {
            lm,
            prompt,
            horizon,
            potential,
            twist,
            proposal: if twist.is_some() {
                smc_core::smc::Proposal::Twisted
            } else {
                smc_core::smc::Proposal::Base
            },
            resampling: smc_core::feynman_kac::Resampling::default(),
        }
    }

    fn evaluate(
        &self,
        twist: Option<&HeadTrainable>,
        seed: u64,
    ) -> smc_core::Result<smc_bounds::KlEstimates> {
        let tw = twist.map(|t| t as &dyn smc_core::model::Twist);
        let sampler = Self::sampler_of(self.lm, self.prompt, self.horizon, self.potential, tw);
        let f_q = sampler.f_q(self.fq_samples, seed.wrapping_mul(31).wrapping_add(7))?;
        let g_q = sampler.g_q(&self.exact)?;
        Ok(smc_bounds::kl_estimates(f_q, g_q, self.lower, self.upper))
    }

    fn report(
        &self,
        curve: &mut JsonlWriter,
        step: usize,
        label: &str,
        e: &smc_bounds::KlEstimates,
        started: Instant,
    ) -> Result<()> {
        let kl_sum = smc_bounds::Estimate {
            mean: e.g_q.mean - e.f_q.mean,
            se: (e.g_q.se.powi(2) + e.f_q.se.powi(2)).sqrt(),
            n: e.f_q.n.min(e.g_q.n),
        };
        curve.write(&serde_json::json!({
            "step": step, "seconds": started.elapsed().as_secs_f64(), "sampler": label,
            "eval": { "kl_q_sigma": e.kl_q_sigma, "kl_sigma_q": e.kl_sigma_q, "kl_sum": kl_sum,
                      "f_q": e.f_q, "g_q": e.g_q, "log_z": e.log_z, "half_gap": e.log_z_half_gap },
        }))?;
        eprintln!(
            "step {step:>4} {label:<14} KL(q||sigma) = {}  KL(sigma||q) = {}  G_q - F_q = {}  F_q = {:.3}  G_q = {:.3}  (log Z {:.3})",
            e.kl_q_sigma, e.kl_sigma_q, kl_sum, e.f_q.mean, e.g_q.mean, e.log_z.mean
        );
        Ok(())
    }
}
