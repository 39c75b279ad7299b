//! `tsmc exact`: exact samples of the target, for upper bounds and G_q. Rejection sampling for
//! hard constraints (keyword, regex, classifier threshold), class rejection for p(class)^1
//! classifier potentials, joint ancestral draws for infilling (each exact for its own
//! continuation). JSONL output.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use lm_burn::{Backend, BurnLm};
use smc_bounds::{Collected, joint_ancestral, rejection_class, rejection_indicator};
use smc_core::smc::rng_from_seed;

use crate::output::JsonlWriter;

/// Arguments of `tsmc exact`.
#[derive(Debug, Args)]
pub struct ExactArgs {
    /// `default`, a Hugging Face model directory or a .gguf file.
    #[arg(long, default_value = "default")]
    model: String,
    /// The prompt.
    #[arg(long, default_value = "Once upon a time, there was a")]
    prompt: String,
    /// The potential (as for `tsmc sample`): hard constraints and threshold classifiers use
    /// rejection, `toxicity:beta=1` / `sentiment:...:beta=1` class rejection. Ignored with
    /// --infilling.
    #[arg(long, default_value = "toxicity:threshold=0.5")]
    potential: String,
    /// Joint ancestral draws for infilling with this many conditioning tokens instead.
    #[arg(long)]
    infilling: Option<usize>,
    /// Output tokens T.
    #[arg(long, short = 't', default_value_t = 10)]
    tokens: usize,
    /// Number of exact samples wanted.
    #[arg(long, short = 'n', default_value_t = 16)]
    samples: usize,
    /// Give up after this many draws from p0 (whatever was accepted is written).
    #[arg(long, default_value_t = 20_000)]
    max_draws: usize,
    /// Draws per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, wgpu, wgpu-cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Output file (JSON lines: one per sample, then a summary).
    #[arg(long, default_value = "exact-samples.jsonl")]
    out: PathBuf,
}

#[derive(Serialize)]
struct SampleRecord<'a> {
    r#type: &'static str,
    tokens: &'a [u32],
    text: &'a str,
    conditioning: Option<&'a [u32]>,
    conditioning_text: Option<&'a str>,
}

/// Runs `tsmc exact`.
pub fn run(args: &ExactArgs) -> Result<()> {
    if args.prompt.is_empty() || args.tokens == 0 || args.samples == 0 {
        bail!("need a non-empty --prompt, --tokens >= 1 and --samples >= 1");
    }
    let mut out = JsonlWriter::create(&args.out)?;
    let (lm, prompt, _device) =
        crate::common::load_model_and_prompt(&args.model, args.backend, &args.prompt)?;
    let tok = lm.tokenizer()?;
    let mut rng = rng_from_seed(args.seed);
    let (collected, method) = match args.infilling {
        Some(m) => {
            let samples = joint_ancestral(&lm, &prompt, args.tokens, m, args.samples, &mut rng)?;
            let n = samples.len();
            (
                Collected {
                    draws: n,
                    accepted: n,
                    samples,
                },
                "joint ancestral".to_string(),
            )
        }
        None => {
            let phi = crate::potentials::parse(&args.potential, &lm)?;
            let class = args.potential.contains("beta=1") && !args.potential.contains("threshold");
            let collect = if class {
                rejection_class::<BurnLm>
            } else {
                rejection_indicator::<BurnLm>
            };
            let collected = collect(
                &lm,
                &prompt,
                args.tokens,
                phi.as_ref(),
                args.samples,
                args.batch,
                args.max_draws,
                &mut rng,
            )?;
            (
                collected,
                if class {
                    "class rejection".into()
                } else {
                    "rejection".into()
                },
            )
        }
    };
    for s in &collected.samples {
        let text = tok.decode(&s.tokens)?;
        let ctext = s.conditioning.as_ref().map(|c| tok.decode(c)).transpose()?;
        out.write(&SampleRecord {
            r#type: "sample",
            tokens: &s.tokens,
            text: &text,
            conditioning: s.conditioning.as_deref(),
            conditioning_text: ctext.as_deref(),
        })?;
    }
    out.write(&serde_json::json!({
        "type": "summary", "method": method,
        "potential": if args.infilling.is_some() { None } else { Some(&args.potential) }, "prompt": args.prompt,
        "accepted": collected.samples.len(), "draws": collected.draws,
        "acceptance_rate": collected.acceptance_rate(), "seed": args.seed,
    }))?;
    out.finish()?;
    println!(
        "{method}: {} exact samples in {} draws (acceptance rate {:.4}, an estimate of Z); wrote {}",
        collected.samples.len(),
        collected.draws,
        collected.acceptance_rate(),
        args.out.display()
    );
    if collected.samples.len() < args.samples {
        eprintln!(
            "warning: only {} of {} samples within --max-draws {}",
            collected.samples.len(),
            args.samples,
            args.max_draws
        );
    }
    Ok(())
}
