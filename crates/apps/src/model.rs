//! The language model `tsmc sample` runs on: the local transformer (lm-burn) or a serving
//! engine over HTTP (lm-http), as one [`LanguageModel`]. What potentials, constraints and
//! boundaries need — the tokenizer, the vocabulary size, the end tokens — is held separately
//! ([`lm_burn::ModelTokenizer`]), since a served model's tokenizer is a local file; what only
//! the local model has (its forward pass for infilling and judge potentials, its hidden states
//! for twist heads) is reached through [`Model::local`], which is `None` for a served model.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lm_burn::{BurnLm, BurnSession, ModelTokenizer, Tokenizer};
use lm_http::{HttpLm, HttpLmOptions, HttpSession, Protocol, RetryPolicy};
use serde::Serialize;
use smc_core::model::{DecodeSession, LanguageModel, NextToken, StepOutput};

/// A model on either backend.
pub enum Model {
    /// The transformer, run here (boxed: it holds its tokenizer inline).
    Local(Box<BurnLm>),
    /// A serving engine (one or more replicas).
    Served(HttpLm),
}

/// A decoding session on either backend.
pub enum ModelSession<'a> {
    /// On the local model (boxed: its cache and buffers are held inline).
    Local(Box<BurnSession<'a>>),
    /// Over HTTP.
    Served(HttpSession<'a>),
}

impl Model {
    /// The local model, when the model runs here.
    pub fn local(&self) -> Option<&BurnLm> {
        match self {
            Model::Local(lm) => Some(lm.as_ref()),
            Model::Served(_) => None,
        }
    }

    /// The model's name: its path, or the servers' URLs.
    pub fn name(&self) -> String {
        match self {
            Model::Local(lm) => lm.name().to_string(),
            Model::Served(lm) => lm.options().urls.join(","),
        }
    }
}

impl LanguageModel for Model {
    type Session<'a> = ModelSession<'a>;

    fn vocab_size(&self) -> usize {
        match self {
            Model::Local(lm) => lm.vocab_size(),
            Model::Served(lm) => lm.vocab_size(),
        }
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<ModelSession<'_>> {
        Ok(match self {
            Model::Local(lm) => ModelSession::Local(Box::new(lm.start(prompt, num_particles)?)),
            Model::Served(lm) => ModelSession::Served(lm.start(prompt, num_particles)?),
        })
    }

    fn teacher_forced(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> smc_core::Result<Vec<StepOutput>> {
        match self {
            Model::Local(lm) => lm.teacher_forced(prompt, sequences),
            Model::Served(lm) => lm.teacher_forced(prompt, sequences),
        }
    }
}

impl DecodeSession for ModelSession<'_> {
    fn num_particles(&self) -> usize {
        match self {
            ModelSession::Local(s) => s.num_particles(),
            ModelSession::Served(s) => s.num_particles(),
        }
    }

    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        match self {
            ModelSession::Local(s) => s.next_log_probs(),
            ModelSession::Served(s) => s.next_log_probs(),
        }
    }

    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        match self {
            ModelSession::Local(s) => s.push(tokens),
            ModelSession::Served(s) => s.push(tokens),
        }
    }

    fn reserve(&mut self, tokens: usize) -> smc_core::Result<()> {
        match self {
            ModelSession::Local(s) => s.reserve(tokens),
            ModelSession::Served(s) => s.reserve(tokens),
        }
    }

    fn branch(&self, parents: &[usize]) -> smc_core::Result<Option<Self>> {
        Ok(match self {
            ModelSession::Local(s) => s.branch(parents)?.map(|b| ModelSession::Local(Box::new(b))),
            ModelSession::Served(s) => s.branch(parents)?.map(ModelSession::Served),
        })
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        match self {
            ModelSession::Local(s) => s.reorder(ancestors),
            ModelSession::Served(s) => s.reorder(ancestors),
        }
    }

    fn log_probs_normalised(&self) -> bool {
        match self {
            ModelSession::Local(s) => s.log_probs_normalised(),
            ModelSession::Served(s) => s.log_probs_normalised(),
        }
    }

    fn draws_from_p0(&self) -> bool {
        match self {
            ModelSession::Local(s) => s.draws_from_p0(),
            ModelSession::Served(s) => s.draws_from_p0(),
        }
    }

    fn draw_from_p0(
        &mut self,
        next: &[NextToken],
        remaining: usize,
        seed: u64,
    ) -> smc_core::Result<Vec<Option<(u32, f64)>>> {
        match self {
            ModelSession::Local(s) => s.draw_from_p0(next, remaining, seed),
            ModelSession::Served(s) => s.draw_from_p0(next, remaining, seed),
        }
    }
}

