//! Lower and upper bounds on log Z, the single-sample bounds F_q and G_q, and the KL estimates
//! built from them (spec §4).

use serde::{Deserialize, Serialize};

use smc_core::feynman_kac::Resampling;
use smc_core::model::{LanguageModel, Potential, Twist};
use smc_core::resampling::Criterion;
use smc_core::seed::{self, label};
use smc_core::smc::{Proposal, SmcConfig, log_weights_of, run_csmc, run_smc};
use smc_core::{Result, SmcError};

use crate::estimate::Estimate;

/// A sampler to be measured: base model, prompt, potential, and the proposal with its twist.
pub struct Sampler<'a, L> {
    /// The base language model p0.
    pub lm: &'a L,
    /// The prompt s0.
    pub prompt: &'a [u32],
    /// Number of output tokens T.
    pub horizon: usize,
    /// The potential phi.
    pub potential: &'a dyn Potential,
    /// The twist, if any.
    pub twist: Option<&'a dyn Twist>,
    /// The proposal (p0 or twisted).
    pub proposal: Proposal,
    /// Resampling of the SMC bounds (the SIS bounds never resample).
    pub resampling: Resampling,
}

impl<L> Clone for Sampler<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L> Copy for Sampler<'_, L> {}

/// Which estimator of log Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Sequential importance sampling (IWAE).
    Sis,
    /// SMC with the sampler's resampling.
    Smc,
}

impl<'a, L: LanguageModel> Sampler<'a, L> {
    fn config(&self, method: Method, k: usize, seed: u64) -> SmcConfig {
        let resampling = match method {
            Method::Sis => Resampling {
                criterion: Criterion::Never,
                ..self.resampling
            },
            Method::Smc => self.resampling,
        };
        SmcConfig {
            num_particles: k,
            horizon: self.horizon,
            proposal: self.proposal,
            resampling,
            seed,
        }
    }

    /// Whether `method`'s upper bound is valid for this sampler: always for SIS (no
    /// resampling), and for conditional SMC only with a resampling whose conditional form is
    /// implemented ([`Resampling::supports_conditional`]: multinomial).
    pub fn has_upper_bound(&self, method: Method) -> bool {
        self.config(method, 1, 0).resampling.supports_conditional()
    }

    /// The values log Zhat of `seeds.len()` independent runs with K particles: their mean is a
    /// lower bound on log Z.
    pub fn lower_bound_values(&self, method: Method, k: usize, seeds: &[u64]) -> Result<Vec<f64>> {
        seeds
            .iter()
            .map(|&seed| {
                run_smc(
                    self.lm,
                    self.twist,
                    self.potential,
                    self.prompt,
                    &self.config(method, k, seed),
                )
                .map(|o| o.log_z_hat)
            })
            .collect()
    }

    /// The lower bound E[log Zhat] estimated over `seeds`.
    pub fn lower_bound(&self, method: Method, k: usize, seeds: &[u64]) -> Result<Estimate> {
        Ok(Estimate::from_values(
            &self.lower_bound_values(method, k, seeds)?,
        ))
    }

    /// The values log Zhat of conditional runs, one per exact sample (the run around exact
    /// sample i uses seed `derive(seed, label::UPPER, i)`, [`smc_core::seed`]): their mean is an upper bound on log Z. With [`Method::Sis`] this is the SIS
    /// upper bound (K-1 proposals and s* in slot 0), with [`Method::Smc`] conditional SMC,
    /// which refuses resampling schemes other than multinomial ([`Sampler::has_upper_bound`]).
    pub fn upper_bound_values(
        &self,
        method: Method,
        k: usize,
        exact: &[Vec<u32>],
        seed: u64,
    ) -> Result<Vec<f64>> {
        exact
            .iter()
            .enumerate()
            .map(|(i, s)| {
                run_csmc(
                    self.lm,
                    self.twist,
                    self.potential,
                    self.prompt,
                    &self.config(method, k, seed::derive(seed, label::UPPER, i as u64)),
                    s,
                )
                .map(|o| o.log_z_hat)
            })
            .collect()
    }

