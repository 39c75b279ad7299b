//! Potentials of the applications: each implements [`smc_core::model::Potential`], so users
//! can add their own next to them.

pub mod classifier;
pub mod judge;
pub mod prefix;
pub mod text;

pub use prefix::{PrefixCheck, Targets};
pub use text::{GrammarPotential, KeywordPotential, RegexPotential};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use lm_burn::BurnLm;
use smc_core::model::Potential;

use crate::constraints::{ConstraintSpec, GrammarConstraints};
use classifier::{ClassifierForm, ClassifierPotential, LinearTextClassifier};

/// Which shipped classifier a classifier potential uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierKind {
    /// The toxicity classifier (a port of alt-profanity-check); class 1 = toxic.
    Toxicity,
    /// The movie-review sentiment classifier; class 1 = positive.
    Sentiment,
}

/// A potential as the command line names it, checked when it is parsed (before any model is
/// loaded) and built against a model with [`PotentialSpec::build`]:
/// - `keyword:WORD`, `regex:PATTERN` (hard constraints on the continuation: it contains WORD,
///   ignoring case, or a match of PATTERN);
/// - `json-schema:FILE`, `lark:FILE` (the continuation is JSON valid under the schema, or a
///   sentence of the Lark grammar);
/// - `toxicity:threshold=0.5` or `toxicity:beta=1` (the shipped toxicity classifier, class toxic;
///   `toxicity:nontoxic:...` for the other class);
/// - `sentiment:positive:beta=1`, `sentiment:negative:threshold=0.9` (the shipped sentiment
///   classifier); `classifier=PATH` after the form uses another classifier file;
/// - `infilling:TEXT`: log p0(TEXT | prompt, s), the continuation TEXT after the sample;
/// - `judge:QUESTION`: log p0(" yes" | a template asking QUESTION about prompt + s);
/// - `none`: phi = 1 (with a constraint, the target is p0 under the constraint).
#[derive(Debug, Clone, PartialEq)]
pub enum PotentialSpec {
    /// The continuation contains a word.
    Keyword(String),
    /// The continuation matches a regular expression (checked to compile).
    Regex(String),
    /// The continuation satisfies a grammar: a `json-schema:FILE` or `lark:FILE` constraint,
    /// read and compiled when parsed.
    Grammar(ConstraintSpec),
    /// A linear text classifier of prompt + continuation.
    Classifier {
        /// Which classifier.
        kind: ClassifierKind,
        /// Whether the wanted class is class 1 (toxic, positive).
        positive: bool,
        /// Threshold or power form.
        form: ClassifierForm,
        /// Another classifier file of the same format.
        file: Option<PathBuf>,
        /// The specification as written (the potential's name).
        text: String,
    },
    /// log p0(TEXT | prompt, s).
    Infilling(String),
    /// The model judging its own output.
    Judge(String),
    /// phi = 1: no potential (with a `--constraint`, the target is p0 under the constraint).
    Unit,
}

impl PotentialSpec {
    /// Builds the potential for `lm` (its tokenizer; infilling and judge score with it).
    pub fn build<'a>(&self, lm: &'a BurnLm) -> Result<Box<dyn Potential + 'a>> {
        let tokenizer = lm.tokenizer()?;
        Ok(match self {
            PotentialSpec::Infilling(text) => {
                let c = tokenizer.encode(text)?;
                if c.is_empty() {
                    bail!("potential {self}: the continuation has no tokens");
                }
                Box::new(lm_burn::infilling::InfillingPotential::new(lm, c))
            }
            PotentialSpec::Judge(q) => Box::new(judge::JudgePotential::new(lm, q)?),
            PotentialSpec::Unit => Box::new(smc_core::model::UnitPotential),
            PotentialSpec::Keyword(w) => Box::new(KeywordPotential::new(tokenizer.clone(), w)),
            PotentialSpec::Regex(r) => Box::new(RegexPotential::new(tokenizer.clone(), r)?),
            PotentialSpec::Grammar(c) => {
                let grammars = GrammarConstraints::new(lm);
                let Some(spec) = c.grammar() else {
                    bail!("potential {self}: not a grammar");
                };
                Box::new(GrammarPotential::new(
                    grammars.compile(&c.to_string(), &spec)?,
                ))
            }
            PotentialSpec::Classifier {
                kind,
                positive,
                form,
                file,
                text,
            } => {
                let classifier = match (file, kind) {
                    (Some(path), _) => LinearTextClassifier::from_file(path)?,
                    (None, ClassifierKind::Toxicity) => LinearTextClassifier::toxicity(),
                    (None, ClassifierKind::Sentiment) => LinearTextClassifier::sentiment(),
                };
                Box::new(ClassifierPotential::new(
                    classifier,
                    tokenizer.clone(),
                    *positive,
                    *form,
                    text.clone(),
                ))
            }
        })
    }

    /// Whether exact samples come from class rejection: a classifier in the power form with
    /// beta = 1, i.e. phi(s) = p(class | s), so that keeping s ~ p0 when a class drawn from
    /// p(. | s) is the wanted one is exact. Hard constraints use plain rejection.
    pub fn class_rejection(&self) -> bool {
        matches!(
            self,
            PotentialSpec::Classifier {
                form: ClassifierForm::Power(b),
                ..
            } if *b == 1.0
        )
    }

    /// Whether this is an infilling potential (its target changes with the continuation).
    pub fn is_infilling(&self) -> bool {
        matches!(self, PotentialSpec::Infilling(_))
    }
}

