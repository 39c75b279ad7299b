//! Hard constraints on the decoded continuation: a keyword or a regular expression.
//! log phi = log(1[match] + 1e-16), never -inf (spec §1).

use anyhow::{Context, Result};
use lm_burn::Tokenizer;
use smc_core::batch::TokenBuffer;
use smc_core::logspace::log_indicator;
use smc_core::model::Potential;
use smc_core::{SmcError, SmcError as E};

fn decode_all(tokenizer: &Tokenizer, sequences: &TokenBuffer) -> smc_core::Result<Vec<String>> {
    sequences
        .iter()
        .map(|s| {
            tokenizer
                .decode(s)
                .map_err(|e| E::backend("decoding a particle", e))
        })
        .collect()
}

/// phi = 1 when the continuation's text contains a keyword (case-insensitive).
pub struct KeywordPotential {
    tokenizer: Tokenizer,
    keyword: String,
    name: String,
}

impl KeywordPotential {
    /// A keyword constraint.
    pub fn new(tokenizer: Tokenizer, keyword: &str) -> Self {
        Self {
            tokenizer,
            keyword: keyword.to_lowercase(),
            name: format!("keyword:{keyword}"),
        }
    }
}

impl Potential for KeywordPotential {
    fn name(&self) -> &str {
        &self.name
    }
    fn log_phi(&self, _prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>, SmcError> {
        Ok(decode_all(&self.tokenizer, sequences)?
            .iter()
            .map(|t| log_indicator(t.to_lowercase().contains(&self.keyword)))
            .collect())
    }
}

/// phi = 1 when the continuation's text matches a regular expression.
pub struct RegexPotential {
    tokenizer: Tokenizer,
    regex: regex::Regex,
    name: String,
}

impl RegexPotential {
    /// A regular-expression constraint.
    pub fn new(tokenizer: Tokenizer, pattern: &str) -> Result<Self> {
        let regex = regex::Regex::new(pattern)
            .with_context(|| format!("invalid regular expression {pattern:?}"))?;
        Ok(Self {
            tokenizer,
            regex,
            name: format!("regex:{pattern}"),
        })
    }
}

impl Potential for RegexPotential {
    fn name(&self) -> &str {
        &self.name
    }
    fn log_phi(&self, _prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>, SmcError> {
        Ok(decode_all(&self.tokenizer, sequences)?
            .iter()
            .map(|t| log_indicator(self.regex.is_match(t)))
            .collect())
    }
}

/// phi = 1 when the continuation satisfies a grammar (JSON schema, Lark grammar, regular
/// expression), checked on the complete output's tokens; `tsmc sample` checks it at every
/// token instead, as a prefix constraint.
pub struct GrammarPotential {
    grammar: smc_grammar::GrammarConstraint,
}

impl GrammarPotential {
    /// A grammar constraint on complete outputs.
    pub fn new(grammar: smc_grammar::GrammarConstraint) -> Self {
        Self { grammar }
    }
}

impl Potential for GrammarPotential {
    fn name(&self) -> &str {
        self.grammar.name()
    }
    fn log_phi(&self, _prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>, SmcError> {
        Ok(sequences
            .iter()
            .map(|s| log_indicator(self.grammar.accepts_tokens(s)))
            .collect())
    }
}
