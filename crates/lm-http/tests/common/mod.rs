//! A fake serving engine for the tests: a loopback HTTP/1.1 server (std::net, keep-alive, one
//! thread per connection) that answers with a `TabularLm`'s exact next-token tables, top N of
//! V, in llama-server's or the OpenAI format, or with a chosen fault (from the start, or after
//! a number of healthy completion requests: a server that fails mid-run). It also serves
//! `/tokenize` with a toy tokenizer: each byte of the text becomes token `byte % V`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lm_http::RetryPolicy;
use serde_json::{Value, json};
use smc_core::prelude::*;

/// The answer format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// llama-server since late 2024: `top_logprobs: [{id, token, bytes, logprob}]`.
    LlamaTopLogprobs,
    /// Older llama-server: `probs: [{tok, tok_str, prob}]` (probabilities, not logs).
    LlamaProbs,
    /// vLLM: `top_logprobs: [{"token_id:NNN": logprob}]`, plus the (N+1)-th token as if it were
    /// the sampled one (vLLM adds the sampled token when it is outside the top N).
    OpenAiKeyed,
}

/// What the server does wrong, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Answers `<html>` instead of JSON.
    NotJson,
    /// Answers `{}`.
    MissingField,
    /// Answers a token id equal to V.
    IdOutOfVocab,
    /// Answers log-probabilities +3 (probabilities above one).
    PositiveLogprob,
    /// Answers HTTP 500.
    ServerError,
    /// Never answers completion requests.
    Hang,
    /// Reports this vocabulary size at `/v1/models`.
    WrongVocab(usize),
    /// OpenAI answers keyed by token strings (ignores return_tokens_as_token_ids).
    StringKeys,
    /// Answers HTTP 503 (overloaded or restarting).
    Unavailable,
    /// Dies: closes the connection without answering and stops listening.
    Die,
    /// Reports another model name at `/v1/models`.
    ModelName(String),
    /// Reports another context size (`meta.n_ctx`, a server setting) at `/v1/models`.
    OtherContext,
    /// Reports another parameter count (`meta.n_params`: another model file).
    OtherParams,
    /// Has no `/tokenize` endpoint (404).
    NoTokenize,
    /// Tokenizes every byte as `(byte + 1) % V` (another tokenizer).
    OtherTokenizer,
    /// Draw answers (llama-server format) withhold the log-probability of every other token,
    /// as llama-server does for the tokens of a character split over several.
    FoldedProbs,
    /// Draws stop after this token (an end-of-generation token), as llama-server does.
    EndToken(u32),
}

/// Three attempts with short pauses: the retries of the fault tests take milliseconds.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        cooldown: Duration::from_millis(200),
    }
}

pub const MODEL_NAME: &str = "fake-model";

pub struct FakeServer {
    pub url: String,
    state: Arc<State>,
}

/// What the serving threads share.
struct State {
    lm: TabularLm,
    format: Format,
    fault: Fault,
    /// Completion requests served before the fault starts.
    healthy: usize,
    requests: AtomicUsize,
    dead: AtomicBool,
    addr: SocketAddr,
}

impl State {
    /// Stops the server: open connections close at their next request, the listener stops
    /// (woken by a connection of its own), so new connections are refused.
    fn die(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            let _ = TcpStream::connect(self.addr);
        }
    }
}

impl FakeServer {
    /// Starts serving `lm` on 127.0.0.1 at a free port (the threads live as long as the test
    /// process, or until the server dies).
    pub fn start(lm: TabularLm, format: Format, fault: Fault) -> Self {
        Self::start_after(lm, format, fault, 0)
    }

    /// The same, with the fault starting after `healthy` completion requests.
    pub fn start_after(lm: TabularLm, format: Format, fault: Fault, healthy: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            lm,
            format,
            fault,
            healthy,
            requests: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            addr,
        });
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Completion requests received so far.
    pub fn completion_requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Kills the server (see `State::die`).
    pub fn kill(&self) {
        self.state.die();
    }
}

/// A URL where nothing listens (a port just freed).
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    let (lm, format) = (&state.lm, state.format);
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        if state.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, text) = if path == "/v1/models" {
            (200, models(lm, format, &state.fault).to_string())
        } else if path == "/tokenize" {
            tokenize(lm, format, &state.fault, &request)
        } else {
            let served = state.requests.fetch_add(1, Ordering::SeqCst);
            let fault = if served >= state.healthy {
                &state.fault
            } else {
                &Fault::None
            };
            match fault {
                Fault::Hang => {
                    std::thread::sleep(Duration::from_secs(30));
                    return Ok(());
                }
                Fault::Die => {
                    state.die();
                    return Ok(());
                }
                _ => completion(
                    lm,
                    format,
                    fault,
                    served_name(format, &state.fault),
                    path,
                    &request,
                ),
            }
        };
        let reason = if status == 200 { "OK" } else { "Error" };
        // One write (no small segments left to Nagle's algorithm).
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
    }
}

