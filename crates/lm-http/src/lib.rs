//! # lm-http
//!
//! A [`LanguageModel`] over HTTP: the next-token log-probabilities of a serving engine
//! (llama.cpp's `llama-server`, or the OpenAI-compatible completions API of vLLM and SGLang),
//! for SMC in `smc-core`. Resampling, weights, twists, potentials and bounds stay in tsmc; the
//! engine is asked only for "the top N log p0(v | prompt, s_{<t})" of a particle's prefix, or
//! for tokens drawn from p0 after it by its own sampler.
//!
//! ## What is exact
//!
//! The base proposal where no token mask applies is p0 itself, which the engine's sampler
//! draws over its whole vocabulary: the session [draws from p0]
//! ([`HttpLmOptions::draw_ahead`] tokens per request, handed out one step at a time; a copy
//! made by resampling or a particle pushed another token drops what was drawn ahead for it), so
//! bootstrap SMC, conditional SMC and plain sampling are exact for sigma itself, whatever N.
//! Everything that reads rows (the twisted proposal, token masks, `draw_ahead = 0`) works with
//! the top N as follows.
//!
//! Engines return the top N log-probabilities only. The session reports them as they are —
//! these are p0's own values — and `-inf` for every other token, and says so
//! ([`DecodeSession::log_probs_normalised`] is `false`). smc-core then proposes from the
//! returned row renormalised, q_t(v) = p0(v) / M_t on the top-N set S_t (M_t = the set's
//! p0-mass), and multiplies the incremental weight by M_t, so weight x proposal = p0 on S_t:
//!
//! - with N < V, q is zero outside the top N, so the run is exact SMC for the target
//!   restricted to top-N continuations, sigma_N(s) ∝ p0(s) phi(s) 1[s_t in S_t(s_{<t}) for
//!   every t]: E\[Zhat\] = Z_N = sum over such s of p0(s) phi(s) <= Z, so log Zhat is also a
//!   lower bound on log Z in expectation;
//! - with N >= V the set is the whole vocabulary and the run is exact for sigma itself
//!   (Z_N = Z), up to the server's own arithmetic (f32 on llama-server).
//!
//! [`LanguageModel`]: smc_core::model::LanguageModel
//! [`DecodeSession::log_probs_normalised`]: smc_core::model::DecodeSession::log_probs_normalised
//! [draws from p0]: smc_core::model::DecodeSession::draws_from_p0
//!
//! Both hold for the base proposal (bootstrap SMC) and for the twisted proposal, whose
//! normaliser sum_v p0(v) psi(v) runs over the returned tokens only.
//!
//! ## Many servers
//!
//! Several URLs are replicas of one model ([`HttpLmOptions::with_servers`]): at connection
//! each is asked what it serves (`GET /v1/models`) and they must agree (model name,
//! llama-server's model metadata, the vocabulary size), or the error names the one that
//! differs. Each particle's lineage stays on one server, so that its prefix is in that
//! server's cache, with the distinct prefixes of a step spread evenly (see `routing`).
//! Transient failures (a server down, a broken connection, a timeout, HTTP 429 or 5xx) are
//! retried with exponential backoff on another replica ([`RetryPolicy`]); a server that failed
//! gets no new work for a cool-down. Every answer is checked as it arrives, so a run either
//! completes with answers of the one model or ends in an error naming each server that failed
//! and what it said — never with a wrong answer.
//!
//! ## Example
//!
//! ```no_run
//! use lm_http::{HttpLm, HttpLmOptions, Protocol};
//! use smc_core::prelude::*;
//!
//! // Two replicas of one model; lineages stay on a server, failures are retried on the other.
//! let options = HttpLmOptions::new("http://10.0.0.1:8080", Protocol::LlamaServer, 32000)
//!     .with_servers(["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
//!     .with_top_n(100);
//! let lm = HttpLm::connect(options)?;
//! let out = run_smc(&lm, None, &UnitPotential, &[1, 450, 4996], &SmcConfig::bootstrap(16, 10))?;
//! println!("log Zhat = {}", out.log_z_hat);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
mod options;
pub mod protocol;
mod routing;
mod server;
mod session;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;

