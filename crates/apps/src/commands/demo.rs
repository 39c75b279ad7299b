//! `tsmc demo`: the whole pipeline on an enumerable tabular model, checked against exact values.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;

use smc_bounds::{Estimate, KlEstimates, Sampler, kl_estimates, rejection_indicator};
use smc_core::feynman_kac::Resampling;
use smc_core::prelude::*;

use crate::jsonl::JsonlWriter;

/// The validated settings of `tsmc demo`.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Vocabulary size V of the tabular model (at least 2).
    pub vocab: usize,
    /// Output tokens T (V^T sequences are enumerated).
    pub horizon: usize,
    /// Particle counts K (each at least 1).
    pub particles: Vec<usize>,
    /// Independent runs per bound (at least 2).
    pub seeds: usize,
    /// Noise added to the optimal twists to make the demo's "learned" twist.
    pub twist_noise: f64,
    /// Resampling of the SMC bounds.
    pub resampling: Resampling,
    /// Seed of everything random.
    pub seed: u64,
    /// JSONL output.
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row<'a> {
    sampler: &'a str,
    k: usize,
    log_z_exact: f64,
    sis_lower: Estimate,
    sis_upper: Estimate,
    smc_lower: Estimate,
    smc_upper: Option<Estimate>,
    kl_q_sigma_exact: f64,
    kl_sigma_q_exact: f64,
    estimates: KlEstimates,
}

/// Runs the demo.
pub fn run(args: &DemoSettings) -> Result<()> {
    let mut writer = args.out.as_deref().map(JsonlWriter::create).transpose()?;

    let lm = TabularLm::random(args.vocab, 2, 1.5, args.seed);
    let target = (args.vocab - 1) as u32;
    let name = format!("contains {target} {target}");
    let phi = FnPotential::new(name.clone(), move |_: &[u32], s: &[u32]| {
        log_indicator(s.windows(2).any(|w| w[0] == target && w[1] == target))
    });
    let prompt = [0u32];
    let exact = Enumeration::new(&lm, &prompt, args.horizon, &phi)?;
    println!(
        "Tabular LM: V = {}, order 2, T = {} ({} sequences); potential: 1[{name}]",
        args.vocab,
        args.horizon,
        exact.len()
    );
    println!(
        "exact log Z = {:.5} (Z = {:.4e})",
        exact.log_z(),
        exact.log_z().exp()
    );

    // Exact target samples by rejection from p0, as with a real model.
    let mut rng = rng_from_seed(smc_core::seed::derive(
        args.seed,
        smc_core::seed::label::APP_EXACT,
        0,
    ));
    let collected = rejection_indicator(
        &lm,
        &prompt,
        args.horizon,
        &phi,
        args.seeds,
        1024,
        10_000_000,
        &mut rng,
    )?;
    if collected.samples.len() < args.seeds {
        bail!(
            "rejection sampling found only {} of {} exact samples in {} draws",
            collected.samples.len(),
            args.seeds,
            collected.draws
        );
    }
    println!(
        "collected {} exact samples by rejection in {} draws (acceptance {:.4}, Z = {:.4})",
        collected.samples.len(),
        collected.draws,
        collected.acceptance_rate(),
        exact.log_z().exp()
    );
    let exact_samples: Vec<Vec<u32>> = collected.samples.into_iter().map(|s| s.tokens).collect();

    println!(
        "± below is the 95% Student t half-width: lower bounds over {} runs ({} degrees of freedom), upper bounds over the {} exact samples ({})",
        args.seeds,
        args.seeds - 1,
        exact_samples.len(),
        exact_samples.len() - 1
    );
    let optimal = exact.optimal_twist();
    let learned = optimal.perturbed(
        args.twist_noise,
        smc_core::seed::derive(args.seed, smc_core::seed::label::APP_TWIST_NOISE, 0),
    );
    let resampling = args.resampling;
    let samplers: [(&str, Option<&dyn Twist>, Proposal); 3] = [
        ("bootstrap (p0, no twist)", None, Proposal::Base),
        ("twisted, noisy twist", Some(&learned), Proposal::Twisted),
        ("twisted, optimal twist", Some(&optimal), Proposal::Twisted),
    ];
    for (label, twist, proposal) in samplers {
        let sampler = Sampler {
            lm: &lm,
            prompt: &prompt,
            horizon: args.horizon,
            potential: &phi,
            twist,
            proposal,
            resampling,
        };
        let log_q = exact.proposal_log_q(&lm, &prompt, twist, proposal)?;
        let (kl_qs, kl_sq) = (exact.kl_q_sigma(&log_q), exact.kl_sigma_q(&log_q));
        let f_q = sampler.f_q(10 * args.seeds, args.seed)?;
        let g_q = sampler.g_q(&exact_samples)?;
        println!("\n{label}");
        println!(
            "  {:>5}  {:>19}  {:>19}  {:>19}  {:>19}",
            "K", "SIS lower", "SMC lower", "SMC upper", "SIS upper"
        );
        let rows = sampler.bounds_over_k(&args.particles, args.seeds, &exact_samples, args.seed)?;
        for r in &rows {
            println!(
                "  {:>5}  {:>19}  {:>19}  {:>19}  {:>19}",
                r.k,
                r.sis_lower.to_string(),
                r.smc_lower.to_string(),
                r.smc_upper
                    .map_or("n/a (needs multinomial)".to_string(), |e| e.to_string()),
                r.sis_upper.to_string()
            );
            // The SMC pair, fixed in advance (no selection of the tighter bound).
            let (lower, upper) = r.smc_pair();
            let kl = kl_estimates(f_q, g_q, lower, upper);
            if let Some(w) = writer.as_mut() {
                w.write(&Row {
                    sampler: label,
                    k: r.k,
                    log_z_exact: exact.log_z(),
                    sis_lower: r.sis_lower,
                    sis_upper: r.sis_upper,
                    smc_lower: r.smc_lower,
                    smc_upper: r.smc_upper,
                    kl_q_sigma_exact: kl_qs,
                    kl_sigma_q_exact: kl_sq,
                    estimates: kl,
                })?;
            }
        }
        if rows.iter().any(|r| r.smc_upper.is_none()) {
            println!(
                "  (no SMC upper bound: conditional SMC's E[log Zhat] >= log Z is guaranteed only for multinomial resampling; the KL estimates use the SIS upper bound)"
            );
        }
        if let Some(last) = rows.last() {
            let (lower, upper) = last.smc_pair();
            let kl = kl_estimates(f_q, g_q, lower, upper);
            println!(
                "  KL(q||sigma) = {} (exact {kl_qs:.4});  KL(sigma||q) = {} (exact {kl_sq:.4})",
                kl.kl_q_sigma, kl.kl_sigma_q
            );
        }
    }
    if let Some(w) = writer {
        w.finish()?;
        if let Some(p) = &args.out {
            println!("\nwrote {}", p.display());
        }
    }
    Ok(())
}
