//! The error type of the SMC drivers.

use thiserror::Error;

/// Everything that can go wrong inside an SMC run. Every variant names what failed and where,
/// so that a user can tell a bug in their potential from a degenerate target.
#[derive(Debug, Error)]
pub enum SmcError {
    /// A configuration value is out of range (`K = 0`, `T = 0`, a threshold outside (0, 1], ...).
    #[error("invalid configuration: {field} must be {expected}, found {found}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// What the field must satisfy.
        expected: String,
        /// The value that was given.
        found: String,
    },
    /// Every particle has weight zero: the target gives no mass to anything the proposal produced.
    #[error(
        "no particle has positive weight at step {step} of {horizon}: the potential or twist is zero \
         (log = -inf) for all {num_particles} particles"
    )]
    NoPositiveWeight {
        /// The step (1-based) at which the population died.
        step: usize,
        /// The number of steps T.
        horizon: usize,
        /// The number of particles K.
        num_particles: usize,
    },
    /// A prefix constraint leaves no particle a way on: every particle's mask of allowed next
    /// tokens is empty at `step` (t < T or t = T), or no particle's complete output is accepted
    /// (`step` = T).
    #[error(
        "constraint {constraint} leaves none of the {num_particles} particles a viable \
         continuation at step {step} of {horizon} (every mask of allowed tokens is empty, or no \
         complete output is accepted)"
    )]
    Constraint {
        /// The constraint's name.
        constraint: String,
        /// The step (1-based).
        step: usize,
        /// The number of steps T.
        horizon: usize,
        /// The number of particles K.
        num_particles: usize,
    },
    /// A component returned NaN (or +inf, where only finite values or -inf make sense).
    #[error("{component} returned {value} for particle {particle} at step {step}")]
    InvalidValue {
        /// Which component: the potential's or twist's name, or "language model".
        component: String,
        /// The step (1-based).
        step: usize,
        /// The particle index.
        particle: usize,
        /// The offending value.
        value: f64,
    },
    /// A component returned a table of the wrong shape.
    #[error("{component} returned {found} values at step {step}, expected {expected}")]
    Shape {
        /// Which component.
        component: String,
        /// The step (1-based).
        step: usize,
        /// The expected number of values.
        expected: usize,
        /// The number found.
        found: usize,
    },
    /// A conditional SMC reference sequence or a clamped token does not fit the model.
    #[error("reference sequence: {0}")]
    Reference(String),
    /// An error raised by a language model, twist or potential implementation.
    #[error("{context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SmcError {
    /// Wraps an implementation's error with a description of what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SmcError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An out-of-range configuration value, naming the field, what it must satisfy and what
    /// was given; for potentials, twists and models implemented outside this crate too.
    pub fn config(field: &'static str, expected: impl Into<String>, found: impl ToString) -> Self {
        SmcError::InvalidConfig {
            field,
            expected: expected.into(),
            found: found.to_string(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SmcError> = std::result::Result<T, E>;
