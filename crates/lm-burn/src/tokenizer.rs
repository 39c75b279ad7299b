//! Tokenizers: Hugging Face `tokenizer.json`, or byte-level BPE built from GGUF metadata.

use std::path::Path;

use crate::error::{LmError, Result};

/// The largest `tokenizer.json` [`Tokenizer::from_file`] reads (a file from `/dev/zero` is not
/// read without limit).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The `tokenizers` crate slices each BPE merge's second token after the model's
/// `continuing_subword_prefix` without checking that it is that long (a panic, not an error):
/// such a merge is refused here, named.
fn check_bpe_merges(source_name: &str, doc: &serde_json::Value) -> Result<()> {
    let model = &doc["model"];
    let (Some(prefix), Some(merges)) = (
        model["continuing_subword_prefix"].as_str(),
        model["merges"].as_array(),
    ) else {
        return Ok(());
    };
    for merge in merges {
        let second = match merge {
            serde_json::Value::String(m) => m.split_once(' ').map(|(_, b)| b),
            serde_json::Value::Array(pair) => pair.get(1).and_then(|b| b.as_str()),
            _ => None,
        };
        if let Some(b) = second
            && !b.is_char_boundary(prefix.len())
        {
            return Err(LmError::Tokenizer {
                source_name: source_name.to_string(),
                detail: format!(
                    "merge {merge}: its second token {b:?} does not start with a whole \
                     continuing_subword_prefix {prefix:?}"
                ),
                source: None,
            });
        }
    }
    Ok(())
}

/// A text tokenizer (the `tokenizers` crate underneath).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source_name: String,
    /// One more than the largest id, added tokens included.
    id_bound: usize,
}

/// One more than the largest id of `t`, added tokens included (0 when it has no tokens).
fn id_bound(t: &tokenizers::Tokenizer) -> usize {
    t.get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| m as usize + 1)
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.source_name)
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json` of at most [`MAX_TOKENIZER_BYTES`].
    ///
    /// The text must parse as JSON before the `tokenizers` crate sees it: that crate panics
    /// (`expect("Helper")` in its decoder reader) on a document cut off inside a component,
    /// where a syntax error belongs. A panic it still raises is caught and reported as an error
    /// naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
        let mut text = String::new();
        file.take(MAX_TOKENIZER_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| LmError::io(path, e))?;
        if text.len() as u64 > MAX_TOKENIZER_BYTES {
            return Err(LmError::format(
                path,
                format!(
                    "a tokenizer.json larger than {} MiB (the largest real ones are tens of MiB)",
                    MAX_TOKENIZER_BYTES >> 20
                ),
            ));
        }
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LmError::json(path, "tokenizer.json is not valid JSON", e))?;
        let source_name = path.display().to_string();
        check_bpe_merges(&source_name, &doc)?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()).map_err(
            |panic| LmError::Tokenizer {
                source_name: source_name.clone(),
                detail: format!(
                    "the tokenizers library failed on this file: {}",
                    panic_message(panic.as_ref())
                ),
                source: None,
            },
        )?;
        let inner = parsed.map_err(|e| LmError::Tokenizer {
            source_name: source_name.clone(),
            detail: e.to_string(),
            source: Some(e),
        })?;
        Ok(Self::from_inner(inner, source_name))
    }

    /// Wraps a built tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer, source_name: impl Into<String>) -> Self {
        Self {
            id_bound: id_bound(&inner),
            inner,
            source_name: source_name.into(),
        }
    }

    /// Where the tokenizer came from.
    pub fn source_name(&self) -> &str {
        &self.source_name
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

    /// Text of token ids (special tokens kept). An id the tokenizer has no token for (one in
    /// the padding of a larger model vocabulary) is an error: the `tokenizers` crate would
    /// silently drop it, and the text would no longer be the one the ids stand for.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&token) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(LmError::UnknownTokenId {
                tokenizer: self.source_name.clone(),
                token,
                tokenizer_ids: self.id_bound,
            });
        }
        self.inner.decode(ids, false).map_err(|e| self.err(e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One more than the largest token id, added tokens included: the model's vocabulary must
    /// be at least this large.
    pub fn id_bound(&self) -> usize {
        self.id_bound
    }

    /// Checks that every id this tokenizer produces has an embedding in a model vocabulary of
    /// `model_vocab` tokens. A larger model vocabulary is fine (embedding rows padded to a
    /// multiple of 64 or 128); decoding one of the padding ids is then an error.
    pub fn check_model_vocab(&self, model_vocab: usize) -> Result<()> {
        if self.id_bound <= model_vocab {
            Ok(())
        } else {
            Err(LmError::VocabMismatch {
                tokenizer: self.source_name.clone(),
                tokenizer_ids: self.id_bound,
                model_vocab,
            })
        }
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token strings of ids `0..n` as the vocabulary stores them (for byte-level BPE in
    /// the GPT-2 byte-to-unicode alphabet, `"Ġthe"` for `" the"`), each with whether it is a
    /// special token; `None` for an id without a token (padding of a larger model vocabulary).
    /// Grammar engines need every token's exact bytes, which decoding one token at a time
    /// cannot give for tokens that hold part of a UTF-8 character.
    pub fn token_strings(&self, n: usize) -> Vec<Option<(String, bool)>> {
        let added = self.inner.get_added_tokens_decoder();
        (0..n as u32)
            .map(|id| {
                let special = added.get(&id).is_some_and(|t| t.special);
                self.inner.id_to_token(id).map(|s| (s, special))
            })
            .collect()
    }

    /// Whether the decoder is byte-level (GPT-2 style): token strings then spell bytes in the
    /// byte-to-unicode alphabet (see [`Tokenizer::token_strings`]).
    pub fn is_byte_level(&self) -> bool {
        matches!(
            self.inner.get_decoder(),
            Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_))
        )
    }
}
