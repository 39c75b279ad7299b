//! The cost of constraint masks next to a decode step, on the default model's vocabulary
//! (V = 49152) at K = 64: per step, the mask of every running particle and the push of its
//! token. The tokens replay 64 outputs the model drew under each constraint (sequential
//! importance sampling, drawn once outside the timing): no two particles share a state, the
//! worst case (resampled duplicates share theirs and cost one mask), and the states are the
//! ones a run visits (inside strings, keys, numbers, between items).
//!
//! Group `masks_K64_per_step` (median time of one step; compare with `decode_step`, the
//! model's `next_log_probs` + `push` at K = 64).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use lm_burn::{BurnLm, default_device};
use smc_core::constraint::{Constraint, TokenMask};
use smc_core::prelude::*;
use tsmc_apps::constraints::{ConstraintSpec, GrammarConstraints};

const K: usize = 64;
/// Steps replayed per measurement (masks are computed at each).
const STEPS: usize = 24;
const PROMPT: [u32; 4] = [6403, 1980, 253, 655];

/// A schema whose outputs go on for a while: an array of objects with strings and numbers.
const SCHEMA: &str = r#"{"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
    "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}}},
    "required": ["name", "age", "email", "tags"], "additionalProperties": false}}"#;

/// The token of each particle at each step of 64 outputs drawn by SIS under `c` from the
/// chat `prompt` (an ended particle repeats the end token).
fn walks(lm: &BurnLm, c: &dyn Constraint, prompt: &[u32], eos: &[u32]) -> Vec<Vec<u32>> {
    let end = EndOfSequence::new(eos.to_vec(), AtMaxTokens::Truncate).unwrap();
    let options = RunOptions::default().with_constraint(c).with_end(&end);
    let config = SmcConfig::sis(K, STEPS, Proposal::Base).with_seed(3);
    let out = run_smc_with(lm, &UnitPotential, &options, prompt, &config).unwrap();
    (0..STEPS)
        .map(|t| {
            (0..K)
                .map(|p| out.tokens[p].get(t).copied().unwrap_or(eos[0]))
                .collect()
        })
        .collect()
}

/// One replay of the walks: masks and pushes at every step.
fn replay(c: &dyn Constraint, vocab: usize, eos: &[u32], steps: &[Vec<u32>]) {
    let mut s = c.start_within(&[], K, STEPS, vocab).unwrap();
    let mut ended = vec![false; K];
    let mut mask = TokenMask::none(vocab);
    for tokens in steps {
        for p in 0..K {
            if ended[p] {
                continue;
            }
            s.allowed(p, &mut mask).unwrap();
            black_box(&mask);
            if eos.contains(&tokens[p]) {
                s.end(p).unwrap();
                ended[p] = true;
            }
        }
        s.push(tokens).unwrap();
    }
}

fn masks(c: &mut Criterion) {
    let lm = BurnLm::load("default", &default_device()).expect("default model");
    let vocab = lm.dims().vocab;
    let eos = lm.eos_tokens().to_vec();
    let dir = std::env::temp_dir().join(format!("tsmc-bench-masks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("schema.json");
    std::fs::write(&schema, SCHEMA).unwrap();
    let grammars = GrammarConstraints::new(&lm);
    let mut group = c.benchmark_group("masks_K64_per_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (label, spec) in [
        ("json_schema", format!("json-schema:{}", schema.display())),
        (
            "regex",
            r"regex:[A-Z][a-z]+( [a-z]+,?)* (dragon|castle)\.".to_string(),
        ),
        ("keyword_automaton", "keyword:dragon".to_string()),
    ] {
        let spec: ConstraintSpec = spec.parse().unwrap();
        let constraint = spec.build(&lm, &grammars).unwrap();
        let steps = walks(constraint.as_ref(), vocab, &eos);
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    replay(constraint.as_ref(), vocab, &eos, &steps);
                }
                // Per step: the replay's time over its steps.
                started.elapsed() / STEPS as u32
            })
        });
    }
    group.bench_function("decode_step", |b| {
        let mut s = lm.start(&PROMPT, K).unwrap();
        let tokens: Vec<u32> = (0..K as u32).map(|p| 17 + p * 101).collect();
        for _ in 0..20 {
            s.push(&tokens).unwrap();
        }
        b.iter(|| {
            black_box(s.next_log_probs().unwrap());
            s.push(&tokens).unwrap();
        })
    });
    group.finish();
    std::fs::remove_dir_all(&dir).ok();
}

criterion_group!(benches, masks);
criterion_main!(benches);
