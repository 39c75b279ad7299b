//! Helpers shared by the head tests on the tiny models: loading a tiny model, randomising a
//! head's parameters, and checking parameter gradients against central finite differences.

use std::path::PathBuf;

use lm_burn::heads::TwistHead;
use lm_burn::{BurnLm, default_device};
use rand::RngExt;
use smc_core::smc::rng_from_seed;

/// The tiny random model `dir` of `testdata/reference/tiny-models`.
pub fn tiny(dir: &str) -> BurnLm {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    BurnLm::from_hf_dir(
        &root.join("../../testdata/reference/tiny-models").join(dir),
        &default_device(),
    )
    .unwrap()
}

/// Sets every parameter to small random values (so that no gradient vanishes by symmetry).
pub fn randomise(head: &mut TwistHead, scale: f64, seed: u64) {
    let mut rng = rng_from_seed(seed);
    for (name, values) in head.parameter_values().unwrap() {
        let v: Vec<f32> = values
            .iter()
            .map(|_| (scale * (rng.random::<f64>() - 0.5)) as f32)
            .collect();
        head.set_parameter(&name, &v).unwrap();
    }
}

/// Checks the gradients `analytic` of `loss` at `head` (named as `head.parameter_values()`)
/// against central differences of step `step`, at the three coordinates of each parameter with
/// the largest gradients and two fixed ones: |fd - g| <= 2e-4 + rel |g|.
pub fn check_gradients(
    head: &TwistHead,
    analytic: &[(String, Vec<f32>)],
    step: f32,
    rel: f64,
    loss: impl Fn(&TwistHead) -> f64,
    label: &str,
) {
    let values = head.parameter_values().unwrap();
    for ((name, g), (_, v)) in analytic.iter().zip(&values) {
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&i, &j| g[j].abs().total_cmp(&g[i].abs()));
        let mut coords: Vec<usize> = order.into_iter().take(3).collect();
        coords.extend([g.len() / 3, g.len() - 1]);
        for i in coords {
            let at = |delta: f32| {
                let mut h = head.clone();
                let mut w = v.clone();
                w[i] += delta;
                h.set_parameter(name, &w).unwrap();
                loss(&h)
            };
            let fd = (at(step) - at(-step)) / (2.0 * step as f64);
            let g = g[i] as f64;
            assert!(
                (fd - g).abs() <= 2e-4 + rel * g.abs(),
                "{label} {name}[{i}]: finite difference {fd} vs gradient {g}"
            );
        }
    }
}
