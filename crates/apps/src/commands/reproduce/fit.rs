//! `--fit-epochs`: heads fitted to the replay pool by maximum likelihood of their twisted
//! proposal before their methods train (twist_learn::exact_fit), one fit per parameterisation
//! and seed, reused by every method that shares it.

use std::time::Instant;

use anyhow::Result;
use lm_burn::BurnLm;
use lm_burn::heads::{CondEncoding, TwistHead};
use smc_core::seed;
use twist_learn::exact_fit::{ExactExample, FitConfig, exact_examples, fit_exact};
use twist_learn::{AdamConfig, HeadTrainable, Parameterization};

use crate::training::{FIT_BATCH, FitSettings};

/// Exact samples per teacher-forced pass when the pool's hidden states are computed.
const EXAMPLE_CHUNK: usize = 64;

/// The fits of one seed.
pub(super) struct Fits {
    settings: FitSettings,
    examples: Vec<ExactExample>,
    /// Seconds spent on the pool's base-model pass.
    prepare_seconds: f64,
    seed: u64,
    done: Vec<(Parameterization, TwistHead, f64)>,
}

impl Fits {
    /// Reads the pool's hidden states and log p0 rows once (one base-model pass).
    pub(super) fn new(
        lm: &BurnLm,
        prompt: &[u32],
        pool: &[Vec<u32>],
        settings: FitSettings,
        seed: u64,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let samples: Vec<(Vec<u32>, Option<Vec<u32>>)> =
            pool.iter().map(|s| (s.clone(), None)).collect();
        let examples = exact_examples(lm, prompt, &samples, CondEncoding::Last, EXAMPLE_CHUNK)?;
        Ok(Self {
            settings,
            examples,
            prepare_seconds: t0.elapsed().as_secs_f64(),
            seed,
            done: Vec::new(),
        })
    }

    /// The head `fresh` fitted under `param` (fitted once per parameterisation; later calls
    /// return a copy of that fit, and `fresh` is dropped), with the seconds the fit took,
    /// the pool's base-model pass included.
    pub(super) fn fitted(
        &mut self,
        fresh: TwistHead,
        param: Parameterization,
    ) -> Result<(TwistHead, f64)> {
        if let Some((_, head, secs)) = self.done.iter().find(|(p, _, _)| *p == param) {
            return Ok((head.clone(), *secs));
        }
        let t0 = Instant::now();
        let mut twist = HeadTrainable::new(fresh, param, AdamConfig::default());
        let cfg = FitConfig {
            epochs: self.settings.epochs,
            batch: FIT_BATCH,
            learning_rate: self.settings.lr,
            seed: seed::derive(0, seed::label::APP_FIT, self.seed * 2 + param as u64),
        };
        fit_exact(&mut twist, &self.examples, &cfg)?;
        let secs = self.prepare_seconds + t0.elapsed().as_secs_f64();
        let head = twist.head().clone();
        self.done.push((param, head.clone(), secs));
        Ok((head, secs))
    }
}