/// A model served over HTTP, as the command line gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    /// The servers' base URLs (replicas of one model).
    pub urls: Vec<String>,
    /// Their protocol.
    pub protocol: Protocol,
    /// The local tokenizer: `default`, a tokenizer.json, a model directory or a .gguf file.
    pub tokenizer: String,
    /// Log-probabilities asked for per step.
    pub top_n: usize,
    /// Tokens the server draws per request for the base proposal (0: the top-N rows).
    pub draw_ahead: usize,
    /// Requests in flight per server.
    pub parallel: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Attempts per request (1: no retry).
    pub attempts: usize,
    /// The most memory (bytes) the run's tables may take (`None`: the memory available now).
    pub memory_budget: Option<u64>,
}

/// Whether a `--model` value names servers (`http://...`, `https://...`, a comma-separated
/// list of them, or `@FILE`, a file of URLs).
pub fn is_served(model: &str) -> bool {
    model.starts_with("http://") || model.starts_with("https://") || model.starts_with('@')
}

/// The URLs of a `--model` value: a comma-separated list, or `@FILE` with one URL per line
/// (blank lines and lines starting with `#` skipped).
pub fn server_urls(model: &str) -> Result<Vec<String>> {
    let text = match model.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(Path::new(file))
            .with_context(|| format!("reading the server list {file}"))?,
        None => model.to_string(),
    };
    let urls: Vec<String> = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("--model {model}: no server URL");
    }
    if let Some(bad) = urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        bail!("--model {model}: {bad:?} is not an http:// or https:// URL");
    }
    Ok(urls)
}

impl ServedModel {
    /// Connects to the servers for a model of `text`'s vocabulary (each server is checked:
    /// reachable, the same vocabulary where it reports one, replicas of one model).
    pub fn connect(&self, text: &ModelTokenizer) -> Result<HttpLm> {
        let options = HttpLmOptions::new(&self.urls[0], self.protocol, text.vocab)
            .with_servers(self.urls.iter().cloned())
            .with_top_n(self.top_n)
            .with_draw_ahead(self.draw_ahead)
            .with_parallel(self.parallel)
            .with_timeout(self.timeout)
            .with_retry(RetryPolicy {
                attempts: self.attempts,
                ..RetryPolicy::default()
            });
        HttpLm::connect(options).with_context(|| {
            format!(
                "connecting to the {} server(s) {} with the vocabulary of {} ({} tokens)",
                self.protocol,
                self.urls.join(", "),
                text.name,
                text.vocab
            )
        })
    }
}

/// Strings on which the local tokenizer must agree with the server's: words, spaces, digits,
/// punctuation, a newline, non-ASCII letters and an emoji.
pub const PROBE_TEXTS: [&str; 4] = [
    "Once upon a time, there was a dragon.",
    " The quick brown fox jumps over the lazy dog!\n",
    "1234 + 5678 = 6912; x_y-z (a) [b] {c}",
    "naïve café, Straße, 東京 😀",
];

/// How the local tokenizer was checked against the served model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerCheck {
    /// It gave the server's ids on the prompt and every probe text.
    Agrees,
    /// The server has no tokenizer endpoint: not checked.
    Unchecked,
}

