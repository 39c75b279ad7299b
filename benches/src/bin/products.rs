//! The matrix products of one SmolLM2-135M decoding step, alone: f32 weights
//! ([`lm_burn::cpu::matmul`]) against quantised weights ([`lm_burn::cpu::quant_matmul`]: 8-bit
//! levels, and 4-bit ones as a GGUF file's Q4_1 blocks give, also with activations rounded to
//! 8 bits) for K rows,
//! with the rate at which each reads its weights (GB/s) and multiplies (GFLOP/s). A step at small
//! K is bound by reading the weights; this shows how close each kernel comes.
//!
//! ```sh
//! cargo run --release -p tsmc-benches --bin products -- 1 4 16 32
//! ```

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use lm_burn::cpu::{QuantMatrix, in_pool, matmul, quant_matmul};

/// (name, output rows n, input size k, products of this shape per step).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("qkv", 960, 576, 30),
    ("o_proj", 576, 576, 30),
    ("gate_up", 3072, 576, 30),
    ("down", 576, 1536, 30),
    ("head", 49152, 576, 1),
];

fn median_seconds(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let ks: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| match a.parse::<usize>() {
            Ok(k) if (1..=4096).contains(&k) => k,
            _ => {
                eprintln!("error: expected row counts in 1..=4096, found {a:?}");
                std::process::exit(2);
            }
        })
        .collect();
    let ks = if ks.is_empty() {
        vec![1, 4, 16, 32]
    } else {
        ks
    };
    // On a thread of the kernels' pool, as a decoding step runs (`cpu::in_pool`).
    in_pool(|| run(&ks));
}

fn run(ks: &[usize]) {
    let dev = Device::flex();
    println!(
        "| K | product | f32 us | f32 GB/s | f32 GFLOP/s | 8-bit us | 8-bit GB/s | 4-bit us | 4-bit GB/s | 4-bit int8 us | speed-up 8-bit, 4-bit, 4-bit int8 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut totals = vec![(0.0, 0.0, 0.0); ks.len()];
    for &(name, n, k, per_step) in SHAPES {
        let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.05), &dev);
        let values = w.to_data().try_to_vec::<f32>().expect("f32 weights");
        let q = QuantMatrix::from_rows(&values, n, k).expect("k is a multiple of 32");
        // Q4_1-like blocks: 16 levels each, stored two to a byte.
        let levels: Vec<f32> = values
            .iter()
            .map(|x| ((x.abs() * 60.0) as u32).min(15) as f32 * 0.01 - 0.07)
            .collect();
        let q4 = QuantMatrix::from_rows(&levels, n, k).expect("k is a multiple of 32");
        assert_eq!((q.bits(), q4.bits()), (8, 4));
        let q4i = q4.clone().with_int8_activations(true);
        let wt = w.transpose();
        for (i, &m) in ks.iter().enumerate() {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let f = median_seconds(|| {
                let _ = matmul(&x, &wt).expect("flex f32");
            });
            let g = median_seconds(|| {
                let _ = quant_matmul(&x, &q, &[n]).expect("AVX-512");
            });
            let h = median_seconds(|| {
                let _ = quant_matmul(&x, &q4, &[n]).expect("AVX-512");
            });
            let e = median_seconds(|| {
                let _ = quant_matmul(&x, &q4i, &[n]).expect("AVX-512");
            });
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "| {m} | {name} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.2}x, {:.2}x, {:.2}x |",
                f * 1e6,
                (4 * n * k) as f64 / f / 1e9,
                flops / f / 1e9,
                g * 1e6,
                q.bytes() as f64 / g / 1e9,
                h * 1e6,
                q4.bytes() as f64 / h / 1e9,
                e * 1e6,
                f / g,
                f / h,
                f / e
            );
            totals[i].0 += f * per_step as f64;
            totals[i].1 += g * per_step as f64;
            totals[i].2 += h * per_step as f64;
        }
    }
    println!("\nAll products of one step (30 layers and the head):\n");
    println!("| K | f32 ms | 8-bit ms | 4-bit ms |");
    println!("|---|---|---|---|");
    for (&m, (f, g, h)) in ks.iter().zip(&totals) {
        println!("| {m} | {:.2} | {:.2} | {:.2} |", f * 1e3, g * 1e3, h * 1e3);
    }
}
