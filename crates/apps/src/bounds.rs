//! `tsmc bounds`: how good is a sampler? Lower and upper bounds on log Z against K (SIS and
//! SMC; the upper ones from exact samples), F_q, G_q and both KL estimates, for the base model
//! as proposal or a trained twist. JSONL output, one line per K and a summary.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use lm_burn::Backend;
use smc_bounds::{Sampler, kl_estimates};
use smc_core::feynman_kac::Resampling;
use smc_core::prelude::*;

use crate::output::JsonlWriter;

/// Arguments of `tsmc bounds`.
#[derive(Debug, Args)]
pub struct BoundsArgs {
    /// `default`, a Hugging Face model directory or a .gguf file.
    #[arg(long, default_value = "default")]
    model: String,
    /// The prompt.
    #[arg(long, default_value = "Once upon a time, there was a")]
    prompt: String,
    /// The potential (as for `tsmc sample`; not infilling, whose potential changes per sample:
    /// `tsmc train` evaluates it).
    #[arg(long, default_value = "toxicity:threshold=0.5")]
    potential: String,
    /// Output tokens T.
    #[arg(long, short = 't', default_value_t = 10)]
    tokens: usize,
    /// A twist head checkpoint (twisted proposal); without it the proposal is p0.
    #[arg(long)]
    twist: Option<PathBuf>,
    /// Exact samples from `tsmc exact` (JSONL) for the upper bounds and G_q.
    #[arg(long)]
    exact: PathBuf,
    /// Particle counts K.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    particles: Vec<usize>,
    /// Runs per lower bound.
    #[arg(long, default_value_t = 8)]
    seeds: usize,
    /// Draws from q for F_q.
    #[arg(long, default_value_t = 64)]
    fq_samples: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, wgpu, wgpu-cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Output file (JSON lines).
    #[arg(long, default_value = "bounds.jsonl")]
    out: PathBuf,
}

/// Reads the exact samples of a `tsmc exact` JSONL file, each of `horizon` tokens.
pub fn read_exact(path: &std::path::Path, horizon: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read exact samples {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))?;
        if v["type"] != "sample" {
            continue;
        }
        let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone())
            .with_context(|| format!("{}: line {}: field `tokens`", path.display(), i + 1))?;
        if tokens.len() != horizon {
            bail!(
                "{}: line {}: {} tokens, expected T = {horizon}",
                path.display(),
                i + 1,
                tokens.len()
            );
        }
        out.push(tokens);
    }
    if out.is_empty() {
        bail!(
            "{}: no exact samples (lines with \"type\": \"sample\")",
            path.display()
        );
    }
    Ok(out)
}

/// Runs `tsmc bounds`.
pub fn run(args: &BoundsArgs) -> Result<()> {
    if args.particles.is_empty() || args.particles.contains(&0) || args.seeds < 2 {
        bail!("--particles must be positive counts and --seeds at least 2");
    }
    if args.potential.starts_with("infilling:") {
        bail!(
            "infilling targets change with each exact sample's continuation: use `tsmc train`, which evaluates them"
        );
    }
    let exact = read_exact(&args.exact, args.tokens)?;
    let mut out = JsonlWriter::create(&args.out)?;
    let (lm, prompt, device) =
        crate::common::load_model_and_prompt(&args.model, args.backend, &args.prompt)?;
    let phi = crate::potentials::parse(&args.potential, &lm)?;
    let head = match &args.twist {
        Some(p) => Some(
            lm_burn::heads::TwistHead::load(p, &device)
                .with_context(|| format!("loading twist {}", p.display()))?
                .0,
        ),
        None => None,
    };
    let sampler = Sampler {
        lm: &lm,
        prompt: &prompt,
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
            r.smc_upper.to_string(),
            r.sis_upper.to_string()
        );
        out.write(&serde_json::json!({ "type": "bounds", "row": r }))?;
    }
    let f_q = sampler.f_q(args.fq_samples, args.seed)?;
    let g_q = sampler.g_q(&exact)?;
    let (lower, upper) = rows.last().expect("non-empty").tightest();
    let kl = kl_estimates(f_q, g_q, lower, upper);
    println!(
        "F_q = {f_q}, G_q = {g_q}, log Z ≈ {} (half-gap {:.3})",
        kl.log_z, kl.log_z_half_gap
    );
    println!(
        "KL(q||sigma) = {}, KL(sigma||q) = {}",
        kl.kl_q_sigma, kl.kl_sigma_q
    );
    out.write(&serde_json::json!({ "type": "kl", "estimates": kl, "exact_samples": exact.len(), "twist": args.twist }))?;
    out.finish()?;
    Ok(())
}
