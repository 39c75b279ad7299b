//! One evaluation of a sampler: F_q, G_q, lower and upper bounds on log Z with standard errors,
//! a log Z pair whose bounds hold by construction, and both KL estimates (spec §4).
//!
//! # log Z without selecting extremes
//!
//! The midpoint of the largest lower and the smallest upper bound over several noisy runs or
//! samplers is biased inward (the maximum of noisy lower bounds can exceed log Z, and a printed
//! lower bound can exceed the upper one) and carries no standard error. Here the pair is fixed
//! before any value is seen: a fixed-weight average of lower bounds is a lower bound, and of
//! upper bounds an upper bound, in expectation, whatever the weights (non-negative, summing to
//! one). [`Sampler::evaluate`] averages the plan's methods with equal weights;
//! [`LogZBounds::average`] averages the pairs of several samplers with given weights. The
//! averages are taken run by run (lower run r of every part, upper run around exact sample i of
//! every part), so the standard error comes from independent averaged values and accounts for
//! the parts' correlation (shared exact samples, common random numbers). The KL estimates use
//! the midpoint, with its standard error in quadrature with F_q's or G_q's
//! ([`crate::Estimate::combine`]); half the gap between the bounds is the midpoint's possible
//! bias, reported beside it.
//!
//! G_q and the upper bounds share exact samples and are treated as independent; their
//! correlation is positive in practice (measured on tabular models), so the standard error of
//! KL(sigma || q) errs on the large side.

use serde::{Deserialize, Serialize};
use smc_core::model::LanguageModel;
use smc_core::seed::{self, label};
use smc_core::{Result, SmcError};

use crate::bounds::{KlEstimates, Method, Sampler, kl_estimates};
use crate::estimate::Estimate;

/// What an evaluation measures and with how much work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPlan {
    /// Draws from q for F_q.
    pub fq_draws: usize,
    /// Particles K of every bound.
    pub particles: usize,
    /// Independent runs of each lower bound.
    pub lower_runs: usize,
    /// At most this many exact samples are the references of the upper bounds: the first
    /// min(upper_refs, number of exact samples), in the order they were drawn (never sorted or
    /// deduplicated, which would make them no longer draws from sigma).
    pub upper_refs: usize,
    /// The lower bounds computed; log Z's lower bound is their equal-weight average.
    pub lower_methods: Vec<Method>,
    /// The upper bounds computed; log Z's upper bound is their equal-weight average. Conditional
    /// SMC ([`Method::Smc`]) needs a resampling with an implemented conditional form
    /// ([`Sampler::has_upper_bound`]); asking for it otherwise is an error.
    pub upper_methods: Vec<Method>,
    /// The master seed: every stream is derived from it ([`smc_core::seed`]: `F_Q`,
    /// `LOWER_SIS` / `LOWER_SMC` per run, `UPPER_SIS` / `UPPER_SMC` then `UPPER` per exact
    /// sample). Two samplers evaluated with the same plan use common random numbers, so their
    /// run-by-run differences are paired.
    pub seed: u64,
    /// When the exact samples are consecutive states of a Markov chain (particle Gibbs), G_q's
    /// standard error comes from batch means with this many batches
    /// ([`Estimate::batch_means`]); `None` treats them as independent.
    #[serde(default)]
    pub exact_batches: Option<usize>,
}

impl EvalPlan {
    /// A plan with K = `particles` for the bounds and F_q from `particles` draws, 4 runs per
    /// lower bound, every exact sample as an upper-bound reference, and both methods.
    pub fn new(particles: usize, seed: u64) -> Self {
        Self {
            fq_draws: particles,
            particles,
            lower_runs: 4,
            upper_refs: usize::MAX,
            lower_methods: vec![Method::Sis, Method::Smc],
            upper_methods: vec![Method::Sis, Method::Smc],
            seed,
            exact_batches: None,
        }
    }

    fn check(&self, exact: usize) -> Result<()> {
        let bad = |field, expected: &str, found: String| {
            Err(SmcError::InvalidConfig {
                field,
                expected: expected.into(),
                found,
            })
        };
        if self.fq_draws == 0 {
            return bad("evaluation F_q draws", ">= 1", "0".into());
        }
        if self.particles == 0 {
            return bad("evaluation particles K", ">= 1", "0".into());
        }
        if self.lower_runs == 0 || self.upper_refs == 0 {
            return bad(
                "evaluation lower-bound runs and upper-bound references",
                ">= 1 each",
                format!("{} and {}", self.lower_runs, self.upper_refs),
            );
        }
        if self.lower_methods.is_empty() || self.upper_methods.is_empty() {
            return bad(
                "evaluation bound methods",
                "at least one lower and one upper",
                format!("{:?} and {:?}", self.lower_methods, self.upper_methods),
            );
        }
        if exact == 0 {
            return bad(
                "exact samples for G_q and upper bounds",
                "at least one",
                "none".into(),
            );
        }
        Ok(())
    }
}

