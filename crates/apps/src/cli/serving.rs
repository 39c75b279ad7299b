//! The options of a served model (`tsmc sample --model http://HOST:PORT`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use lm_http::Protocol;

use super::groups::{ModelArgs, at_least};
use crate::model::{ServedModel, is_served, server_urls};
use crate::setup::ModelSource;

/// How a served model is reached; every option needs `--model http://...`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Served model (--model http://HOST:PORT)")]
pub struct ServingArgs {
    /// The served model's tokenizer, loaded here (not the weights) and checked against the
    /// server's on the prompt and a few probe texts: `default` (the default model's), a
    /// tokenizer.json, a model directory or a .gguf file [default: default].
    #[arg(long, value_name = "SPEC")]
    tokenizer: Option<String>,
    /// Next-token log-probabilities asked for per step, N, where a proposal needs them (the
    /// twisted proposal, token masks): the run is exact SMC for the target restricted to each
    /// step's top N tokens (for the target itself when N >= V) [default: 100].
    #[arg(long, value_name = "N")]
    top_n: Option<usize>,
    /// Tokens the server draws from p0 per request for the base proposal (its own sampler,
    /// over the whole vocabulary: exact for the target itself); 0 proposes from the top N
    /// renormalised instead [default: 8].
    #[arg(long, value_name = "TOKENS")]
    draw_ahead: Option<usize>,
    /// The servers' API [default: llama-server].
    #[arg(long, value_enum)]
    protocol: Option<ProtocolArg>,
    /// Requests in flight per server [default: 8].
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    /// Seconds one request may take [default: 60].
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Attempts per request: transient failures (a server down, a timeout, HTTP 429 or 5xx)
    /// are retried with backoff, on another replica when there is one [default: 4].
    #[arg(long, value_name = "N")]
    attempts: Option<usize>,
}

/// A serving engine's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// llama.cpp's llama-server (`POST /completion` with `n_probs`).
    #[value(alias = "llama", alias = "llama.cpp")]
    LlamaServer,
    /// The OpenAI-compatible `POST /v1/completions` with `logprobs` (vLLM).
    #[value(alias = "vllm")]
    Openai,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::LlamaServer => Protocol::LlamaServer,
            ProtocolArg::Openai => Protocol::OpenAi,
        }
    }
}

/// The files a model source reads: a local model's path, or a served model's server list
/// (`@FILE`) and tokenizer; an output must not overwrite any of them.
pub fn read_files(source: &ModelSource, model: &str) -> Vec<(&'static str, PathBuf)> {
    match source {
        ModelSource::Local(_) => vec![("--model", crate::output::model_input(model))],
        ModelSource::Served(served) => model
            .strip_prefix('@')
            .map(|file| ("--model", PathBuf::from(file)))
            .into_iter()
            .chain([("--tokenizer", crate::output::model_input(&served.tokenizer))])
            .collect(),
    }
}

impl ServingArgs {
    /// The model source: served when `--model` names servers (then these options apply),
    /// local otherwise (then none of them may be given).
    pub fn source(self, model: ModelArgs) -> Result<ModelSource> {
        if !is_served(&model.model) {
            let given = [
                ("--tokenizer", self.tokenizer.is_some()),
                ("--top-n", self.top_n.is_some()),
                ("--draw-ahead", self.draw_ahead.is_some()),
                ("--protocol", self.protocol.is_some()),
                ("--parallel", self.parallel.is_some()),
                ("--timeout", self.timeout.is_some()),
                ("--attempts", self.attempts.is_some()),
            ];
            if let Some((option, _)) = given.iter().find(|(_, g)| *g) {
                bail!(
                    "{option} applies to a served model (--model http://HOST:PORT), not to --model {}",
                    model.model
                );
            }
            return Ok(ModelSource::Local(model.choice()?));
        }
        let timeout = self.timeout.unwrap_or(60.0);
        if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
            bail!(
                "--timeout must be a positive number of seconds (at most a day), found {timeout}"
            );
        }
        if model.weights != super::groups::WeightsArg::F32 {
            anyhow::bail!(
                "--weights applies to models run here; a served model reads its weights as \
                 its server holds them"
            );
        }
        let urls = server_urls(&model.model)?;
        Ok(ModelSource::Served(ServedModel {
            urls,
            protocol: self.protocol.unwrap_or(ProtocolArg::LlamaServer).into(),
            tokenizer: self.tokenizer.unwrap_or_else(|| "default".into()),
            top_n: at_least("--top-n", self.top_n.unwrap_or(100), 1)?,
            draw_ahead: self.draw_ahead.unwrap_or(8),
            parallel: at_least("--parallel", self.parallel.unwrap_or(8), 1)?.min(1024),
            timeout: Duration::from_secs_f64(timeout),
            attempts: at_least("--attempts", self.attempts.unwrap_or(4), 1)?.min(100),
            memory_budget: model.choice()?.memory_budget,
        }))
    }
}
