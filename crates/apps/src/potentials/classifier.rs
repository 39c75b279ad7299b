//! Linear text classifiers shipped as plain numbers (TF-IDF + calibrated linear heads), and the
//! classifier potentials built on them: a threshold form 1[p(class | text) >= tau] (with the
//! 1e-16 floor) and a power form p(class | text)^beta. The classifier reads the prompt and the
//! continuation, detokenised.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use lm_burn::Tokenizer;
use serde::Deserialize;
use smc_core::batch::TokenBuffer;
use smc_core::logspace::log_indicator;
use smc_core::model::Potential;

#[derive(Deserialize)]
struct Head {
    coef: Vec<f64>,
    intercept: f64,
    sigmoid_a: f64,
    sigmoid_b: f64,
}

#[derive(Deserialize)]
struct File {
    token_pattern: String,
    stop_words: Vec<String>,
    vocab: HashMap<String, usize>,
    idf: Vec<f64>,
    heads: Vec<Head>,
}

/// The largest classifier file read (the shipped ones are about 2 MiB).
pub const MAX_CLASSIFIER_BYTES: u64 = 256 << 20;

/// A TF-IDF + linear-heads classifier: p = mean over heads of 1 / (1 + exp(a d + b)),
/// d = coef · x + intercept, x the l2-normalised TF-IDF vector of the lowercased text.
pub struct LinearTextClassifier {
    pattern: regex::Regex,
    stop_words: std::collections::HashSet<String>,
    vocab: HashMap<String, usize>,
    idf: Vec<f64>,
    heads: Vec<Head>,
}

/// The toxicity classifier shipped with tsmc (alt-profanity-check, MIT).
pub const TOXICITY_JSON: &str = include_str!("../../data/toxicity/profanity-linear.json");
/// The movie-review sentiment classifier shipped with tsmc.
pub const SENTIMENT_JSON: &str = include_str!("../../data/sentiment/movie-sentiment-linear.json");

impl LinearTextClassifier {
    /// Parses a classifier from its JSON text; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let f: File = serde_json::from_str(text)
            .with_context(|| format!("{source}: not a linear text classifier"))?;
        if f.idf.len() != f.vocab.len() {
            bail!(
                "{source}: field `idf` has {} entries, expected {} (the vocabulary size)",
                f.idf.len(),
                f.vocab.len()
            );
        }
        if let Some(i) = f.heads.iter().position(|h| h.coef.len() != f.idf.len()) {
            bail!(
                "{source}: heads[{i}].coef has {} entries, expected {}",
                f.heads[i].coef.len(),
                f.idf.len()
            );
        }
        if f.heads.is_empty() {
            bail!("{source}: field `heads` is empty");
        }
        if let Some((w, _)) = f.vocab.iter().find(|&(_, &i)| i >= f.idf.len()) {
            bail!(
                "{source}: vocabulary entry {w:?} has an index outside 0..{}",
                f.idf.len()
            );
        }
        let pattern = regex::Regex::new(&f.token_pattern)
            .with_context(|| format!("{source}: field `token_pattern`"))?;
        Ok(Self {
            pattern,
            stop_words: f.stop_words.into_iter().collect(),
            vocab: f.vocab,
            idf: f.idf,
            heads: f.heads,
        })
    }

    /// Reads a classifier file of at most [`MAX_CLASSIFIER_BYTES`] (a device such as
    /// /dev/zero or a huge file is refused after that many bytes, not read without limit).
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read classifier file {}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_CLASSIFIER_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read classifier file {}", path.display()))?;
        if bytes.len() as u64 > MAX_CLASSIFIER_BYTES {
            bail!(
                "classifier file {} is larger than {} MiB (the shipped ones are about 2 MiB)",
                path.display(),
                MAX_CLASSIFIER_BYTES >> 20
            );
        }
        let text = String::from_utf8(bytes)
            .with_context(|| format!("classifier file {} is not UTF-8 text", path.display()))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The shipped toxicity classifier.
    pub fn toxicity() -> Self {
        Self::from_json(TOXICITY_JSON, "toxicity classifier")
            .expect("the shipped classifier is valid")
    }

    /// The shipped sentiment classifier.
    pub fn sentiment() -> Self {
        Self::from_json(SENTIMENT_JSON, "sentiment classifier")
            .expect("the shipped classifier is valid")
    }

    /// p(class 1 | text).
    pub fn probability(&self, text: &str) -> f64 {
        let lower = text.to_lowercase();
        let mut counts: HashMap<usize, f64> = HashMap::new();
        for m in self.pattern.find_iter(&lower) {
            let tok = m.as_str();
            if self.stop_words.contains(tok) {
                continue;
            }
            if let Some(&i) = self.vocab.get(tok) {
                *counts.entry(i).or_default() += 1.0;
            }
        }
        let mut x: Vec<(usize, f64)> = counts
            .into_iter()
            .map(|(i, c)| (i, c * self.idf[i]))
            .collect();
        let norm = x.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            x.iter_mut().for_each(|(_, v)| *v /= norm);
        }
        let mean: f64 = self
            .heads
            .iter()
            .map(|h| {
                let d = h.intercept + x.iter().map(|&(i, v)| h.coef[i] * v).sum::<f64>();
                1.0 / (1.0 + (h.sigmoid_a * d + h.sigmoid_b).exp())
            })
            .sum::<f64>()
            / self.heads.len() as f64;
        mean
    }
}

