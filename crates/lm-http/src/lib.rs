//! # lm-http
//!
//! A [`LanguageModel`] over HTTP: the next-token log-probabilities of a serving engine
//! (llama.cpp's `llama-server`, or the OpenAI-compatible completions API of vLLM and SGLang),
//! for SMC in `smc-core`. Resampling, weights, twists, potentials and bounds stay in tsmc; the
//! engine is asked only for "the top N log p0(v | prompt, s_{<t})" of each particle's prefix.
//!
//! ## What is exact
//!
//! Engines return the top N log-probabilities only. The session reports them as they are —
//! these are p0's own values — and `-inf` for every other token, and says so
//! ([`DecodeSession::log_probs_normalised`] is `false`). smc-core then proposes from the
//! returned row renormalised, q_t(v) = p0(v) / M_t on the top-N set S_t (M_t = the set's
//! p0-mass), and multiplies the incremental weight by M_t, so weight x proposal = p0 on S_t:
//!
//! - with N < V, q is zero outside the top N, so the run is exact SMC for the target
//!   restricted to top-N continuations, sigma_N(s) ∝ p0(s) phi(s) 1[s_t in S_t(s_{<t}) for
//!   every t]: E[Zhat] = Z_N = sum over such s of p0(s) phi(s) <= Z, so log Zhat is also a
//!   lower bound on log Z in expectation;
//! - with N >= V the set is the whole vocabulary and the run is exact for sigma itself
//!   (Z_N = Z), up to the server's own arithmetic (f32 on llama-server).
//!
//! Both hold for the base proposal (bootstrap SMC) and for the twisted proposal, whose
//! normaliser sum_v p0(v) psi(v) runs over the returned tokens only.
//!
//! ## Example
//!
//! ```no_run
//! use lm_http::{HttpLm, HttpLmOptions, Protocol};
//! use smc_core::prelude::*;
//!
//! let options = HttpLmOptions::new("http://127.0.0.1:8080", Protocol::LlamaServer, 32000)
//!     .with_top_n(100);
//! let lm = HttpLm::connect(options)?;
//! let out = run_smc(&lm, None, &UnitPotential, &[1, 450, 4996], &SmcConfig::bootstrap(16, 10))?;
//! println!("log Zhat = {}", out.log_z_hat);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use smc_core::SmcError;
use smc_core::batch::LogTable;
use smc_core::model::{DecodeSession, LanguageModel, StepOutput};

pub use error::HttpError;
pub use protocol::Protocol;

use error::preview;

/// How far the returned probabilities may sum above one (servers compute in f32).
pub const MASS_TOLERANCE: f64 = 1e-3;

/// One answer: `(token, log p0)` pairs, largest first.
type TopRow = Vec<(u32, f64)>;

/// Largest response body read (a full-vocabulary answer of 256k tokens fits).
const MAX_BODY_BYTES: u64 = 256 << 20;

/// Where the server is, what it speaks, and how to ask it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLmOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080` (no path; http or https).
    pub url: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The vocabulary size V (the length of the model's logit vector). Checked against the
    /// server at [`HttpLm::connect`] when it reports one.
    pub vocab_size: usize,
    /// N, the number of top log-probabilities asked for per step (`n_probs` / `logprobs`);
    /// `N >= V` asks for the whole vocabulary. Servers cap it (vLLM: `--max-logprobs`, 20 by
    /// default).
    pub top_n: usize,
    /// Timeout of one request, connection included.
    pub timeout: Duration,
    /// The most requests in flight at once.
    pub parallel: usize,
    /// The `model` field of OpenAI requests; by default the first model `/v1/models` lists.
    pub model: Option<String>,
}

impl HttpLmOptions {
    /// Options with N = 20, a 60 s timeout and 8 requests in flight.
    pub fn new(url: impl Into<String>, protocol: Protocol, vocab_size: usize) -> Self {
        Self {
            url: url.into(),
            protocol,
            vocab_size,
            top_n: 20,
            timeout: Duration::from_secs(60),
            parallel: 8,
            model: None,
        }
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

    /// The same options with another bound on requests in flight.
    pub fn with_parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel;
        self
    }

