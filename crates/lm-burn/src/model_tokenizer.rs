//! A model's tokenizer without its weights: what a client of a model served elsewhere (an
//! HTTP serving engine) needs locally to turn text into token ids and back, and to build
//! constraints and boundaries over the vocabulary.

use std::path::Path;

use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::model::BurnLm;
use crate::tokenizer::Tokenizer;

/// A tokenizer with what the model's files say about its vocabulary.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The model's vocabulary size V (its logit vector's length, at least the tokenizer's id
    /// bound; larger when the embedding rows are padded).
    pub vocab: usize,
    /// The end-of-sequence token ids the files declare (empty when none).
    pub eos_tokens: Vec<u32>,
    /// Where it came from (a path).
    pub name: String,
}

/// End-of-sequence ids of a config.json (`eos_token_id`, a number or a list).
pub(crate) fn config_eos(cfg: &JsonConfig) -> Vec<u32> {
    let ids: Vec<u64> = match cfg.value("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|v| v.as_u64()).collect(),
        _ => Vec::new(),
    };
    ids.into_iter()
        .filter_map(|i| u32::try_from(i).ok())
        .collect()
}

/// End-of-sequence ids of a GGUF file (`tokenizer.ggml.eos_token_id` and `eot_token_id`).
pub(crate) fn gguf_eos(file: &GgufFile) -> Vec<u32> {
    ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| file.meta(k).and_then(MetaValue::as_u64))
        .filter_map(|i| u32::try_from(i).ok())
        .collect()
}

impl ModelTokenizer {
    /// Loads the tokenizer of `spec` without the weights: `default` (the default model's GGUF,
    /// fetched once), a Hugging Face model directory (`tokenizer.json`, V and end tokens from
    /// `config.json`), a `tokenizer.json` file (V and end tokens from a `config.json` next to
    /// it, else V = the tokenizer's id bound and no end token) or a `.gguf` file (any
    /// architecture with a byte-level BPE tokenizer; V = the embedding rows or the token list).
    pub fn load(spec: &str) -> Result<Self> {
        if spec == "default" {
            return Self::from_gguf(&crate::default_model::ensure_default_model()?);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            let tokenizer = Tokenizer::from_file(&path.join("tokenizer.json"))?;
            Self::with_config(tokenizer, &path.join("config.json"), spec)
        } else if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            let tokenizer = Tokenizer::from_file(path)?;
            let config = path.with_file_name("config.json");
            if config.is_file() {
                Self::with_config(tokenizer, &config, spec)
            } else {
                Ok(Self {
                    vocab: tokenizer.id_bound(),
                    tokenizer,
                    eos_tokens: Vec::new(),
                    name: spec.to_string(),
                })
            }
        } else if path.is_file() {
            Self::from_gguf(path)
        } else {
            Err(LmError::ModelNotFound { spec: spec.into() })
        }
    }

    fn with_config(tokenizer: Tokenizer, config: &Path, name: &str) -> Result<Self> {
        let cfg = JsonConfig::read(config)?;
        let vocab = cfg.usize("vocab_size")?;
        tokenizer.check_model_vocab(vocab)?;
        Ok(Self {
            tokenizer,
            vocab,
            eos_tokens: Self::in_vocab(config_eos(&cfg), vocab),
            name: name.to_string(),
        })
    }

    fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let tokenizer = file.tokenizer()?;
        let rows = file
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.ne.get(1).copied());
        let vocab = rows.unwrap_or(tokenizer.id_bound());
        tokenizer.check_model_vocab(vocab)?;
        Ok(Self {
            eos_tokens: Self::in_vocab(gguf_eos(&file), vocab),
            tokenizer,
            vocab,
            name: path.display().to_string(),
        })
    }

    fn in_vocab(mut ids: Vec<u32>, vocab: usize) -> Vec<u32> {
        ids.retain(|&i| (i as usize) < vocab);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The tokenizer of a loaded model.
    pub fn of(lm: &BurnLm) -> Result<Self> {
        Ok(Self {
            tokenizer: lm.tokenizer()?.clone(),
            vocab: lm.dims().vocab,
            eos_tokens: lm.eos_tokens().to_vec(),
            name: lm.name().to_string(),
        })
    }
}
