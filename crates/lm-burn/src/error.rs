//! Errors of model loading and decoding: each names the file and, where there is one, the tensor
//! or field, with what was expected and what was found.

use std::path::PathBuf;

use thiserror::Error;

/// An error of this crate.
#[derive(Debug, Error)]
pub enum LmError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not valid JSON or lacks a field.
    #[error("{path}: field `{field}`: expected {expected}, found {found}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A tensor the architecture needs is not in the weights.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The weights file or directory.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
    },
    /// The weights hold tensors the architecture does not use (a sign of a wrong config).
    #[error("{path}: {count} unexpected tensor(s), e.g. {examples}")]
    ExtraTensors {
        /// The weights file or directory.
        path: PathBuf,
        /// How many.
        count: usize,
        /// The first few names.
        examples: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor's element type is not supported.
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype} (supported: {supported})")]
    UnsupportedType {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The type found.
        dtype: String,
        /// The supported types.
        supported: &'static str,
    },
    /// A weights file is malformed or truncated.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The architecture named by a config is not implemented.
    #[error("{path}: unsupported architecture {found:?} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The architecture found.
        found: String,
        /// The supported ones.
        supported: String,
    },
    /// The tokenizer could not be built or failed.
    #[error("tokenizer ({source_name}): {detail}")]
    Tokenizer {
        /// Where the tokenizer came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// Fetching the default model failed.
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// A downloaded file does not have the expected checksum.
    #[error("{path}: sha256 is {found}, expected {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The expected sha256.
        expected: String,
        /// The sha256 found.
        found: String,
    },
    /// Invalid input to the model (empty prompt, token out of range, ...).
    #[error("{0}")]
    Input(String),
}

/// Result alias of this crate.
pub type Result<T, E = LmError> = std::result::Result<T, E>;

impl LmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LmError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        LmError::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

impl From<LmError> for smc_core::SmcError {
    fn from(e: LmError) -> Self {
        smc_core::SmcError::backend("language model", e)
    }
}
