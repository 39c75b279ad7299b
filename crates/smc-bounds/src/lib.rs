//! # smc-bounds
//!
//! Measures any sampler built on [`smc_core`] with bidirectional bounds on log Z (spec §4):
//! - lower bounds E[log Zhat] <= log Z from SIS and SMC at any K;
//! - upper bounds from exact target samples: SIS with s* in slot 0, and conditional SMC;
//! - the single-sample bounds F_q (ELBO) and G_q (EUBO), and from them
//!   KL(q || sigma) ≈ log Z - F_q and KL(sigma || q) ≈ G_q - log Z, with log Z the midpoint
//!   of a pair of bounds fixed before the values are seen;
//! - one evaluation API ([`Sampler::evaluate`] with an [`EvalPlan`], giving an [`Evaluation`]):
//!   F_q, G_q, every bound and both KL estimates with standard errors;
//! - estimates with Student t intervals ([`Estimate`]: t_{0.975, df} SE, Welch–Satterthwaite
//!   degrees of freedom for combinations, batch means for Markov chain averages);
//! - collectors of exact target samples: rejection for indicator potentials, class rejection
//!   for beta = 1 classifiers, joint ancestral draws for infilling, and particle Gibbs chains
//!   that turn one exact sample into many (each marginally exact).

pub mod bounds;
pub mod estimate;
pub mod evaluate;
pub mod exact;
pub mod stats;

pub use bounds::{BoundsAtK, KlEstimates, Method, Sampler, kl_estimates};
pub use estimate::Estimate;
pub use evaluate::{BoundRuns, EvalPlan, Evaluation, LogZBounds};
pub use exact::{
    Collected, ExactSample, GibbsChain, joint_ancestral, particle_gibbs, rejection_class,
    rejection_indicator,
};
