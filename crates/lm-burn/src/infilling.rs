//! The infilling potential phi(s) = p0(c | prompt, s): the probability of fixed continuation
//! tokens c after the sample (spec §1), computed with one batched scoring pass.

use smc_core::batch::TokenBuffer;
use smc_core::model::{LanguageModel, Potential};

use crate::model::BurnLm;

/// log phi(s) = log p0(c | prompt, s) for fixed continuation tokens c.
pub struct InfillingPotential<'a> {
    lm: &'a BurnLm,
    continuation: Vec<u32>,
    name: String,
}

impl<'a> InfillingPotential<'a> {
    /// The potential for continuation tokens `continuation`.
    pub fn new(lm: &'a BurnLm, continuation: Vec<u32>) -> Self {
        let name = format!("infilling ({} continuation tokens)", continuation.len());
        Self {
            lm,
            continuation,
            name,
        }
    }

    /// The continuation tokens c.
    pub fn continuation(&self) -> &[u32] {
        &self.continuation
    }
}

impl Potential for InfillingPotential<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> smc_core::Result<Vec<f64>> {
        self.lm
            .score_continuation(prompt, &sequences.to_rows(), &self.continuation)
    }
}
