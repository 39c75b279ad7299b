//! The arguments of a head's maximum-likelihood fit to exact samples before training, shared by
//! `tsmc train` and `tsmc reproduce`, checked once into [`FitSettings`].

use anyhow::{Result, bail};
use clap::Args;

use crate::training::FitSettings;

/// `--fit-epochs` and `--fit-lr`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fit to exact samples")]
pub struct FitArgs {
    /// Before training, fit the head to the exact samples CTL replays (--replay /
    /// --replay-samples) by maximum likelihood of its twisted proposal: minimise -log q(s)
    /// over them, which is KL(σ‖q) up to a constant, for this many epochs (0: no fit). The
    /// base model is frozen, so their hidden states are computed once and an epoch costs only
    /// the head's passes (docs/training.md).
    #[arg(long, default_value_t = 0)]
    pub fit_epochs: usize,
    /// Adam's rate for --fit-epochs (its own Adam, batches of 8 exact samples).
    #[arg(long, default_value_t = 1e-5)]
    pub fit_lr: f64,
}

impl FitArgs {
    /// The fit, if asked for; a rate that is not a positive number is an error.
    pub fn settings(&self) -> Result<Option<FitSettings>> {
        let lr = self.fit_lr;
        if !(lr.is_finite() && lr > 0.0) {
            bail!("--fit-lr must be a positive number, found {lr}");
        }
        Ok((self.fit_epochs > 0).then_some(FitSettings {
            epochs: self.fit_epochs,
            lr,
        }))
    }
}
