//! Twists that can learn: raw outputs for a batch, and a gradient step on them.

use smc_core::batch::LogTable;
use smc_core::model::{Twist, TwistInput};
use smc_core::tabular::TabularTwist;
use smc_core::{Result, SmcError};

use crate::adam::{Adam, AdamConfig};
use crate::batch::Batch;
pub use crate::batch::TrainableTwist;
use crate::method::Parameterization;

/// A tabular twist (one parameter per prefix and token) trained with Adam: the twist of the
/// enumerable model, where every loss can be checked exactly.
#[derive(Debug, Clone)]
pub struct TabularTrainable {
    raw: TabularTwist,
    param: Parameterization,
    vocab: usize,
    adam: Adam,
}

impl TabularTrainable {
    /// Random initial raw values N(0, init_std^2) (spec: small log psi at the start).
    pub fn new(
        vocab: usize,
        horizon: usize,
        param: Parameterization,
        init_std: f64,
        seed: u64,
        adam: AdamConfig,
    ) -> Self {
        let raw = TabularTwist::constant(vocab, horizon).perturbed(init_std, seed);
        let sizes = (1..=horizon).map(|t| vocab.pow(t as u32)).collect();
        Self {
            raw,
            param,
            vocab,
            adam: Adam::new(adam, sizes),
        }
    }

    /// The twist as log psi tables (for exact evaluation).
    pub fn log_psi_tables(&self) -> TabularTwist {
        let tables = (1..=self.raw.horizon())
            .map(|t| {
                self.raw
                    .table(t)
                    .iter()
                    .map(|&r| self.param.log_psi(r))
                    .collect()
            })
            .collect();
        TabularTwist::from_tables(self.vocab, tables).expect("same shapes")
    }

    /// The raw tables, mutable (finite-difference tests).
    pub fn raw_tables_mut(&mut self) -> &mut TabularTwist {
        &mut self.raw
    }
}

impl Twist for TabularTrainable {
    fn name(&self) -> &str {
        "tabular trainable twist"
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        Ok(self.param.apply(self.raw.log_psi(input)?))
    }
}

fn prefix_index(prefix: &[u32], vocab: usize) -> usize {
    prefix.iter().fold(0, |acc, &t| acc * vocab + t as usize)
}

impl TrainableTwist for TabularTrainable {
    fn parameterization(&self) -> Parameterization {
        self.param
    }

    fn raw(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        self.raw.log_psi(input)
    }

    fn apply_gradient(
        &mut self,
        _prompt: &[u32],
        batch: &Batch,
        grads: &[LogTable],
        learning_rate: f64,
    ) -> Result<()> {
        let horizon = self.raw.horizon();
        if grads.len() != horizon || batch.horizon() != horizon {
            return Err(SmcError::InvalidConfig {
                field: "gradient steps",
                expected: format!("{horizon}"),
                found: grads.len().to_string(),
            });
        }
        let v = self.vocab;
        let mut dense: Vec<Vec<f64>> = (1..=horizon).map(|t| vec![0.0; v.pow(t as u32)]).collect();
        for (t, g) in grads.iter().enumerate() {
            for (k, row) in batch.tokens.iter().enumerate() {
                let base = prefix_index(&row[..t], v) * v;
                for (x, d) in dense[t][base..base + v].iter_mut().zip(g.row(k)) {
                    *x += d;
                }
            }
        }
        for (t, g) in dense.iter().enumerate() {
            self.adam
                .step(t, self.raw.table_mut(t + 1), g, learning_rate);
        }
        Ok(())
    }
}
