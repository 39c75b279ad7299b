//! Prefix constraints as the command line names them, checked when parsed and built against a
//! model's tokenizer: each becomes an exact twist of smc-core ([`smc_core::constraint`]), so
//! that SMC draws only continuations that can still satisfy it and weighs them by the allowed
//! p0 mass (llamppl's `observe(mask)`), instead of discarding nearly every particle at the end.
//!
//! Grammars (regular expressions, JSON schemas, Lark grammars) run on llguidance through
//! smc-grammar; they are compiled once when parsed, against a byte vocabulary, so that a bad
//! grammar is an error before any model is loaded.

pub mod both;
pub mod grammar;
pub mod search;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use lm_burn::BurnLm;
use smc_core::constraint::{Constraint, TokenSetConstraint};
use smc_grammar::GrammarSpec;

pub use both::AllOf;
pub use grammar::{GrammarConstraints, search_grammar};

/// A constraint on every generated token.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// `no-chars:SET`: no generated token's text contains a character of SET (e.g.
    /// `no-chars:e` for a lipogram).
    NoChars(String),
    /// `regex:PATTERN`: the whole output matches PATTERN.
    Regex(String),
    /// `search:PATTERN`: the output contains a match of PATTERN (a token automaton whose masks
    /// know the remaining steps; zero-width assertions such as `\b` are dropped from it).
    Search(String),
    /// `keyword:WORD`: the output contains WORD, ignoring case (the same automaton).
    Keyword(String),
    /// `json-schema:FILE`: the output is JSON valid under the schema in FILE.
    JsonSchema {
        /// The file as given.
        path: PathBuf,
        /// Its content.
        schema: serde_json::Value,
    },
    /// `lark:FILE`: the output is a sentence of the Lark grammar in FILE (llguidance's
    /// dialect, `start:` rule).
    Lark {
        /// The file as given.
        path: PathBuf,
        /// Its content.
        text: String,
    },
}

impl ConstraintSpec {
    /// The grammar of a grammar constraint (`None` for `no-chars`).
    pub fn grammar(&self) -> Option<GrammarSpec> {
        Some(match self {
            ConstraintSpec::NoChars(_) => return None,
            ConstraintSpec::Regex(p) => GrammarSpec::Regex(p.clone()),
            ConstraintSpec::Search(p) => search_grammar(p).ok()?.0,
            ConstraintSpec::Keyword(w) => GrammarSpec::keyword(w),
            ConstraintSpec::JsonSchema { schema, .. } => GrammarSpec::JsonSchema(schema.clone()),
            ConstraintSpec::Lark { text, .. } => GrammarSpec::Lark(text.clone()),
        })
    }

    /// The search pattern of `keyword:` and `search:` (`None` for the others).
    fn search_pattern(&self) -> Option<String> {
        match self {
            ConstraintSpec::Keyword(w) => Some(format!("(?i){}", regex::escape(w))),
            ConstraintSpec::Search(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// The constraint for `lm`'s vocabulary (grammars through `grammars`, which builds the
    /// vocabulary's token bytes once for all of them). `keyword:` and `search:` become token
    /// automata when their DFA is small, llguidance searches otherwise.
    pub fn build(
        &self,
        lm: &BurnLm,
        grammars: &GrammarConstraints<'_>,
    ) -> Result<Box<dyn Constraint>> {
        if let ConstraintSpec::NoChars(set) = self {
            return Ok(Box::new(no_chars(self, set, lm)?));
        }
        if let Some(pattern) = self.search_pattern() {
            let name = self.to_string();
            if let Some(dfa) = search::search_automaton(&name, &pattern, grammars.tokens()?)? {
                return Ok(Box::new(dfa));
            }
        }
        match self.grammar() {
            Some(spec) => Ok(Box::new(grammars.compile(&self.to_string(), &spec)?)),
            None => bail!("constraint {self}: llguidance cannot match it"),
        }
    }
}

/// The token-set constraint of `no-chars:SET`: a token is forbidden when its decoded text
/// contains a character of the set, or when the tokenizer has no text for it (padding ids).
fn no_chars(spec: &ConstraintSpec, set: &str, lm: &BurnLm) -> Result<TokenSetConstraint> {
    let tokenizer = lm.tokenizer()?;
    let vocab = lm.dims().vocab;
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
        bail!("constraint {spec}: every token of the vocabulary contains one of {set:?}");
    }
    Ok(TokenSetConstraint::forbidding(
        spec.to_string(),
        vocab,
        forbidden,
    )?)
}

impl fmt::Display for ConstraintSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintSpec::NoChars(set) => write!(f, "no-chars:{set}"),
            ConstraintSpec::Regex(p) => write!(f, "regex:{p}"),
            ConstraintSpec::Search(p) => write!(f, "search:{p}"),
            ConstraintSpec::Keyword(w) => write!(f, "keyword:{w}"),
            ConstraintSpec::JsonSchema { path, .. } => write!(f, "json-schema:{}", path.display()),
            ConstraintSpec::Lark { path, .. } => write!(f, "lark:{}", path.display()),
        }
    }
}

