//! `tsmc train --task infilling-fixed`: a twist for one infilling task, i.e. one continuation
//! c drawn jointly with an exact sample s* ~ sigma_c(s) ∝ p0(s | prompt) p0(c | prompt, s).
//!
//! Training sees c only (phi(s) = p0(c | prompt, s), any method through twist-learn's loop);
//! s* is held out. Afterwards a particle Gibbs chain started at s* and driven by the trained
//! twist (which does not depend on s*) turns the one exact sample into many, each marginally
//! exact, and every snapshot of the head (and p0) is measured on the same samples: F_q from
//! fresh draws, G_q on the chain's states, log Z from the tightest bounds, both KL estimates.

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use lm_burn::BurnLm;
use lm_burn::heads::TwistHead;
use lm_burn::infilling::InfillingPotential;
use smc_bounds::{Estimate, KlEstimates, Method as BoundMethod, Sampler, kl_estimates};
use smc_core::feynman_kac::Resampling;
use smc_core::model::{Potential, Twist};
use smc_core::smc::{Proposal, SmcConfig, rng_from_seed};
use twist_learn::{Parameterization, TrainConfig};

use super::settings::TrainSettings;
use crate::jsonl::JsonlWriter;
use crate::setup::load_model_and_prompt;
use crate::training::{Positives, fresh_or_resumed_head, method_name, train_bar, train_with};

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
    let mut curve = JsonlWriter::create(&args.out)?;
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let tokenizer = lm.tokenizer()?;
    let pair = smc_bounds::joint_ancestral(
        lm,
        prompt,
        args.tokens,
        args.cond_tokens,
        1,
        &mut rng_from_seed(task_seed),
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
        lm,
        args.head,
        None,
        args.seed,
        param,
        &ad,
    )?;
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
    // Update i draws its samples with seed `seed + start + i` (and `--positives gibbs` starts
    // its chain with `seed + start`): the same stream as the pair's when that equals the task seed, in which case
    // the draws of that update begin with the first token of s* (q starts at p0).
    let gibbs = u64::from(args.positives == Positives::Gibbs);
    let first = args
        .seed
        .wrapping_add(start_step as u64)
        .wrapping_add(1 - gibbs);
    if task_seed.wrapping_sub(first) < args.steps as u64 + gibbs {
        eprintln!(
            "warning: --task-seed {task_seed} is also the seed of a training update (seeds {first}..={}): that update's draws share the random stream that drew s*, so s* is not strictly held out; pick a task seed outside that range",
            args.seed.wrapping_add((start_step + args.steps) as u64)
        );
    }
    let eval_at = &args.eval_at;
    let meta = |step: usize| {
        json!({
            "method": method_name(method), "positives": args.positives.name(), "task": "infilling-fixed", "base_model": lm.name(), "step": step,
            "seed": args.seed, "task_seed": task_seed, "prompt": args.prompt, "tokens": args.tokens,
            "conditioning": c, "conditioning_text": c_text, "lr": args.lr, "init": args.head.init_name(),
        })
    };
    let cfg = TrainConfig {
        method,
        steps: args.steps,
        batch_size: args.particles,
        horizon: args.tokens,
        learning_rate: args.lr,
        seed: args.seed.wrapping_add(start_step as u64),
    };
    let started = Instant::now();
    let mut snapshots: Vec<(usize, TwistHead)> = vec![(start_step, twist.head().clone())];
    let bar = train_bar(args.steps);
    let mut io_error: Option<anyhow::Error> = None;
    train_with(
        args.positives,
        lm,
        &mut twist,
        &phi,
        prompt,
        &cfg,
        |i, tw, loss| {
            bar.inc(1);
            bar.set_message(format!("{loss:.4}"));
            let step = start_step + i;
            let mut record = || -> Result<()> {
                curve.write(
                &json!({ "step": step, "seconds": started.elapsed().as_secs_f64(), "loss": loss }),
            )?;
                if eval_at.contains(&i) || i == args.steps {
                    tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                    snapshots.push((step, tw.head().clone()));
                }
                Ok(())
            };
            if let Err(e) = record() {
                io_error = Some(e);
                return Err(smc_core::SmcError::backend(
                    "writing training outputs",
                    std::io::Error::other("see below"),
                ));
            }
            Ok(())
        },
    )
    .map_err(|e| io_error.take().unwrap_or_else(|| e.into()))?;
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
        args.seed.wrapping_add(5_000_011),
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

    // log Z: the last head's twisted SMC pair, declared in advance (no selection between
    // samplers or estimators, so each stays a bound in expectation). The upper bound's references
    // are s* and the chain's first states in the order drawn: each is marginally an exact draw
    // from sigma, which is all the bound needs.
    let bound_seed = args.seed.wrapping_add(7_000_003);
    let seeds: Vec<u64> = (0..4).map(|i| bound_seed + i).collect();
    let refs = &exact[..exact.len().min(4)];
    let k = eval_particles;
    let last_sampler = sampler_of(lm, prompt, args.tokens, &phi, Some(last));
    let lower = last_sampler.lower_bound(BoundMethod::Smc, k, &seeds)?;
    let upper = last_sampler.upper_bound(BoundMethod::Smc, k, refs, bound_seed)?;
    eprintln!(
        "bounds at K = {k}, twisted SMC: lower {:.3} ± {:.3}, upper {:.3} ± {:.3} (95%)",
        lower.mean,
        lower.ci95(),
        upper.mean,
        upper.ci95()
    );
    curve.write(&json!({ "type": "bounds", "sampler": "twisted SMC", "k": k, "lower": lower, "upper": upper }))?;

    // Every sampler on the same exact samples and the same F_q seed.
    let fq_seed = args.seed.wrapping_add(9_000_017);
    let p0_sampler = sampler_of(lm, prompt, args.tokens, &phi, None);
    let p0_g = p0_sampler.g_q_values(&exact)?;
    // Draw i of every sampler uses the same random numbers, so the per-draw differences from
    // p0 are i.i.d. pairs: their mean and standard error compare F_q more sharply.
    let p0_f = p0_sampler.f_q_values(args.fq_samples.max(2), fq_seed)?;
    let mut rows: Vec<(String, usize, KlEstimates, Estimate)> = Vec::new();
    let mut measure = |label: &str, step: usize, twist: Option<&dyn Twist>| -> Result<()> {
        let s = sampler_of(lm, prompt, args.tokens, &phi, twist);
        let f_values = s.f_q_values(args.fq_samples.max(2), fq_seed)?;
        let f_q = Estimate::from_values(&f_values);
        let g_values = s.g_q_values(&exact)?;
        let g_q = Estimate::from_values(&g_values);
        let paired = |a: &[f64], b: &[f64]| {
            let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            Estimate::from_values(&d)
        };
        let g_vs_p0 = paired(&g_values, &p0_g);
        let f_vs_p0 = paired(&f_values, &p0_f);
        // Δ(G_q - F_q) against p0 = Δ KL(q||sigma) + Δ KL(sigma||q), free of log Z.
        let sum_vs_p0 = Estimate {
            mean: g_vs_p0.mean - f_vs_p0.mean,
            se: (g_vs_p0.se.powi(2) + f_vs_p0.se.powi(2)).sqrt(),
            n: g_vs_p0.n.min(f_vs_p0.n),
        };
        let e = kl_estimates(f_q, g_q, lower, upper);
        let kl_sum = Estimate {
            mean: g_q.mean - f_q.mean,
            se: (g_q.se.powi(2) + f_q.se.powi(2)).sqrt(),
            n: f_q.n.min(g_q.n),
        };
        curve.write(&json!({
            "step": step, "seconds": started.elapsed().as_secs_f64(), "sampler": label,
            "eval": { "kl_q_sigma": e.kl_q_sigma, "kl_sigma_q": e.kl_sigma_q, "kl_sum": kl_sum,
                      "f_q": e.f_q, "g_q": e.g_q, "f_q_minus_p0": f_vs_p0, "g_q_minus_p0": g_vs_p0,
                      "kl_sum_minus_p0": sum_vs_p0, "log_z": e.log_z,
                      "half_gap": e.log_z_half_gap },
        }))?;
        eprintln!(
            "step {step:>4} {label:<14} KL(q||sigma) = {}  KL(sigma||q) = {}  G_q - F_q = {}  F_q = {:.3}  G_q = {:.3}  paired vs p0: F_q {:+.3} ± {:.3}, G_q {:+.3} ± {:.3}",
            e.kl_q_sigma,
            e.kl_sigma_q,
            kl_sum,
            e.f_q.mean,
            e.g_q.mean,
            f_vs_p0.mean,
            f_vs_p0.ci95(),
            g_vs_p0.mean,
            g_vs_p0.ci95()
        );
        rows.push((label.to_string(), step, e, sum_vs_p0));
        Ok(())
    };
    measure("p0 (no twist)", start_step, None)?;
    for (step, head) in &snapshots {
        measure("twisted", *step, Some(head))?;
    }
    curve.write(&json!({
        "type": "summary", "method": method_name(method), "positives": args.positives.name(), "task_seed": task_seed, "conditioning": c,
        "conditioning_text": c_text, "held_out_exact": s_star, "gibbs_sweeps": gibbs_sweeps,
        "gibbs_moves": chain.moves, "exact_samples": exact.len(), "log_z_lower": lower,
        "log_z_upper": upper, "train_seconds": train_seconds,
        "seconds": started.elapsed().as_secs_f64(),
    }))?;
    curve.finish()?;
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

fn sampler_of<'a>(
    lm: &'a BurnLm,
    prompt: &'a [u32],
    horizon: usize,
    potential: &'a dyn Potential,
    twist: Option<&'a dyn Twist>,
) -> Sampler<'a, BurnLm> {
    Sampler {
        lm,
        prompt,
        horizon,
        potential,
        twist,
        proposal: if twist.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: Resampling::default(),
    }
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
