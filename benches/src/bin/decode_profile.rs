//! The side-by-side decoding workload of the speed issue, with a per-operation profile.
//!
//! SmolLM2-135M-Instruct (the default model), prompt "Once upon a time, there was a" without
//! BOS, T = 20 tokens, K particles:
//! - `smc`: every token whose text contains the letter "e" is masked, proposals draw from the
//!   masked renormalised p0 and weigh by the allowed mass (smc-core's constrained SMC with a
//!   token-set constraint), multinomial resampling after every step;
//! - `plain`: batched sampling from p0 with the same session, no mask, no resampling.
//!
//! Prints per K and mode the particle-tokens per second (K x T / wall time, prefill included,
//! model load excluded: the llama.cpp harness's definition) and the wall time of each operation
//! of a step (milliseconds per step, [`lm_burn::profile`]); `smc` is the rest of the run (masks,
//! proposals, weights, resampling). With `--json-out FILE` also writes every run as JSON.
//!
//! ```sh
//! cargo run --release -p tsmc-benches --bin decode_profile -- --k 1 16 64 256 --repeats 3
//! ```

use std::time::Instant;

use lm_burn::{BurnLm, default_device, profile};
use rand::RngExt;
use serde_json::json;
use smc_core::prelude::{
    Criterion, DecodeSession, LanguageModel, Proposal, Resampling, RunOptions, Scheme, SmcConfig,
    TokenSetConstraint, UnitPotential, rng_from_seed, run_smc_with,
};

const PROMPT: &str = "Once upon a time, there was a";

struct Args {
    ks: Vec<usize>,
    t: usize,
    repeats: usize,
    modes: Vec<String>,
    json_out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ks: vec![1, 16, 64, 256],
        t: 20,
        repeats: 1,
        modes: vec!["smc".into(), "plain".into()],
        json_out: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let number = |s: &str, what: &str| -> Result<usize, String> {
        s.parse::<usize>()
            .ok()
            .filter(|&n| n >= 1 && n <= 4096)
            .ok_or_else(|| format!("{what}: expected an integer in 1..=4096, found {s:?}"))
    };
    while i < argv.len() {
        let flag = argv[i].as_str();
        let mut values = Vec::new();
        while i + 1 < argv.len() && !argv[i + 1].starts_with("--") {
            i += 1;
            values.push(argv[i].clone());
        }
        let one = || {
            values
                .first()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--k" => {
                args.ks = values
                    .iter()
                    .map(|v| number(v, "--k"))
                    .collect::<Result<_, _>>()?
            }
            "--t" => args.t = number(&one()?, "--t")?,
            "--repeats" => args.repeats = number(&one()?, "--repeats")?,
            "--modes" => args.modes = values,
            "--json-out" => args.json_out = Some(one()?),
            // Passed by `cargo bench` to every target.
            "--bench" => {}
            _ => return Err(format!("unknown argument {flag:?}")),
        }
        i += 1;
    }
    if args.ks.is_empty() {
        return Err("--k needs at least one value".into());
    }
    if let Some(m) = args.modes.iter().find(|m| *m != "smc" && *m != "plain") {
        return Err(format!("--modes: expected smc and/or plain, found {m:?}"));
    }
    Ok(args)
}

