//! `tsmc train --task infilling`: contrastive twist learning with a conditional head, evaluated
//! by both KL estimates averaged over fresh conditioning sequences.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use twist_learn::{
    HeadTrainable, InfillingConfig, InfillingEval, Parameterization, evaluate_infilling_with,
    train_infilling_ctl,
};

use super::settings::TrainSettings;
use crate::jsonl::Appender;
use crate::setup::load_model_and_prompt;
use crate::training::{fresh_or_resumed_head, train_bar};

#[derive(Serialize)]
struct CurvePoint<'a> {
    step: usize,
    seconds: f64,
    sampler: &'a str,
    eval: InfillingEval,
}

/// Runs `tsmc train --task infilling`.
pub fn run(args: &TrainSettings, eval_tasks: usize) -> Result<()> {
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    loaded.check_size(&args.model, args.particles, args.tokens + args.cond_tokens)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let ad = loaded.device.clone().autodiff();
    // A conditional head; its conditioning is set per task, so a placeholder sizes it.
    let placeholder = vec![prompt[0]; args.cond_tokens];
    let (mut twist, _, start_step) = fresh_or_resumed_head(
        args.resume.as_deref(),
        args.steps,
        lm,
        args.head,
        Some(placeholder),
        args.seed,
        Parameterization::Identity,
        &ad,
    )?;
    // Created once the model, the sizes and the head are known good: a run refused before
    // it starts leaves an earlier curve alone.
    let mut curve = Appender::create(&args.out)?;
    let eval_at = &args.eval_at;
    // The same plan (hence the same conditioning sequences and random numbers) at every
    // evaluation step, so the steps are paired.
    let plan = twist_learn::infilling_eval_plan(
        args.particles,
        smc_core::seed::derive(args.seed, smc_core::seed::label::APP_EVAL, 0),
    );
    let started = Instant::now();
    let evaluate = |twist: Option<&mut HeadTrainable>,
                    step: usize,
                    label: &str,
                    curve: &mut Appender|
     -> Result<InfillingEval> {
        let e = evaluate_infilling_with(
            lm,
            twist,
            prompt,
            args.tokens,
            args.cond_tokens,
            eval_tasks,
            &plan,
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
        seed: smc_core::seed::derive(args.seed, smc_core::seed::label::APP_TRAIN, 0),
        start_step,
        batch: args.batch,
    };
    let cond_encoding = twist.head().config.cond_encoding.name();
    let meta = |step: usize| {
        serde_json::json!({
            "method": "ctl", "task": "infilling", "base_model": lm.name(), "step": step, "seed": args.seed,
            "prompt": args.prompt, "tokens": args.tokens, "cond_tokens": args.cond_tokens, "lr": args.lr, "bias_lr": args.head.bias_lr, "bias_optim": args.head.bias_optim_name(), "bias_gate": args.head.bias_gate_name(), "gate_lr": args.head.gate_lr, "cond_encoding": cond_encoding,
        })
    };
    train_infilling_ctl(lm, &mut twist, prompt, &cfg, |i, tw, loss| -> Result<()> {
        bar.inc(1);
        bar.set_message(format!("{loss:.4}"));
        let step = start_step + i;
        curve.write(&serde_json::json!({
            "step": step, "seconds": started.elapsed().as_secs_f64(),
            "cpu_seconds": crate::progress::cpu_seconds(), "loss": loss,
        }))?;
        if eval_at.contains(&i) {
            bar.suspend(|| -> Result<()> {
                evaluate(Some(tw), step, "twisted", &mut curve)?;
                tw.save_checkpoint(&args.checkpoint, &meta(step))?;
                Ok(())
            })?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    twist.save_checkpoint(&args.checkpoint, &meta(start_step + args.steps))?;
    println!(
        "trained {} CTL updates in {:.0} s; head in {}, curve in {}",
        args.steps,
        started.elapsed().as_secs_f64(),
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}
