//! Prefix constraints as the command line names them, checked when parsed and built against a
//! model's tokenizer: each becomes an exact twist of smc-core ([`smc_core::constraint`]), so
//! that SMC draws only continuations that can still satisfy it and weighs them by the allowed
//! p0 mass (llamppl's `observe(mask)`), instead of discarding nearly every particle at the end.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use lm_burn::{BurnLm, Tokenizer};
use smc_core::constraint::TokenSetConstraint;

/// A constraint on every generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintSpec {
    /// `no-chars:SET`: no generated token's text contains a character of SET (e.g.
    /// `no-chars:e` for a lipogram).
    NoChars(String),
}

impl ConstraintSpec {
    /// The constraint for `lm`'s vocabulary: a token is forbidden when its decoded text contains
    /// a character of the set, or when the tokenizer has no text for it (padding ids).
    pub fn build(&self, lm: &BurnLm) -> Result<TokenSetConstraint> {
        self.build_for(lm.tokenizer()?, lm.dims().vocab)
    }

    /// The constraint for a vocabulary of `vocab` tokens read with `tokenizer` (a served
    /// model's, held here).
    pub fn build_for(&self, tokenizer: &Tokenizer, vocab: usize) -> Result<TokenSetConstraint> {
        let ConstraintSpec::NoChars(set) = self;
        let mut forbidden = Vec::new();
        for id in 0..vocab as u32 {
            let allowed = tokenizer
                .decode(&[id])
                .is_ok_and(|text| !text.chars().any(|c| set.contains(c)));
            if !allowed {
                forbidden.push(id);
            }
        }
        if forbidden.len() == vocab {
            bail!("constraint {self}: every token of the vocabulary contains one of {set:?}");
        }
        Ok(TokenSetConstraint::forbidding(
            self.to_string(),
            vocab,
            forbidden,
        )?)
    }
}

impl fmt::Display for ConstraintSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintSpec::NoChars(set) => write!(f, "no-chars:{set}"),
        }
    }
}

impl FromStr for ConstraintSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        match spec.split_once(':') {
            Some(("no-chars", set)) if !set.is_empty() => Ok(ConstraintSpec::NoChars(set.into())),
            Some(("no-chars", _)) => {
                bail!("constraint {spec:?}: no-chars needs characters, e.g. no-chars:e")
            }
            _ => bail!("unknown constraint {spec:?}: expected no-chars:SET"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back_and_bad_ones_are_named_errors() {
        let c: ConstraintSpec = "no-chars:eE".parse().unwrap();
        assert_eq!(c, ConstraintSpec::NoChars("eE".into()));
        assert_eq!(c.to_string(), "no-chars:eE");
        for bad in ["no-chars:", "letters:e", "x"] {
            let e = bad.parse::<ConstraintSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