/// Milliseconds per step of each profiled operation, and the run's wall time.
struct Run {
    seconds: f64,
    ops: Vec<(&'static str, f64)>,
    log_z: Option<f64>,
}

fn smc_run(
    lm: &BurnLm,
    prompt: &[u32],
    c: &TokenSetConstraint,
    k: usize,
    t: usize,
    seed: u64,
) -> Run {
    let config = SmcConfig {
        num_particles: k,
        horizon: t,
        proposal: Proposal::Base,
        resampling: Resampling {
            scheme: Scheme::Multinomial,
            criterion: Criterion::Always,
        },
        seed,
    };
    let options = RunOptions::twist(None).with_constraint(c);
    profile::take();
    let start = Instant::now();
    let out = run_smc_with(lm, &UnitPotential, &options, prompt, &config).expect("smc run");
    let seconds = start.elapsed().as_secs_f64();
    finish(seconds, t, Some(out.log_z_hat))
}

fn plain_run(lm: &BurnLm, prompt: &[u32], k: usize, t: usize, seed: u64) -> Run {
    let mut rng = rng_from_seed(seed);
    profile::take();
    let start = Instant::now();
    let mut s = lm.start(prompt, k).expect("session");
    for step in 0..t {
        let out = s.next_log_probs().expect("log-probs");
        let tokens = profile::time("sample", || {
            (0..k)
                .map(|p| {
                    let u: f64 = rng.random();
                    let mut cum = 0.0;
                    let row = out.log_probs.row(p);
                    let mut tok = row.len() - 1;
                    for (v, lp) in row.iter().enumerate() {
                        cum += lp.exp();
                        if u < cum {
                            tok = v;
                            break;
                        }
                    }
                    tok as u32
                })
                .collect::<Vec<u32>>()
        });
        // As in SMC: no forward pass after the last token.
        if step + 1 < t {
            s.push(&tokens).expect("push");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    finish(seconds, t, None)
}

fn finish(seconds: f64, t: usize, log_z: Option<f64>) -> Run {
    let ops = profile::take();
    let profiled: f64 = ops.iter().map(|o| o.total.as_secs_f64()).sum();
    let mut per_step: Vec<(&'static str, f64)> = ops
        .iter()
        .map(|o| (o.name, o.total.as_secs_f64() * 1e3 / t as f64))
        .collect();
    per_step.push(("rest", (seconds - profiled).max(0.0) * 1e3 / t as f64));
    Run {
        seconds,
        ops: per_step,
        log_z,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let lm = match BurnLm::load("default", &default_device()) {
        Ok(lm) => lm,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let tokenizer = lm.tokenizer().expect("the default model has a tokenizer");
    let prompt = tokenizer.encode(PROMPT).expect("prompt encodes");
    let vocab = lm.dims().vocab;
    let forbidden: Vec<u32> = (0..vocab as u32)
        .filter(|&id| tokenizer.decode(&[id]).map_or(true, |s| s.contains('e')))
        .collect();
    let constraint = TokenSetConstraint::forbidding("no-chars:e", vocab, forbidden.iter().copied())
        .expect("constraint");
    eprintln!(
        "prompt {PROMPT:?} = {} tokens; {} of {vocab} tokens allowed",
        prompt.len(),
        vocab - forbidden.len()
    );
    profile::set_enabled(true);
    // Warm-up: first-touch allocation and thread-pool start-up are not part of a step.
    let _ = plain_run(&lm, &prompt, 4, 2, 0);
    let mut records = Vec::new();
    println!(
        "| K | mode | particle-tokens/s (median of {}) | ms per step by operation |",
        args.repeats
    );
    println!("|---|---|---|---|");
    for &k in &args.ks {
        for mode in &args.modes {
            let mut runs: Vec<Run> = (0..args.repeats)
                .map(|r| match mode.as_str() {
                    "smc" => smc_run(&lm, &prompt, &constraint, k, args.t, r as u64),
                    _ => plain_run(&lm, &prompt, k, args.t, r as u64),
                })
                .collect();
            runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let median = &runs[runs.len() / 2];
            let tps = (k * args.t) as f64 / median.seconds;
            let ops: Vec<String> = median
                .ops
                .iter()
                .map(|(n, ms)| format!("{n} {ms:.2}"))
                .collect();
            println!("| {k} | {mode} | {tps:.1} | {} |", ops.join(", "));
            for (i, r) in runs.iter().enumerate() {
                records.push(json!({
                    "k": k, "t": args.t, "mode": mode, "rank_by_time": i,
                    "seconds": r.seconds,
                    "particle_tokens_per_s": (k * args.t) as f64 / r.seconds,
                    "ms_per_step": r.ops.iter().map(|(n, ms)| json!([n, ms])).collect::<Vec<_>>(),
                    "log_z_hat": r.log_z,
                }));
            }
        }
    }
    if let Some(path) = args.json_out {
        let text = serde_json::to_string_pretty(&records).expect("json");
        let tmp = format!("{path}.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            eprintln!("error: writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
