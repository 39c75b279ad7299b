//! Compiling regular expressions, JSON schemas and Lark grammars against a vocabulary.

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};

use crate::error::{GrammarError, Result};
use crate::vocab::TokenBytes;

/// A language of outputs, in one of the forms llguidance compiles.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// The whole output matches this regular expression (Rust `regex` syntax, without
    /// look-around or word boundaries: llguidance's regexes are derivative-based automata).
    Regex(String),
    /// The output is a JSON value valid under this schema (llguidance's subset of JSON Schema;
    /// unsupported keywords are errors). An `"x-guidance"` object in the schema sets
    /// llguidance's options, e.g. `{"whitespace_flexible": false}` for compact JSON.
    JsonSchema(serde_json::Value),
    /// The output is a sentence of this grammar in llguidance's Lark dialect (`start:` rule).
    Lark(String),
}

impl GrammarSpec {
    /// The regular expression of outputs that contain a match of `pattern` anywhere (what
    /// `regex::Regex::is_match` tests on the whole text).
    pub fn regex_search(pattern: &str) -> Self {
        GrammarSpec::Regex(format!("(?s:.*)(?:{pattern})(?s:.*)"))
    }

    /// The regular expression of outputs that contain `keyword` anywhere, ignoring case.
    pub fn keyword(keyword: &str) -> Self {
        Self::regex_search(&format!("(?i:{})", escape_regex(keyword)))
    }

    /// A JSON schema from its text.
    pub fn json_schema_text(what: &str, text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map(GrammarSpec::JsonSchema)
            .map_err(|source| GrammarError::Json {
                what: what.to_string(),
                source,
            })
    }

    fn to_llguidance(&self) -> TopLevelGrammar {
        match self {
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            GrammarSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        }
    }
}

impl fmt::Display for GrammarSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrammarSpec::Regex(rx) => write!(f, "regex {rx:?}"),
            GrammarSpec::JsonSchema(_) => f.write_str("JSON schema"),
            GrammarSpec::Lark(_) => f.write_str("Lark grammar"),
        }
    }
}

/// Escapes the characters that are special in a regular expression (those `regex-syntax`
/// calls meta characters; escaping them is always allowed).
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Compiles grammars against one vocabulary: holds llguidance's tokenizer state (the token
/// trie and its precomputed slices), built once and shared by every grammar compiled here.
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
    vocab: usize,
    eos: Vec<u32>,
}

impl fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GrammarCompiler({} tokens, eos {:?})",
            self.vocab, self.eos
        )
    }
}

impl GrammarCompiler {
    /// Builds llguidance's state for `tokens` (for a 50k vocabulary this takes a fraction of
    /// a second, once).
    pub fn new(tokens: &TokenBytes) -> Result<Self> {
        let env = tokens.tok_env();
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Compile {
            what: "token vocabulary".into(),
            message: e.to_string(),
        })?;
        // Problems reach the caller as errors; nothing is printed.
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            vocab: tokens.len(),
            eos: tokens.eos_tokens().to_vec(),
        })
    }

    /// Compiles `spec` into a constraint named `name` (shown in reports and errors). Errors
    /// carry llguidance's message, prefixed with `name`; a grammar that accepts no output at
    /// all is an error too.
    pub fn compile(
        &self,
        name: impl Into<String>,
        spec: &GrammarSpec,
    ) -> Result<GrammarConstraint> {
        let name = name.into();
        let compile_err = |message: String| GrammarError::Compile {
            what: name.clone(),
            message,
        };
        let parser = self
            .factory
            .create_parser(spec.to_llguidance())
            .map_err(|e| compile_err(e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(compile_err(e));
        }
        let mask = matcher
            .compute_mask()
            .map_err(|e| compile_err(e.to_string()))?;
        let accepting = matcher
            .is_accepting()
            .map_err(|e| compile_err(e.to_string()))?;
        let any_text = {
            let mut m = mask.clone();
            for &e in &self.eos {
                m.disallow_token(e);
            }
            !m.is_zero()
        };
        if !any_text && !accepting {
            return Err(GrammarError::Empty { what: name });
        }
        Ok(GrammarConstraint {
            name,
            initial: matcher,
            vocab: self.vocab,
            eos: self.eos.clone(),
        })
    }
}

/// A grammar as a prefix constraint of smc-core ([`smc_core::constraint::Constraint`]): each
/// run's session holds one llguidance matcher per particle, shared between the duplicates
/// that resampling makes until their tokens differ.
///
/// With fixed-length outputs (`start`) an output of exactly T tokens is accepted when its
/// text is a sentence of the grammar, and end-of-sequence tokens are never allowed (there is
/// no end); with variable-length outputs (`start_within`) an end token is allowed exactly
/// when the prefix is a sentence, and a particle that drew one is finished.
pub struct GrammarConstraint {
    pub(crate) name: String,
    pub(crate) initial: Matcher,
    pub(crate) vocab: usize,
    pub(crate) eos: Vec<u32>,
}

impl fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrammarConstraint({})", self.name)
    }
}

impl GrammarConstraint {
    /// The constraint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vocabulary size it was compiled for.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The end-of-sequence ids.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    /// Whether the text of `tokens` (no end token) is a sentence of the grammar; `false` also
    /// when some token cannot follow the ones before it.
    pub fn accepts_tokens(&self, tokens: &[u32]) -> bool {
        let mut m = self.initial.clone();
        for &t in tokens {
            if m.is_stopped() || m.consume_token(t).is_err() {
                return false;
            }
        }
        m.is_accepting().unwrap_or(false)
    }

    /// llguidance's warnings about the grammar (e.g. unsupported but ignored schema
    /// keywords); empty for most grammars.
    pub fn warnings(&self) -> Vec<String> {
        self.initial.clone().grammar_warnings()
    }
}
