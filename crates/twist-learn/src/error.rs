//! The error type of twist learning.

use std::path::PathBuf;

use lm_burn::LmError;
use smc_core::SmcError;
use thiserror::Error;

/// Everything that can go wrong while training or evaluating twists. Errors of the SMC drivers
/// and of the language model are kept whole (their own sources included), so a caller can match
/// on them or walk the chain.
#[derive(Debug, Error)]
pub enum TrainError {
    /// An SMC run, a bound or a twist evaluation failed.
    #[error(transparent)]
    Smc(#[from] SmcError),
    /// The language model or a twist head failed (loading, decoding, saving).
    #[error(transparent)]
    Lm(#[from] LmError),
    /// A training setting is out of range.
    #[error("invalid training configuration: {field} must be {expected}, found {found}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What it must satisfy.
        expected: String,
        /// The value given.
        found: String,
    },
    /// A particle Gibbs chain was started at a sequence of the wrong length.
    #[error("the particle Gibbs chain's start has {found} tokens, expected T = {expected}")]
    ChainStart {
        /// The start's length.
        found: usize,
        /// The horizon T.
        expected: usize,
    },
    /// A loss came out NaN or infinite (the update is not applied).
    #[error("the {loss} loss is {value} at update {step}")]
    NonFiniteLoss {
        /// Which loss.
        loss: String,
        /// The update (1-based, within the call).
        step: usize,
        /// The value.
        value: f64,
    },
    /// A checkpoint file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The optimiser's state could not be serialised or restored.
    #[error("optimiser state {path}: {source}")]
    OptimizerState {
        /// The checkpoint's optimiser file.
        path: PathBuf,
        /// burn's error.
        #[source]
        source: burn::store::RecordError,
    },
}

impl TrainError {
    pub(crate) fn config(
        field: &'static str,
        expected: impl Into<String>,
        found: impl ToString,
    ) -> Self {
        TrainError::InvalidConfig {
            field,
            expected: expected.into(),
            found: found.to_string(),
        }
    }
}

/// For callers whose error type is still `SmcError`: an SMC error comes back as it was, any
/// other training error is wrapped as its source ([`SmcError::Backend`]).
impl From<TrainError> for SmcError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Smc(inner) => inner,
            other => SmcError::backend("twist learning", other),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