impl fmt::Display for PotentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PotentialSpec::Keyword(w) => write!(f, "keyword:{w}"),
            PotentialSpec::Regex(r) => write!(f, "regex:{r}"),
            PotentialSpec::Grammar(c) => write!(f, "{c}"),
            PotentialSpec::Classifier { text, .. } => f.write_str(text),
            PotentialSpec::Infilling(t) => write!(f, "infilling:{t}"),
            PotentialSpec::Judge(q) => write!(f, "judge:{q}"),
            PotentialSpec::Unit => f.write_str("none"),
        }
    }
}

impl FromStr for PotentialSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self> {
        let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "none" if arg.is_empty() => Ok(PotentialSpec::Unit),
            "infilling" if !arg.is_empty() => Ok(PotentialSpec::Infilling(arg.to_string())),
            "judge" if !arg.is_empty() => Ok(PotentialSpec::Judge(arg.to_string())),
            "keyword" if !arg.is_empty() => Ok(PotentialSpec::Keyword(arg.to_string())),
            "regex" if !arg.is_empty() => {
                regex::Regex::new(arg)
                    .map_err(|e| anyhow!("potential {spec:?}: invalid regular expression: {e}"))?;
                Ok(PotentialSpec::Regex(arg.to_string()))
            }
            "json-schema" | "lark" => Ok(PotentialSpec::Grammar(
                spec.parse::<ConstraintSpec>()
                    .map_err(|e| anyhow!("potential {spec:?}: {e:#}"))?,
            )),
            "toxicity" => classifier_spec(ClassifierKind::Toxicity, arg, spec),
            "sentiment" => classifier_spec(ClassifierKind::Sentiment, arg, spec),
            "keyword" | "regex" | "infilling" | "judge" => {
                bail!("potential {spec:?}: {kind} needs an argument, e.g. {kind}:dragon")
            }
            _ => bail!(
                "unknown potential {spec:?}: expected keyword:WORD, regex:PATTERN, json-schema:FILE, lark:FILE, toxicity:..., sentiment:..., infilling:TEXT, judge:QUESTION or none"
            ),
        }
    }
}

fn classifier_spec(kind: ClassifierKind, arg: &str, spec: &str) -> Result<PotentialSpec> {
    let mut positive = true;
    let mut form = ClassifierForm::Power(1.0);
    let mut file = None;
    for part in arg.split(':').filter(|p| !p.is_empty()) {
        match (part.split_once('='), kind) {
            (Some(("beta", v)), _) => {
                let b: f64 = v
                    .parse()
                    .map_err(|_| anyhow!("potential {spec:?}: beta {v:?} is not a number"))?;
                if !b.is_finite() {
                    bail!("potential {spec:?}: beta must be finite, found {v}");
                }
                form = ClassifierForm::Power(b);
            }
            (Some(("threshold", v)), _) => {
                let t: f64 = v
                    .parse()
                    .map_err(|_| anyhow!("potential {spec:?}: threshold {v:?} is not a number"))?;
                if !(0.0..=1.0).contains(&t) {
                    bail!("potential {spec:?}: threshold must be in [0, 1], found {t}");
                }
                form = ClassifierForm::Threshold(t);
            }
            (Some(("classifier", path)), _) => file = Some(PathBuf::from(path)),
            (None, ClassifierKind::Sentiment) if part == "positive" => positive = true,
            (None, ClassifierKind::Sentiment) if part == "negative" => positive = false,
            (None, ClassifierKind::Toxicity) if part == "toxic" => positive = true,
            (None, ClassifierKind::Toxicity) if part == "nontoxic" => positive = false,
            _ => bail!(
                "potential {spec:?}: unknown part {part:?} (expected beta=B, threshold=T, classifier=PATH or a class)"
            ),
        }
    }
    Ok(PotentialSpec::Classifier {
        kind,
        positive,
        form,
        file,
        text: spec.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_typed_potentials_and_print_back() {
        for s in [
            "keyword:dragon",
            r"regex:(?i)\bking\b",
            "toxicity:threshold=0.5",
            "sentiment:negative:beta=1",
            "infilling: the end.",
            "judge:Is it kind?",
        ] {
            let spec: PotentialSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert!(
            "toxicity:beta=1"
                .parse::<PotentialSpec>()
                .unwrap()
                .class_rejection()
        );
        assert!(
            !"toxicity:beta=2"
                .parse::<PotentialSpec>()
                .unwrap()
                .class_rejection()
        );
        assert!(
            !"toxicity:threshold=0.5"
                .parse::<PotentialSpec>()
                .unwrap()
                .class_rejection()
        );
        for bad in [
            "regex:(",
            "toxicity:threshold=2",
            "sentiment:toxic",
            "keyword:",
            "frobnicate:x",
        ] {
            let err = bad.parse::<PotentialSpec>().unwrap_err().to_string();
            assert!(err.contains(bad.split(':').next().unwrap()), "{bad}: {err}");
        }
    }
}