fn models(lm: &TabularLm, format: Format, fault: &Fault) -> Value {
    let n_vocab = match fault {
        Fault::WrongVocab(v) => *v,
        _ => lm.vocab(),
    };
    let name = served_name(format, fault);
    match format {
        Format::OpenAiKeyed => {
            json!({"object": "list", "data": [{"id": name, "object": "model"}]})
        }
        _ => {
            let n_ctx = if *fault == Fault::OtherContext {
                512
            } else {
                4096
            };
            let n_params = if *fault == Fault::OtherParams { 7 } else { 5 };
            json!({"object": "list", "data": [{"id": name, "object": "model",
                "meta": {"vocab_type": 2, "n_vocab": n_vocab, "n_ctx": n_ctx,
                    "n_ctx_train": 8192, "n_params": n_params}}]})
        }
    }
}

/// The model name the server lists first.
fn served_name(format: Format, fault: &Fault) -> &str {
    match fault {
        Fault::ModelName(name) => name.as_str(),
        // llama-server names a model by the path it was loaded from: replicas on other
        // machines keep the same file elsewhere.
        _ if format != Format::OpenAiKeyed => "/models/fake-model",
        _ => MODEL_NAME,
    }
}

/// The toy tokenizer: byte b becomes token b % V (or (b + 1) % V for `OtherTokenizer`).
pub fn toy_tokens(text: &str, vocab: usize) -> Vec<u32> {
    text.bytes().map(|b| (b as usize % vocab) as u32).collect()
}

fn tokenize(lm: &TabularLm, format: Format, fault: &Fault, request: &Value) -> (u16, String) {
    if *fault == Fault::NoTokenize {
        return (404, "{\"error\": \"not found\"}".into());
    }
    let field = match format {
        Format::OpenAiKeyed => "prompt",
        _ => "content",
    };
    let Some(text) = request[field].as_str() else {
        return (400, format!("{{\"error\": \"{field} is missing\"}}"));
    };
    let mut tokens = toy_tokens(text, lm.vocab());
    if *fault == Fault::OtherTokenizer {
        tokens = text
            .bytes()
            .map(|b| ((b as usize + 1) % lm.vocab()) as u32)
            .collect();
    }
    (
        200,
        json!({"tokens": tokens, "count": tokens.len()}).to_string(),
    )
}

/// The token ids of `row` by decreasing log-probability (ties by id).
pub fn ranked(row: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
}

fn completion(
    lm: &TabularLm,
    format: Format,
    fault: &Fault,
    name: &str,
    path: &str,
    request: &Value,
) -> (u16, String) {
    let expected_path = match format {
        Format::OpenAiKeyed => "/v1/completions",
        _ => "/completion",
    };
    if path != expected_path {
        return (404, format!("{{\"error\": \"no route {path}\"}}"));
    }
    if *fault == Fault::ServerError {
        return (500, "{\"error\": \"out of memory\"}".into());
    }
    if *fault == Fault::Unavailable {
        return (503, "{\"error\": \"server busy\"}".into());
    }
    if *fault == Fault::NotJson {
        return (200, "<html>bad gateway</html>".into());
    }
    if *fault == Fault::MissingField {
        return (200, "{}".into());
    }
    let Some(prompt) = request["prompt"].as_array() else {
        return (
            400,
            "{\"error\": \"prompt must be a list of token ids\"}".into(),
        );
    };
    let tokens: Vec<u32> = prompt.iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let drawing = match format {
        Format::OpenAiKeyed => request.get("seed").is_some(),
        _ => request["return_tokens"] == json!(true),
    };
    if drawing {
        return draw(lm, format, fault, &tokens, request);
    }
    let n = match format {
        Format::OpenAiKeyed => {
            if request["return_tokens_as_token_ids"] != json!(true)
                || request["model"] != json!(name)
                || request["max_tokens"] != json!(1)
            {
                return (
                    400,
                    format!("{{\"error\": \"unexpected request {request}\"}}"),
                );
            }
            request["logprobs"].as_u64().unwrap() as usize
        }
        _ => {
            if request["n_predict"] != json!(1) || request["cache_prompt"] != json!(true) {
                return (
                    400,
                    format!("{{\"error\": \"unexpected request {request}\"}}"),
                );
            }
            request["n_probs"].as_u64().unwrap() as usize
        }
    };
    let row = lm.next_log_probs(&tokens).unwrap();
    let order = ranked(row);
    let mut top: Vec<(usize, f64)> = order.iter().take(n).map(|&v| (v, row[v])).collect();
    match fault {
        Fault::IdOutOfVocab => top[0].0 = lm.vocab(),
        Fault::PositiveLogprob => top[0].1 = 3.0,
        _ => {}
    }
    let body = match format {
        Format::LlamaTopLogprobs => {
            let list: Vec<Value> = top
                .iter()
                .map(|&(v, lp)| json!({"id": v, "token": format!("t{v}"), "bytes": [116], "logprob": lp}))
                .collect();
            json!({"content": "t", "tokens": [], "stop": true,
                "completion_probabilities": [{"id": top[0].0, "token": "t", "logprob": top[0].1,
                    "top_logprobs": list}]})
        }
        Format::LlamaProbs => {
            let list: Vec<Value> = top
                .iter()
                .map(|&(v, lp)| json!({"tok": v, "tok_str": format!("t{v}"), "prob": lp.exp()}))
                .collect();
            json!({"content": "t", "completion_probabilities": [{"content": "t", "probs": list}]})
        }
        Format::OpenAiKeyed => {
            let mut map = serde_json::Map::new();
            for &(v, lp) in &top {
                let key = if *fault == Fault::StringKeys {
                    format!("t{v}")
                } else {
                    format!("token_id:{v}")
                };
                map.insert(key, json!(lp));
            }
            // The sampled token, when it falls outside the top N (here: always the next one).
            if let Some(&extra) = order.get(n) {
                map.insert(format!("token_id:{extra}"), json!(row[extra]));
            }
            json!({"id": "cmpl-1", "object": "text_completion", "model": MODEL_NAME,
                "choices": [{"index": 0, "text": "t", "finish_reason": "length",
                    "logprobs": {"tokens": ["token_id:0"], "token_logprobs": [top[0].1],
                        "text_offset": [0], "top_logprobs": [map]}}]})
        }
    };
    (200, body.to_string())
}

