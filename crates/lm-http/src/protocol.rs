//! The two wire protocols: llama.cpp's `llama-server` (`POST /completion`) and the
//! OpenAI-compatible completions endpoint (`POST /v1/completions`: vLLM, SGLang). Both ask for
//! one generated token with the top N next-token log-probabilities, the prompt given as token
//! ids, and both are parsed into `(token id, log p0)` pairs; what the crate assumes about each
//! server's answer is written next to its parser (and in the crate README).

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

/// Which HTTP API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// llama.cpp's `llama-server`: `POST /completion` with `n_probs`.
    LlamaServer,
    /// The OpenAI-compatible `POST /v1/completions` with `logprobs` (vLLM, SGLang).
    OpenAi,
}

impl Protocol {
    /// Both protocols.
    pub const ALL: [Protocol; 2] = [Protocol::LlamaServer, Protocol::OpenAi];

    /// The path of the completion endpoint.
    pub fn completion_path(self) -> &'static str {
        match self {
            Protocol::LlamaServer => "/completion",
            Protocol::OpenAi => "/v1/completions",
        }
    }

    /// The path of the tokenizer endpoint (llama-server, vLLM and SGLang all serve
    /// `POST /tokenize`).
    pub fn tokenize_path(self) -> &'static str {
        "/tokenize"
    }

    pub(crate) fn wire(self) -> &'static dyn Wire {
        match self {
            Protocol::LlamaServer => &LlamaServer,
            Protocol::OpenAi => &OpenAi,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::LlamaServer => "llama-server",
            Protocol::OpenAi => "openai",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llama-server" | "llama" | "llamacpp" | "llama.cpp" => Ok(Protocol::LlamaServer),
            "openai" | "vllm" | "sglang" => Ok(Protocol::OpenAi),
            other => Err(format!(
                "unknown protocol '{other}' (expected llama-server or openai)"
            )),
        }
    }
}

/// One protocol: the request body and the parser of the answer.
pub(crate) trait Wire: Send + Sync {
    /// The JSON body asking for one token after `tokens` with the top `n` log-probabilities.
    fn request(&self, tokens: &[u32], n: usize, model: Option<&str>) -> Value;

    /// The `(token id, log-probability)` pairs of the first generated position, as the server
    /// gave them (ids not yet checked against the vocabulary). `Err` says what is missing.
    fn parse(&self, answer: &Value) -> Result<Vec<(u64, f64)>, String>;

    /// A second request for the same position when `answer` withheld the log-probabilities
    /// for a reason that another sampled token avoids, or `None`. Its answer is read with
    /// [`Wire::parse_reasked`].
    fn reask(
        &self,
        _answer: &Value,
        _tokens: &[u32],
        _n: usize,
        _model: Option<&str>,
    ) -> Option<Value> {
        None
    }

    /// The answer to a [`Wire::reask`] request.
    fn parse_reasked(&self, answer: &Value) -> Result<Vec<(u64, f64)>, String> {
        self.parse(answer)
    }

    /// The JSON body asking the server to draw `count` tokens after `tokens` from p0 itself
    /// (temperature 1, no truncation of the distribution, no penalty), seeded with `seed`,
    /// each with its log-probability where the server gives it.
    fn draw_request(&self, tokens: &[u32], count: usize, seed: u32, model: Option<&str>) -> Value;

    /// The drawn tokens of a [`Wire::draw_request`] answer, in order, with their
    /// log-probabilities (`None` where the server withheld them); at least one, at most
    /// `count` (fewer when the server stopped at an end-of-sequence token, which is then the
    /// last one). `Err` says what is missing.
    fn parse_draw(&self, answer: &Value, count: usize) -> Result<Vec<(u64, Option<f64>)>, String>;

    /// The JSON body asking for the token ids of `text`, without special tokens (no BOS).
    fn tokenize_request(&self, text: &str, model: Option<&str>) -> Value;