/// How a classifier probability becomes a potential.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassifierForm {
    /// phi = 1[p(class) >= threshold] (log floor 1e-16).
    Threshold(f64),
    /// phi = p(class)^beta.
    Power(f64),
}

/// A potential from a classifier of prompt + continuation.
pub struct ClassifierPotential {
    classifier: LinearTextClassifier,
    tokenizer: Tokenizer,
    /// Whether the wanted class is class 1 (toxic, positive) or class 0.
    positive_class: bool,
    form: ClassifierForm,
    name: String,
}

impl ClassifierPotential {
    /// A classifier potential named `name`.
    pub fn new(
        classifier: LinearTextClassifier,
        tokenizer: Tokenizer,
        positive_class: bool,
        form: ClassifierForm,
        name: String,
    ) -> Self {
        Self {
            classifier,
            tokenizer,
            positive_class,
            form,
            name,
        }
    }

    /// p(wanted class | text).
    pub fn class_probability(&self, text: &str) -> f64 {
        let p = self.classifier.probability(text);
        if self.positive_class { p } else { 1.0 - p }
    }
}

impl Potential for ClassifierPotential {
    fn name(&self) -> &str {
        &self.name
    }

    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> smc_core::Result<Vec<f64>> {
        sequences
            .iter()
            .map(|s| {
                let ids: Vec<u32> = prompt.iter().chain(s).copied().collect();
                let text = self
                    .tokenizer
                    .decode(&ids)
                    .map_err(|e| smc_core::SmcError::backend("decoding a particle", e))?;
                let p = self.class_probability(&text);
                Ok(match self.form {
                    ClassifierForm::Threshold(tau) => log_indicator(p >= tau),
                    ClassifierForm::Power(beta) => beta * p.ln(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(json: &str) -> Vec<(String, f64)> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["reference"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, p)| (k.clone(), p.as_f64().unwrap()))
            .collect()
    }

    #[test]
    fn toxicity_classifier_matches_scikit_learn_to_1e_6() {
        let clf = LinearTextClassifier::toxicity();
        for (text, p) in reference(TOXICITY_JSON) {
            assert!(
                (clf.probability(&text) - p).abs() < 1e-6,
                "{text:?}: {} vs {p}",
                clf.probability(&text)
            );
        }
    }

    #[test]
    fn sentiment_classifier_matches_scikit_learn_to_1e_6() {
        let clf = LinearTextClassifier::sentiment();
        for (text, p) in reference(SENTIMENT_JSON) {
            assert!(
                (clf.probability(&text) - p).abs() < 1e-6,
                "{text:?}: {} vs {p}",
                clf.probability(&text)
            );
        }
    }

    #[test]
    fn unreadable_or_inconsistent_classifier_files_are_named_errors() {
        let e = LinearTextClassifier::from_file(Path::new("/no/such/clf.json"))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/no/such/clf.json"), "{e:#}");
        // An endless device is read up to the limit, then refused.
        if Path::new("/dev/zero").exists() {
            let e = LinearTextClassifier::from_file(Path::new("/dev/zero"))
                .err()
                .unwrap();
            assert!(format!("{e:#}").contains("larger than"), "{e:#}");
        }
        let e = LinearTextClassifier::from_json(r#"{"token_pattern": "x", "stop_words": [], "vocab": {"a": 0}, "idf": [], "heads": []}"#, "bad.json")
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("bad.json: field `idf` has 0 entries, expected 1"),
            "{e:#}"
        );
    }
}
