//! One server of a replica set: its HTTP agent, a bound on its requests in flight, and whether
//! it failed recently (new work avoids it for a while, so that a server that went down costs
//! one failed attempt per cool-down instead of one per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::HttpError;

/// Largest response body read (a full-vocabulary answer of 256k tokens fits).
const MAX_BODY_BYTES: u64 = 256 << 20;

/// What a server said about itself at connection (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerInfo {
    /// The server's base URL (no trailing slash).
    pub url: String,
    /// The first model it lists (llama-server: the alias or the model file's path; vLLM and
    /// SGLang: the served model name), if it answered `/v1/models`.
    pub model: Option<String>,
    /// The vocabulary size it reports (llama-server: `meta.n_vocab`).
    pub vocab: Option<usize>,
    /// llama-server's model metadata (`meta`: vocabulary, training context, embedding size,
    /// parameter count, file size), compared between replicas.
    pub meta: Option<Value>,
}

/// Whether the URL's host is the loopback interface (reached without any proxy).
pub(crate) fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// A counting semaphore: at most `parallel` requests in flight on one server.
#[derive(Debug)]
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// One server.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) info: ServerInfo,
    /// The `model` field of OpenAI requests to this server.
    pub(crate) model: Option<String>,
    agent: ureq::Agent,
    timeout: Duration,
    slots: Slots,
    epoch: Instant,
    /// New work avoids the server until this many milliseconds after `epoch`.
    avoid_until_ms: AtomicU64,
}

impl Server {
    pub(crate) fn new(url: String, timeout: Duration, parallel: usize) -> Self {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(parallel.max(3));
        if is_loopback(&url) {
            config = config.proxy(None);
        }
        Self {
            info: ServerInfo {
                url,
                ..ServerInfo::default()
            },
            model: None,
            agent: config.build().into(),
            timeout,
            slots: Slots {
                free: Mutex::new(parallel),
                freed: Condvar::new(),
            },
            epoch: Instant::now(),
            avoid_until_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.info.url
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether new work may go here (no transient failure within the cool-down).
    pub(crate) fn usable(&self) -> bool {
        self.now_ms() >= self.avoid_until_ms.load(Ordering::Relaxed)
    }

    /// A transient failure: new work avoids this server for `cooldown`.
    pub(crate) fn failed(&self, cooldown: Duration) {
        let until = self.now_ms() + cooldown.as_millis() as u64;
        self.avoid_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// A success: the server takes new work again.
    pub(crate) fn answered(&self) {
        self.avoid_until_ms.store(0, Ordering::Relaxed);
    }

    /// One HTTP exchange at `path` (appended to the base URL): GET without a body, POST with a
    /// JSON body, waiting for a free slot first. Returns the status and the body text.
    pub(crate) fn transfer(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), HttpError> {
        let url = format!("{}{path}", self.info.url);
        let _slot = self.slots.take();
        let sent = match body {
            Some(body) => self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string()),
            None => self.agent.get(&url).call(),
        };
        let transport = |source: ureq::Error| match source {
            ureq::Error::Timeout(_) => HttpError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            },
            source => HttpError::Unreachable {
                url: url.clone(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn slots_bound_the_requests_in_flight() {
        let slots = Slots {
            free: Mutex::new(2),
            freed: Condvar::new(),
        };
        let in_flight = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _slot = slots.take();
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
    }
}