    /// The upper bound E[log Zhat_conditional] estimated over the exact samples.
    pub fn upper_bound(
        &self,
        method: Method,
        k: usize,
        exact: &[Vec<u32>],
        seed: u64,
    ) -> Result<Estimate> {
        Ok(Estimate::from_values(
            &self.upper_bound_values(method, k, exact, seed)?,
        ))
    }

    /// Single-sample values log sigma~(s) - log q(s) for `n` draws s ~ q: their mean is
    /// F_q = log Z - KL(q || sigma).
    pub fn f_q_values(&self, n: usize, seed: u64) -> Result<Vec<f64>> {
        // SIS without resampling: each particle is an independent draw from q and its final
        // log weight is exactly log sigma~ - log q.
        let out = run_smc(
            self.lm,
            self.twist,
            self.potential,
            self.prompt,
            &self.config(Method::Sis, n, seed),
        )?;
        Ok(out.log_w)
    }

    /// F_q = E_q[log sigma~ - log q] (the ELBO).
    pub fn f_q(&self, n: usize, seed: u64) -> Result<Estimate> {
        Ok(Estimate::from_values(&self.f_q_values(n, seed)?))
    }

    /// Single-sample values log sigma~(s*) - log q(s*) at exact samples: their mean is
    /// G_q = log Z + KL(sigma || q).
    /// One teacher-forced pass over all of them ([`log_weights_of`]).
    pub fn g_q_values(&self, exact: &[Vec<u32>]) -> Result<Vec<f64>> {
        if exact.iter().any(|s| s.len() != self.horizon) {
            return Err(SmcError::Reference(format!(
                "every exact sample must have T = {} tokens",
                self.horizon
            )));
        }
        log_weights_of(
            self.lm,
            self.twist,
            self.potential,
            self.prompt,
            self.proposal,
            exact,
        )
    }

    /// G_q = E_sigma[log sigma~ - log q] (the EUBO).
    pub fn g_q(&self, exact: &[Vec<u32>]) -> Result<Estimate> {
        Ok(Estimate::from_values(&self.g_q_values(exact)?))
    }

    /// Lower and upper bounds of both methods for each K in `ks`: lower bounds over
    /// `num_seeds` runs, upper bounds over the exact samples; every run's seed is derived from
    /// `seed` ([`smc_core::seed`]: labels `BOUNDS_K`, then `LOWER_*` / `UPPER_*`). The SMC upper bound is `None`
    /// where the resampling scheme has no implemented conditional form
    /// ([`Sampler::has_upper_bound`]).
    pub fn bounds_over_k(
        &self,
        ks: &[usize],
        num_seeds: usize,
        exact: &[Vec<u32>],
        seed: u64,
    ) -> Result<Vec<BoundsAtK>> {
        if exact.is_empty() {
            return Err(SmcError::InvalidConfig {
                field: "exact samples for upper bounds",
                expected: "at least one".into(),
                found: "none".into(),
            });
        }
        ks.iter()
            .map(|&k| {
                // Every K, method and bound has its own streams (smc_core::seed), so the
                // estimates are independent of one another.
                let at_k = seed::derive(seed, label::BOUNDS_K, k as u64);
                let sis_seeds = seed::derive_many(at_k, label::LOWER_SIS, num_seeds);
                let smc_seeds = seed::derive_many(at_k, label::LOWER_SMC, num_seeds);
                let sis_upper_seed = seed::derive(at_k, label::UPPER_SIS, 0);
                let smc_upper_seed = seed::derive(at_k, label::UPPER_SMC, 0);
                Ok(BoundsAtK {
                    k,
                    sis_lower: self.lower_bound(Method::Sis, k, &sis_seeds)?,
                    sis_upper: self.upper_bound(Method::Sis, k, exact, sis_upper_seed)?,
                    smc_lower: self.lower_bound(Method::Smc, k, &smc_seeds)?,
                    smc_upper: if self.has_upper_bound(Method::Smc) {
                        Some(self.upper_bound(Method::Smc, k, exact, smc_upper_seed)?)
                    } else {
                        None
                    },
                })
            })
            .collect()
    }
}

