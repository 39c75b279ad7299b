//! `tsmc bounds` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::groups::{ModelArgs, PromptArgs, at_least};
use super::serving::{ServingArgs, read_files};
use crate::commands::bounds::BoundsSettings;
use crate::potentials::PotentialSpec;
use crate::setup::ModelSource;

/// Arguments of `tsmc bounds`.
#[derive(Debug, Args)]
pub struct BoundsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The potential (as for `tsmc sample`; not infilling, whose potential changes per sample:
    /// `tsmc train` evaluates it).
    #[arg(long, default_value = "toxicity:threshold=0.5")]
    potential: PotentialSpec,
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
    /// Output file (JSON lines).
    #[arg(long, default_value = "bounds.jsonl")]
    out: PathBuf,
    // Last: its help heading holds for every argument after it.
    #[command(flatten)]
    serving: ServingArgs,
}

impl BoundsArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<BoundsSettings> {
        let Self {
            model,
            prompt,
            potential,
            tokens,
            twist,
            exact,
            particles,
            seeds,
            fq_samples,
            seed,
            out,
            serving,
        } = self;
        if particles.is_empty() || particles.contains(&0) || seeds < 2 {
            bail!("--particles must be positive counts and --seeds at least 2");
        }
        let source = serving.source(model.clone())?;
        if let ModelSource::Served(served) = &source {
            if let Some(t) = &twist {
                bail!(
                    "--twist {}: a twist head reads the model's hidden states, which a served \
                     model (--model http://...) does not return: use a local --model",
                    t.display()
                );
            }
            if served.draw_ahead == 0 {
                bail!(
                    "--draw-ahead 0: the bounds of a served model measure the base proposal \
                     drawn by the server (p0 over the whole vocabulary); give --draw-ahead 1 or more"
                );
            }
        }
        let read = read_files(&source, &model.model);
        let mut inputs: Vec<(&str, &std::path::Path)> =
            read.iter().map(|(o, p)| (*o, p.as_path())).collect();
        inputs.push(("--exact", exact.as_path()));
        inputs.extend(twist.as_deref().map(|t| ("--twist", t)));
        crate::output::check_outputs(&[("--out", &out)], &inputs)?;
        if potential.is_infilling() {
            bail!(
                "infilling targets change with each exact sample's continuation: use `tsmc train`, which evaluates them"
            );
        }
        Ok(BoundsSettings {
            model: source,
            prompt: prompt.prompt()?,
            potential,
            tokens: at_least("--tokens", tokens, 1)?,
            twist,
            exact,
            particles,
            seeds,
            fq_samples: at_least("--fq-samples", fq_samples, 2)?,
            seed,
            out,
        })
    }
}