    /// The same options with a model name for OpenAI requests.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
}

fn config_error(field: &'static str, expected: &str, found: impl ToString) -> HttpError {
    HttpError::Config {
        field,
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// Whether the URL's host is the loopback interface (reached without any proxy).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// A serving engine as a [`LanguageModel`] (see the crate documentation for what is exact).
#[derive(Debug)]
pub struct HttpLm {
    options: HttpLmOptions,
    agent: ureq::Agent,
    endpoint: String,
    model: Option<String>,
    server_vocab: Option<usize>,
}

impl HttpLm {
    /// Checks the options, reaches the server (`GET /v1/models`) and checks the vocabulary
    /// size where the server reports it (llama-server: `meta.n_vocab`). A server that cannot be
    /// reached is an error here; one without `/v1/models` is used unchecked.
    pub fn connect(mut options: HttpLmOptions) -> Result<Self, HttpError> {
        let url = options.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(config_error(
                "server URL",
                "http://host:port or https://host:port",
                &options.url,
            ));
        }
        if options.vocab_size == 0 {
            return Err(config_error("vocabulary size V", ">= 1", 0));
        }
        if options.top_n == 0 {
            return Err(config_error("top N", ">= 1", 0));
        }
        if options.parallel == 0 {
            return Err(config_error("requests in flight", ">= 1", 0));
        }
        if options.timeout.is_zero() {
            return Err(config_error("timeout", "> 0", "0 s"));
        }
        options.url = url;
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(options.parallel.max(3));
        if is_loopback(&options.url) {
            config = config.proxy(None);
        }
        let agent: ureq::Agent = config.build().into();
        let endpoint = format!("{}{}", options.url, options.protocol.completion_path());
        let mut lm = Self {
            agent,
            endpoint,
            model: options.model.clone(),
            server_vocab: None,
            options,
        };
        lm.probe()?;
        Ok(lm)
    }

    /// `GET /v1/models`: the model name (for OpenAI requests) and the vocabulary size.
    fn probe(&mut self) -> Result<(), HttpError> {
        let url = format!("{}/v1/models", self.options.url);
        let (status, body) = self.transfer(&url, None)?;
        if !(200..300).contains(&status) {
            return Ok(());
        }
        let answer: Value = serde_json::from_str(&body).map_err(|e| HttpError::Malformed {
            url: url.clone(),
            what: format!("not JSON ({e}): {}", preview(&body)),
        })?;
        let first = answer
            .get("data")
            .and_then(Value::as_array)
            .and_then(|d| d.first());
        if self.model.is_none() && self.options.protocol == Protocol::OpenAi {
            self.model = first
                .and_then(|m| m.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let n_vocab = first
            .and_then(|m| m.get("meta"))
            .and_then(|m| m.get("n_vocab"))
            .and_then(Value::as_u64);
        if let Some(found) = n_vocab {
            let found = found as usize;
            self.server_vocab = Some(found);
            if found != self.options.vocab_size {
                return Err(HttpError::VocabMismatch {
                    url,
                    expected: self.options.vocab_size,
                    found,
                });
            }
        }
        Ok(())
    }

    /// One HTTP exchange: GET without a body, POST with a JSON body. Returns the status and
    /// the body text.
    fn transfer(&self, url: &str, body: Option<String>) -> Result<(u16, String), HttpError> {
        let sent = match body {
            Some(body) => self
                .agent
                .post(url)
                .header("content-type", "application/json")
                .send(body),
            None => self.agent.get(url).call(),
        };
        let transport = |source: ureq::Error| match source {
            ureq::Error::Timeout(_) => HttpError::Timeout {
                url: url.to_string(),
                timeout: self.options.timeout,
            },
            source => HttpError::Unreachable {
                url: url.to_string(),
                source,
            },
        };
        let mut response = sent.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(transport)?;
        Ok((status, text))
    }

    /// The options (URL without a trailing slash).
    pub fn options(&self) -> &HttpLmOptions {
        &self.options
    }

    /// The model name sent with OpenAI requests, if any.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The vocabulary size the server reported at connection, if it reported one.
    pub fn server_vocab(&self) -> Option<usize> {
        self.server_vocab
    }

    /// The number of log-probabilities kept per step: min(N, V).
    pub fn top_n(&self) -> usize {
        self.options.top_n.min(self.options.vocab_size)
    }

    /// The URL of the completion endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The top-N `(token, log p0)` pairs after `context` (prompt and output tokens), largest
    /// first (ties by token id), checked: ids inside the vocabulary and distinct, at least
    /// min(N, V) of them, log-probabilities numbers, their mass at most 1 (and 1 when the whole
    /// vocabulary is asked for) within [`MASS_TOLERANCE`]. Extra entries beyond N (vLLM adds
    /// the sampled token) are dropped, so the set is a function of the context alone.
    pub fn top_log_probs(&self, context: &[u32]) -> Result<Vec<(u32, f64)>, HttpError> {
        let n = self.top_n();
        let request = self
            .options
            .protocol
            .wire()
            .request(context, n, self.model.as_deref());
        let (status, body) = self.transfer(&self.endpoint, Some(request.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                url: self.endpoint.clone(),
                status,
                body: preview(&body),
            });
        }
        let malformed = |what: String| HttpError::Malformed {
            url: self.endpoint.clone(),
            what,
        };
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| malformed(format!("not JSON ({e}): {}", preview(&body))))?;
        let entries = self
            .options
            .protocol
            .wire()
            .parse(&answer)
            .map_err(malformed)?;
        self.checked(entries).map_err(malformed)
    }

    fn checked(&self, entries: Vec<(u64, f64)>) -> Result<Vec<(u32, f64)>, String> {
        let v = self.options.vocab_size;
        let n = self.top_n();
        let mut out = Vec::with_capacity(entries.len());
        for (id, lp) in entries {
            match u32::try_from(id) {
                Ok(tok) if (tok as usize) < v => out.push((tok, lp)),
                _ => {
                    return Err(format!(
                        "token id {id} is outside the vocabulary of size {v}"
                    ));
                }
            }
        }
        let mut ids: Vec<u32> = out.iter().map(|e| e.0).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("token id {} appears twice", w[0]));
        }
        if out.len() < n {
            return Err(format!(
                "{} log-probabilities returned, {n} asked for (min of N = {} and V = {v})",
                out.len(),
                self.options.top_n
            ));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(n);
        let mass: f64 = out.iter().map(|e| e.1.exp()).sum();
        if mass > 1.0 + MASS_TOLERANCE {
            return Err(format!(
                "the top {n} probabilities sum to {mass}, more than 1"
            ));
        }
        if n == v && mass < 1.0 - MASS_TOLERANCE {
            return Err(format!(
                "the probabilities of the whole vocabulary sum to {mass}, not 1"
            ));
        }
        if mass <= 0.0 {
            return Err(format!("all {n} returned probabilities are zero"));
        }
        Ok(out)
    }

    /// [`top_log_probs`](Self::top_log_probs) for every context, at most
    /// [`HttpLmOptions::parallel`] requests in flight; the first error (by context) if any.
    pub fn top_log_probs_many(
        &self,
        contexts: &[Vec<u32>],
    ) -> Result<Vec<Vec<(u32, f64)>>, HttpError> {
        let n = contexts.len();
        let workers = self.options.parallel.min(n);
        if workers <= 1 {
            return contexts.iter().map(|c| self.top_log_probs(c)).collect();
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let done: Vec<Vec<(usize, Result<TopRow, HttpError>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let row = self.top_log_probs(&contexts[i]);
                            if row.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            mine.push((i, row));
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut rows: Vec<Option<TopRow>> = vec![None; n];
        let mut first_error: Option<(usize, HttpError)> = None;
        for (i, row) in done.into_iter().flatten() {
            match row {
                Ok(row) => rows[i] = Some(row),
                Err(e) => {
                    if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_error = Some((i, e));
                    }
                }
            }
        }
        if let Some((_, e)) = first_error {
            return Err(e);
        }
        Ok(rows
            .into_iter()
            .map(|r| r.expect("every context answered when none failed"))
            .collect())
    }
}

fn backend_error(lm: &HttpLm, e: HttpError) -> SmcError {
    SmcError::backend(
        format!(
            "{} next-token log-probabilities from {}",
            lm.options.protocol, lm.options.url
        ),
        e,
    )
}

impl LanguageModel for HttpLm {
    type Session<'a> = HttpSession<'a>;

    fn vocab_size(&self) -> usize {
        self.options.vocab_size
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<HttpSession<'_>> {
        if let Some((i, &tok)) = prompt
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= self.options.vocab_size)
        {
            return Err(SmcError::InvalidConfig {
                field: "prompt token",
                expected: format!("< vocabulary size {}", self.options.vocab_size),
                found: format!("{tok} at position {i}"),
            });
        }
        Ok(HttpSession {
            lm: self,
            prompt: prompt.to_vec(),
            outputs: vec![Vec::new(); num_particles],
        })
    }
}

