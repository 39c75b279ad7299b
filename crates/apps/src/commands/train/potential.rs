//! `tsmc train --task potential`: a head for a fixed potential with any method through
//! twist-learn's loop; the curve records the loss of every update, and with exact samples the
//! evaluation steps are measured by F_q, G_q and both KL estimates.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use lm_burn::BurnLm;
use smc_bounds::{Estimate, EvalPlan, Evaluation, LogZBounds, Method};
use smc_core::model::{Potential, Twist};
use smc_core::seed;
use twist_learn::{HeadTrainable, Parameterization};

use super::settings::TrainSettings;
use crate::jsonl::{Appender, read_exact};
use crate::potentials::PotentialSpec;
use crate::progress::cpu_seconds;
use crate::setup::{load_model_and_prompt, sampler};
use crate::training::{fresh_or_resumed_head, method_name, train_bar, train_with};

/// Runs `tsmc train --task potential`: checkpoints at the evaluation steps and at the end.
pub fn run(
    args: &TrainSettings,
    potential: &PotentialSpec,
    exact: Option<&Path>,
    replay: Option<&Path>,
) -> Result<()> {
    let method = args.method;
    let param = Parameterization::for_method(method);
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    loaded.check_size(
        &args.model,
        args.particles.max(64).max(args.fq_samples),
        args.tokens,
    )?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let phi = potential.build(lm)?;
    let ad = loaded.device.clone().autodiff();
    let (mut twist, _, start_step) = fresh_or_resumed_head(
        args.resume.as_deref(),
        args.steps,
        lm,
        args.head,
        None,
        args.seed,
        param,
        &ad,
    )?;
    // Created once the model, the sizes and the head are known good: a run refused before
    // it starts leaves an earlier curve alone.
    let mut curve = Appender::create(&args.out)?;
    let eval_at = &args.eval_at;
    let cfg = args.train_config(start_step);
    let meta = |step: usize| {
        serde_json::json!({
            "method": method_name(method), "positives": args.positives.name(), "task": "potential", "potential": potential.to_string(), "base_model": lm.name(),
            "step": step, "seed": args.seed, "prompt": args.prompt, "tokens": args.tokens, "lr": args.lr, "bias_lr": args.head.bias_lr, "bias_optim": args.head.bias_optim_name(), "bias_gate": args.head.bias_gate_name(), "gate_lr": args.head.gate_lr,
        })
    };
    let started = Instant::now();
    let evaluator = match exact {
        Some(path) => {
            let exact = read_exact(path, args.tokens)?;
            let (e, p0) = PotentialEval::new(lm, prompt, args.tokens, phi.as_ref(), exact, args)?;
            e.report(&mut curve, start_step, "p0 (no twist)", &p0, started)?;
            let init = e.evaluate(Some(&twist))?;
            e.report(&mut curve, start_step, "twisted", &init, started)?;
            Some(e)
        }
        None => None,
    };
    let pool = match replay {
        Some(path) => read_exact(path, args.tokens)?,
        None => Vec::new(),
    };
    if let Some(fit) = args.fit {
        crate::setup::check_fit_size(lm, &args.model, pool.len(), args.tokens)?;
        let t0 = Instant::now();
        let seed = smc_core::seed::derive(args.seed, smc_core::seed::label::APP_FIT, 0);
        crate::training::fit_to_exact(lm, prompt, &mut twist, &pool, fit, seed)?;
        println!(
            "fitted the head to {} exact samples ({} epochs, Adam at {}) in {:.1} s",
            pool.len(),
            fit.epochs,
            fit.lr,
            t0.elapsed().as_secs_f64()
        );
        if let Some(e) = &evaluator {
            let eval = e.evaluate(Some(&twist))?;
            e.report(&mut curve, start_step, "fitted", &eval, started)?;
        }
    }
    let bar = train_bar(args.steps);
    train_with(
        args.positives,
        &pool,
        lm,
        &mut twist,
        phi.as_ref(),
        prompt,
        &cfg,
        |i, tw, loss| {
            bar.inc(1);
            bar.set_message(format!("{loss:.4}"));
            let step = start_step + i;
            curve.write(&serde_json::json!({ "step": step, "seconds": started.elapsed().as_secs_f64(), "cpu_seconds": cpu_seconds(), "loss": loss }))?;
            if eval_at.contains(&i) {
                tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                if let Some(e) = &evaluator {
                    let eval = e.evaluate(Some(tw))?;
                    bar.suspend(|| e.report(&mut curve, step, "twisted", &eval, started))?;
                }
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    twist.save_checkpoint(&args.checkpoint, &meta(start_step + args.steps))?;
    println!(
        "trained {} {} updates in {:.0} s; head in {} (evaluate with `tsmc bounds --twist`), curve in {}",
        args.steps,
        method_name(method),
        started.elapsed().as_secs_f64(),
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

/// Evaluation of a proposal for a fixed potential during training, through smc-bounds' one
/// evaluation API: the same plan (so the same random numbers: paired steps) for p0 and every
/// step; both KL estimates are taken around p0's log Z pair, computed once and declared in
/// advance (SIS lower and upper bounds at K = 64), so the curve's KL columns move only with F_q
/// and G_q. Every evaluation also gives its paired differences from p0 (draw j against draw j
/// for F_q, exact sample i against exact sample i for G_q): ΔKL(q‖σ) = -ΔF_q and
/// ΔKL(σ‖q) = ΔG_q, free of log Z and of the spread of the exact samples.
struct PotentialEval<'a> {
    lm: &'a BurnLm,
    prompt: &'a [u32],
    horizon: usize,
    potential: &'a dyn Potential,
    exact: Vec<Vec<u32>>,
    plan: EvalPlan,
    log_z: LogZBounds,
    /// p0's single-sample values behind F_q and G_q.
    p0_values: (Vec<f64>, Vec<f64>),
}

impl<'a> PotentialEval<'a> {
    /// Evaluates p0 (which fixes log Z's pair) and returns it with the evaluator.
    fn new(
        lm: &'a BurnLm,
        prompt: &'a [u32],
        horizon: usize,
        potential: &'a dyn Potential,
        exact: Vec<Vec<u32>>,
        args: &TrainSettings,
    ) -> Result<(Self, Evaluation)> {
        let plan = EvalPlan {
            fq_draws: args.fq_samples,
            lower_runs: 2,
            upper_refs: 4,
            lower_methods: vec![Method::Sis],
            upper_methods: vec![Method::Sis],
            ..EvalPlan::new(64, seed::derive(args.seed, seed::label::APP_EVAL, 0))
        };
        let p0 = sampler(lm, prompt, horizon, potential, None).evaluate(&exact, &plan)?;
        let me = Self {
            lm,
            prompt,
            horizon,
            potential,
            exact,
            plan,
            log_z: p0.log_z.clone(),
            p0_values: (p0.f_q_values.clone(), p0.g_q_values.clone()),
        };
        Ok((me, p0))
    }

    fn evaluate(&self, twist: Option<&HeadTrainable>) -> Result<Evaluation> {
        let tw = twist.map(|t| t as &dyn Twist);
        let sampler = sampler(self.lm, self.prompt, self.horizon, self.potential, tw);
        Ok(sampler.evaluate(&self.exact, &self.plan)?)
    }

    fn report(
        &self,
        curve: &mut Appender,
        step: usize,
        label: &str,
        e: &Evaluation,
        started: Instant,
    ) -> Result<()> {
        let kl = e.kl_with(&self.log_z);
        let d_f = Estimate::paired_difference(&e.f_q_values, &self.p0_values.0)?;
        let d_g = Estimate::paired_difference(&e.g_q_values, &self.p0_values.1)?;
        curve.write(&serde_json::json!({
            "step": step, "seconds": started.elapsed().as_secs_f64(), "sampler": label,
            "eval": { "kl_q_sigma": kl.kl_q_sigma, "kl_sigma_q": kl.kl_sigma_q, "kl_sum": e.kl_sum,
                      "f_q": e.f_q, "g_q": e.g_q, "log_z": kl.log_z, "half_gap": kl.log_z_half_gap,
                      "own_bounds": e.log_z, "f_q_vs_p0": d_f, "g_q_vs_p0": d_g },
        }))?;
        eprintln!(
            "step {step:>4} {label:<14} KL(q||sigma) = {}  KL(sigma||q) = {}  G_q - F_q = {}  F_q = {:.3}  G_q = {:.3}  (log Z {:.3})  paired vs p0: ΔKL(q||sigma) = {:+.3} ± {:.3}, ΔKL(sigma||q) = {:+.3} ± {:.3} (95%, t with {} and {} df)",
            kl.kl_q_sigma,
            kl.kl_sigma_q,
            e.kl_sum,
            e.f_q.mean,
            e.g_q.mean,
            kl.log_z.mean,
            -d_f.mean,
            d_f.ci95(),
            d_g.mean,
            d_g.ci95(),
            d_f.df,
            d_g.df
        );
        Ok(())
    }
}
