//! # smc-core
//!
//! Backend-agnostic sequential Monte Carlo for language models, following the Feynman–Kac
//! view: a model moves particles and weighs them ([`feynman_kac::FeynmanKac`]); resampling
//! schemes ([`resampling`]) and criteria are separate, swappable pieces; the generic loop
//! ([`feynman_kac::run`]) keeps weights, ESS, genealogy and log Zhat in log space (f64).
//!
//! Language models, twists and potentials plug in through the traits of [`model`]; the
//! drivers of [`smc`] run SIS, bootstrap SMC with twisted targets, twisted SMC and conditional
//! SMC. [`tabular`] holds an enumerable language model where Z, sigma and the optimal twists
//! are exact, against which every estimator is tested. [`constraint`] holds prefix constraints
//! (token masks) that act as exact indicator twists in the `*_constrained` drivers;
//! [`smc::RunOptions`] adds variable-length outputs (end-of-sequence) and boundary resampling. [`seed`] derives every seed that a
//! program makes from another (one scheme, documented there).
//!
//! ```
//! use smc_core::prelude::*;
//!
//! let lm = TabularLm::random(3, 1, 1.0, 0);
//! let phi = FnPotential::new("ends in 2", |_: &[u32], s: &[u32]| log_indicator(s[2] == 2));
//! let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
//! let psi = exact.optimal_twist();
//! let out = run_smc(&lm, Some(&psi), &phi, &[], &SmcConfig::twisted(8, 3).with_seed(1)).unwrap();
//! assert!((out.log_z_hat - exact.log_z()).abs() < 1e-9);
//! ```

pub mod batch;
pub mod constraint;
pub mod error;
pub mod feynman_kac;
pub mod logspace;
pub mod lookahead;
pub mod model;
pub mod resampling;
pub mod seed;
pub mod smc;
pub mod tabular;

pub use error::{Result, SmcError};

/// The names most programs need.
pub mod prelude {
    pub use crate::batch::{HiddenStates, LogTable, TokenBuffer};
    pub use crate::constraint::{
        ConstrainedPotential, Constraint, ConstraintSession, DfaConstraint, PrefixAutomaton,
        TokenMask, TokenSetConstraint,
    };
    pub use crate::error::{Result, SmcError};
    pub use crate::feynman_kac::{Resampling, StepRecord};
    pub use crate::logspace::{ess, log_indicator, log_sum_exp, normalized_weights};
    pub use crate::model::{
        DecodeSession, FnPotential, LanguageModel, NextToken, Potential, StepOutput, Twist,
        TwistInput, UnitPotential,
    };
    pub use crate::resampling::{Criterion, Scheme};
    pub use crate::smc::{
        AtMaxTokens, EndOfSequence, Proposal, RunOptions, SmcConfig, SmcOutput, SmcRng,
        log_weights_of, log_weights_of_constrained, rng_from_seed, run_csmc, run_csmc_constrained,
        run_csmc_with, run_smc, run_smc_constrained, run_smc_with, sample_base,
    };
    pub use crate::tabular::{Enumeration, TabularLm, TabularTwist};
}
