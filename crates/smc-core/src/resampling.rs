//! Resampling schemes and the criteria that decide when to resample.
//!
//! A scheme maps normalised weights `W` (summing to one) to `M` ancestor indices whose
//! offspring counts have expectation `M * W_k`. All schemes return ancestors in increasing order.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::{Result, SmcError};
use crate::logspace::ess;

/// A resampling scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// M independent draws from W (the reference implementation's choice).
    #[default]
    Multinomial,
    /// One uniform shifts a regular grid of M points.
    Systematic,
    /// One uniform per stratum [i/M, (i+1)/M).
    Stratified,
    /// floor(M W_k) copies of each particle, then multinomial draws for the remainder.
    Residual,
}

impl Scheme {
    /// All schemes, for tests and benchmarks.
    pub const ALL: [Scheme; 4] = [
        Scheme::Multinomial,
        Scheme::Systematic,
        Scheme::Stratified,
        Scheme::Residual,
    ];

    /// Draws `m` ancestors from the normalised weights `weights`.
    pub fn resample<R: Rng + ?Sized>(self, weights: &[f64], m: usize, rng: &mut R) -> Vec<usize> {
        match self {
            Scheme::Multinomial => multinomial(weights, m, rng),
            Scheme::Systematic => systematic(weights, m, rng),
            Scheme::Stratified => stratified(weights, m, rng),
            Scheme::Residual => residual(weights, m, rng),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Multinomial => "multinomial",
            Scheme::Systematic => "systematic",
            Scheme::Stratified => "stratified",
            Scheme::Residual => "residual",
        })
    }
}

impl FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "multinomial" => Ok(Scheme::Multinomial),
            "systematic" => Ok(Scheme::Systematic),
            "stratified" => Ok(Scheme::Stratified),
            "residual" => Ok(Scheme::Residual),
            other => Err(format!(
                "unknown resampling scheme {other:?}: expected multinomial, systematic, stratified or residual"
            )),
        }
    }
}

/// When to resample after a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// After every step but the last (the reference implementation).
    #[default]
    Always,
    /// Never: sequential importance sampling.
    Never,
    /// When ESS < fraction * K, with fraction in (0, 1].
    EssBelow(f64),
    /// After every n-th step (n >= 1): a fixed schedule, so the decision never depends on
    /// the particles.
    Every(usize),
}

impl Criterion {
    /// Checks the fraction of [`Criterion::EssBelow`].
    pub fn validate(self) -> Result<()> {
        if let Criterion::EssBelow(f) = self
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(SmcError::config("ess fraction", "in (0, 1]", f));
        }
        if self == Criterion::Every(0) {
            return Err(SmcError::config(
                "resampling period n of every:n",
                ">= 1",
                0,
            ));
        }
        Ok(())
    }

    /// Whether to resample after step `step` (1-based) given the current log weights.
    pub fn fires(self, step: usize, log_w: &[f64]) -> bool {
        match self {
            Criterion::Always => true,
            Criterion::Never => false,
            Criterion::EssBelow(f) => ess(log_w) < f * log_w.len() as f64,
            Criterion::Every(n) => n > 0 && step.is_multiple_of(n),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::Always => f.write_str("always"),
            Criterion::Never => f.write_str("never"),
            Criterion::EssBelow(x) => write!(f, "ess<{x}"),
            Criterion::Every(n) => write!(f, "every:{n}"),
        }
    }
}

impl FromStr for Criterion {
    type Err = String;
    /// Parses `always`, `never`, `ess:0.5` / `ess<0.5`, or `every:4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "always" | "every" => Ok(Criterion::Always),
            "never" => Ok(Criterion::Never),
            _ if lower.starts_with("every:") => {
                let n = lower["every:".len()..].parse::<usize>().map_err(|_| {
                    format!("resampling criterion {s:?}: every:N needs a whole number N >= 1")
                })?;
                let c = Criterion::Every(n);
                c.validate().map_err(|e| e.to_string())?;
                Ok(c)
            }
            _ => {
                let frac = lower
                    .strip_prefix("ess:")
                    .or_else(|| lower.strip_prefix("ess<"))
                    .and_then(|x| x.parse::<f64>().ok())
                    .ok_or_else(|| {
                        format!("unknown resampling criterion {s:?}: expected always, never, ess:FRACTION or every:N")
                    })?;
                let c = Criterion::EssBelow(frac);
                c.validate().map_err(|e| e.to_string())?;
                Ok(c)
            }
        }
    }
}