/// The runs of one bound: their values and the estimate from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundRuns {
    /// SIS or SMC.
    pub method: Method,
    /// Mean over the runs with its standard error.
    pub estimate: Estimate,
    /// log Zhat of each run (lower: run r; upper: the run around exact sample i). Not
    /// serialised.
    #[serde(skip)]
    pub values: Vec<f64>,
    /// Wall-clock seconds of all the runs together (what an equal-time comparison needs).
    #[serde(default)]
    pub seconds: f64,
}

/// A lower and an upper bound on log Z that hold by construction (fixed-weight averages of
/// valid bounds), with the averaged run values they come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogZBounds {
    /// E[.] <= log Z.
    pub lower: Estimate,
    /// E[.] >= log Z.
    pub upper: Estimate,
    /// The averaged lower values, run by run (not serialised).
    #[serde(skip)]
    pub lower_values: Vec<f64>,
    /// The averaged upper values, exact sample by exact sample (not serialised).
    #[serde(skip)]
    pub upper_values: Vec<f64>,
}

/// Checks fixed weights and averages equally long value vectors index by index.
fn weighted_runs(parts: &[(f64, &[f64])], what: &'static str) -> Result<Vec<f64>> {
    let total: f64 = parts.iter().map(|(w, _)| w).sum();
    let bad_weight = parts.iter().any(|(w, _)| !(w.is_finite() && *w >= 0.0));
    if parts.is_empty() || bad_weight || (total - 1.0).abs() > 1e-9 {
        return Err(SmcError::InvalidConfig {
            field: what,
            expected: "at least one part, weights >= 0 summing to 1".into(),
            found: format!("{:?}", parts.iter().map(|(w, _)| *w).collect::<Vec<_>>()),
        });
    }
    let n = parts[0].1.len();
    if n == 0 || parts.iter().any(|(_, v)| v.len() != n) {
        return Err(SmcError::InvalidConfig {
            field: what,
            expected: "the same positive number of run values in every part".into(),
            found: format!(
                "{:?}",
                parts.iter().map(|(_, v)| v.len()).collect::<Vec<_>>()
            ),
        });
    }
    Ok((0..n)
        .map(|i| parts.iter().map(|(w, v)| w * v[i]).sum())
        .collect())
}

impl LogZBounds {
    /// The bounds from run values of several lower and several upper bounds with fixed weights
    /// (each group's weights non-negative and summing to one; each group's vectors of equal
    /// length, index i of every vector from the same run or exact sample).
    pub fn from_runs(lower: &[(f64, &[f64])], upper: &[(f64, &[f64])]) -> Result<Self> {
        let lower_values = weighted_runs(lower, "log Z lower-bound parts")?;
        let upper_values = weighted_runs(upper, "log Z upper-bound parts")?;
        Ok(Self {
            lower: Estimate::from_values(&lower_values),
            upper: Estimate::from_values(&upper_values),
            lower_values,
            upper_values,
        })
    }

    /// The fixed-weight average of several samplers' bounds (for example p0's and a trained
    /// twist's, evaluated with the same plan and exact samples), run by run. The weights must
    /// be fixed before the values are seen.
    pub fn average(parts: &[(f64, &LogZBounds)]) -> Result<Self> {
        let lower: Vec<(f64, &[f64])> = parts
            .iter()
            .map(|(w, b)| (*w, b.lower_values.as_slice()))
            .collect();
        let upper: Vec<(f64, &[f64])> = parts
            .iter()
            .map(|(w, b)| (*w, b.upper_values.as_slice()))
            .collect();
        Self::from_runs(&lower, &upper)
    }

    /// The midpoint (lower + upper) / 2, with its standard error (the lower runs and the upper
    /// runs are independent).
    pub fn midpoint(&self) -> Estimate {
        Estimate::combine(&[(0.5, self.lower), (0.5, self.upper)])
    }

    /// Half the gap between the bounds: the most the midpoint can be off (up to noise).
    pub fn half_gap(&self) -> f64 {
        0.5 * (self.upper.mean - self.lower.mean)
    }

    /// Both KL estimates of a proposal around these bounds.
    pub fn kl(&self, f_q: Estimate, g_q: Estimate) -> KlEstimates {
        kl_estimates(f_q, g_q, self.lower, self.upper)
    }
}

