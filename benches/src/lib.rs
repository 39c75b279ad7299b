//! Criterion benchmarks of tsmc; run with `cargo xtask bench`.

pub mod workload {
    //! The speed issue's SMC workload, shared by `decode_profile` (tsmc beside the llama.cpp
    //! harness) and `engine_throughput` (tsmc beside llama-server): the default model, this
    //! prompt without BOS, every token whose text contains "e" masked, proposals from the
    //! masked renormalised p0, multinomial resampling after every step.

    use lm_burn::Tokenizer;
    use smc_core::prelude::{Criterion, Proposal, Resampling, Scheme, SmcConfig};

    /// The prompt of every run.
    pub const PROMPT: &str = "Once upon a time, there was a";

    /// K particles, T tokens, the base proposal (masked by the constraint), multinomial
    /// resampling after every step.
    pub fn smc_config(k: usize, t: usize, seed: u64) -> SmcConfig {
        SmcConfig {
            num_particles: k,
            horizon: t,
            proposal: Proposal::Base,
            resampling: Resampling {
                scheme: Scheme::Multinomial,
                criterion: Criterion::Always,
            },
            seed,
        }
    }

    /// The tokens whose text contains "e" (or does not decode), the workload's mask.
    pub fn tokens_with_e(tokenizer: &Tokenizer, vocab: usize) -> Vec<u32> {
        (0..vocab as u32)
            .filter(|&id| tokenizer.decode(&[id]).map_or(true, |s| s.contains('e')))
            .collect()
    }
}
