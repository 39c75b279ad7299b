//! Peak memory of decoding: runs T = 20 steps of K particles on the default model in this
//! process and prints one JSON line with K, the wall time, particle-tokens per second and the
//! peak resident set size (VmHWM). `cargo xtask bench` runs it once per K in fresh processes.
//! A second argument `q8`, `int8` or `bf16` sets the decoding weights (`--weights`; default f32).

use std::time::Instant;

use lm_burn::{BurnLm, WeightFormat, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

fn vm_hwm_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let k: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let weights = match std::env::args().nth(2).as_deref() {
        None | Some("f32") => WeightFormat::F32,
        Some("q8") => WeightFormat::Q8,
        Some("int8") => WeightFormat::Int8,
        Some("bf16") => WeightFormat::Bf16,
        Some(other) => {
            eprintln!("error: weights: expected f32, q8, int8 or bf16, found {other:?}");
            std::process::exit(2);
        }
    };
    let t = 20;
    let lm = match BurnLm::load("default", &default_device())
        .and_then(|lm| lm.with_weight_format(weights))
    {
        Ok(lm) => lm,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let after_load = vm_hwm_mib();
    let start = Instant::now();
    let mut s = lm.start(&[6403, 1980, 253, 655], k).expect("session");
    // As every tsmc driver does: the horizon is known, so the cache is sized once.
    s.reserve(t).expect("reserve");
    for step in 0..t {
        let out = s.next_log_probs().expect("step");
        std::hint::black_box(out);
        let toks: Vec<u32> = (0..k)
            .map(|p| ((p * 7919 + step * 104_729) % 49_000) as u32 + 17)
            .collect();
        s.push(&toks).expect("push");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "k": k,
            "t": t,
            "weights": weights.to_string(),
            "seconds": secs,
            "particle_tokens_per_s": (k * t) as f64 / secs,
            "peak_rss_mib_after_load": after_load,
            "peak_rss_mib": vm_hwm_mib(),
        })
    );
}