/// A draw request: `n_predict` / `max_tokens` tokens drawn from the table with the request's
/// seed, with their log-probabilities (llama-server's or vLLM's answer).
fn draw(
    lm: &TabularLm,
    format: Format,
    fault: &Fault,
    prompt: &[u32],
    request: &Value,
) -> (u16, String) {
    use rand::RngExt;
    let neutral = match format {
        Format::OpenAiKeyed => {
            request["temperature"] == json!(1.0)
                && request["top_p"] == json!(1.0)
                && request["top_k"] == json!(-1)
                && request["ignore_eos"] == json!(true)
                && request["return_tokens_as_token_ids"] == json!(true)
        }
        _ => {
            request["temperature"] == json!(1.0)
                && request["top_k"] == json!(0)
                && request["top_p"] == json!(1.0)
                && request["min_p"] == json!(0.0)
                && request["cache_prompt"] == json!(true)
                && request.get("ignore_eos").is_none()
        }
    };
    let count = match format {
        Format::OpenAiKeyed => request["max_tokens"].as_u64(),
        _ => request["n_predict"].as_u64(),
    };
    let (Some(count), Some(seed), true) = (count, request["seed"].as_u64(), neutral) else {
        return (
            400,
            format!("{{\"error\": \"unexpected draw request {request}\"}}"),
        );
    };
    let mut rng = smc_core::smc::rng_from_seed(seed);
    let mut context = prompt.to_vec();
    let mut drawn: Vec<(usize, f64)> = Vec::new();
    for _ in 0..count {
        let row = lm.next_log_probs(&context).unwrap();
        let mut u: f64 = rng.random();
        let v = (0..row.len())
            .find(|&v| {
                u -= row[v].exp();
                u < 0.0
            })
            .unwrap_or(row.len() - 1);
        drawn.push((v, row[v]));
        context.push(v as u32);
        if *fault == Fault::EndToken(v as u32) {
            break;
        }
    }
    let body = match format {
        Format::OpenAiKeyed => {
            let tokens: Vec<String> = drawn.iter().map(|d| format!("token_id:{}", d.0)).collect();
            let lps: Vec<f64> = drawn.iter().map(|d| d.1).collect();
            json!({"id": "cmpl-1", "object": "text_completion", "model": MODEL_NAME,
                "choices": [{"index": 0, "text": "t", "finish_reason": "length",
                    "logprobs": {"tokens": tokens, "token_logprobs": lps}}]})
        }
        _ => {
            let probs: Vec<Value> = drawn
                .iter()
                .enumerate()
                .filter(|(i, _)| *fault != Fault::FoldedProbs || i % 2 == 1)
                .map(|(_, &(v, lp))| {
                    json!({"id": v, "token": format!("t{v}"), "logprob": lp,
                    "top_logprobs": [{"id": v, "logprob": lp}]})
                })
                .collect();
            let ids: Vec<usize> = drawn.iter().map(|d| d.0).collect();
            json!({"content": "t", "tokens": ids, "stop": true,
                "tokens_predicted": ids.len(),
                "completion_probabilities": probs})
        }
    };
    (200, body.to_string())
}
