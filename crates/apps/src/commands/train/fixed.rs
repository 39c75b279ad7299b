//! `tsmc train --task infilling-fixed`: a twist for one infilling task, i.e. one continuation
//! c drawn jointly with an exact sample s* ~ sigma_c(s) ∝ p0(s | prompt) p0(c | prompt, s).
//!
//! Training sees c only (phi(s) = p0(c | prompt, s), any method through twist-learn's loop);
//! s* is held out. Afterwards a particle Gibbs chain started at s* and driven by the trained
//! twist (which does not depend on s*) turns the one exact sample into many, each marginally
//! exact, and every snapshot of the head (and p0) is measured on the same samples: F_q from
//! fresh draws, G_q on the chain's states (batch-means errors), log Z from the last head's twisted
//! SMC pair declared in advance, both KL estimates, and paired differences from p0.

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use lm_burn::heads::TwistHead;
use lm_burn::infilling::InfillingPotential;
use smc_bounds::{Estimate, EvalPlan, Evaluation, KlEstimates, Method as BoundMethod};
use smc_core::feynman_kac::Resampling;
use smc_core::model::Twist;
use smc_core::seed;
use smc_core::smc::{Proposal, SmcConfig, rng_from_seed};
use twist_learn::Parameterization;

use super::settings::TrainSettings;
use crate::jsonl::Appender;
use crate::setup::{load_model_and_prompt, sampler};
use crate::training::{fresh_or_resumed_head, method_name, train_bar, train_with};

/// What defines the task and its measurement.
#[derive(Debug, Clone, Copy)]
pub struct FixedTask {
    /// Which (s*, c) pair to draw.
    pub task_seed: u64,
    /// Particle Gibbs sweeps from the held-out s*.
    pub gibbs_sweeps: usize,
    /// Particles of the evaluation's bounds and sweeps.
    pub eval_particles: usize,
}

