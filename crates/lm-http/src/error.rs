//! The error type of the HTTP backend: every variant names the server URL and what was wrong.

use std::time::Duration;

use thiserror::Error;

/// Everything that can go wrong talking to a serving engine.
#[derive(Debug, Error)]
pub enum HttpError {
    /// An option is out of range (no URL, V = 0, N = 0, ...).
    #[error("invalid lm-http option: {field} must be {expected}, found {found}")]
    Config {
        /// The option.
        field: &'static str,
        /// What it must satisfy.
        expected: String,
        /// The value given.
        found: String,
    },
    /// The server could not be reached (refused connection, unknown host, broken connection).
    #[error("could not reach the language-model server at {url}: {source}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: ureq::Error,
    },
    /// The server did not answer within the timeout.
    #[error("the language-model server at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL requested.
        url: String,
        /// The timeout of one request.
        timeout: Duration,
    },
    /// The server answered with an HTTP error status.
    #[error("the language-model server at {url} answered HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The server answered something that is not what the protocol promises: not JSON, missing
    /// fields, token ids outside the vocabulary, non-numeric or impossible log-probabilities.
    #[error("the language-model server at {url} answered nonsense: {what}")]
    Malformed {
        /// The URL requested.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// The server's vocabulary size differs from the one given.
    #[error(
        "the language-model server at {url} has a vocabulary of {found} tokens, but the \
         vocabulary size given is {expected}"
    )]
    VocabMismatch {
        /// The URL requested.
        url: String,
        /// The vocabulary size given by the caller.
        expected: usize,
        /// The server's vocabulary size.
        found: usize,
    },
}

/// The first `max` characters of a response body, for error messages.
pub(crate) fn preview(body: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = body.chars().take(MAX).collect();
    if body.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}
