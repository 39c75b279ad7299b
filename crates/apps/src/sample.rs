//! `tsmc sample`: SMC from a prompt on a language model with a potential; JSONL output.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use lm_burn::Backend;
use smc_core::feynman_kac::{Resampling, StepRecord};
use smc_core::prelude::*;

use crate::output::JsonlWriter;
use crate::progress::WithProgress;

/// Arguments of `tsmc sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// `default` (SmolLM2-135M-Instruct, fetched once), a Hugging Face model directory or a .gguf file.
    #[arg(long, default_value = "default")]
    model: String,
    /// The prompt text.
    #[arg(long, default_value = "Once upon a time, there was a")]
    prompt: String,
    /// The potential: keyword:WORD or regex:PATTERN (on the decoded continuation).
    #[arg(long, default_value = r"regex:(?i)\b(dragon|princess|castle|king)\b")]
    potential: String,
    /// Number of output tokens T.
    #[arg(long, short = 't', default_value_t = 15)]
    tokens: usize,
    /// Number of particles K.
    #[arg(long, short = 'k', default_value_t = 64)]
    particles: usize,
    /// A twist head checkpoint (from `tsmc train`): twisted SMC with its twisted proposal. A
    /// conditional head is conditioned on the continuation of an `infilling:TEXT` potential.
    #[arg(long)]
    twist: Option<PathBuf>,
    /// Sampler: smc (resampling by --criterion; twisted when --twist is given) or sis.
    #[arg(long, default_value = "smc")]
    method: String,
    /// Resampling scheme: multinomial, systematic, stratified or residual.
    #[arg(long, default_value = "multinomial")]
    scheme: Scheme,
    /// Resampling criterion: always, never or ess:FRACTION.
    #[arg(long, default_value = "ess:0.5")]
    criterion: Criterion,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, wgpu, wgpu-cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Write the particles and the run summary as JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many particles to print, heaviest first.
    #[arg(long, default_value_t = 5)]
    show: usize,
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
pub fn run(args: &SampleArgs) -> Result<()> {
    if args.prompt.is_empty() {
        bail!("--prompt is empty: SMC needs a prompt to condition on");
    }
    if args.tokens == 0 {
        bail!("--tokens must be at least 1, found 0");
    }
    if args.particles == 0 {
        bail!("--particles must be at least 1, found 0");
    }
    let criterion = match args.method.as_str() {
        "smc" => args.criterion,
        "sis" => Criterion::Never,
        other => bail!("unknown --method {other:?}: expected smc or sis"),
    };
    // Create the output first so that an unwritable path fails before minutes of sampling.
    let writer = args.out.as_deref().map(JsonlWriter::create).transpose()?;
    let (lm, prompt, device) =
        crate::common::load_model_and_prompt(&args.model, args.backend, &args.prompt)?;
    let tokenizer = lm.tokenizer()?;
    let potential = crate::potentials::parse(&args.potential, &lm)?;
    let head = match &args.twist {
        None => None,
        Some(path) => {
            let (mut head, _) = lm_burn::heads::TwistHead::load(path, &device)
                .with_context(|| format!("loading twist {}", path.display()))?;
            if head.config.conditioning.is_some() {
                let text = args.potential.strip_prefix("infilling:").with_context(|| {
                    format!(
                        "{} is a conditional (infilling) twist: use --potential infilling:TEXT",
                        path.display()
                    )
                })?;
                head.set_conditioning(&lm, &tokenizer.encode(text)?)?;
            }
            if head.config.vocab_size != lm.dims().vocab {
                bail!(
                    "twist {} has {} outputs, the model's vocabulary has {}",
                    path.display(),
                    head.config.vocab_size,
                    lm.dims().vocab
                );
            }
            Some(head)
        }
    };
    let config = SmcConfig {
        num_particles: args.particles,
        horizon: args.tokens,
        proposal: if head.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: Resampling {
            scheme: args.scheme,
            criterion,
        },
        seed: args.seed,
    };
    let with_bar = WithProgress::new(
        &lm,
        args.tokens as u64,
        &format!("{} x {} particles", args.method, args.particles),
    );
    let twist = head.as_ref().map(|h| h as &dyn Twist);
    let out = run_smc(&with_bar, twist, potential.as_ref(), &prompt, &config)?;
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
            prompt_tokens: &prompt,
            potential: potential.name(),
            method: &args.method,
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
