//! `tsmc sample`: SMC from a prompt on a language model with a potential; JSONL output.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use smc_core::feynman_kac::{Resampling, StepRecord};
use smc_core::prelude::*;

use crate::jsonl::JsonlWriter;
use crate::potentials::PotentialSpec;
use crate::progress::WithProgress;
use crate::setup::{ModelChoice, load_model_and_prompt, load_twist};

/// The validated settings of `tsmc sample`.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// The model.
    pub model: ModelChoice,
    /// The prompt (non-empty).
    pub prompt: String,
    /// The potential.
    pub potential: PotentialSpec,
    /// Output tokens T (at least 1).
    pub tokens: usize,
    /// Particles K (at least 1).
    pub particles: usize,
    /// A twist head checkpoint: twisted SMC with its twisted proposal.
    pub twist: Option<PathBuf>,
    /// Resampling (criterion `never` for SIS).
    pub resampling: Resampling,
    /// The sampler's name in outputs ("smc" or "sis").
    pub method: &'static str,
    /// Seed of the sampler.
    pub seed: u64,
    /// JSONL output.
    pub out: Option<PathBuf>,
    /// How many particles to print.
    pub show: usize,
}

#[derive(Serialize)]
struct ParticleRecord<'a> {
    r#type: &'static str,
    particle: usize,
    text: &'a str,
    tokens: &'a [u32],
    log_weight: f64,
    weight: f64,
    log_p0: f64,
    log_phi: f64,
}

#[derive(Serialize)]
struct RunRecord<'a> {
    r#type: &'static str,
    model: &'a str,
    prompt: &'a str,
    prompt_tokens: &'a [u32],
    potential: &'a str,
    method: &'a str,
    num_particles: usize,
    num_tokens: usize,
    seed: u64,
    resampling: Resampling,
    log_z_hat: f64,
    final_ess: f64,
    steps: &'a [StepRecord],
    ancestors: &'a [Vec<usize>],
}

/// Runs `tsmc sample`.
pub fn run(args: &SampleSettings) -> Result<()> {
    // Create the output first so that an unwritable path fails before minutes of sampling.
    let writer = args.out.as_deref().map(JsonlWriter::create).transpose()?;
    let loaded = load_model_and_prompt(&args.model, &args.prompt)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let tokenizer = lm.tokenizer()?;
    let potential = args.potential.build(lm)?;
    let conditioning = match &args.potential {
        PotentialSpec::Infilling(text) => Some(text.as_str()),
        _ => None,
    };
    let head = args
        .twist
        .as_deref()
        .map(|path| load_twist(path, lm, &loaded.device, conditioning))
        .transpose()?;
    let config = SmcConfig {
        num_particles: args.particles,
        horizon: args.tokens,
        proposal: if head.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: args.resampling,
        seed: args.seed,
    };
    let with_bar = WithProgress::new(
        lm,
        args.tokens as u64,
        &format!("{} x {} particles", args.method, args.particles),
    );
    let twist = head.as_ref().map(|h| h as &dyn Twist);
    let out = run_smc(&with_bar, twist, potential.as_ref(), prompt, &config)?;
    with_bar.finish();

    let weights = out.weights();
    let texts: Vec<String> = out
        .tokens
        .iter()
        .map(|t| tokenizer.decode(t))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let final_ess = ess(&out.log_w);
    println!(
        "model {} | potential {} | K = {}, T = {} | log Zhat = {:.4} | final ESS = {:.1} | {} resampling(s)",
        lm.name(),
        potential.name(),
        args.particles,
        args.tokens,
        out.log_z_hat,
        final_ess,
        out.num_resamplings()
    );
    for &k in order.iter().take(args.show) {
        println!(
            "  w = {:.3}  log phi = {:>7.2}  {}{}",
            weights[k], out.log_phi[k], args.prompt, texts[k]
        );
    }
    if let Some(mut w) = writer {
        for &k in &order {
            w.write(&ParticleRecord {
                r#type: "particle",
                particle: k,
                text: &texts[k],
                tokens: &out.tokens[k],
                log_weight: out.log_w[k],
                weight: weights[k],
                log_p0: out.log_p0[k],
                log_phi: out.log_phi[k],
            })?;
        }
        w.write(&RunRecord {
            r#type: "run",
            model: lm.name(),
            prompt: &args.prompt,
            prompt_tokens: prompt,
            potential: potential.name(),
            method: args.method,
            num_particles: args.particles,
            num_tokens: args.tokens,
            seed: args.seed,
            resampling: config.resampling,
            log_z_hat: out.log_z_hat,
            final_ess,
            steps: &out.steps,
            ancestors: &out.ancestors,
        })?;
        w.finish()?;
        if let Some(p) = &args.out {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