impl FromStr for ConstraintSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        let parsed = match spec.split_once(':') {
            Some(("no-chars", set)) if !set.is_empty() => ConstraintSpec::NoChars(set.into()),
            Some(("regex", p)) if !p.is_empty() => ConstraintSpec::Regex(p.into()),
            Some(("search", p)) if !p.is_empty() => ConstraintSpec::Search(p.into()),
            Some(("keyword", w)) if !w.is_empty() => ConstraintSpec::Keyword(w.into()),
            Some(("json-schema", file)) if !file.is_empty() => {
                let text = read(spec, file)?;
                let schema = serde_json::from_str(&text)
                    .with_context(|| format!("constraint {spec:?}: {file} is not valid JSON"))?;
                ConstraintSpec::JsonSchema {
                    path: file.into(),
                    schema,
                }
            }
            Some(("lark", file)) if !file.is_empty() => ConstraintSpec::Lark {
                path: file.into(),
                text: read(spec, file)?,
            },
            Some((kind @ ("no-chars" | "regex" | "search" | "keyword"), _)) => {
                bail!("constraint {spec:?}: {kind} needs an argument, e.g. {kind}:e")
            }
            Some((kind @ ("json-schema" | "lark"), _)) => {
                bail!("constraint {spec:?}: {kind} needs a file, e.g. {kind}:schema.json")
            }
            _ => bail!(
                "unknown constraint {spec:?}: expected no-chars:SET, regex:PATTERN, \
                 search:PATTERN, keyword:WORD, json-schema:FILE or lark:FILE"
            ),
        };
        match &parsed {
            ConstraintSpec::Search(p) => {
                regex::Regex::new(p)
                    .with_context(|| format!("constraint {spec:?}: invalid regular expression"))?;
            }
            ConstraintSpec::NoChars(_) | ConstraintSpec::Keyword(_) => {}
            other => {
                if let Some(g) = other.grammar() {
                    grammar::check(&other.to_string(), &g)?;
                }
            }
        }
        Ok(parsed)
    }
}

fn read(spec: &str, file: &str) -> Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("constraint {spec:?}: cannot read {file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back_and_bad_ones_are_named_errors() {
        let c: ConstraintSpec = "no-chars:eE".parse().unwrap();
        assert_eq!(c, ConstraintSpec::NoChars("eE".into()));
        assert_eq!(c.to_string(), "no-chars:eE");
        for s in ["regex:[a-z]+", "keyword:dragon", "search:(?i)king"] {
            let c: ConstraintSpec = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            assert!(c.grammar().is_some());
        }
        for bad in [
            "no-chars:",
            "letters:e",
            "x",
            "regex:a(b",
            "json-schema:",
            "lark:",
        ] {
            let e = bad.parse::<ConstraintSpec>().unwrap_err();
            assert!(format!("{e:#}").contains(bad), "{bad}: {e:#}");
        }
        // llguidance cannot match \b, and says so.
        let e = r"regex:\bking\b".parse::<ConstraintSpec>().unwrap_err();
        assert!(format!("{e:#}").contains("lookarounds"), "{e:#}");
    }

    #[test]
    fn grammar_files_are_read_and_checked_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("tsmc-constraints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let good = write("good.json", r#"{"type": "integer", "minimum": 0}"#);
        let c: ConstraintSpec = format!("json-schema:{good}").parse().unwrap();
        assert_eq!(c.to_string(), format!("json-schema:{good}"));
        for (name, text, expected) in [
            ("not.json", "{type: integer", "not valid JSON"),
            (
                "bad.json",
                r#"{"type": "integer", "minimum": 5, "maximum": 3}"#,
                "Unsatisfiable",
            ),
            ("typo.json", r#"{"type": "strin"}"#, "strin"),
        ] {
            let f = write(name, text);
            let e = format!(
                "{:#}",
                format!("json-schema:{f}")
                    .parse::<ConstraintSpec>()
                    .unwrap_err()
            );
            assert!(e.contains(&f) && e.contains(expected), "{name}: {e}");
        }
        let lark = write("bad.lark", "start: foo\nfoo: \"a\" bar\n");
        let e = format!(
            "{:#}",
            format!("lark:{lark}")
                .parse::<ConstraintSpec>()
                .unwrap_err()
        );
        assert!(e.contains(&lark) && e.contains("bar"), "{e}");
        let e = format!(
            "{:#}",
            "lark:/no/such/file.lark"
                .parse::<ConstraintSpec>()
                .unwrap_err()
        );
        assert!(e.contains("cannot read /no/such/file.lark"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
