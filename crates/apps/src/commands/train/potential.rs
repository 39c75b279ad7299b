//! `tsmc train --task potential`: a head for a fixed potential with any method through
//! twist-learn's loop; the curve records the loss of every update, and with exact samples the
//! evaluation steps are measured by F_q, G_q and both KL estimates.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use twist_learn::{HeadTrainable, Parameterization, TrainConfig};

use super::settings::TrainSettings;
use crate::jsonl::{JsonlWriter, read_exact};
use crate::potentials::PotentialSpec;
use crate::setup::load_model_and_prompt;
use crate::training::{fresh_or_resumed_head, method_name, train_bar, train_with};

/// Runs `tsmc train --task potential`: checkpoints at the evaluation steps and at the end.
pub fn run(args: &TrainSettings, potential: &PotentialSpec, exact: Option<&Path>) -> Result<()> {
    let method = args.method;
    let param = Parameterization::for_method(method);
    let mut curve = JsonlWriter::create(&args.out)?;
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let phi = potential.build(lm)?;
    let ad = loaded.device.clone().autodiff();
    let (mut twist, _, start_step) = fresh_or_resumed_head(
        args.resume.as_deref(),
        lm,
        args.head,
        None,
        args.seed,
        param,
        &ad,
    )?;
    let eval_at = &args.eval_at;
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
            "method": method_name(method), "positives": args.positives.name(), "task": "potential", "potential": potential.to_string(), "base_model": lm.name(),
            "step": step, "seed": args.seed, "prompt": args.prompt, "tokens": args.tokens, "lr": args.lr,
        })
    };
    let started = Instant::now();
    let evaluator = match exact {
        Some(path) => {
            let exact = read_exact(path, args.tokens)?;
            let e = PotentialEval::new(lm, prompt, args.tokens, phi.as_ref(), exact, args)?;
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
    train_with(args.positives, lm, &mut twist, phi.as_ref(), prompt, &cfg, |i, tw, loss| {
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
        method_name(method),
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
        args: &TrainSettings,
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