/// Everything one evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Particles K of the bounds.
    pub particles: usize,
    /// F_q = E_q[log sigma~ - log q] = log Z - KL(q || sigma).
    pub f_q: Estimate,
    /// G_q = E_sigma[log sigma~ - log q] = log Z + KL(sigma || q).
    pub g_q: Estimate,
    /// G_q - F_q = KL(q || sigma) + KL(sigma || q): free of log Z.
    pub kl_sum: Estimate,
    /// The lower bounds of the plan's methods.
    pub lower: Vec<BoundRuns>,
    /// The upper bounds of the plan's methods.
    pub upper: Vec<BoundRuns>,
    /// log Z's bounds: equal-weight averages of the lower and of the upper bounds.
    pub log_z: LogZBounds,
    /// Both KL estimates around `log_z`'s midpoint.
    pub kl: KlEstimates,
    /// The single-sample values behind F_q (draw j from q; not serialised).
    #[serde(skip)]
    pub f_q_values: Vec<f64>,
    /// The single-sample values behind G_q (exact sample i; not serialised).
    #[serde(skip)]
    pub g_q_values: Vec<f64>,
}

impl Evaluation {
    /// The lower bound of `method`, if the plan computed it.
    pub fn lower_bound(&self, method: Method) -> Option<Estimate> {
        self.lower
            .iter()
            .find(|b| b.method == method)
            .map(|b| b.estimate)
    }

    /// The upper bound of `method`, if the plan computed it.
    pub fn upper_bound(&self, method: Method) -> Option<Estimate> {
        self.upper
            .iter()
            .find(|b| b.method == method)
            .map(|b| b.estimate)
    }

    /// Both KL estimates around other bounds (e.g. [`LogZBounds::average`] over samplers).
    pub fn kl_with(&self, log_z: &LogZBounds) -> KlEstimates {
        log_z.kl(self.f_q, self.g_q)
    }
}

/// Equal fixed weights over the runs of several bounds.
fn equal_parts(runs: &[BoundRuns]) -> Vec<(f64, &[f64])> {
    let w = 1.0 / runs.len() as f64;
    runs.iter().map(|r| (w, r.values.as_slice())).collect()
}

impl<L: LanguageModel> Sampler<'_, L> {
    /// Evaluates the sampler on exact target samples `exact` (draws from sigma, in the order
    /// they were drawn) according to `plan`: F_q from `plan.fq_draws` draws from q, G_q from
    /// every exact sample, each lower bound from `plan.lower_runs` runs and each upper bound
    /// around the first `plan.upper_refs` exact samples, all with K = `plan.particles`; log Z's
    /// pair is the equal-weight average of the computed lower and of the computed upper bounds
    /// (see the module documentation), and both KL estimates are taken around its midpoint.
    pub fn evaluate(&self, exact: &[Vec<u32>], plan: &EvalPlan) -> Result<Evaluation> {
        plan.check(exact.len())?;
        let k = plan.particles;
        let f_q_values = self.f_q_values(plan.fq_draws, seed::derive(plan.seed, label::F_Q, 0))?;
        let g_q_values = self.g_q_values(exact)?;
        let g_q = match plan.exact_batches {
            Some(batches) => Estimate::batch_means(&g_q_values, batches)?,
            None => Estimate::from_values(&g_q_values),
        };
        let f_q = Estimate::from_values(&f_q_values);
        let mut lower = Vec::with_capacity(plan.lower_methods.len());
        for &method in &plan.lower_methods {
            let runs_label = match method {
                Method::Sis => label::LOWER_SIS,
                Method::Smc => label::LOWER_SMC,
            };
            let seeds = seed::derive_many(plan.seed, runs_label, plan.lower_runs);
            let started = std::time::Instant::now();
            let values = self.lower_bound_values(method, k, &seeds)?;
            lower.push(BoundRuns {
                method,
                estimate: Estimate::from_values(&values),
                values,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let refs = &exact[..plan.upper_refs.min(exact.len())];
        let mut upper = Vec::with_capacity(plan.upper_methods.len());
        for &method in &plan.upper_methods {
            let method_label = match method {
                Method::Sis => label::UPPER_SIS,
                Method::Smc => label::UPPER_SMC,
            };
            let upper_seed = seed::derive(plan.seed, method_label, 0);
            let started = std::time::Instant::now();
            let values = self.upper_bound_values(method, k, refs, upper_seed)?;
            upper.push(BoundRuns {
                method,
                estimate: Estimate::from_values(&values),
                values,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let log_z = LogZBounds::from_runs(&equal_parts(&lower), &equal_parts(&upper))?;
        Ok(Evaluation {
            particles: k,
            f_q,
            g_q,
            kl_sum: g_q.minus(&f_q),
            kl: log_z.kl(f_q, g_q),
            lower,
            upper,
            log_z,
            f_q_values,
            g_q_values,
        })
    }
}