/// Runs `tsmc train --task infilling-fixed`.
pub fn run(args: &TrainSettings, task: FixedTask) -> Result<()> {
    let FixedTask {
        task_seed,
        gibbs_sweeps,
        eval_particles,
    } = task;
    let method = args.method;
    let param = Parameterization::for_method(method);
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    loaded.check_size(
        &args.model,
        args.particles.max(eval_particles).max(args.fq_samples),
        args.tokens + args.cond_tokens,
    )?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let tokenizer = lm.tokenizer()?;
    let pair = smc_bounds::joint_ancestral(
        lm,
        prompt,
        args.tokens,
        args.cond_tokens,
        1,
        &mut rng_from_seed(seed::derive(task_seed, seed::label::APP_TASK, 0)),
    )?
    .remove(0);
    let c = pair.conditioning.clone().unwrap_or_default();
    let s_star = pair.tokens.clone();
    let c_text = tokenizer.decode(&c)?;
    eprintln!(
        "task (seed {task_seed}): {:?} + [{} tokens] + {:?}; the exact sample s* = {:?} is held out for evaluation",
        args.prompt,
        args.tokens,
        c_text,
        tokenizer.decode(&s_star)?
    );
    let phi = InfillingPotential::new(lm, c.clone());

    let ad = loaded.device.clone().autodiff();
    let (mut twist, resumed, start_step) = fresh_or_resumed_head(
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
    if let Some(path) = &args.resume
        && resumed["conditioning"] != json!(c)
    {
        bail!(
            "{}: the checkpoint was trained for conditioning tokens {}, but --task-seed {task_seed} draws {:?}",
            path.display(),
            resumed["conditioning"],
            c
        );
    }
    let eval_at = &args.eval_at;
    let meta = |step: usize| {
        json!({
            "method": method_name(method), "positives": args.positives.name(), "task": "infilling-fixed", "base_model": lm.name(), "step": step,
            "seed": args.seed, "task_seed": task_seed, "prompt": args.prompt, "tokens": args.tokens,
            "conditioning": c, "conditioning_text": c_text, "lr": args.lr, "bias_lr": args.head.bias_lr, "bias_optim": args.head.bias_optim_name(), "bias_gate": args.head.bias_gate_name(), "gate_lr": args.head.gate_lr, "init": args.head.init_name(),
        })
    };
    let cfg = args.train_config(start_step);
    let started = Instant::now();
    let mut snapshots: Vec<(usize, TwistHead)> = vec![(start_step, twist.head().clone())];
    let bar = train_bar(args.steps);
    train_with(
        args.positives,
        &[],
        lm,
        &mut twist,
        &phi,
        prompt,
        &cfg,
        |i, tw, loss| {
            bar.inc(1);
            bar.set_message(format!("{loss:.4}"));
            let step = start_step + i;
            curve.write(
                &json!({ "step": step, "seconds": started.elapsed().as_secs_f64(), "cpu_seconds": crate::progress::cpu_seconds(), "loss": loss }),
            )?;
            if eval_at.contains(&i) || i == args.steps {
                tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                snapshots.push((step, tw.head().clone()));
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "trained {} {} updates in {train_seconds:.0} s; evaluating {} heads and p0",
        args.steps,
        method_name(method),
        snapshots.len()
    );

    // Exact samples: a particle Gibbs chain from s*, driven by the last head.
    let last = &snapshots.last().expect("the initial head is a snapshot").1;
    let eval_cfg = SmcConfig {
        num_particles: eval_particles,
        horizon: args.tokens,
        proposal: Proposal::Twisted,
        resampling: Resampling::default(),
        seed: 0,
    };
    let gibbs_started = Instant::now();
    let chain = smc_bounds::particle_gibbs(
        lm,
        Some(last as &dyn Twist),
        &phi,
        prompt,
        &eval_cfg,
        &s_star,
        gibbs_sweeps,
        seed::derive(args.seed, seed::label::APP_EXACT_CHAIN, 0),
    )?;
    let mut exact = vec![s_star.clone()];
    exact.extend(chain.states.iter().cloned());
    eprintln!(
        "particle Gibbs: {} sweeps of K = {} in {:.0} s, {} moves, {} distinct states among {}",
        gibbs_sweeps,
        eval_particles,
        gibbs_started.elapsed().as_secs_f64(),
        chain.moves,
        {
            let mut all = exact.clone();
            all.sort();
            all.dedup();
            all.len()
        },
        exact.len()
    );

    // Every sampler (p0, then each snapshot) through the one evaluation API with the same plan:
    // the same exact samples and the same random numbers, so differences from p0 are paired.
    // The exact samples are consecutive states of a Markov chain: G_q's standard error comes
    // from batch means. The bounds are the SMC pair (conditional SMC around s* and the chain's
    // first states, in the order drawn: each marginally an exact draw from sigma).
    let batches = ((exact.len() as f64).sqrt().floor() as usize).clamp(2, exact.len().max(2));
    let plan = EvalPlan {
        fq_draws: args.fq_samples,
        lower_runs: 4,
        upper_refs: 4,
        lower_methods: vec![BoundMethod::Smc],
        upper_methods: vec![BoundMethod::Smc],
        exact_batches: (exact.len() >= 4).then_some(batches),
        ..EvalPlan::new(
            eval_particles,
            seed::derive(args.seed, seed::label::APP_EVAL, 0),
        )
    };
    let mut evals: Vec<(String, usize, Evaluation)> = Vec::new();
    let p0_eval = sampler(lm, prompt, args.tokens, &phi, None).evaluate(&exact, &plan)?;
    evals.push(("p0 (no twist)".to_string(), start_step, p0_eval));
    for (step, head) in &snapshots {
        let e = sampler(lm, prompt, args.tokens, &phi, Some(head)).evaluate(&exact, &plan)?;
        evals.push(("twisted".to_string(), *step, e));
    }
    // log Z: the last head's twisted SMC pair, declared in advance (no selection between
    // samplers or estimators, so each stays a bound in expectation).
    let log_z = evals.last().expect("p0 and the last head").2.log_z.clone();
    let (lower, upper) = (log_z.lower, log_z.upper);
    eprintln!(
        "bounds at K = {eval_particles}, last head's twisted SMC: lower {} , upper {} (95%, {} runs / {} references)",
        lower, upper, plan.lower_runs, plan.upper_refs
    );
    curve.write(&json!({ "type": "bounds", "sampler": "twisted SMC", "k": eval_particles, "lower": lower, "upper": upper }))?;
    let p0 = &evals[0].2;
    let mut rows: Vec<(String, usize, KlEstimates, Estimate)> = Vec::new();
    for (label, step, e) in &evals {
        let f_vs_p0 = Estimate::paired_difference(&e.f_q_values, &p0.f_q_values)?;
        let g_diff: Vec<f64> = e
            .g_q_values
            .iter()
            .zip(&p0.g_q_values)
            .map(|(a, b)| a - b)
            .collect();
        let g_vs_p0 = match plan.exact_batches {
            Some(b) => Estimate::batch_means(&g_diff, b)?,
            None => Estimate::from_values(&g_diff),
        };
        // Δ(G_q - F_q) against p0 = Δ KL(q||sigma) + Δ KL(sigma||q), free of log Z.
        let sum_vs_p0 = g_vs_p0.minus(&f_vs_p0);
        let kl = e.kl_with(&log_z);
        curve.write(&json!({
            "step": step, "seconds": started.elapsed().as_secs_f64(), "sampler": label,
            "eval": { "kl_q_sigma": kl.kl_q_sigma, "kl_sigma_q": kl.kl_sigma_q, "kl_sum": e.kl_sum,
                      "f_q": e.f_q, "g_q": e.g_q, "f_q_minus_p0": f_vs_p0, "g_q_minus_p0": g_vs_p0,
                      "kl_sum_minus_p0": sum_vs_p0, "log_z": kl.log_z,
                      "half_gap": kl.log_z_half_gap, "own_bounds": e.log_z },
        }))?;
        eprintln!(
            "step {step:>4} {label:<14} KL(q||sigma) = {}  KL(sigma||q) = {}  G_q - F_q = {}  F_q = {:.3}  G_q = {:.3}  paired vs p0: F_q {:+.3} ± {:.3}, G_q {:+.3} ± {:.3}",
            kl.kl_q_sigma,
            kl.kl_sigma_q,
            e.kl_sum,
            e.f_q.mean,
            e.g_q.mean,
            f_vs_p0.mean,
            f_vs_p0.ci95(),
            g_vs_p0.mean,
            g_vs_p0.ci95()
        );
        rows.push((label.clone(), *step, kl, sum_vs_p0));
    }
    curve.write(&json!({
        "type": "summary", "method": method_name(method), "positives": args.positives.name(), "task_seed": task_seed, "conditioning": c,
        "conditioning_text": c_text, "held_out_exact": s_star, "gibbs_sweeps": gibbs_sweeps,
        "gibbs_moves": chain.moves, "exact_samples": exact.len(), "log_z_lower": lower,
        "log_z_upper": upper, "train_seconds": train_seconds,
        "seconds": started.elapsed().as_secs_f64(),
    }))?;
    print_table(&rows, &lower, &upper);
    println!(
        "{} {} updates for c = {:?} in {:.0} s (training {train_seconds:.0} s); head in {}, curve in {}",
        args.steps,
        method_name(method),
        c_text,
        started.elapsed().as_secs_f64(),
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

fn print_table(
    rows: &[(String, usize, KlEstimates, Estimate)],
    lower: &Estimate,
    upper: &Estimate,
) {
    println!(
        "log Z in [{:.3}, {:.3}] (midpoint {:.3}); ± is the 95% Student t half-width",
        lower.mean,
        upper.mean,
        0.5 * (lower.mean + upper.mean)
    );
    println!(
        "| update | sampler | KL(q‖σ) | KL(σ‖q) | G_q − F_q | Δ(G_q − F_q) vs p0, paired | F_q | G_q |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, step, e, delta) in rows {
        println!(
            "| {step} | {label} | {:.2} ± {:.2} | {:.2} ± {:.2} | {:.2} | {:+.2} ± {:.2} | {:.3} | {:.3} |",
            e.kl_q_sigma.mean,
            e.kl_q_sigma.ci95(),
            e.kl_sigma_q.mean,
            e.kl_sigma_q.ci95(),
            e.g_q.mean - e.f_q.mean,
            delta.mean,
            delta.ci95(),
            e.f_q.mean,
            e.g_q.mean
        );
    }
}
