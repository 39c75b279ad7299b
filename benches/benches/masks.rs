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
use rand::{RngExt, SeedableRng};
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

/// The token of each particle at each step of 64 outputs the model draws under `c` from the
/// chat `prompt` (p0 restricted to the mask, no resampling, no final acceptance needed; an
/// ended particle repeats the end token).
fn walks(lm: &BurnLm, c: &dyn Constraint, prompt: &[u32], eos: &[u32]) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
    let vocab = lm.dims().vocab;
    let mut model = lm.start(prompt, K).unwrap();
    let mut s = c.start_within(&[], K, STEPS, vocab).unwrap();
    let mut mask = TokenMask::none(vocab);
    let mut ended = [false; K];
    let mut steps = Vec::new();
    for _ in 0..STEPS {
        let table = model.next_log_probs().unwrap().log_probs;
        let mut tokens = Vec::with_capacity(K);
        for (p, done) in ended.iter_mut().enumerate() {
            if *done {
                tokens.push(eos[0]);
                continue;
            }
            s.allowed(p, &mut mask).unwrap();
            if s.accepts(p).unwrap() {
                eos.iter().for_each(|&e| mask.insert(e));
            }
            let row = table.row(p);
            let allowed: Vec<u32> = mask.iter().collect();
            let top = allowed
                .iter()
                .map(|&v| row[v as usize])
                .fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = allowed
                .iter()
                .map(|&v| (row[v as usize] - top).exp())
                .collect();
            let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
            let mut t = *allowed.last().unwrap_or(&eos[0]);
            for (&v, w) in allowed.iter().zip(&weights) {
                u -= w;
                if u <= 0.0 {
                    t = v;
                    break;
                }
            }
            if eos.contains(&t) {
                s.end(p).unwrap();
                *done = true;
            }
            tokens.push(t);
        }
        s.push(&tokens).unwrap();
        model.push(&tokens).unwrap();
        steps.push(tokens);
    }
    steps
}

/// One replay of the walks: masks and pushes at every step.
fn replay(c: &dyn Constraint, vocab: usize, eos: &[u32], steps: &[Vec<u32>]) {
    let mut s = c.start_within(&[], K, STEPS, vocab).unwrap();
    let mut ended = [false; K];
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
    let text = lm_burn::ModelTokenizer::of(&lm).expect("the default model's tokenizer");
    let grammars = GrammarConstraints::new(&text);
    let mut group = c.benchmark_group("masks_K64_per_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let tokenizer = lm.tokenizer().unwrap();
    let chat = |request: &str| {
        let text = format!("<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n");
        tokenizer.encode(&text).unwrap()
    };
    for (label, spec, request) in [
        (
            "json_schema",
            format!("json-schema:{}", schema.display()),
            "List three people with their name, age, email and favourite colours, as JSON.",
        ),
        (
            "regex",
            r"regex:[A-Z][a-z]+( [a-z]+,?)* (dragon|castle)\.".to_string(),
            "Write a sentence about a dragon.",
        ),
        (
            "keyword_automaton",
            "keyword:dragon".to_string(),
            "Tell a story.",
        ),
    ] {
        let spec: ConstraintSpec = spec.parse().unwrap();
        let constraint = spec.build(&text, &grammars).unwrap();
        let steps = walks(&lm, constraint.as_ref(), &chat(request), &eos);
        let running = steps
            .iter()
            .map(|t| t.iter().filter(|x| !eos.contains(x)).count())
            .sum::<usize>() as f64
            / STEPS as f64;
        // Particles with the same history share one state (and one mask), as in a run.
        let distinct = (1..=STEPS)
            .map(|t| {
                (0..K)
                    .filter(|&p| !eos.contains(&steps[t - 1][p]))
                    .map(|p| steps[..t].iter().map(|s| s[p]).collect::<Vec<_>>())
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .sum::<usize>() as f64
            / STEPS as f64;
        eprintln!(
            "{label}: per step on average {running:.1} particles running, {distinct:.1} distinct states"
        );
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
