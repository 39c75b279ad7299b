//! Benchmarks of the backend-agnostic SMC machinery: resampling schemes at K = 10^2 .. 10^6 and
//! one step of twisted SMC (proposal, weights, ESS, resampling, reorder) on the tabular model.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use smc_core::feynman_kac::FeynmanKac;
use smc_core::logspace::normalized_weights;
use smc_core::prelude::*;
use smc_core::smc::TwistedLm;

fn resampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("resampling");
    for exp in 2..=6 {
        let k = 10usize.pow(exp);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(1);
        let log_w: Vec<f64> = (0..k).map(|_| 3.0 * rng.random::<f64>()).collect();
        let w = normalized_weights(&log_w);
        group.throughput(Throughput::Elements(k as u64));
        if k >= 100_000 {
            group.sample_size(20);
        }
        for scheme in Scheme::ALL {
            group.bench_with_input(BenchmarkId::new(scheme.to_string(), k), &k, |b, &k| {
                b.iter(|| scheme.resample(&w, k, &mut rng))
            });
        }
    }
    group.finish();
}

fn smc_step(c: &mut Criterion) {
    // V = 8, order 2, T = 4: a twisted step reads K rows of p0 and psi, samples K tokens,
    // computes weights and ESS, resamples and reorders the tokens and the session.
    let (vocab, horizon) = (8, 4);
    let lm = TabularLm::random(vocab, 2, 1.5, 3);
    let phi = FnPotential::new("contains 7 7", |_: &[u32], s: &[u32]| {
        log_indicator(s.windows(2).any(|w| w == [7, 7]))
    });
    let psi = Enumeration::new(&lm, &[0], horizon, &phi)
        .expect("enumerable")
        .optimal_twist()
        .perturbed(0.5, 1);
    let mut group = c.benchmark_group("smc_step_tabular");
    for k in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(k as u64));
        group.bench_with_input(
            BenchmarkId::new("twisted_step_and_resample", k),
            &k,
            |b, &k| {
                let mut rng = rng_from_seed(2);
                b.iter_batched(
                    || {
                        let session = lm.start(&[0], k).expect("session");
                        TwistedLm::new(
                            session,
                            vocab,
                            Some(&psi),
                            &phi,
                            Proposal::Twisted,
                            &[0],
                            horizon,
                        )
                    },
                    |mut model| {
                        let log_w = model.step(1, None, &mut rng).expect("step");
                        let weights = normalized_weights(&log_w);
                        let _ess = ess(&log_w);
                        let ancestors = Scheme::Multinomial.resample(&weights, k, &mut rng);
                        model.reorder(&ancestors).expect("reorder");
                        model
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, resampling, smc_step);
criterion_main!(benches);
