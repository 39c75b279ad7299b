//! Potentials of the applications: each implements [`smc_core::model::Potential`], so users
//! can add their own next to them.

pub mod classifier;
pub mod judge;
pub mod text;

pub use text::{KeywordPotential, RegexPotential};

use anyhow::{Result, bail};
use lm_burn::{BurnLm, Tokenizer};
use smc_core::model::Potential;

/// Parses a potential specification:
/// - `keyword:WORD`, `regex:PATTERN` (hard constraints on the continuation);
/// - `toxicity:threshold=0.5` or `toxicity:beta=1` (the shipped toxicity classifier, class toxic);
/// - `sentiment:positive:beta=1`, `sentiment:negative:threshold=0.9` (the shipped sentiment
///   classifier); `classifier=PATH` after the form uses another classifier file;
/// - `infilling:TEXT`: log p0(TEXT | prompt, s), the continuation TEXT after the sample;
/// - `judge:QUESTION`: log p0(" yes" | a template asking QUESTION about prompt + s).
pub fn parse<'a>(spec: &str, lm: &'a BurnLm) -> Result<Box<dyn Potential + 'a>> {
    let tokenizer = lm.tokenizer()?;
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "infilling" if !arg.is_empty() => {
            let c = tokenizer.encode(arg)?;
            if c.is_empty() {
                bail!("potential {spec:?}: the continuation has no tokens");
            }
            Ok(Box::new(lm_burn::infilling::InfillingPotential::new(lm, c)))
        }
        "judge" if !arg.is_empty() => Ok(Box::new(judge::JudgePotential::new(lm, arg)?)),
        "toxicity" | "sentiment" => classifier_potential(kind, arg, spec, tokenizer),
        "keyword" if !arg.is_empty() => Ok(Box::new(KeywordPotential::new(tokenizer.clone(), arg))),
        "regex" if !arg.is_empty() => Ok(Box::new(RegexPotential::new(tokenizer.clone(), arg)?)),
        "keyword" | "regex" => {
            bail!("potential {spec:?}: {kind} needs an argument, e.g. {kind}:dragon")
        }
        _ => bail!(
            "unknown potential {spec:?}: expected keyword:WORD, regex:PATTERN, toxicity:..., sentiment:..., infilling:TEXT or judge:QUESTION"
        ),
    }
}

fn classifier_potential(
    kind: &str,
    arg: &str,
    spec: &str,
    tokenizer: &Tokenizer,
) -> Result<Box<dyn Potential>> {
    use classifier::{ClassifierForm, ClassifierPotential, LinearTextClassifier};
    let mut positive = true;
    let mut form = ClassifierForm::Power(1.0);
    let mut file = None;
    for part in arg.split(':').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("beta", v)) => {
                form = ClassifierForm::Power(v.parse().map_err(|_| {
                    anyhow::anyhow!("potential {spec:?}: beta {v:?} is not a number")
                })?)
            }
            Some(("threshold", v)) => {
                let t: f64 = v.parse().map_err(|_| {
                    anyhow::anyhow!("potential {spec:?}: threshold {v:?} is not a number")
                })?;
                if !(0.0..=1.0).contains(&t) {
                    bail!("potential {spec:?}: threshold must be in [0, 1], found {t}");
                }
                form = ClassifierForm::Threshold(t);
            }
            Some(("classifier", path)) => file = Some(path.to_string()),
            None if kind == "sentiment" && part == "positive" => positive = true,
            None if kind == "sentiment" && part == "negative" => positive = false,
            None if kind == "toxicity" && part == "toxic" => positive = true,
            None if kind == "toxicity" && part == "nontoxic" => positive = false,
            _ => bail!(
                "potential {spec:?}: unknown part {part:?} (expected beta=B, threshold=T, classifier=PATH or a class)"
            ),
        }
    }
    let classifier = match (&file, kind) {
        (Some(path), _) => LinearTextClassifier::from_file(std::path::Path::new(path))?,
        (None, "toxicity") => LinearTextClassifier::toxicity(),
        (None, _) => LinearTextClassifier::sentiment(),
    };
    Ok(Box::new(ClassifierPotential::new(
        classifier,
        tokenizer.clone(),
        positive,
        form,
        spec.to_string(),
    )))
}
