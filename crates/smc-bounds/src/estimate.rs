//! Means with standard errors and Student t intervals.

use serde::{Deserialize, Serialize};
use smc_core::{Result, SmcError};

use crate::stats::t95;

/// A Monte Carlo estimate: a mean, its standard error, the number of values behind it and the
/// degrees of freedom of its standard error (n - 1 for the mean of n independent values; see
/// [`Estimate::combine`] and [`Estimate::batch_means`] for the others). Its 95% interval is
/// mean ± t_{0.975, df} SE ([`Estimate::ci95`]): with 3 seeds (df 2) the multiplier is 4.30, not
/// 1.96.
///
/// Records written before `df` existed (mean, se and n only) still deserialise, with df = n - 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "EstimateRecord")]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / sqrt(n) for independent values;
    /// 0 when n < 2).
    pub se: f64,
    /// Number of values.
    pub n: usize,
    /// Degrees of freedom of the standard error.
    pub df: f64,
}

/// The serialised form, where `df` may be missing (records from before it existed).
#[derive(Deserialize)]
struct EstimateRecord {
    mean: f64,
    se: f64,
    n: usize,
    #[serde(default)]
    df: Option<f64>,
}

impl From<EstimateRecord> for Estimate {
    fn from(r: EstimateRecord) -> Self {
        Estimate {
            mean: r.mean,
            se: r.se,
            n: r.n,
            df: r.df.unwrap_or(r.n.saturating_sub(1) as f64),
        }
    }
}

impl Estimate {
    /// An estimate of a mean of `n` independent values (df = n - 1).
    pub fn new(mean: f64, se: f64, n: usize) -> Self {
        Self {
            mean,
            se,
            n,
            df: n.saturating_sub(1) as f64,
        }
    }

    /// Mean and standard error of independent `values`, df = n - 1. NaN if `values` is empty.
    pub fn from_values(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::new(f64::NAN, f64::NAN, 0);
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let se = if n < 2 {
            0.0
        } else {
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        };
        Self::new(mean, se, n)
    }

    /// The mean of consecutive states of a Markov chain (particle Gibbs) with a batch-means
    /// standard error: the values are cut into `n_batches` consecutive batches of equal length
    /// b = floor(N / n_batches) (the first N mod n_batches values are left out), and the
    /// standard error is that of the mean of the batch means, df = n_batches - 1. Correlated
    /// states make the plain standard error too small; batch means are nearly independent once
    /// b is much longer than the chain's autocorrelation time (for an AR(1) chain with
    /// coefficient rho the relative bias of the variance is about 2 rho / (b (1 - rho^2))).
    /// On independent values it estimates the same variance as [`Estimate::from_values`].
    pub fn batch_means(values: &[f64], n_batches: usize) -> Result<Self> {
        if n_batches < 2 {
            return Err(SmcError::InvalidConfig {
                field: "number of batches for batch means",
                expected: ">= 2".into(),
                found: n_batches.to_string(),
            });
        }
        let b = values.len() / n_batches;
        if b == 0 {
            return Err(SmcError::InvalidConfig {
                field: "values for batch means",
                expected: format!("at least one per batch ({n_batches})"),
                found: values.len().to_string(),
            });
        }
        let used = &values[values.len() - b * n_batches..];
        let means: Vec<f64> = used
            .chunks(b)
            .map(|c| c.iter().sum::<f64>() / b as f64)
            .collect();
        let e = Self::from_values(&means);
        Ok(Self {
            mean: e.mean,
            se: e.se,
            n: used.len(),
            df: (n_batches - 1) as f64,
        })
    }

    /// The linear combination sum_i c_i X_i of independent estimates: mean sum c_i mean_i,
    /// standard error sqrt(sum c_i^2 se_i^2), and the Welch–Satterthwaite degrees of freedom
    /// (sum v_i)^2 / sum (v_i^2 / df_i), v_i = c_i^2 se_i^2 (terms with v_i = 0 carry no
    /// uncertainty and drop out; if all do, the smallest df). n is the smallest n.
    pub fn combine(terms: &[(f64, Estimate)]) -> Self {
        let mean = terms.iter().map(|(c, e)| c * e.mean).sum();
        let vars: Vec<(f64, f64)> = terms
            .iter()
            .map(|(c, e)| (c * c * e.se * e.se, e.df))
            .collect();
        let var: f64 = vars.iter().map(|(v, _)| v).sum();
        let min_df = terms
            .iter()
            .map(|(_, e)| e.df)
            .fold(f64::INFINITY, f64::min);
        let denom: f64 = vars
            .iter()
            .filter(|(v, _)| *v > 0.0)
            .map(|(v, df)| v * v / df)
            .sum();
        let df = if var > 0.0 && denom > 0.0 {
            var * var / denom
        } else {
            min_df
        };
        Self {
            mean,
            se: var.sqrt(),
            n: terms.iter().map(|(_, e)| e.n).min().unwrap_or(0),
            df,
        }
    }

