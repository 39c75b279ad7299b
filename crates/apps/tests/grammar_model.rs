//! Grammar constraints on the default model (SmolLM2-135M-Instruct, fetched once): every
//! particle with positive weight satisfies its constraint, checked by tools independent of
//! llguidance.
//!
//! - Each JSON schema of testdata/json-schemas (23 written for this test: types, enums, const,
//!   nested objects, arrays, required and optional fields, string patterns and lengths, number
//!   ranges, anyOf/oneOf, $ref, nullable, multipleOf) is parsed as `json-schema:FILE` the way
//!   the command line parses it, built against the model's vocabulary, and sampled with K = 4
//!   particles and at most 64 tokens ending at the model's end-of-sequence token; every
//!   weighted output must parse as JSON (serde_json) and validate under its schema (the
//!   `jsonschema` crate).
//! - A Lark grammar (testdata/grammars/greeting.lark) and a regex: outputs are checked with
//!   the `regex` crate.
//! - The token bytes the grammar engine sees concatenate to what the tokenizer decodes.
//!
//! The model is loaded once for all of them.

use std::path::PathBuf;
use std::sync::OnceLock;

use lm_burn::default_model::ensure_default_model;
use lm_burn::{BurnLm, default_device};
use smc_core::prelude::*;
use tsmc_apps::constraints::{ConstraintSpec, GrammarConstraints, grammar::token_bytes};

const K: usize = 4;
const MAX_TOKENS: usize = 64;

fn model() -> &'static BurnLm {
    static LM: OnceLock<BurnLm> = OnceLock::new();
    LM.get_or_init(|| {
        let path = ensure_default_model().expect("fetch the default model");
        BurnLm::from_gguf(&path, &default_device()).expect("load the default model")
    })
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// The model's chat template around a request, so that the instruct model answers and ends
/// its turn.
fn chat(request: &str) -> Vec<u32> {
    let text = format!("<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n");
    model().tokenizer().unwrap().encode(&text).unwrap()
}

/// Samples under `spec` and returns the texts of the outputs with positive weight (at least
/// one: a run in which none is accepted is an error).
fn weighted_outputs(
    spec: &ConstraintSpec,
    grammars: &GrammarConstraints<'_>,
    request: &str,
) -> Vec<String> {
    let lm = model();
    let constraint = spec.build(lm, grammars).unwrap();
    let end = EndOfSequence::new(lm.eos_tokens().to_vec(), AtMaxTokens::Truncate).unwrap();
    let options = RunOptions::default()
        .with_constraint(constraint.as_ref())
        .with_end(&end);
    let config = SmcConfig::bootstrap(K, MAX_TOKENS).with_seed(1);
    let started = std::time::Instant::now();
    let out = run_smc_with(lm, &UnitPotential, &options, &chat(request), &config)
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    let tokenizer = lm.tokenizer().unwrap();
    let texts: Vec<String> = (0..K)
        .filter(|&k| out.log_w[k] > f64::NEG_INFINITY)
        .map(|k| tokenizer.decode(&out.tokens[k]).unwrap())
        .collect();
    assert!(!texts.is_empty(), "{spec}: no weighted output");
    eprintln!(
        "{spec}: {} steps, {:.1} s: {texts:?}",
        out.steps.len(),
        started.elapsed().as_secs_f64()
    );
    texts
}

#[test]
fn token_bytes_concatenate_to_the_decoded_text() {
    let lm = model();
    let tokenizer = lm.tokenizer().unwrap();
    let bytes = token_bytes(lm).unwrap();
    assert_eq!(bytes.len(), lm.dims().vocab);
    assert_eq!(bytes.eos_tokens(), lm.eos_tokens());
    for text in [
        "Hello, world!",
        "  {\"name\": \"Zoë\", \"age\": 42}\n\ttabs",
        "naïve café — 日本語 🙂 ©2024",
        "<|im_start|>user\nhi<|im_end|>",
    ] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(
            String::from_utf8(bytes.decode(&ids)).unwrap(),
            tokenizer.decode(&ids).unwrap(),
            "{text:?}"
        );
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn every_weighted_output_validates_against_its_json_schema() {
    let lm = model();
    let grammars = GrammarConstraints::new(lm);
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().join("json-schemas"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{} schemas", files.len());
    for file in files {
        let spec: ConstraintSpec = format!("json-schema:{}", file.display()).parse().unwrap();
        let ConstraintSpec::JsonSchema { schema, .. } = &spec else {
            panic!("{spec}: not a JSON schema");
        };
        let validator = jsonschema::validator_for(schema).unwrap();
        let description = schema["description"].as_str().unwrap();
        let request = format!("Give {description}, as JSON.");
        for text in weighted_outputs(&spec, &grammars, &request) {
            let value: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{spec}: {text:?} is not JSON: {e}"));
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{spec}: {text:?}: {errors:?}");
        }
    }
}

#[test]
fn every_weighted_output_satisfies_a_lark_grammar_and_a_regex() {
    let lm = model();
    let grammars = GrammarConstraints::new(lm);
    let lark = testdata().join("grammars/greeting.lark");
    let spec: ConstraintSpec = format!("lark:{}", lark.display()).parse().unwrap();
    let greeting = regex::Regex::new(r"^(Hello|Hi|Dear)(, | )[A-Z][a-z]{1,9}[!.]$").unwrap();
    for text in weighted_outputs(&spec, &grammars, "Greet a friend in a few words.") {
        assert!(greeting.is_match(&text), "{spec}: {text:?}");
    }
    let pattern = r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}";
    let spec: ConstraintSpec = format!("regex:{pattern}").parse().unwrap();
    let phone = regex::Regex::new(&format!("^{pattern}$")).unwrap();
    for text in weighted_outputs(&spec, &grammars, "Write a US phone number.") {
        assert!(phone.is_match(&text), "{spec}: {text:?}");
    }
}
