//! The user's potential of `docs/adding-a-potential.md`, checked as the guide says every new
//! potential should be: on a tabular model small enough to enumerate, the optimal twists give
//! log Z exactly for every seed, and bootstrap SMC's Zhat / Z has mean 1 within Z_MAX standard
//! errors over 2000 seeds (a correct implementation fails with probability below 7e-6).

use smc_core::prelude::*;

const Z_MAX: f64 = 4.5;

/// phi(s) = exp(-lambda * (number of `token` in s)): a soft potential that disfavours one token.
/// The code the guide shows.
struct Avoid {
    token: u32,
    lambda: f64,
    name: String,
}

impl Avoid {
    fn new(token: u32, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(SmcError::config("avoid lambda", "finite and >= 0", lambda));
        }
        Ok(Self {
            token,
            lambda,
            name: format!("avoid:{token}:{lambda}"),
        })
    }
}

impl Potential for Avoid {
    fn name(&self) -> &str {
        &self.name
    }

    fn log_phi(&self, _prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        Ok(sequences
            .iter()
            .map(|s| -self.lambda * s.iter().filter(|&&t| t == self.token).count() as f64)
            .collect())
    }
}

#[test]
fn a_user_potential_gives_exact_log_z_with_optimal_twists_and_unbiased_zhat_without() {
    let (vocab, horizon) = (4, 5);
    let lm = TabularLm::random(vocab, 2, 1.5, 7);
    let prompt = [1u32];
    let phi = Avoid::new(2, 1.3).unwrap();
    let exact = Enumeration::new(&lm, &prompt, horizon, &phi).unwrap();

    let psi = exact.optimal_twist();
    for seed in 0..20 {
        let cfg = SmcConfig::twisted(8, horizon).with_seed(seed);
        let out = run_smc(&lm, Some(&psi), &phi, &prompt, &cfg).unwrap();
        assert!(
            (out.log_z_hat - exact.log_z()).abs() < 1e-9,
            "seed {seed}: log Zhat {} against log Z {}",
            out.log_z_hat,
            exact.log_z()
        );
    }

    let ratios: Vec<f64> = (0..2000)
        .map(|seed| {
            let cfg = SmcConfig::bootstrap(8, horizon).with_seed(seed);
            let out = run_smc(&lm, None, &phi, &prompt, &cfg).unwrap();
            (out.log_z_hat - exact.log_z()).exp()
        })
        .collect();
    let n = ratios.len() as f64;
    let mean = ratios.iter().sum::<f64>() / n;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    assert!(
        (mean - 1.0).abs() < Z_MAX * se,
        "mean Zhat / Z = {mean} (SE {se}) over {n} seeds"
    );
}

#[test]
fn a_user_potential_refuses_a_bad_parameter_and_its_nan_is_an_error_not_a_weight() {
    assert!(Avoid::new(2, f64::NAN).is_err());
    assert!(Avoid::new(2, -1.0).is_err());

    // A potential that returns NaN: the drivers refuse it, naming the potential.
    let lm = TabularLm::random(3, 1, 1.0, 0);
    let nan = FnPotential::new("broken", |_: &[u32], _: &[u32]| f64::NAN);
    let err = run_smc(&lm, None, &nan, &[0], &SmcConfig::bootstrap(4, 2))
        .expect_err("a NaN log phi must be an error");
    assert!(err.to_string().contains("broken"), "{err}");
}