    /// The mean difference of paired values a_i - b_i (e.g. two samplers run on the same
    /// random numbers or the same exact samples), with df = n - 1: pairing removes their shared
    /// noise from the standard error.
    pub fn paired_difference(a: &[f64], b: &[f64]) -> Result<Self> {
        if a.len() != b.len() {
            return Err(SmcError::InvalidConfig {
                field: "paired values",
                expected: format!("as many in both ({})", a.len()),
                found: b.len().to_string(),
            });
        }
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Ok(Self::from_values(&d))
    }

    /// The difference `self - other` of independent estimates ([`Estimate::combine`]).
    pub fn minus(&self, other: &Estimate) -> Self {
        Self::combine(&[(1.0, *self), (-1.0, *other)])
    }

    /// The t multiplier of the 95% interval, t_{0.975, df}.
    pub fn t95(&self) -> f64 {
        t95(self.df)
    }

    /// Half-width of the 95% Student t interval, t_{0.975, df} SE: 0 for an exact estimate
    /// (SE 0), infinite when the SE has no degrees of freedom (a single value).
    pub fn ci95(&self) -> f64 {
        if self.se == 0.0 {
            0.0
        } else if self.df.is_nan() || self.df <= 0.0 {
            f64::INFINITY
        } else {
            self.t95() * self.se
        }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.mean, self.ci95())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error_of_known_values() {
        let e = Estimate::from_values(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        // sample variance 5/3, se = sqrt(5/3 / 4)
        assert!((e.se - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        assert_eq!(e.df, 3.0);
        assert_eq!(Estimate::from_values(&[7.0]).se, 0.0);
    }

    #[test]
    fn the_interval_uses_student_t_with_the_estimates_degrees_of_freedom() {
        let e = Estimate::from_values(&[1.0, 2.0, 4.0]);
        assert_eq!(e.df, 2.0);
        assert!((e.ci95() / e.se - 4.303).abs() < 5e-4);
        assert_eq!(
            e.to_string(),
            format!("{:.4} ± {:.4}", e.mean, 4.302_652_729_749_464 * e.se)
        );
        let big = Estimate::new(0.0, 1.0, 1001);
        assert!((big.ci95() - 1.962).abs() < 5e-4);
        assert_eq!(Estimate::new(3.0, 0.0, 5).ci95(), 0.0);
        assert_eq!(Estimate::new(3.0, 1.0, 1).ci95(), f64::INFINITY);
    }

    #[test]
    fn combined_estimates_have_welch_satterthwaite_degrees_of_freedom() {
        let a = Estimate::new(1.0, 0.3, 5);
        let b = Estimate::new(4.0, 0.4, 10);
        let d = b.minus(&a);
        assert_eq!(d.mean, 3.0);
        assert!((d.se - 0.5).abs() < 1e-15);
        // (0.09 + 0.16)^2 / (0.09^2 / 4 + 0.16^2 / 9)
        let want = 0.0625 / (0.0081 / 4.0 + 0.0256 / 9.0);
        assert!((d.df - want).abs() < 1e-12, "{}", d.df);
        assert!(d.df >= 4.0 && d.df <= 13.0);
        assert_eq!(d.n, 5);
        // Equal variances and dfs: df adds up.
        let e = Estimate::combine(&[(0.5, a), (0.5, a)]);
        assert!((e.df - 8.0).abs() < 1e-12);
        // Exact terms carry no uncertainty.
        let exact = Estimate::new(2.0, 0.0, 1);
        assert_eq!(a.minus(&exact).df, 4.0);
        assert_eq!(Estimate::combine(&[(1.0, exact), (1.0, exact)]).df, 0.0);
    }

    #[test]
    fn records_without_degrees_of_freedom_still_deserialise() {
        let old: Estimate = serde_json::from_str(r#"{"mean": 1.5, "se": 0.25, "n": 3}"#).unwrap();
        assert_eq!(old, Estimate::new(1.5, 0.25, 3));
        assert_eq!(old.df, 2.0);
        let e = Estimate {
            df: 7.5,
            ..Estimate::new(1.0, 0.5, 20)
        };
        let back: Estimate = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn batch_means_use_equal_consecutive_batches() {
        let values: Vec<f64> = (0..11).map(f64::from).collect();
        // 11 values, 3 batches of 3: the first two values are left out.
        let e = Estimate::batch_means(&values, 3).unwrap();
        assert_eq!((e.n, e.df), (9, 2.0));
        assert_eq!(
            e,
            Estimate {
                n: 9,
                df: 2.0,
                ..Estimate::from_values(&[3.0, 6.0, 9.0])
            }
        );
        assert!(Estimate::batch_means(&values, 1).is_err());
        assert!(Estimate::batch_means(&values[..2], 3).is_err());
    }
}