/// Checks that `tokenizer` gives the server's token ids for the prompt and [`PROBE_TEXTS`]:
/// token ids are what SMC sends, so a different tokenizer would condition the served model on
/// other text. An error names the first text and position where they differ.
pub fn check_tokenizer(lm: &HttpLm, tokenizer: &Tokenizer, prompt: &str) -> Result<TokenizerCheck> {
    for text in std::iter::once(prompt).chain(PROBE_TEXTS) {
        let local = tokenizer.encode(text)?;
        let Some(served) = lm
            .tokenize(text)
            .context("asking the server to tokenize a probe text")?
        else {
            return Ok(TokenizerCheck::Unchecked);
        };
        if local != served {
            let at = local
                .iter()
                .zip(&served)
                .position(|(a, b)| a != b)
                .unwrap_or(local.len().min(served.len()));
            bail!(
                "the local tokenizer ({}) and the server disagree on {text:?}: from token {at} on, \
                 local ids {:?}, server ids {:?}; give the served model's tokenizer with --tokenizer",
                tokenizer.source_name(),
                &local[at..local.len().min(at + 8)],
                &served[at..served.len().min(at + 8)],
            );
        }
    }
    Ok(TokenizerCheck::Agrees)
}

/// What the run record says about the backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendRecord {
    /// `local` or `http`.
    pub kind: &'static str,
    /// The protocol, for a served model.
    pub protocol: Option<String>,
    /// The servers and the model each lists, for a served model.
    pub servers: Vec<ServerRecord>,
    /// N, the log-probabilities per step (min(N, V)), for a served model.
    pub top_n: Option<usize>,
    /// Tokens the server draws per request for the base proposal (0: none, the proposal is
    /// the top N renormalised), for a served model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draw_ahead: Option<usize>,
    /// The local tokenizer of a served model.
    pub tokenizer: Option<String>,
    /// Whether that tokenizer was checked against the server's.
    pub tokenizer_check: Option<TokenizerCheck>,
    /// How decoding steps read the weights (`f32` or `q8`), for a model run here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// One server in the run record.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRecord {
    /// Its URL.
    pub url: String,
    /// The model it lists first.
    pub model: Option<String>,
}

impl BackendRecord {
    /// The record of `model`; `text` and `check` matter for a served model only.
    pub fn of(model: &Model, text: &ModelTokenizer, check: Option<TokenizerCheck>) -> Self {
        match model {
            Model::Local(lm) => Self {
                kind: "local",
                protocol: None,
                servers: Vec::new(),
                top_n: None,
                draw_ahead: None,
                tokenizer: None,
                tokenizer_check: None,
                weights: Some(lm.weight_format().to_string()),
            },
            Model::Served(lm) => Self {
                kind: "http",
                protocol: Some(lm.options().protocol.to_string()),
                servers: lm
                    .servers()
                    .into_iter()
                    .map(|s| ServerRecord {
                        url: s.url.clone(),
                        model: s.model.clone(),
                    })
                    .collect(),
                top_n: Some(lm.top_n()),
                draw_ahead: Some(lm.options().draw_ahead),
                tokenizer: Some(text.name.clone()),
                tokenizer_check: check,
                weights: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_from_the_command_line_and_from_a_file() {
        assert!(is_served("http://a:1") && is_served("@urls.txt") && !is_served("default"));
        assert_eq!(
            server_urls("http://a:1, http://b:2").unwrap(),
            vec!["http://a:1", "http://b:2"]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("urls.txt");
        std::fs::write(&file, "# replicas\nhttp://a:1\n\nhttps://b:2\n").unwrap();
        let spec = format!("@{}", file.display());
        assert_eq!(
            server_urls(&spec).unwrap(),
            vec!["http://a:1", "https://b:2"]
        );
        for bad in ["http://a:1,ftp://b", "@/nonexistent/urls", "http://a,"] {
            let r = server_urls(bad);
            if bad == "http://a," {
                assert_eq!(r.unwrap(), vec!["http://a"]);
            } else {
                assert!(r.is_err(), "{bad}");
            }
        }
    }
}