    /// The token ids of a tokenizer answer, `{"tokens": [ids]}` in every protocol
    /// (llama-server with `with_pieces` answers `[{"id", "piece"}]`, also accepted).
    fn parse_tokens(&self, answer: &Value) -> Result<Vec<u64>, String> {
        answer
            .get("tokens")
            .ok_or("tokens is missing")?
            .as_array()
            .ok_or("tokens is not an array")?
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::Object(o) => token_id(o.get("id"), &format!("tokens[{i}].id")),
                other => token_id(Some(other), &format!("tokens[{i}]")),
            })
            .collect()
    }
}

/// A log-probability: a JSON number, or `null` (nlohmann::json, llama-server's JSON library,
/// writes -inf as `null`: a probability that underflowed to zero).
fn log_prob(value: Option<&Value>, what: &str) -> Result<f64, String> {
    match value {
        Some(Value::Number(x)) => x
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{what} is not a finite number: {x}")),
        Some(Value::Null) => Ok(f64::NEG_INFINITY),
        Some(other) => Err(format!("{what} is not a number: {other}")),
        None => Err(format!("{what} is missing")),
    }
}

/// A probability in [0, 1] (a little above 1 is left to the mass check), as a log; `null`
/// reads as zero.
fn prob_as_log(value: Option<&Value>, what: &str) -> Result<f64, String> {
    let p = log_prob(value, what)?;
    if p == f64::NEG_INFINITY {
        return Ok(p);
    }
    if p < 0.0 {
        return Err(format!("{what} is negative: {p}"));
    }
    Ok(p.ln())
}

fn token_id(value: Option<&Value>, what: &str) -> Result<u64, String> {
    match value {
        Some(Value::Number(x)) => x
            .as_u64()
            .ok_or_else(|| format!("{what} is not a token id: {x}")),
        Some(other) => Err(format!("{what} is not a token id: {other}")),
        None => Err(format!("{what} is missing")),
    }
}

/// At least one drawn token and at most `count`.
fn check_drawn_count(found: usize, count: usize) -> Result<(), String> {
    if found == 0 || found > count {
        return Err(format!(
            "{found} tokens drawn, between 1 and {count} asked for"
        ));
    }
    Ok(())
}

/// llama.cpp's `llama-server`.
///
/// Tokenizer: `POST /tokenize {"content", "add_special": false, "with_pieces": false}` →
/// `{"tokens": [ids]}`.
///
/// Request: `{"prompt": [ids], "n_predict": 1, "n_probs": N, "cache_prompt": true,
/// "post_sampling_probs": false}` plus neutral sampler settings (temperature 1, no top-k,
/// top-p, min-p, typical-p or penalties), so that the probabilities are p0's even on builds
/// that report them after the sampler chain.
///
/// Answer, accepted forms of `completion_probabilities[0]`:
/// - `top_logprobs: [{"id", "token", "logprob", ...}]` (llama.cpp since late 2024; the
///   log-probabilities are the model's full-vocabulary softmax, before sampling);
/// - `top_probs: [{"id", "token", "prob"}]` (the same with `post_sampling_probs`);
/// - `probs: [{"id" or "tok", "tok_str", "prob"}]` (older builds). Older builds give only the
///   token strings (`tok_str`); without ids the answer is refused, since a string does not
///   name a token id reliably.
struct LlamaServer;

impl Wire for LlamaServer {
    fn request(&self, tokens: &[u32], n: usize, _model: Option<&str>) -> Value {
        json!({
            "prompt": tokens,
            "n_predict": 1,
            "n_probs": n,
            "cache_prompt": true,
            "post_sampling_probs": false,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "repeat_last_n": 0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stream": false,
        })
    }

    fn tokenize_request(&self, text: &str, _model: Option<&str>) -> Value {
        json!({"content": text, "add_special": false, "with_pieces": false})
    }

    /// `n_predict` tokens with the neutral sampler settings of [`Wire::request`] (and DRY, XTC,
    /// top-n-sigma and mirostat off: the sampler draws from the model's softmax itself),
    /// `return_tokens` for the ids, `n_probs: 1` for each token's log-probability. The server
    /// stops early only at an end-of-generation token (no stop strings are sent); it does not
    /// ignore them (`ignore_eos` would set their probability to zero, another distribution).
    fn draw_request(&self, tokens: &[u32], count: usize, seed: u32, model: Option<&str>) -> Value {
        let mut body = self.request(tokens, 1, model);
        body["n_predict"] = json!(count);
        body["seed"] = json!(seed);
        body["return_tokens"] = json!(true);
        body["dry_multiplier"] = json!(0.0);
        body["xtc_probability"] = json!(0.0);
        body["top_n_sigma"] = json!(-1.0);
        body["mirostat"] = json!(0);
        body
    }

