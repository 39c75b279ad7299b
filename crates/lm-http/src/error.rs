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
    /// Two servers given as replicas of one model report different models.
    #[error(
        "the language-model servers are not replicas of one model: {url} reports {what} \
         {found}, but {first_url} reports {expected}"
    )]
    ReplicaMismatch {
        /// The server that differs.
        url: String,
        /// The first server, the reference.
        first_url: String,
        /// What differs (model name, model metadata, ...).
        what: &'static str,
        /// The first server's value.
        expected: String,
        /// This server's value.
        found: String,
    },
    /// Every attempt of a request failed with a transient error (server down, timeout,
    /// 429/5xx), each on the server named in its message.
    #[error("all {} attempts failed: {}", .earlier.len() + 1, attempts(.earlier, .last))]
    Exhausted {
        /// The failures before the last, in order.
        earlier: Vec<HttpError>,
        /// The last failure.
        #[source]
        last: Box<HttpError>,
    },
}

impl HttpError {
    /// Whether another attempt (later, or on another replica) may succeed: the server could
    /// not be reached or its connection broke, it timed out, or it answered 429 (too many
    /// requests) or 5xx. Nonsense answers, refused requests (other 4xx) and mismatches are
    /// permanent: asking again would get the same answer.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Timeout { .. } => true,
            HttpError::Status { status, .. } => *status == 429 || (500..600).contains(status),
            HttpError::Unreachable { source, .. } => matches!(
                source,
                ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::HostNotFound
                    | ureq::Error::Protocol(_)
            ),
            HttpError::Exhausted { last, .. } => last.is_transient(),
            HttpError::Config { .. }
            | HttpError::Malformed { .. }
            | HttpError::VocabMismatch { .. }
            | HttpError::ReplicaMismatch { .. } => false,
        }
    }
}

/// Every failure of an exhausted request, numbered, for its message.
fn attempts(earlier: &[HttpError], last: &HttpError) -> String {
    earlier
        .iter()
        .chain(std::iter::once(last))
        .enumerate()
        .map(|(i, e)| format!("({}) {e}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
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
