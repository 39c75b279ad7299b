//! `tsmc bounds`: how good is a sampler? Lower and upper bounds on log Z against K (SIS and
//! SMC; the upper ones from exact samples), F_q, G_q and both KL estimates, for the base model
//! as proposal or a trained twist. JSONL output, one line per K and a summary.

use std::path::PathBuf;

use anyhow::Result;

use smc_bounds::{Sampler, kl_estimates};
use smc_core::feynman_kac::Resampling;
use smc_core::prelude::*;

use crate::jsonl::{JsonlWriter, read_exact};
use crate::potentials::PotentialSpec;
use crate::setup::{ModelSource, load_any, load_twist};

/// The validated settings of `tsmc bounds`.
#[derive(Debug, Clone)]
pub struct BoundsSettings {
    /// The model: run here or served over HTTP (base proposal drawn by the server).
    pub model: ModelSource,
    /// The prompt.
    pub prompt: String,
    /// The potential (never infilling, whose target changes per sample).
    pub potential: PotentialSpec,
    /// Output tokens T.
    pub tokens: usize,
    /// A twist head checkpoint (twisted proposal); p0 without.
    pub twist: Option<PathBuf>,
    /// Exact samples from `tsmc exact`.
    pub exact: PathBuf,
    /// Particle counts K (each at least 1).
    pub particles: Vec<usize>,
    /// Runs per lower bound (at least 2).
    pub seeds: usize,
    /// Draws from q for F_q.
    pub fq_samples: usize,
    /// Seed.
    pub seed: u64,
    /// Output file.
    pub out: PathBuf,
}

/// Runs `tsmc bounds`.
pub fn run(args: &BoundsSettings) -> Result<()> {
    let exact = read_exact(&args.exact, args.tokens)?;
    let mut out = JsonlWriter::create(&args.out)?;
    let loaded = load_any(&args.model, &args.prompt)?;
    let k_max = args.particles.iter().copied().max().unwrap_or(1);
    loaded.check_size(k_max.max(args.fq_samples), args.tokens)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let phi = args.potential.build_with(&loaded.text, lm.local())?;
    let head = match (args.twist.as_deref(), lm.local(), &loaded.device) {
        (None, ..) => None,
        (Some(path), Some(local), Some(device)) => Some(load_twist(path, local, device, None)?),
        (Some(path), ..) => anyhow::bail!(
            "--twist {}: a twist head reads the model's hidden states, which a served model \
             does not return: use a local --model",
            path.display()
        ),
    };
    let sampler = Sampler {
        lm,
        prompt,
        horizon: args.tokens,
        potential: phi.as_ref(),
        twist: head.as_ref().map(|h| h as &dyn Twist),
        proposal: if head.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: Resampling::default(),
    };
    let rows = sampler.bounds_over_k(&args.particles, args.seeds, &exact, args.seed)?;
    println!(
        "{:>5}  {:>19}  {:>19}  {:>19}  {:>19}",
        "K", "SIS lower", "SMC lower", "SMC upper", "SIS upper"
    );
    for r in &rows {
        println!(
            "{:>5}  {:>19}  {:>19}  {:>19}  {:>19}",
            r.k,
            r.sis_lower.to_string(),
            r.smc_lower.to_string(),
            r.smc_upper
                .map_or("n/a (needs multinomial)".to_string(), |e| e.to_string()),
            r.sis_upper.to_string()
        );
        out.write(&serde_json::json!({ "type": "bounds", "row": r }))?;
    }
    let f_q = sampler.f_q(args.fq_samples, args.seed)?;
    let g_q = sampler.g_q(&exact)?;
    // The SMC pair at the largest K, fixed in advance (no selection of the tighter bound).
    let (lower, upper) = rows.last().expect("non-empty").smc_pair();
    let kl = kl_estimates(f_q, g_q, lower, upper);
    println!(
        "F_q = {f_q}, G_q = {g_q}, log Z ≈ {} (half-gap {:.3})",
        kl.log_z, kl.log_z_half_gap
    );
    println!(
        "KL(q||sigma) = {}, KL(sigma||q) = {}",
        kl.kl_q_sigma, kl.kl_sigma_q
    );
    println!(
        "± is the 95% Student t half-width: lower bounds over {} runs ({} degrees of freedom), upper bounds and G_q over {} exact samples ({}), F_q over {} draws ({}); log Z is the SMC pair's midpoint and the KL estimates carry its error (Welch degrees of freedom {:.1} and {:.1})",
        args.seeds,
        args.seeds - 1,
        exact.len(),
        exact.len().saturating_sub(1),
        f_q.n,
        f_q.df,
        kl.kl_q_sigma.df,
        kl.kl_sigma_q.df
    );
    out.write(&serde_json::json!({ "type": "kl", "estimates": kl, "exact_samples": exact.len(), "twist": args.twist }))?;
    out.finish()?;
    Ok(())
}
