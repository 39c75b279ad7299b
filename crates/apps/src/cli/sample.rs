//! `tsmc sample` arguments.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use smc_core::feynman_kac::Resampling;
use smc_core::resampling::Criterion;

use super::groups::{ModelArgs, PromptArgs, SchemeArg, at_least};
use crate::commands::sample::SampleSettings;
use crate::constraints::ConstraintSpec;
use crate::potentials::PotentialSpec;

/// Arguments of `tsmc sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The potential: keyword:WORD, regex:PATTERN, toxicity:..., sentiment:..., infilling:TEXT
    /// or judge:QUESTION.
    #[arg(long, default_value = r"regex:(?i)\b(dragon|princess|castle|king)\b")]
    potential: PotentialSpec,
    /// A constraint on every generated token, applied as an exact twist (the proposal draws
    /// only allowed tokens and the weight gains the allowed p0 mass): no-chars:SET forbids
    /// tokens containing a character of SET. Use with --potential none for p0 under the
    /// constraint.
    #[arg(long)]
    constraint: Option<ConstraintSpec>,
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
    #[arg(long, value_enum, default_value_t = SamplerArg::Smc)]
    method: SamplerArg,
    /// Resampling scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::Multinomial)]
    scheme: SchemeArg,
    /// Resampling criterion: always, never or ess:FRACTION.
    #[arg(long, default_value = "ess:0.5")]
    criterion: Criterion,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the particles and the run summary as JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many particles to print, heaviest first.
    #[arg(long, default_value_t = 5)]
    show: usize,
}

/// SMC or SIS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Sequential Monte Carlo, resampling by the criterion.
    Smc,
    /// Sequential importance sampling (never resamples).
    Sis,
}

impl SampleArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<SampleSettings> {
        let Self {
            model,
            prompt,
            potential,
            constraint,
            tokens,
            particles,
            twist,
            method,
            scheme,
            criterion,
            seed,
            out,
            show,
        } = self;
        let model_path = crate::output::model_input(&model.model);
        let mut inputs = vec![("--model", model_path.as_path())];
        inputs.extend(twist.as_deref().map(|t| ("--twist", t)));
        if let Some(out) = &out {
            crate::output::check_outputs(&[("--out", out)], &inputs)?;
        }
        let (criterion, method) = match method {
            SamplerArg::Smc => (criterion, "smc"),
            SamplerArg::Sis => (Criterion::Never, "sis"),
        };
        Ok(SampleSettings {
            model: model.choice()?,
            prompt: prompt.prompt()?,
            potential,
            constraint,
            tokens: at_least("--tokens", tokens, 1)?,
            particles: at_least("--particles", particles, 1)?,
            twist,
            resampling: Resampling {
                scheme: scheme.into(),
                criterion,
            },
            method,
            seed,
            out,
            show,
        })
    }
}
