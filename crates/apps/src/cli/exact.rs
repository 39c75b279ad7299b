//! `tsmc exact` arguments.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::groups::{ModelArgs, PromptArgs, at_least};
use super::serving::{ServingArgs, read_files};
use crate::commands::exact::{ExactSettings, ExactTarget};
use crate::potentials::PotentialSpec;

/// Arguments of `tsmc exact`.
#[derive(Debug, Args)]
pub struct ExactArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The potential (as for `tsmc sample`): hard constraints and threshold classifiers use
    /// rejection, `toxicity:beta=1` / `sentiment:...:beta=1` class rejection. Ignored with
    /// --infilling.
    #[arg(long, default_value = "toxicity:threshold=0.5")]
    potential: PotentialSpec,
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
    /// Output file (JSON lines: one per sample, then a summary).
    #[arg(long, default_value = "exact-samples.jsonl")]
    out: PathBuf,
    // Last: its help heading holds for every argument after it.
    #[command(flatten)]
    serving: ServingArgs,
}

impl ExactArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<ExactSettings> {
        let Self {
            model,
            prompt,
            potential,
            infilling,
            tokens,
            samples,
            max_draws,
            batch,
            seed,
            out,
            serving,
        } = self;
        let source = serving.source(model.clone())?;
        let read = read_files(&source, &model.model);
        let inputs: Vec<(&str, &std::path::Path)> =
            read.iter().map(|(o, p)| (*o, p.as_path())).collect();
        crate::output::check_outputs(&[("--out", &out)], &inputs)?;
        let target = match infilling {
            Some(m) => ExactTarget::Infilling(at_least("--infilling", m, 1)?),
            None => ExactTarget::Potential(potential),
        };
        Ok(ExactSettings {
            model: source,
            prompt: prompt.prompt()?,
            target,
            tokens: at_least("--tokens", tokens, 1)?,
            samples: at_least("--samples", samples, 1)?,
            max_draws,
            batch: at_least("--batch", batch, 1)?,
            seed,
            out,
        })
    }
}