/// K particles decoding over HTTP: each particle's output tokens; every step sends one request
/// per distinct prefix (the server's prompt cache makes the shared prompt cheap).
#[derive(Debug)]
pub struct HttpSession<'a> {
    lm: &'a HttpLm,
    prompt: Vec<u32>,
    outputs: Vec<Vec<u32>>,
}

impl HttpSession<'_> {
    /// The particles' output tokens so far.
    pub fn outputs(&self) -> &[Vec<u32>] {
        &self.outputs
    }
}

impl DecodeSession for HttpSession<'_> {
    fn num_particles(&self) -> usize {
        self.outputs.len()
    }

    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        let k = self.outputs.len();
        let v = self.lm.options.vocab_size;
        // One request per distinct prefix.
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let mut representatives = Vec::new();
        let which: Vec<usize> = self
            .outputs
            .iter()
            .enumerate()
            .map(|(p, out)| {
                *index.entry(out.as_slice()).or_insert_with(|| {
                    representatives.push(p);
                    representatives.len() - 1
                })
            })
            .collect();
        let contexts: Vec<Vec<u32>> = representatives
            .iter()
            .map(|&p| [self.prompt.as_slice(), &self.outputs[p]].concat())
            .collect();
        let rows = self
            .lm
            .top_log_probs_many(&contexts)
            .map_err(|e| backend_error(self.lm, e))?;
        let mut table = LogTable::filled(k, v, f64::NEG_INFINITY);
        for (p, &u) in which.iter().enumerate() {
            let row = table.row_mut(p);
            for &(tok, lp) in &rows[u] {
                row[tok as usize] = lp;
            }
        }
        Ok(StepOutput {
            log_probs: table,
            hidden: None,
        })
    }

    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        let v = self.lm.options.vocab_size;
        if tokens.len() != self.outputs.len() {
            return Err(SmcError::Shape {
                component: "tokens pushed to the HTTP session".into(),
                step: self.outputs.first().map_or(0, Vec::len) + 1,
                expected: self.outputs.len(),
                found: tokens.len(),
            });
        }
        if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(SmcError::InvalidConfig {
                field: "pushed token",
                expected: format!("< vocabulary size {v}"),
                found: tok.to_string(),
            });
        }
        for (out, &tok) in self.outputs.iter_mut().zip(tokens) {
            out.push(tok);
        }
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        let k = self.outputs.len();
        if ancestors.len() != k {
            return Err(SmcError::Shape {
                component: "ancestors of the HTTP session".into(),
                step: self.outputs.first().map_or(0, Vec::len),
                expected: k,
                found: ancestors.len(),
            });
        }
        if let Some(&a) = ancestors.iter().find(|&&a| a >= k) {
            return Err(SmcError::InvalidConfig {
                field: "ancestor index",
                expected: format!("< number of particles {k}"),
                found: a.to_string(),
            });
        }
        self.outputs = ancestors.iter().map(|&a| self.outputs[a].clone()).collect();
        Ok(())
    }

    /// The rows are p0 on the top N only: smc-core's base proposal renormalises them and
    /// weighs by their mass.
    fn log_probs_normalised(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost/",
            "http://[::1]:9",
            "https://127.0.0.2",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://[fe80::1]:1",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
