//! Tokenizers: Hugging Face `tokenizer.json`, or byte-level BPE built from GGUF metadata.

use std::path::Path;

use crate::error::{LmError, Result};

/// A text tokenizer (the `tokenizers` crate underneath).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source_name: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.source_name)
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| LmError::Tokenizer {
            source_name: path.display().to_string(),
            detail: e.to_string(),
            source: Some(e),
        })?;
        Ok(Self {
            inner,
            source_name: path.display().to_string(),
        })
    }

    /// Wraps a built tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer, source_name: impl Into<String>) -> Self {
        Self {
            inner,
            source_name: source_name.into(),
        }
    }

    fn err(&self, e: tokenizers::Error) -> LmError {
        LmError::Tokenizer {
            source_name: self.source_name.clone(),
            detail: e.to_string(),
            source: Some(e),
        }
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.err(e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
