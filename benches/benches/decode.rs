//! Decoding benchmarks on the default model (SmolLM2-135M, CPU backend): particle-tokens per
//! second for K in {1, 16, 64, 256} over T = 20 steps, the cost of one reorder next to one
//! decode step, and the f32 GEMM roofline for the same shapes.

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::{Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lm_burn::{BurnLm, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

const T: usize = 20;
const PROMPT: [u32; 4] = [6403, 1980, 253, 655];

fn model() -> BurnLm {
    BurnLm::load("default", &default_device()).expect("default model")
}

/// A fixed token per particle and step (the content does not change the cost).
fn tokens(k: usize, step: usize) -> Vec<u32> {
    (0..k)
        .map(|p| ((p * 7919 + step * 104_729) % 49_000) as u32 + 17)
        .collect()
}

fn decode(c: &mut Criterion) {
    let lm = model();
    let mut group = c.benchmark_group("decode_default_model_T20");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for k in [1usize, 16, 64, 256] {
        group.throughput(Throughput::Elements((k * T) as u64));
        group.measurement_time(Duration::from_secs(if k >= 256 { 60 } else { 15 }));
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
            b.iter(|| {
                let mut s = lm.start(&PROMPT, k).unwrap();
                s.reserve(T).unwrap();
                for step in 0..T {
                    black_box(s.next_log_probs().unwrap());
                    s.push(&tokens(k, step)).unwrap();
                }
            })
        });
    }
    group.finish();
}

fn reorder_vs_step(c: &mut Criterion) {
    let lm = model();
    let k = 64;
    let mut group = c.benchmark_group("reorder_vs_step_K64_len20");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    let mut session = lm.start(&PROMPT, k).unwrap();
    for step in 0..T {
        session.push(&tokens(k, step)).unwrap();
    }
    // Multinomial resampling of uneven weights moves about half the particles.
    let ancestors: Vec<usize> = (0..k)
        .map(|p| if p % 2 == 0 { p } else { (p * 5) % k })
        .collect();
    let identity: Vec<usize> = (0..k).collect();
    group.bench_function("reorder_half_the_rows", |b| {
        b.iter(|| {
            session.reorder(&ancestors).unwrap();
            session.reorder(&identity).unwrap();
        })
    });
    group.bench_function("decode_step", |b| {
        let mut s = lm.start(&PROMPT, k).unwrap();
        for step in 0..T {
            s.push(&tokens(k, step)).unwrap();
        }
        b.iter(|| {
            black_box(s.next_log_probs().unwrap());
            s.push(&tokens(k, 0)).unwrap();
        })
    });
    group.finish();
}

fn gemm_roofline(c: &mut Criterion) {
    // The matmuls of one SmolLM2-135M decode step, at batch K: per layer q/o (576x576),
    // k/v (576x192), gate/up (576x1536), down (1536x576); the head (576x49152) once.
    let device = default_device();
    let mut group = c.benchmark_group("gemm_roofline");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for k in [1usize, 16, 64, 256] {
        for (name, m, n) in [
            ("576x1536", 576, 1536),
            ("1536x576", 1536, 576),
            ("576x576", 576, 576),
            ("576x192", 576, 192),
            ("576x49152", 576, 49152),
        ] {
            let a = Tensor::<2>::random([k, m], Distribution::Default, &device);
            // Both layouts of the weight: row-major [in, out], and the transposed view of a
            // row-major [out, in] matrix (the layout the models use). The roofline is the faster.
            let w = Tensor::<2>::random([m, n], Distribution::Default, &device);
            let wt = Tensor::<2>::random([n, m], Distribution::Default, &device).transpose();
            group.throughput(Throughput::Elements((2 * k * m * n) as u64));
            group.bench_with_input(BenchmarkId::new(format!("{name}/in_out"), k), &k, |b, _| {
                b.iter(|| black_box(a.clone().matmul(w.clone()).into_data()))
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/out_in_transposed"), k),
                &k,
                |b, _| b.iter(|| black_box(a.clone().matmul(wt.clone()).into_data())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, decode, reorder_vs_step, gemm_roofline);
criterion_main!(benches);
