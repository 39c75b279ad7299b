//! Potentials of the applications: each implements [`smc_core::model::Potential`], so users
//! can add their own next to them.

pub mod text;

pub use text::{KeywordPotential, RegexPotential};

use anyhow::{Result, bail};
use lm_burn::Tokenizer;
use smc_core::model::Potential;

/// Parses a potential specification: `keyword:WORD` or `regex:PATTERN`.
pub fn parse(spec: &str, tokenizer: &Tokenizer) -> Result<Box<dyn Potential>> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "keyword" if !arg.is_empty() => Ok(Box::new(KeywordPotential::new(tokenizer.clone(), arg))),
        "regex" if !arg.is_empty() => Ok(Box::new(RegexPotential::new(tokenizer.clone(), arg)?)),
        "keyword" | "regex" => {
            bail!("potential {spec:?}: {kind} needs an argument, e.g. {kind}:dragon")
        }
        _ => bail!("unknown potential {spec:?}: expected keyword:WORD or regex:PATTERN"),
    }
}
