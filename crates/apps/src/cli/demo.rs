//! `tsmc demo` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use smc_core::feynman_kac::Resampling;
use smc_core::resampling::Criterion;

use super::groups::{SchemeArg, at_least};
use crate::commands::demo::DemoSettings;

/// Arguments of `tsmc demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Vocabulary size of the tabular model.
    #[arg(long, default_value_t = 4)]
    vocab: usize,
    /// Number of output tokens T (V^T sequences are enumerated).
    #[arg(long, default_value_t = 6)]
    horizon: usize,
    /// Particle counts K for the bounds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,256")]
    particles: Vec<usize>,
    /// Independent runs per bound.
    #[arg(long, default_value_t = 100)]
    seeds: usize,
    /// Noise (standard deviation in log space) added to the optimal twists to make the
    /// "learned" twist of the demo.
    #[arg(long, default_value_t = 0.5)]
    twist_noise: f64,
    /// Resampling scheme (the conditional-SMC upper bound needs multinomial).
    #[arg(long, value_enum, default_value_t = SchemeArg::Multinomial)]
    scheme: SchemeArg,
    /// Resampling criterion: always, never or ess:FRACTION.
    #[arg(long, default_value = "always")]
    criterion: Criterion,
    /// Seed of everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write one JSON object per (sampler, K) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl DemoArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<DemoSettings> {
        let Self {
            vocab,
            horizon,
            particles,
            seeds,
            twist_noise,
            scheme,
            criterion,
            seed,
            out,
        } = self;
        if let Some(out) = &out {
            crate::output::check_outputs(&[("--out", out)], &[])?;
        }
        if particles.is_empty() || particles.contains(&0) {
            bail!("--particles must be a list of positive counts, found {particles:?}");
        }
        if seeds < 2 {
            bail!("--seeds must be at least 2 (standard errors need two runs), found {seeds}");
        }
        // The demo's model is an order-2 table of (V + 1)^2 x V log-probabilities: refuse sizes
        // that would not fit before allocating them (V^T is checked by the enumeration).
        const MAX_TABLE: usize = 1 << 24;
        if smc_core::tabular::TabularLm::table_len(vocab, 2).is_none_or(|n| n > MAX_TABLE) {
            bail!(
                "--vocab {vocab}: the demo's order-2 table would hold (V + 1)^2 x V log-probabilities, more than {MAX_TABLE}; use --vocab 250 or less"
            );
        }
        if !twist_noise.is_finite() || twist_noise < 0.0 {
            bail!("--twist-noise must be a finite non-negative number, found {twist_noise}");
        }
        Ok(DemoSettings {
            vocab: at_least("--vocab", vocab, 2)?,
            horizon: at_least("--horizon", horizon, 1)?,
            particles,
            seeds,
            twist_noise,
            resampling: Resampling {
                scheme: scheme.into(),
                criterion,
            },
            seed,
            out,
        })
    }
}