/// Walks the cumulative weights with sorted points in [0, 1) and returns their ancestors.
fn inverse_cdf(weights: &[f64], sorted_points: impl Iterator<Item = f64>) -> Vec<usize> {
    // Rounding can leave the cumulative sum a hair below 1: never step past the last particle
    // with positive weight.
    let last_positive = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
    let mut out = Vec::new();
    let mut k = 0;
    let mut cum = weights.first().copied().unwrap_or(0.0);
    for u in sorted_points {
        while u >= cum && k < last_positive {
            k += 1;
            cum += weights[k];
        }
        out.push(k);
    }
    out
}

/// Multinomial resampling: sorted uniforms from normalised exponential spacings, O(K + M).
pub fn multinomial<R: Rng + ?Sized>(weights: &[f64], m: usize, rng: &mut R) -> Vec<usize> {
    let mut spacings: Vec<f64> = (0..=m).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
    let total: f64 = spacings.iter().sum();
    let mut acc = 0.0;
    for s in spacings.iter_mut() {
        acc += *s;
        *s = acc / total;
    }
    spacings.truncate(m);
    inverse_cdf(weights, spacings.into_iter())
}

/// Systematic resampling: points (i + U) / M for one uniform U.
pub fn systematic<R: Rng + ?Sized>(weights: &[f64], m: usize, rng: &mut R) -> Vec<usize> {
    let u: f64 = rng.random();
    inverse_cdf(weights, (0..m).map(move |i| (i as f64 + u) / m as f64))
}

/// Stratified resampling: points (i + U_i) / M for independent uniforms U_i.
pub fn stratified<R: Rng + ?Sized>(weights: &[f64], m: usize, rng: &mut R) -> Vec<usize> {
    let points: Vec<f64> = (0..m)
        .map(|i| (i as f64 + rng.random::<f64>()) / m as f64)
        .collect();
    inverse_cdf(weights, points.into_iter())
}

/// Residual resampling: floor(M W_k) deterministic copies, the remainder multinomial on the
/// residual weights.
pub fn residual<R: Rng + ?Sized>(weights: &[f64], m: usize, rng: &mut R) -> Vec<usize> {
    let mut out = Vec::with_capacity(m);
    let mut residuals = Vec::with_capacity(weights.len());
    for (k, &w) in weights.iter().enumerate() {
        let expected = m as f64 * w;
        let copies = (expected.floor() as usize).min(m - out.len());
        out.extend(std::iter::repeat_n(k, copies));
        residuals.push((expected - copies as f64).max(0.0));
    }
    let rest = m - out.len();
    if rest > 0 {
        let total: f64 = residuals.iter().sum();
        if total > 0.0 {
            residuals.iter_mut().for_each(|r| *r /= total);
        } else {
            residuals.clone_from(&weights.to_vec());
        }
        out.extend(multinomial(&residuals, rest, rng));
        out.sort_unstable();
    }
    out
}

/// Offspring counts of each of `k` particles given ancestor indices.
pub fn offspring_counts(ancestors: &[usize], k: usize) -> Vec<usize> {
    let mut counts = vec![0; k];
    for &a in ancestors {
        counts[a] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    #[test]
    fn every_scheme_returns_m_sorted_ancestors_with_positive_weight() {
        let w = [0.0, 0.5, 0.0, 0.25, 0.25, 0.0];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for scheme in Scheme::ALL {
            for m in [1, 5, 6, 17] {
                let a = scheme.resample(&w, m, &mut rng);
                assert_eq!(a.len(), m, "{scheme}");
                assert!(a.windows(2).all(|p| p[0] <= p[1]), "{scheme} sorted");
                assert!(a.iter().all(|&i| w[i] > 0.0), "{scheme} positive: {a:?}");
            }
        }
    }

    #[test]
    fn systematic_counts_are_floor_or_ceil_of_expected() {
        let w = [0.1, 0.37, 0.23, 0.3];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        for _ in 0..200 {
            let c = offspring_counts(&systematic(&w, 10, &mut rng), 4);
            for (ci, wi) in c.iter().zip(w) {
                let e = 10.0 * wi;
                assert!(*ci == e.floor() as usize || *ci == e.ceil() as usize);
            }
        }
    }

    #[test]
    fn criterion_parses_and_rejects_bad_fractions() {
        assert_eq!("always".parse::<Criterion>(), Ok(Criterion::Always));
        assert_eq!("ess:0.5".parse::<Criterion>(), Ok(Criterion::EssBelow(0.5)));
        assert!("ess:1.5".parse::<Criterion>().is_err());
        assert!("sometimes".parse::<Criterion>().is_err());
        assert_eq!("Residual".parse::<Scheme>(), Ok(Scheme::Residual));
    }
}