    /// `tokens` holds every drawn id. `completion_probabilities` holds an entry per token
    /// only while the text is whole UTF-8: the tokens of a character split over several are
    /// folded into the last one's entry. The log-probabilities (`logprob`, the softmax before
    /// the sampler) are therefore used only when there is exactly one entry per token with
    /// the same ids; otherwise none is, and the backend looks them up.
    fn parse_draw(&self, answer: &Value, count: usize) -> Result<Vec<(u64, Option<f64>)>, String> {
        let tokens = answer
            .get("tokens")
            .ok_or("tokens is missing (the server ignored return_tokens)")?
            .as_array()
            .ok_or("tokens is not an array")?
            .iter()
            .enumerate()
            .map(|(i, t)| token_id(Some(t), &format!("tokens[{i}]")))
            .collect::<Result<Vec<u64>, String>>()?;
        check_drawn_count(tokens.len(), count)?;
        let entries = answer
            .get("completion_probabilities")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let aligned = entries.len() == tokens.len()
            && entries
                .iter()
                .zip(&tokens)
                .all(|(e, &t)| e.get("id").and_then(Value::as_u64) == Some(t));
        tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let lp = if aligned {
                    entries[i]
                        .get("logprob")
                        .map(|v| {
                            log_prob(Some(v), &format!("completion_probabilities[{i}].logprob"))
                        })
                        .transpose()?
                } else {
                    None
                };
                Ok((t, lp))
            })
            .collect()
    }

    /// llama-server sends a token's probabilities only once its text is whole UTF-8: when the
    /// one sampled token is the start of a multi-byte character (likely after a prefix that
    /// ends inside one), the answer stops with no `completion_probabilities`. Asked again with
    /// a large logit bias on ".", the sampler draws that token instead. The bias acts in the
    /// sampler chain only, and `top_logprobs` (with `post_sampling_probs` false) are the
    /// model's softmax before it, so they are unchanged; the other answer forms may come after
    /// the sampler and are refused for such a request ([`Wire::parse_reasked`]).
    fn reask(
        &self,
        answer: &Value,
        tokens: &[u32],
        n: usize,
        model: Option<&str>,
    ) -> Option<Value> {
        let withheld = answer
            .get("completion_probabilities")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        let one_token = answer.get("tokens_predicted").and_then(Value::as_u64) == Some(1);
        if !(withheld && one_token) {
            return None;
        }
        let mut request = self.request(tokens, n, model);
        request["logit_bias"] = json!([[".", 1000.0]]);
        Some(request)
    }

    fn parse_reasked(&self, answer: &Value) -> Result<Vec<(u64, f64)>, String> {
        let form = answer
            .get("completion_probabilities")
            .and_then(|c| c.get(0))
            .is_some_and(|first| first.get("top_logprobs").is_some());
        if !form {
            return Err(
                "asked again with a logit bias (the first answer withheld an incomplete UTF-8 \
                 token), the answer has no completion_probabilities[0].top_logprobs, the only \
                 form computed before the sampler"
                    .into(),
            );
        }
        self.parse(answer)
    }

    fn parse(&self, answer: &Value) -> Result<Vec<(u64, f64)>, String> {
        let first = answer
            .get("completion_probabilities")
            .ok_or("completion_probabilities is missing")?
            .as_array()
            .ok_or("completion_probabilities is not an array")?
            .first()
            .ok_or("completion_probabilities is empty")?;
        let (list, field) = ["top_logprobs", "top_probs", "probs"]
            .iter()
            .find_map(|&f| first.get(f).map(|v| (v, f)))
            .ok_or("completion_probabilities[0] has none of top_logprobs, top_probs, probs")?;
        let list = list
            .as_array()
            .ok_or_else(|| format!("completion_probabilities[0].{field} is not an array"))?;
        list.iter()
            .enumerate()
            .map(|(i, entry)| {
                let what = |f: &str| format!("completion_probabilities[0].{field}[{i}].{f}");
                let id = match (entry.get("id"), entry.get("tok")) {
                    (Some(id), _) => token_id(Some(id), &what("id"))?,
                    (None, Some(tok)) => token_id(Some(tok), &what("tok"))?,
                    (None, None) if entry.get("tok_str").is_some() => {
                        return Err(format!(
                            "{} carries a token string only (tok_str), no token id: this \
                             llama-server is too old; use a build that answers top_logprobs \
                             with ids",
                            what("id")
                        ));
                    }
                    (None, None) => return Err(format!("{} is missing", what("id"))),
                };
                let lp = if field == "top_logprobs" {
                    log_prob(entry.get("logprob"), &what("logprob"))?
                } else {
                    prob_as_log(entry.get("prob"), &what("prob"))?
                };
                Ok((id, lp))
            })
            .collect()
    }
}

