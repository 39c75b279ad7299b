//! Batch-means standard errors of chain averages against the exact variance of the mean of a
//! stationary AR(1) series, and against the plain standard error on independent values.
//! Tolerance: Z_MAX = 4.5 standard errors of a mean over R independent replicate series.

use rand::RngExt;
use smc_bounds::Estimate;
use smc_core::smc::{SmcRng, rng_from_seed};

const Z_MAX: f64 = 4.5;

fn normal(rng: &mut SmcRng) -> f64 {
    // Box-Muller.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A stationary AR(1) series x_t = rho x_{t-1} + e_t, e_t ~ N(0, 1), x_0 ~ N(0, 1 / (1 - rho^2)).
fn ar1(rho: f64, n: usize, rng: &mut SmcRng) -> Vec<f64> {
    let mut x = normal(rng) / (1.0 - rho * rho).sqrt();
    (0..n)
        .map(|_| {
            let v = x;
            x = rho * x + normal(rng);
            v
        })
        .collect()
}

/// The exact variance of the mean of m consecutive values of the stationary AR(1) series:
/// gamma_0 / m^2 (m + 2 sum_{h=1}^{m-1} (m - h) rho^h), gamma_0 = 1 / (1 - rho^2).
fn var_of_mean(rho: f64, m: usize) -> f64 {
    let gamma0 = 1.0 / (1.0 - rho * rho);
    let mut sum = m as f64;
    let mut rho_h = 1.0;
    for h in 1..m {
        rho_h *= rho;
        sum += 2.0 * (m - h) as f64 * rho_h;
    }
    gamma0 * sum / (m * m) as f64
}

/// Mean and standard error of a sample.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let e = Estimate::from_values(v);
    (e.mean, e.se)
}

#[test]
fn batch_means_match_the_exact_standard_error_of_an_ar1_mean() {
    let (rho, batches, b, replicates) = (0.9, 20, 1000, 200);
    let n = batches * b;
    let v_n = var_of_mean(rho, n);
    // E[se_bm^2] = (V_b - V_N) / (a - 1) exactly for a stationary series (a batches of b):
    // E sum (Y_j - Ybar)^2 = a V_b - a V_N.
    let expected = (var_of_mean(rho, b) - v_n) / (batches - 1) as f64;
    // The batch-means variance is within 1% of the true variance of the mean at b = 1000
    // (its relative bias is about 2 rho / (b (1 - rho^2)) = 0.95%).
    assert!((expected / v_n - 1.0).abs() < 0.01, "{expected} vs {v_n}");

    let mut rng = rng_from_seed(17);
    let (mut bm, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..replicates {
        let x = ar1(rho, n, &mut rng);
        let e = Estimate::batch_means(&x, batches).unwrap();
        assert_eq!((e.n, e.df), (n, (batches - 1) as f64));
        bm.push(e.se * e.se);
        plain.push(Estimate::from_values(&x).se.powi(2));
    }
    let (m, se) = mean_se(&bm);
    assert!(
        (m - expected).abs() < Z_MAX * se,
        "batch-means variance {m} ± {se} vs exact {expected}"
    );
    // The matching standard errors: sqrt of the mean variance within 1% + noise of the truth.
    let ratio = (m / v_n).sqrt();
    assert!(
        (ratio - 1.0).abs() < 0.01 + Z_MAX * 0.5 * se / m,
        "ratio {ratio}"
    );
    // The plain standard error, as if the states were independent, is far too small: its
    // variance is about (1 - rho) / (1 + rho) = 1/19 of the truth.
    let (p, _) = mean_se(&plain);
    assert!(p < 0.1 * v_n, "plain {p} vs {v_n}");
}

#[test]
fn on_independent_values_batch_means_agree_with_the_plain_standard_error() {
    // For i.i.d. N(0, 1) values both variance estimates have expectation 1 / N.
    let (batches, b, replicates) = (20, 500, 400);
    let n = batches * b;
    let mut rng = rng_from_seed(5);
    let (mut bm, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..replicates {
        let x: Vec<f64> = (0..n).map(|_| normal(&mut rng)).collect();
        let e = Estimate::batch_means(&x, batches).unwrap();
        let f = Estimate::from_values(&x);
        // Same values, same mean.
        assert!((e.mean - f.mean).abs() < 1e-12);
        bm.push(e.se * e.se);
        plain.push(f.se * f.se);
    }
    let want = 1.0 / n as f64;
    for (name, v) in [("batch means", &bm), ("plain", &plain)] {
        let (m, se) = mean_se(v);
        assert!(
            (m - want).abs() < Z_MAX * se,
            "{name}: {m} ± {se} vs {want}"
        );
    }
}
