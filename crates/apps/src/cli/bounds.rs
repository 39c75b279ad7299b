//! `tsmc bounds` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::groups::{ModelArgs, PromptArgs, at_least};
use crate::commands::bounds::BoundsSettings;
use crate::potentials::PotentialSpec;

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
        } = self;
        if particles.is_empty() || particles.contains(&0) || seeds < 2 {
            bail!("--particles must be positive counts and --seeds at least 2");
        }
        let model_path = crate::output::model_input(&model.model);
        let mut inputs = vec![
            ("--model", model_path.as_path()),
            ("--exact", exact.as_path()),
        ];
        inputs.extend(twist.as_deref().map(|t| ("--twist", t)));
        crate::output::check_outputs(&[("--out", &out)], &inputs)?;
        if potential.is_infilling() {
            bail!(
                "infilling targets change with each exact sample's continuation: use `tsmc train`, which evaluates them"
            );
        }
        Ok(BoundsSettings {
            model: model.choice()?,
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