/// The OpenAI-compatible completions API of vLLM (and SGLang, whose answers key `top_logprobs`
/// by token text and are therefore refused; see the crate README).
///
/// Request: `{"model", "prompt": [ids], "max_tokens": 1, "logprobs": N, "temperature": 1,
/// "top_p": 1, "return_tokens_as_token_ids": true}`.
///
/// Answer: `choices[0].logprobs.top_logprobs[0]`, an object keyed `"token_id:NNN"` (vLLM with
/// `return_tokens_as_token_ids`) with log-probabilities as values, or a list of
/// `{"token_id" or "id", "logprob"}` objects. Keys that are token strings are refused (the
/// server ignored `return_tokens_as_token_ids`). vLLM adds the sampled token to the top N
/// when it is not among them; the backend keeps the N largest (see the crate docs).
///
/// Tokenizer (vLLM and SGLang): `POST /tokenize {"model", "prompt", "add_special_tokens":
/// false}` → `{"tokens": [ids], "count", "max_model_len"}`.
struct OpenAi;

impl Wire for OpenAi {
    fn request(&self, tokens: &[u32], n: usize, model: Option<&str>) -> Value {
        let mut body = json!({
            "prompt": tokens,
            "max_tokens": 1,
            "logprobs": n,
            "temperature": 1.0,
            "top_p": 1.0,
            "echo": false,
            "stream": false,
            "return_tokens_as_token_ids": true,
        });
        if let Some(model) = model {
            body["model"] = Value::from(model);
        }
        body
    }

    /// `max_tokens` tokens at temperature 1 with vLLM's sampling extensions neutral (`top_k`
    /// -1, `min_p` 0, no penalties) and `ignore_eos` (vLLM keeps drawing after an end token
    /// instead of stopping; the end token's probability is unchanged), `logprobs: 1` for each
    /// token's log-probability.
    fn draw_request(&self, tokens: &[u32], count: usize, seed: u32, model: Option<&str>) -> Value {
        let mut body = self.request(tokens, 1, model);
        body["max_tokens"] = json!(count);
        body["seed"] = json!(seed);
        body["top_k"] = json!(-1);
        body["min_p"] = json!(0.0);
        body["presence_penalty"] = json!(0.0);
        body["frequency_penalty"] = json!(0.0);
        body["repetition_penalty"] = json!(1.0);
        body["ignore_eos"] = json!(true);
        body["skip_special_tokens"] = json!(false);
        body
    }

