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
//! Then the side-by-side table: tsmc's rates, the llama.cpp harness's (`--peer-json FILE`, its
//! `--json-out` file from the same minutes), and the f32 GEMM roofline measured in this run.
//!
//! ```sh
//! cargo run --release -p tsmc-benches --bin decode_profile -- --k 1 16 64 256 --repeats 3
//! cargo xtask bench --table --peer      # the same, with the llama.cpp harness run first
//! ```

use std::time::Instant;

use lm_burn::{BurnLm, WeightFormat, default_device, profile};
use rand::RngExt;
use serde_json::json;
use smc_core::prelude::{
    DecodeSession, LanguageModel, RunOptions, TokenSetConstraint, UnitPotential, rng_from_seed,
    run_smc_with,
};
use tsmc_benches::workload::{PROMPT, smc_config, tokens_with_e};

struct Args {
    ks: Vec<usize>,
    t: usize,
    repeats: usize,
    modes: Vec<String>,
    json_out: Option<String>,
    peer_json: Option<String>,
    weights: Vec<WeightFormat>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ks: vec![1, 16, 64, 256],
        t: 20,
        repeats: 1,
        modes: vec!["smc".into(), "plain".into()],
        json_out: None,
        peer_json: None,
        weights: vec![WeightFormat::F32, WeightFormat::Q8, WeightFormat::Bf16],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let number = |s: &str, what: &str| -> Result<usize, String> {
        s.parse::<usize>()
            .ok()
            .filter(|n| (1..=4096).contains(n))
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
            "--peer-json" => args.peer_json = Some(one()?),
            "--weights" => {
                args.weights = values
                    .iter()
                    .map(|v| match v.as_str() {
                        "f32" => Ok(WeightFormat::F32),
                        "q8" => Ok(WeightFormat::Q8),
                        "int8" => Ok(WeightFormat::Int8),
                        "bf16" => Ok(WeightFormat::Bf16),
                        other => Err(format!(
                            "--weights: expected f32, q8, int8 and/or bf16, found {other:?}"
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            // Passed by `cargo bench` to every target.
            "--bench" => {}
            _ => return Err(format!("unknown argument {flag:?}")),
        }
        i += 1;
    }
    if args.ks.is_empty() {
        return Err("--k needs at least one value".into());
    }
    if args.weights.is_empty() {
        return Err("--weights needs at least one value".into());
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
    let config = smc_config(k, t, seed);
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
    s.reserve(t).expect("reserve");
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

/// Multiply-adds per generated token of SmolLM2-135M's matrix products (30 layers of q, k, v,
/// o, gate, up and down projections, then the output head), or `None` for another model.
fn macs_per_token(lm: &BurnLm) -> Option<f64> {
    let d = lm.dims();
    let (h, l, v, kv) = (d.hidden, d.layers, d.vocab, d.kv_heads * d.head_dim);
    if (h, l, v, kv) != (576, 30, 49_152, 192) {
        return None;
    }
    let ff = 1536;
    Some((l * (2 * h * h + 2 * h * kv + 3 * h * ff) + h * v) as f64)
}

/// The machine's f32 GEMM rate through the kernels the model uses (`lm_burn::cpu::matmul`,
/// both threads): GFLOP/s of a 1024 x 1024 x 1024 product, median of 7.
fn gemm_peak_gflops() -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let dev = default_device();
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &dev);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &dev);
    let mut times: Vec<f64> = (0..8)
        .map(|_| {
            let t = Instant::now();
            let c = lm_burn::cpu::matmul(&a, &b).unwrap_or_else(|| a.clone().matmul(b.clone()));
            std::hint::black_box(c);
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * (n * n * n) as f64 / times[times.len() / 2] / 1e9
}

/// The llama.cpp harness's median particle-tokens/s per (mode, K) from its `--json-out` file.
fn peer_rates(path: &str) -> Result<Vec<(String, usize, f64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
    let rows = v["summary"]
        .as_array()
        .ok_or_else(|| format!("{path}: no \"summary\" array"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r["mode"].as_str()?.to_string(),
                r["K"].as_u64()? as usize,
                r["median_particle_tokens_per_s"].as_f64()?,
            ))
        })
        .collect())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let models: Vec<(WeightFormat, BurnLm)> = match args
        .weights
        .iter()
        .map(|&w| {
            BurnLm::load("default", &default_device())
                .and_then(|lm| lm.with_weight_format(w))
                .map(|lm| (w, lm))
        })
        .collect::<Result<_, _>>()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let lm = &models[0].1;
    let tokenizer = lm.tokenizer().expect("the default model has a tokenizer");
    let prompt = tokenizer.encode(PROMPT).expect("prompt encodes");
    let vocab = lm.dims().vocab;
    let forbidden = tokens_with_e(tokenizer, vocab);
    let constraint = TokenSetConstraint::forbidding("no-chars:e", vocab, forbidden.iter().copied())
        .expect("constraint");
    eprintln!(
        "prompt {PROMPT:?} = {} tokens; {} of {vocab} tokens allowed",
        prompt.len(),
        vocab - forbidden.len()
    );
    let peer = match args.peer_json.as_deref().map(peer_rates).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: --peer-json: {e}");
            std::process::exit(2);
        }
    };
    let peak = gemm_peak_gflops();
    let roofline = macs_per_token(lm).map(|macs| peak * 1e9 / (2.0 * macs));
    profile::set_enabled(true);
    // Warm-up: first-touch allocation and thread-pool start-up are not part of a step.
    for (_, lm) in &models {
        let _ = plain_run(lm, &prompt, 4, 2, 0);
    }
    let mut records = Vec::new();
    let mut rates: Vec<(usize, String, f64)> = Vec::new();
    println!(
        "## Per-operation profile (ms per step, median run of {})\n",
        args.repeats
    );
    println!("| K | mode | weights | particle-tokens/s | ms per step by operation |");
    println!("|---|---|---|---|---|");
    for &k in &args.ks {
        for (weights, lm) in &models {
            for mode in &args.modes {
                let mut runs: Vec<Run> = (0..args.repeats)
                    .map(|r| match mode.as_str() {
                        "smc" => smc_run(lm, &prompt, &constraint, k, args.t, r as u64),
                        _ => plain_run(lm, &prompt, k, args.t, r as u64),
                    })
                    .collect();
                runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
                let median = &runs[runs.len() / 2];
                let tps = (k * args.t) as f64 / median.seconds;
                let key = match weights {
                    WeightFormat::F32 => mode.clone(),
                    other => format!("{mode}-{other}"),
                };
                rates.push((k, key, tps));
                let ops: Vec<String> = median
                    .ops
                    .iter()
                    .map(|(n, ms)| format!("{n} {ms:.2}"))
                    .collect();
                println!(
                    "| {k} | {mode} | {weights} | {tps:.1} | {} |",
                    ops.join(", ")
                );
                for (i, r) in runs.iter().enumerate() {
                    records.push(json!({
                    "k": k, "t": args.t, "mode": mode, "weights": weights.to_string(),
                    "rank_by_time": i,
                    "seconds": r.seconds,
                    "particle_tokens_per_s": (k * args.t) as f64 / r.seconds,
                    "ms_per_step": r.ops.iter().map(|(n, ms)| json!([n, ms])).collect::<Vec<_>>(),
                    "log_z_hat": r.log_z,
                }));
                }
            }
        }
    }
    let rate = |k: usize, mode: &str| rates.iter().find(|r| r.0 == k && r.1 == mode).map(|r| r.2);
    let peer_rate =
        |k: usize, mode: &str| peer.iter().find(|r| r.1 == k && r.0 == mode).map(|r| r.2);
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    println!(
        "\n## Particle-tokens per second (K x T / wall time, T = {}, prefill included, median of {})\n",
        args.t, args.repeats
    );
    match roofline {
        Some(r) => println!(
            "f32 GEMM rate measured in this run: {peak:.0} GFLOP/s (1024^3, both threads, median \
             of 7) -> roofline {r:.0} particle-tokens/s (2 x multiply-adds per token).\n"
        ),
        None => println!("f32 GEMM rate measured in this run: {peak:.0} GFLOP/s (1024^3).\n"),
    }
    println!(
        "| K | tsmc SMC | tsmc plain | tsmc SMC q8 | tsmc plain q8 | tsmc SMC bf16 | tsmc plain bf16 | llama.cpp SMC | llama.cpp plain | SMC ratio tsmc/llama.cpp (q8, bf16) | tsmc SMC / roofline (q8, bf16) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &k in &args.ks {
        let (s, p) = (rate(k, "smc"), rate(k, "plain"));
        let (sq, pq) = (rate(k, "smc-q8"), rate(k, "plain-q8"));
        let (sb, pb) = (rate(k, "smc-bf16"), rate(k, "plain-bf16"));
        let (ps, pp) = (peer_rate(k, "smc"), peer_rate(k, "decode"));
        let roof = |s: Option<f64>| match (s, roofline) {
            (Some(s), Some(r)) => format!("{:.0}%", 100.0 * s / r),
            _ => "-".into(),
        };
        println!(
            "| {k} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}, {}) | {} ({}, {}) |",
            cell(s),
            cell(p),
            cell(sq),
            cell(pq),
            cell(sb),
            cell(pb),
            cell(ps),
            cell(pp),
            ratio(s, ps),
            ratio(sq, ps),
            ratio(sb, ps),
            roof(s),
            roof(sq),
            roof(sb)
        );
    }
    if peer.is_empty() {
        println!(
            "\n(llama.cpp columns: run `cargo xtask bench --peer` to install and run the harness.)"
        );
    }
    if let Some(path) = args.json_out {
        let all = json!({
            "gemm_gflops": peak,
            "roofline_particle_tokens_per_s": roofline,
            "runs": records,
        });
        let text = serde_json::to_string_pretty(&all).expect("json");
        let tmp = format!("{path}.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            eprintln!("error: writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
