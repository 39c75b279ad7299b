//! A fake serving engine for the tests: a loopback HTTP/1.1 server (std::net, keep-alive, one
//! thread per connection) that answers with a `TabularLm`'s exact next-token tables, top N of
//! V, in llama-server's or the OpenAI format, or with a chosen fault.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

pub const MODEL_NAME: &str = "fake-model";

pub struct FakeServer {
    pub url: String,
    requests: Arc<AtomicUsize>,
}

impl FakeServer {
    /// Starts serving `lm` on 127.0.0.1 at a free port (the threads live as long as the test
    /// process).
    pub fn start(lm: TabularLm, format: Format, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let state = Arc::new((lm, format, fault));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&state);
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state.0, state.1, &state.2, &counter);
                });
            }
        });
        Self { url, requests }
    }

    /// Completion requests answered so far.
    pub fn completion_requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A URL where nothing listens (a port just freed).
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

fn serve(
    stream: TcpStream,
    lm: &TabularLm,
    format: Format,
    fault: &Fault,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
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
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let (status, text) = if path == "/v1/models" {
            (200, models(lm, format, fault).to_string())
        } else {
            counter.fetch_add(1, Ordering::SeqCst);
            if *fault == Fault::Hang {
                std::thread::sleep(Duration::from_secs(30));
                return Ok(());
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            completion(lm, format, fault, path, &request)
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
    match format {
        Format::OpenAiKeyed => {
            json!({"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
        }
        _ => json!({"object": "list", "data": [{"id": MODEL_NAME, "object": "model",
            "meta": {"vocab_type": 2, "n_vocab": n_vocab}}]}),
    }
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
    let n = match format {
        Format::OpenAiKeyed => {
            if request["return_tokens_as_token_ids"] != json!(true)
                || request["model"] != json!(MODEL_NAME)
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