/// The four bounds on log Z at one K.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundsAtK {
    /// Number of particles.
    pub k: usize,
    /// E[log Zhat_SIS] <= log Z.
    pub sis_lower: Estimate,
    /// E[log Zhat_SIS with s* in slot 0] >= log Z.
    pub sis_upper: Estimate,
    /// E[log Zhat_SMC] <= log Z.
    pub smc_lower: Estimate,
    /// E[log Zhat_CSMC] >= log Z; `None` where the sampler's resampling scheme has no
    /// implemented conditional form, so that no unguaranteed bound is reported.
    pub smc_upper: Option<Estimate>,
}

impl BoundsAtK {
    /// A pair fixed in advance: the SMC lower bound and the SMC upper bound, or the SIS upper
    /// bound where the scheme has no conditional SMC. Both hold in expectation by construction,
    /// unlike [`BoundsAtK::tightest`].
    pub fn smc_pair(&self) -> (Estimate, Estimate) {
        (self.smc_lower, self.smc_upper.unwrap_or(self.sis_upper))
    }

    /// The tightest pair: the larger lower bound and the smaller upper bound. Choosing by the
    /// observed means biases the pair inward (the larger of two noisy lower bounds overshoots
    /// on average): prefer a pair fixed in advance ([`BoundsAtK::smc_pair`], or
    /// [`crate::LogZBounds`] from [`Sampler::evaluate`]).
    pub fn tightest(&self) -> (Estimate, Estimate) {
        let lower = if self.smc_lower.mean >= self.sis_lower.mean {
            self.smc_lower
        } else {
            self.sis_lower
        };
        let upper = match self.smc_upper {
            Some(smc) if smc.mean <= self.sis_upper.mean => smc,
            _ => self.sis_upper,
        };
        (lower, upper)
    }
}

/// KL estimates of a proposal q from F_q, G_q and bounds on log Z.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlEstimates {
    /// The midpoint rule for log Z: (lower + upper) / 2, with its standard error.
    pub log_z: Estimate,
    /// Half the gap between the bounds: the most the midpoint can be off (up to noise).
    pub log_z_half_gap: f64,
    /// KL(q || sigma) ≈ log Z - F_q.
    pub kl_q_sigma: Estimate,
    /// KL(sigma || q) ≈ G_q - log Z.
    pub kl_sigma_q: Estimate,
    /// F_q (ELBO).
    pub f_q: Estimate,
    /// G_q (EUBO).
    pub g_q: Estimate,
}

/// Combines F_q, G_q and a lower/upper pair of log Z bounds into both KL estimates. The pair
/// must be chosen before the values are seen (a pre-declared pair, or fixed-weight averages of
/// bounds): picking the largest lower and smallest upper bound
/// over noisy runs biases the pair inward. Standard errors add in quadrature (the estimates
/// come from independent runs) with Welch–Satterthwaite degrees of freedom
/// ([`Estimate::combine`]); the n of a combined estimate is the smallest n that went into it.
pub fn kl_estimates(f_q: Estimate, g_q: Estimate, lower: Estimate, upper: Estimate) -> KlEstimates {
    KlEstimates {
        log_z: Estimate::combine(&[(0.5, lower), (0.5, upper)]),
        log_z_half_gap: 0.5 * (upper.mean - lower.mean),
        kl_q_sigma: Estimate::combine(&[(0.5, lower), (0.5, upper), (-1.0, f_q)]),
        kl_sigma_q: Estimate::combine(&[(1.0, g_q), (-0.5, lower), (-0.5, upper)]),
        f_q,
        g_q,
    }
}
