//! The error type of grammar constraints.

use thiserror::Error;

/// What can go wrong when describing a vocabulary or compiling a grammar against it.
#[derive(Debug, Error)]
pub enum GrammarError {
    /// The vocabulary description is unusable (empty, an end token outside it, a token piece
    /// that is not in the byte-level alphabet, ...).
    #[error("token vocabulary: {0}")]
    Vocabulary(String),
    /// llguidance rejected the grammar, schema or regular expression; `message` is its own
    /// explanation.
    #[error("{what}: {message}")]
    Compile {
        /// What was compiled (e.g. `regex "a(b"`, `JSON schema person.json`).
        what: String,
        /// llguidance's message.
        message: String,
    },
    /// The grammar compiled but no output at all satisfies it.
    #[error("{what} accepts no output: no token can start one and the empty output is rejected")]
    Empty {
        /// What was compiled.
        what: String,
    },
    /// A JSON schema file is not JSON.
    #[error("{what}: not valid JSON")]
    Json {
        /// What was parsed.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = GrammarError> = std::result::Result<T, E>;
