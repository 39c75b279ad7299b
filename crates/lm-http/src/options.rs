//! What a client needs to know: the servers, their protocol, the model's vocabulary, how many
//! log-probabilities to ask for, and how to wait and retry.

use std::time::Duration;

use crate::Protocol;

/// How failed requests are retried: transient failures (a server down or restarting, a broken
/// connection, a timeout, HTTP 429 or 5xx) are tried again after an exponentially growing
/// pause, on another replica when there is one; permanent ones (a nonsense answer, a refused
/// request) are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (1: no retry).
    pub attempts: usize,
    /// The pause before the first retry; it doubles at each further retry.
    pub backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// How long new work avoids a server after a transient failure there (retries of a
    /// request still go back to it when every other server failed too).
    pub cooldown: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, pauses of 0.2, 0.4, 0.8 s (at most 5 s), a 10 s cool-down.
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            cooldown: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The pause before retry `retry` (1 for the first): backoff x 2^(retry - 1), at most
    /// `max_backoff`.
    pub fn pause(&self, retry: usize) -> Duration {
        let doublings = retry.saturating_sub(1).min(30) as u32;
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// Where the servers are, what they speak, and how to ask them.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLmOptions {
    /// The servers' base URLs, e.g. `http://127.0.0.1:8080` (http or https; endpoint paths
    /// are appended). Several URLs are replicas of one model: checked at connection, the work
    /// is spread across them and a failed request is retried on another.
    pub urls: Vec<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// The vocabulary size V (the length of the model's logit vector). Checked against every
    /// server at [`HttpLm::connect`](crate::HttpLm::connect) that reports one.
    pub vocab_size: usize,
    /// N, the number of top log-probabilities asked for per step (`n_probs` / `logprobs`);
    /// `N >= V` asks for the whole vocabulary. Servers cap it (vLLM: `--max-logprobs`, 20 by
    /// default).
    pub top_n: usize,
    /// Timeout of one request, connection included.
    pub timeout: Duration,
    /// The most requests in flight at once on each server.
    pub parallel: usize,
    /// The `model` field of OpenAI requests; by default each server's first listed model.
    pub model: Option<String>,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Tokens the server draws per request for the base proposal (the server samples from p0
    /// over its whole vocabulary; see the crate docs); 0: the base proposal is the returned
    /// top N renormalised instead.
    pub draw_ahead: usize,
}

impl HttpLmOptions {
    /// Options for one server with N = 20, a 60 s timeout, 8 requests in flight, the
    /// default [`RetryPolicy`] and 8 tokens drawn per request.
    pub fn new(url: impl Into<String>, protocol: Protocol, vocab_size: usize) -> Self {
        Self {
            urls: vec![url.into()],
            protocol,
            vocab_size,
            top_n: 20,
            timeout: Duration::from_secs(60),
            parallel: 8,
            model: None,
            retry: RetryPolicy::default(),
            draw_ahead: 8,
        }
    }

    /// The same options with these servers (replicas of one model) instead.
    pub fn with_servers<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The same options with another N.
    pub fn with_top_n(mut self, top_n: usize) -> Self {
        self.top_n = top_n;
        self
    }

    /// The same options with another timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same options with another bound on requests in flight per server.
    pub fn with_parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel;
        self
    }

    /// The same options with a model name for OpenAI requests.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The same options with another number of tokens drawn per request (0: no draws by the
    /// server).
    pub fn with_draw_ahead(mut self, tokens: usize) -> Self {
        self.draw_ahead = tokens;
        self
    }

    /// The same options with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_maximum() {
        let p = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            cooldown: Duration::ZERO,
        };
        let ms: Vec<u128> = (1..=5).map(|r| p.pause(r).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 500, 500]);
        assert_eq!(p.pause(1000), Duration::from_millis(500));
    }
}