    /// `choices[0].logprobs.tokens` (`"token_id:NNN"` with `return_tokens_as_token_ids`) and
    /// `token_logprobs`, one per token.
    fn parse_draw(&self, answer: &Value, count: usize) -> Result<Vec<(u64, Option<f64>)>, String> {
        let logprobs = answer
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("logprobs"))
            .filter(|v| !v.is_null())
            .ok_or("choices[0].logprobs is missing or null")?;
        let tokens = logprobs
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or("choices[0].logprobs.tokens is missing or not an array")?;
        let values = logprobs
            .get("token_logprobs")
            .and_then(Value::as_array)
            .ok_or("choices[0].logprobs.token_logprobs is missing or not an array")?;
        if values.len() != tokens.len() {
            return Err(format!(
                "{} tokens but {} token_logprobs",
                tokens.len(),
                values.len()
            ));
        }
        check_drawn_count(tokens.len(), count)?;
        tokens
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (t, lp))| {
                let what = format!("choices[0].logprobs.tokens[{i}]");
                let id = t
                    .as_str()
                    .and_then(|k| k.strip_prefix("token_id:"))
                    .and_then(|k| k.parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "{what} is {t}, not \"token_id:NNN\": the server ignored \
                             return_tokens_as_token_ids"
                        )
                    })?;
                let lp = log_prob(
                    Some(lp),
                    &format!("choices[0].logprobs.token_logprobs[{i}]"),
                )?;
                Ok((id, Some(lp)))
            })
            .collect()
    }

    fn tokenize_request(&self, text: &str, model: Option<&str>) -> Value {
        let mut body = json!({"prompt": text, "add_special_tokens": false});
        if let Some(model) = model {
            body["model"] = Value::from(model);
        }
        body
    }

    fn parse(&self, answer: &Value) -> Result<Vec<(u64, f64)>, String> {
        let logprobs = answer
            .get("choices")
            .ok_or("choices is missing")?
            .as_array()
            .ok_or("choices is not an array")?
            .first()
            .ok_or("choices is empty")?
            .get("logprobs")
            .filter(|v| !v.is_null())
            .ok_or("choices[0].logprobs is missing or null")?;
        let top = logprobs
            .get("top_logprobs")
            .ok_or("choices[0].logprobs.top_logprobs is missing")?
            .as_array()
            .ok_or("choices[0].logprobs.top_logprobs is not an array")?
            .first()
            .filter(|v| !v.is_null())
            .ok_or("choices[0].logprobs.top_logprobs[0] is missing or null")?;
        let prefix = "choices[0].logprobs.top_logprobs[0]";
        match top {
            Value::Object(map) => map
                .iter()
                .map(|(key, value)| {
                    let id = key
                        .strip_prefix("token_id:")
                        .ok_or_else(|| {
                            format!(
                                "{prefix} is keyed by token strings ({key:?}), not token ids: \
                                 the server ignored return_tokens_as_token_ids"
                            )
                        })?
                        .parse::<u64>()
                        .map_err(|_| format!("{prefix} key {key:?} has no token id"))?;
                    Ok((id, log_prob(Some(value), &format!("{prefix}[{key:?}]"))?))
                })
                .collect(),
            Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let what = |f: &str| format!("{prefix}[{i}].{f}");
                    let id = match entry.get("token_id") {
                        Some(id) => token_id(Some(id), &what("token_id"))?,
                        None => token_id(entry.get("id"), &what("token_id"))?,
                    };
                    Ok((id, log_prob(entry.get("logprob"), &what("logprob"))?))
                })
                .collect(),
            other => Err(format!("{prefix} is neither an object nor a list: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_server_forms() {
        let newer = json!({"completion_probabilities": [{"id": 5, "token": "a", "logprob": -0.1,
            "top_logprobs": [{"id": 5, "token": "a", "logprob": -0.1},
                             {"id": 2, "token": "b", "logprob": null}]}]});
        let parsed = LlamaServer.parse(&newer).unwrap();
        assert_eq!(parsed[0], (5, -0.1));
        assert_eq!(parsed[1], (2, f64::NEG_INFINITY));
        let post = json!({"completion_probabilities": [{"top_probs": [{"id": 3, "prob": 0.5}]}]});
        assert_eq!(LlamaServer.parse(&post).unwrap(), vec![(3, 0.5f64.ln())]);
        let older = json!({"completion_probabilities": [{"content": "a",
            "probs": [{"tok": 1, "tok_str": "a", "prob": 0.25}]}]});
        assert_eq!(LlamaServer.parse(&older).unwrap(), vec![(1, 0.25f64.ln())]);
        let strings =
            json!({"completion_probabilities": [{"probs": [{"tok_str": "a", "prob": 1.0}]}]});
        assert!(LlamaServer.parse(&strings).unwrap_err().contains("too old"));
    }

    #[test]
    fn a_withheld_incomplete_token_is_asked_again_with_a_bias_and_read_before_the_sampler() {
        let withheld = json!({"content": " \u{fffd}", "tokens": [], "stop": true,
            "tokens_predicted": 1, "tokens_evaluated": 25});
        let again = LlamaServer
            .reask(&withheld, &[1, 2], 5, None)
            .expect("asked again");
        assert_eq!(again["logit_bias"], json!([[".", 1000.0]]));
        assert_eq!(again["prompt"], json!([1, 2]));
        assert_eq!(again["n_probs"], json!(5));
        // Another failure, or an answer with probabilities, is not asked again.
        let other = json!({"error": "x"});
        assert!(LlamaServer.reask(&other, &[1], 5, None).is_none());
        let fine =
            json!({"completion_probabilities": [{"top_logprobs": []}], "tokens_predicted": 1});
        assert!(LlamaServer.reask(&fine, &[1], 5, None).is_none());
        assert!(OpenAi.reask(&withheld, &[1], 5, None).is_none());
        // After a bias only the pre-sampling form is read.
        let pre =
            json!({"completion_probabilities": [{"top_logprobs": [{"id": 3, "logprob": -0.5}]}]});
        assert_eq!(LlamaServer.parse_reasked(&pre).unwrap(), vec![(3, -0.5)]);
        let post = json!({"completion_probabilities": [{"top_probs": [{"id": 3, "prob": 0.5}]}]});
        assert!(
            LlamaServer
                .parse_reasked(&post)
                .unwrap_err()
                .contains("before the sampler")
        );
        let bad =
            json!({"completion_probabilities": [{"top_logprobs": [{"id": -1, "logprob": 0.0}]}]});
        assert!(
            LlamaServer
                .parse(&bad)
                .unwrap_err()
                .contains("not a token id")
        );
        let bad =
            json!({"completion_probabilities": [{"top_logprobs": [{"id": 1, "logprob": "x"}]}]});
        assert!(
            LlamaServer
                .parse(&bad)
                .unwrap_err()
                .contains("not a number")
        );
        assert!(LlamaServer.parse(&json!({})).is_err());
    }

    #[test]
    fn openai_forms() {
        let keyed = json!({"choices": [{"text": "a", "logprobs": {"tokens": ["token_id:7"],
            "token_logprobs": [-0.2], "top_logprobs": [{"token_id:7": -0.2, "token_id:1": -2.0}]}}]});
        let mut parsed = OpenAi.parse(&keyed).unwrap();
        parsed.sort_by_key(|e| e.0);
        assert_eq!(parsed, vec![(1, -2.0), (7, -0.2)]);
        let listed = json!({"choices": [{"logprobs": {"top_logprobs": [[{"token_id": 4, "logprob": -1.0}]]}}]});
        assert_eq!(OpenAi.parse(&listed).unwrap(), vec![(4, -1.0)]);
        let strings = json!({"choices": [{"logprobs": {"top_logprobs": [{" the": -0.2}]}}]});
        assert!(
            OpenAi
                .parse(&strings)
                .unwrap_err()
                .contains("token strings")
        );
        let null = json!({"choices": [{"logprobs": null}]});
        assert!(OpenAi.parse(&null).unwrap_err().contains("missing or null"));
    }

    #[test]
    fn tokenizer_answers() {
        for wire in [&LlamaServer as &dyn Wire, &OpenAi] {
            let ids = json!({"tokens": [3, 1, 4], "count": 3});
            assert_eq!(wire.parse_tokens(&ids).unwrap(), vec![3, 1, 4]);
            let pieces = json!({"tokens": [{"id": 7, "piece": "a"}]});
            assert_eq!(wire.parse_tokens(&pieces).unwrap(), vec![7]);
            assert!(
                wire.parse_tokens(&json!({}))
                    .unwrap_err()
                    .contains("missing")
            );
            let bad = json!({"tokens": ["a"]});
            assert!(
                wire.parse_tokens(&bad)
                    .unwrap_err()
                    .contains("not a token id")
            );
        }
        assert_eq!(
            OpenAi.tokenize_request("hi", Some("m")),
            json!({"prompt": "hi", "add_special_tokens": false, "model": "m"})
        );
        assert_eq!(LlamaServer.tokenize_request("hi", None)["content"], "hi");
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
        }
        assert!("grpc".parse::<Protocol>().is_err());
    }
}