pub use error::HttpError;
pub use options::{HttpLmOptions, RetryPolicy};
pub use protocol::Protocol;
pub use server::ServerInfo;
pub use session::HttpSession;

use error::preview;
use server::Server;

/// How far the returned probabilities may sum above one (servers compute in f32).
pub const MASS_TOLERANCE: f64 = 1e-3;

/// One answer: `(token, log p0)` pairs, largest first.
type TopRow = Vec<(u32, f64)>;

fn config_error(field: &'static str, expected: &str, found: impl ToString) -> HttpError {
    HttpError::Config {
        field,
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// The last component of a model path (replicas on different machines keep one model file
/// in different folders).
fn file_name(model: &str) -> &str {
    model.rsplit(['/', '\\']).next().unwrap_or(model)
}

/// The keys of llama-server's `meta` that describe the model file (not the server's settings,
/// such as `n_ctx`, which replicas may choose differently).
const MODEL_META_KEYS: [&str; 7] = [
    "vocab_type",
    "n_vocab",
    "n_ctx_train",
    "n_embd",
    "n_params",
    "size",
    "ftype",
];

fn model_meta(meta: &Option<Value>) -> serde_json::Map<String, Value> {
    let Some(Value::Object(meta)) = meta else {
        return serde_json::Map::new();
    };
    meta.iter()
        .filter(|(k, _)| MODEL_META_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Serving engines as one [`LanguageModel`](smc_core::model::LanguageModel) (see the crate
/// documentation for what is exact and how several servers share the work).
#[derive(Debug)]
pub struct HttpLm {
    options: HttpLmOptions,
    servers: Vec<Server>,
    /// Rotates the server that new lineages and single requests start on.
    next_start: AtomicUsize,
}

impl HttpLm {
    /// Checks the options, reaches every server (`GET /v1/models`, retried like any request),
    /// checks the vocabulary size where a server reports it (llama-server: `meta.n_vocab`) and
    /// that the servers agree on what they serve. A server that cannot be reached is an error
    /// here; one without `/v1/models` is used unchecked.
    pub fn connect(mut options: HttpLmOptions) -> Result<Self, HttpError> {
        if options.urls.is_empty() {
            return Err(config_error("server URLs", "at least one", "none"));
        }
        let mut urls: Vec<String> = Vec::with_capacity(options.urls.len());
        for given in &options.urls {
            let url = given.trim().trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(config_error(
                    "server URL",
                    "http://host:port or https://host:port",
                    given,
                ));
            }
            if urls.contains(&url) {
                return Err(config_error(
                    "server URLs",
                    "distinct",
                    format!("{url} twice"),
                ));
            }
            urls.push(url);
        }
        options.urls = urls;
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
        if options.retry.attempts == 0 {
            return Err(config_error("attempts per request", ">= 1", 0));
        }
        let servers = options
            .urls
            .iter()
            .map(|u| Server::new(u.clone(), options.timeout, options.parallel))
            .collect();
        let mut lm = Self {
            options,
            servers,
            next_start: AtomicUsize::new(0),
        };
        let infos = (0..lm.servers.len())
            .map(|s| lm.with_retries(s, true, None, |server| lm.probe(server)))
            .map(|r| r.map(|(info, _)| info))
            .collect::<Result<Vec<_>, _>>()?;
        lm.check_replicas(&infos)?;
        for (server, info) in lm.servers.iter_mut().zip(infos) {
            if lm.options.protocol == Protocol::OpenAi {
                server.model = lm.options.model.clone().or_else(|| info.model.clone());
            }
            server.info = info;
        }
        Ok(lm)
    }

    /// `GET /v1/models`: the model name and the vocabulary size, checked against V.
    fn probe(&self, server: &Server) -> Result<ServerInfo, HttpError> {
        let (status, body) = server.transfer("/v1/models", None)?;
        let url = format!("{}/v1/models", server.url());
        let mut info = ServerInfo {
            url: server.url().to_string(),
            ..ServerInfo::default()
        };
        if !(200..300).contains(&status) {
            let refused = HttpError::Status {
                url,
                status,
                body: preview(&body),
            };
            // A server without the endpoint is used unchecked; one that is overloaded or
            // starting is retried.
            return if refused.is_transient() {
                Err(refused)
            } else {
                Ok(info)
            };
        }
        let answer: Value = serde_json::from_str(&body).map_err(|e| HttpError::Malformed {
            url: url.clone(),
            what: format!("not JSON ({e}): {}", preview(&body)),
        })?;
        let listed: Vec<&Value> = answer
            .get("data")
            .and_then(Value::as_array)
            .map(|d| d.iter().collect())
            .unwrap_or_default();
        let first = listed.first();
        info.model = first
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        info.meta = first.and_then(|m| m.get("meta")).cloned();
        info.vocab = info
            .meta
            .as_ref()
            .and_then(|m| m.get("n_vocab"))
            .and_then(Value::as_u64)
            .map(|v| v as usize);
        if let Some(found) = info.vocab
            && found != self.options.vocab_size
        {
            return Err(HttpError::VocabMismatch {
                url,
                expected: self.options.vocab_size,
                found,
            });
        }
        if let Some(wanted) = &self.options.model {
            let ids: Vec<&str> = listed
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .collect();
            if !ids.is_empty() && !ids.contains(&wanted.as_str()) {
                return Err(HttpError::Config {
                    field: "model",
                    expected: format!("one of the models {url} serves: {}", ids.join(", ")),
                    found: wanted.clone(),
                });
            }
        }
        Ok(info)
    }

    /// Replicas must serve one model: the same model file name and, where llama-server
    /// reports them, the same model metadata (vocabulary, training context, embedding size,
    /// parameter count, file size and type; not the server's own context size).
    fn check_replicas(&self, infos: &[ServerInfo]) -> Result<(), HttpError> {
        let Some((first, rest)) = infos.split_first() else {
            return Ok(());
        };
        for info in rest {
            let mismatch = |what, expected: String, found: String| HttpError::ReplicaMismatch {
                url: info.url.clone(),
                first_url: first.url.clone(),
                what,
                expected,
                found,
            };
            if let (Some(a), Some(b)) = (&first.model, &info.model)
                && file_name(a) != file_name(b)
                && self.options.model.is_none()
            {
                return Err(mismatch("the model", a.clone(), b.clone()));
            }
            let (a, b) = (model_meta(&first.meta), model_meta(&info.meta));
            if !a.is_empty() && !b.is_empty() && a != b {
                return Err(mismatch(
                    "the model metadata",
                    Value::Object(a).to_string(),
                    Value::Object(b).to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Runs `op` on server `first` and, after each transient failure, again after a pause
    /// ([`RetryPolicy::pause`]) on another usable server (the same one when `pinned`), up to
    /// [`RetryPolicy::attempts`] attempts or until `abort` is set. Returns the answer and the
    /// server that gave it; a permanent failure at once; [`HttpError::Exhausted`] with every
    /// failure when all attempts failed (the failure itself when there was one attempt).
    fn with_retries<T>(
        &self,
        first: usize,
        pinned: bool,
        abort: Option<&AtomicBool>,
        op: impl Fn(&Server) -> Result<T, HttpError>,
    ) -> Result<(T, usize), HttpError> {
        let policy = &self.options.retry;
        let n = self.servers.len();
        let mut tried = vec![false; n];
        let mut failures: Vec<HttpError> = Vec::new();
        let mut s = first % n;
        if !pinned && !self.servers[s].usable() {
            s = self.next_server(s, &tried, true);
        }
        for attempt in 0..policy.attempts {
            if attempt > 0 {
                if abort.is_some_and(|a| a.load(Ordering::Relaxed)) {
                    break;
                }
                std::thread::sleep(policy.pause(attempt));
                if !pinned {
                    s = self.next_server(s, &tried, false);
                }
            }
            tried[s] = true;
            match op(&self.servers[s]) {
                Ok(answer) => {
                    self.servers[s].answered();
                    return Ok((answer, s));
                }
                Err(e) if e.is_transient() => {
                    self.servers[s].failed(policy.cooldown);
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        let last = failures
            .pop()
            .ok_or_else(|| config_error("attempts per request", ">= 1", 0))?;
        Err(if failures.is_empty() {
            last
        } else {
            HttpError::Exhausted {
                earlier: failures,
                last: Box::new(last),
            }
        })
    }

    /// The server after `s` to try next: a usable one not yet tried, else one not yet tried,
    /// else a usable one, else the next (with `include_s`, `s` itself counts as a candidate).
    fn next_server(&self, s: usize, tried: &[bool], include_s: bool) -> usize {
        let n = self.servers.len();
        let start = if include_s { 0 } else { 1 };
        let candidates: Vec<usize> = (start..n + start).map(|i| (s + i) % n).collect();
        let usable = |c: &usize| self.servers[*c].usable();
        candidates
            .iter()
            .find(|c| usable(c) && !tried[**c])
            .or_else(|| candidates.iter().find(|c| !tried[**c]))
            .or_else(|| candidates.iter().find(|c| usable(c)))
            .copied()
            .unwrap_or((s + 1) % n)
    }

    fn rotate(&self) -> usize {
        self.next_start.fetch_add(1, Ordering::Relaxed) % self.servers.len()
    }

    /// The options (URLs without a trailing slash).
    pub fn options(&self) -> &HttpLmOptions {
        &self.options
    }

    /// What each server said about itself at connection, in the order of the URLs.
    pub fn servers(&self) -> Vec<&ServerInfo> {
        self.servers.iter().map(|s| &s.info).collect()
    }

    /// The model name sent with OpenAI requests to the first server, if any.
    pub fn model(&self) -> Option<&str> {
        self.servers[0].model.as_deref()
    }

    /// The vocabulary size the first server reported at connection, if it reported one (every
    /// server that reports one was checked against V).
    pub fn server_vocab(&self) -> Option<usize> {
        self.servers[0].info.vocab
    }

    /// The number of log-probabilities kept per step: min(N, V).
    pub fn top_n(&self) -> usize {
        self.options.top_n.min(self.options.vocab_size)
    }

    /// The top-N `(token, log p0)` pairs after `context` (prompt and output tokens), largest
    /// first (ties by token id), checked: ids inside the vocabulary and distinct, at least
    /// min(N, V) of them, log-probabilities numbers, their mass at most 1 (and 1 when the whole
    /// vocabulary is asked for) within [`MASS_TOLERANCE`]. Extra entries beyond N (vLLM adds
    /// the sampled token) are dropped, so the set is a function of the context alone. Retried
    /// as the [`RetryPolicy`] says.
    pub fn top_log_probs(&self, context: &[u32]) -> Result<Vec<(u32, f64)>, HttpError> {
        self.with_retries(self.rotate(), false, None, |s| self.ask(s, context))
            .map(|(row, _)| row)
    }

    /// One completion request to one server for the top N, checked.
    fn ask(&self, server: &Server, context: &[u32]) -> Result<TopRow, HttpError> {
        self.ask_n(server, context, self.top_n())
    }

    /// One completion request's answer as JSON, with its text for error messages: a status
    /// outside 2xx or a body that is not JSON is an error naming the server.
    fn complete(&self, server: &Server, request: &Value) -> Result<(Value, String), HttpError> {
        let path = self.options.protocol.completion_path();
        let (status, body) = server.transfer(path, Some(request))?;
        let url = || format!("{}{path}", server.url());
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                url: url(),
                status,
                body: preview(&body),
            });
        }
        let answer = serde_json::from_str(&body).map_err(|e| HttpError::Malformed {
            url: url(),
            what: format!("not JSON ({e}): {}", preview(&body)),
        })?;
        Ok((answer, body))
    }

    /// One completion request to one server for the top `n` (at most V), checked.
    fn ask_n(&self, server: &Server, context: &[u32], n: usize) -> Result<TopRow, HttpError> {
        let wire = self.options.protocol.wire();
        let request = wire.request(context, n, server.model.as_deref());
        let (answer, body) = self.complete(server, &request)?;
        let url = || {
            format!(
                "{}{}",
                server.url(),
                self.options.protocol.completion_path()
            )
        };
        let malformed = |what: String| HttpError::Malformed { url: url(), what };
        let entries = match wire.parse(&answer) {
            Ok(entries) => entries,
            Err(what) => match wire.reask(&answer, context, n, server.model.as_deref()) {
                None => return Err(malformed(format!("{what} in {}", preview(&body)))),
                Some(again) => {
                    let (answer, body) = self.complete(server, &again)?;
                    wire.parse_reasked(&answer)
                        .map_err(|what| malformed(format!("{what} in {}", preview(&body))))?
                }
            },
        };
        self.checked(entries, n).map_err(malformed)
    }

    fn checked(&self, entries: Vec<(u64, f64)>, n: usize) -> Result<TopRow, String> {
        let v = self.options.vocab_size;
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
                "{} log-probabilities returned, {n} asked for (N = {}, V = {v})",
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

    /// [`top_log_probs`](Self::top_log_probs) for every context, spread evenly over the
    /// servers, at most [`HttpLmOptions::parallel`] requests in flight on each; the first error
    /// (by context) if any.
    pub fn top_log_probs_many(
        &self,
        contexts: &[Vec<u32>],
    ) -> Result<Vec<Vec<(u32, f64)>>, HttpError> {
        let rows = self.fetch_many(contexts, &vec![None; contexts.len()])?;
        Ok(rows.into_iter().map(|(row, _)| row).collect())
    }

    /// The rows of `contexts`, each sent to its lineage's server (`preferred`, see
    /// `routing::assign`) and retried elsewhere if it fails; with the server that answered.
    pub(crate) fn fetch_many(
        &self,
        contexts: &[Vec<u32>],
        preferred: &[Option<usize>],
    ) -> Result<Vec<(TopRow, usize)>, HttpError> {
        self.run_many(preferred, |s, i| self.ask(s, &contexts[i]))
    }

    /// Job `i` of `preferred.len()` jobs run by `op(server, i)` on its lineage's server
    /// (`preferred[i]`, see `routing::assign`), retried elsewhere if it fails, at most
    /// [`HttpLmOptions::parallel`] in flight per server; each answer with the server that
    /// gave it, or the first error (by job).
    pub(crate) fn run_many<T: Send>(
        &self,
        preferred: &[Option<usize>],
        op: impl Fn(&Server, usize) -> Result<T, HttpError> + Sync,
    ) -> Result<Vec<(T, usize)>, HttpError> {
        let n = preferred.len();
        let usable: Vec<bool> = self.servers.iter().map(Server::usable).collect();
        let assigned = routing::assign(preferred, &usable, self.rotate());
        let order = routing::interleaved(&assigned, self.servers.len());
        let workers = (self.options.parallel * self.servers.len()).min(n);
        if workers <= 1 {
            return (0..n)
                .map(|i| self.with_retries(assigned[i], false, None, |s| op(s, i)))
                .collect();
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        type Done<T> = Vec<(usize, Result<(T, usize), HttpError>)>;
        let done: Vec<Done<T>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            let answer =
                                self.with_retries(assigned[i], false, Some(&failed), |s| op(s, i));
                            if answer.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            mine.push((i, answer));
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
        let mut answers: Vec<Option<(T, usize)>> = (0..n).map(|_| None).collect();
        let mut first_error: Option<(usize, HttpError)> = None;
        for (i, answer) in done.into_iter().flatten() {
            match answer {
                Ok(a) => answers[i] = Some(a),
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
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| config_error("answers", "one per job", "a job unanswered")))
            .collect()
    }

    /// log p0(`token` | `context`) from one server: its top-N answer, or, when the token is
    /// not among them, the whole vocabulary's.
    pub(crate) fn log_prob_on(
        &self,
        server: &Server,
        context: &[u32],
        token: u32,
    ) -> Result<f64, HttpError> {
        let find = |row: &TopRow| row.iter().find(|e| e.0 == token).map(|e| e.1);
        if let Some(lp) = find(&self.ask(server, context)?) {
            return Ok(lp);
        }
        let v = self.options.vocab_size;
        let all = self.ask_n(server, context, v)?;
        find(&all).ok_or_else(|| HttpError::Malformed {
            url: server.url().to_string(),
            what: format!(
                "token {token} is missing from the whole vocabulary's {v} log-probabilities"
            ),
        })
    }

    /// log p0(`token` | `context`) (see `log_prob_on`), retried as the [`RetryPolicy`] says.
    pub fn log_prob_of(&self, context: &[u32], token: u32) -> Result<f64, HttpError> {
        if token as usize >= self.options.vocab_size {
            return Err(HttpError::Config {
                field: "token",
                expected: format!("< vocabulary size {}", self.options.vocab_size),
                found: token.to_string(),
            });
        }
        self.with_retries(self.rotate(), false, None, |s| {
            self.log_prob_on(s, context, token)
        })
        .map(|(lp, _)| lp)
    }

    /// `count` tokens after `context` drawn by one server from p0 itself, with their
    /// log-probabilities (looked up, as `log_prob_on`, where the server withheld them); fewer
    /// when the server stopped at an end token. Checked: ids inside the vocabulary,
    /// log-probabilities finite and at most 0 (within [`MASS_TOLERANCE`]).
    pub(crate) fn draw_on(
        &self,
        server: &Server,
        context: &[u32],
        count: usize,
        seed: u32,
    ) -> Result<Vec<(u32, f64)>, HttpError> {
        let wire = self.options.protocol.wire();
        let request = wire.draw_request(context, count, seed, server.model.as_deref());
        let (answer, body) = self.complete(server, &request)?;
        let url = || {
            format!(
                "{}{}",
                server.url(),
                self.options.protocol.completion_path()
            )
        };
        let malformed = |what: String| HttpError::Malformed { url: url(), what };
        let drawn = wire
            .parse_draw(&answer, count)
            .map_err(|what| malformed(format!("{what} in {}", preview(&body))))?;
        let v = self.options.vocab_size;
        let mut out = Vec::with_capacity(drawn.len());
        let mut prefix = context.to_vec();
        for (id, lp) in drawn {
            let tok = u32::try_from(id)
                .ok()
                .filter(|&t| (t as usize) < v)
                .ok_or_else(|| {
                    malformed(format!(
                        "drawn token id {id} is outside the vocabulary of size {v}"
                    ))
                })?;
            let lp = match lp {
                Some(lp) => lp,
                None => self.log_prob_on(server, &prefix, tok)?,
            };
            if !(lp.is_finite() && lp <= MASS_TOLERANCE) {
                return Err(malformed(format!(
                    "drawn token {tok} has log-probability {lp}"
                )));
            }
            out.push((tok, lp));
            prefix.push(tok);
        }
        Ok(out)
    }

    /// The server's token ids of `text`, without special tokens (`POST /tokenize`), for
    /// checking a local tokenizer against the served model; `None` when the server has no
    /// tokenizer endpoint (HTTP 404, 405 or 501). Ids are checked to be below V.
    pub fn tokenize(&self, text: &str) -> Result<Option<Vec<u32>>, HttpError> {
        let wire = self.options.protocol.wire();
        let path = self.options.protocol.tokenize_path();
        let (ids, _) = self.with_retries(self.rotate(), false, None, |s| {
            let request = wire.tokenize_request(text, s.model.as_deref());
            let (status, body) = s.transfer(path, Some(&request))?;
            let url = || format!("{}{path}", s.url());
            if matches!(status, 404 | 405 | 501) {
                return Ok(None);
            }
            if !(200..300).contains(&status) {
                return Err(HttpError::Status {
                    url: url(),
                    status,
                    body: preview(&body),
                });
            }
            let malformed = |what: String| HttpError::Malformed { url: url(), what };
            let answer: Value = serde_json::from_str(&body)
                .map_err(|e| malformed(format!("not JSON ({e}): {}", preview(&body))))?;
            let v = self.options.vocab_size;
            wire.parse_tokens(&answer)
                .map_err(malformed)?
                .into_iter()
                .map(|id| {
                    u32::try_from(id)
                        .ok()
                        .filter(|&t| (t as usize) < v)
                        .ok_or_else(|| {
                            malformed(format!(
                                "token id {id} is outside the vocabulary of size {v}"
                            ))
                        })
                })
                .collect::<Result<Vec<u32>, _>>()
                .map(Some)
        })?;
        Ok(ids)
    }
}
