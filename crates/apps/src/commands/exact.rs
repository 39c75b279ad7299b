//! `tsmc exact`: exact samples of the target, for upper bounds and G_q. Rejection sampling for
//! hard constraints (keyword, regex, classifier threshold), class rejection for p(class)^1
//! classifier potentials, joint ancestral draws for infilling (each exact for its own
//! continuation). JSONL output.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use smc_bounds::{Collected, joint_ancestral, rejection_class, rejection_indicator};
use smc_core::smc::rng_from_seed;

use crate::jsonl::JsonlWriter;
use crate::model::Model;
use crate::potentials::PotentialSpec;
use crate::setup::{ModelSource, load_any};

/// What `tsmc exact` draws exact samples of.
#[derive(Debug, Clone)]
pub enum ExactTarget {
    /// sigma ∝ p0 phi for a potential: rejection (hard constraints, thresholds) or class
    /// rejection (beta = 1 classifiers).
    Potential(PotentialSpec),
    /// Joint ancestral draws of T + m tokens for infilling (m conditioning tokens).
    Infilling(usize),
}

/// The validated settings of `tsmc exact`.
#[derive(Debug, Clone)]
pub struct ExactSettings {
    /// The model: run here or served over HTTP (whose server draws from p0 itself).
    pub model: ModelSource,
    /// The prompt.
    pub prompt: String,
    /// What to sample.
    pub target: ExactTarget,
    /// Output tokens T.
    pub tokens: usize,
    /// Exact samples wanted.
    pub samples: usize,
    /// Give up after this many draws from p0.
    pub max_draws: usize,
    /// Draws per batch.
    pub batch: usize,
    /// Seed.
    pub seed: u64,
    /// Output file.
    pub out: PathBuf,
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
pub fn run(args: &ExactSettings) -> Result<()> {
    let mut out = JsonlWriter::create(&args.out)?;
    let loaded = load_any(&args.model, &args.prompt)?;
    // Joint ancestral draws decode all samples at once; rejection decodes batches.
    let (k, extra) = match &args.target {
        ExactTarget::Infilling(m) => (args.samples, *m),
        ExactTarget::Potential(_) => (args.batch, 0),
    };
    loaded.check_size(k, args.tokens + extra)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    if let Model::Served(http) = lm
        && http.options().draw_ahead == 0
    {
        anyhow::bail!(
            "--draw-ahead 0: exact samples from a served model need the server's own draws from \
             p0 (the top-N rows alone cover part of the vocabulary); give --draw-ahead 1 or more"
        );
    }
    let tok = &loaded.text.tokenizer;
    let mut rng = rng_from_seed(smc_core::seed::derive(
        args.seed,
        smc_core::seed::label::APP_EXACT,
        0,
    ));
    let (collected, method) = match &args.target {
        ExactTarget::Infilling(m) => {
            let m = *m;
            let samples = joint_ancestral(lm, prompt, args.tokens, m, args.samples, &mut rng)?;
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
        ExactTarget::Potential(spec) => {
            let phi = spec.build_with(&loaded.text, lm.local())?;
            let class = spec.class_rejection();
            let collect = if class {
                rejection_class::<Model>
            } else {
                rejection_indicator::<Model>
            };
            let collected = collect(
                lm,
                prompt,
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
        "potential": match &args.target { ExactTarget::Potential(p) => Some(p.to_string()), ExactTarget::Infilling(_) => None }, "prompt": args.prompt,
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
