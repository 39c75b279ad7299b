//! The exact bytes of every token of a vocabulary, and the end-of-sequence ids: what a grammar
//! engine needs to know about a tokenizer to say which tokens continue a text.
//!
//! A grammar constrains text (bytes); a language model emits token ids. The mask of a prefix is
//! the set of ids whose bytes, appended to the prefix's bytes, keep it completable, so every
//! token's bytes must be known exactly, including tokens that are only part of a UTF-8
//! character (byte-level BPE has many). Decoding tokens one at a time through a tokenizer's
//! decoder would turn those into U+FFFD, so for byte-level BPE the bytes come from the token
//! strings through the GPT-2 byte-to-unicode table ([`byte_level_bytes`]).

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{GrammarError, Result};

/// What one token id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPiece {
    /// Ordinary text: these bytes (not necessarily valid UTF-8 on their own).
    Bytes(Vec<u8>),
    /// A special token (`<|im_end|>`): never part of text a grammar matches, unless the
    /// grammar names it as a special token.
    Special(String),
    /// No token has this id (padding of a model vocabulary larger than the tokenizer's).
    Unused,
}

/// A vocabulary as a grammar engine sees it: for every id of the model's vocabulary its
/// [`TokenPiece`], and the end-of-sequence ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBytes {
    pieces: Vec<TokenPiece>,
    eos: Vec<u32>,
}

impl TokenBytes {
    /// A vocabulary of `pieces.len()` ids with these end-of-sequence ids (at least one, each
    /// inside the vocabulary; an end id's piece is normally [`TokenPiece::Special`]).
    pub fn new(pieces: Vec<TokenPiece>, eos: Vec<u32>) -> Result<Self> {
        if pieces.is_empty() {
            return Err(GrammarError::Vocabulary("no tokens".into()));
        }
        if u32::try_from(pieces.len()).is_err() {
            return Err(GrammarError::Vocabulary(format!(
                "{} tokens: more than u32 ids can name",
                pieces.len()
            )));
        }
        if eos.is_empty() {
            return Err(GrammarError::Vocabulary(
                "no end-of-sequence token id (a grammar needs one to say where an output may end)"
                    .into(),
            ));
        }
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= pieces.len()) {
            return Err(GrammarError::Vocabulary(format!(
                "end-of-sequence id {bad} outside the vocabulary of {} tokens",
                pieces.len()
            )));
        }
        for (id, piece) in pieces.iter().enumerate() {
            let len = match piece {
                TokenPiece::Bytes(b) => b.len(),
                TokenPiece::Special(s) if s.is_empty() => {
                    return Err(GrammarError::Vocabulary(format!(
                        "special token {id} has no text"
                    )));
                }
                TokenPiece::Special(s) => s.len() + 1,
                TokenPiece::Unused => 0,
            };
            // The token trie stores lengths in 32 bits; no real token comes close.
            if u32::try_from(len).is_err() {
                return Err(GrammarError::Vocabulary(format!(
                    "token {id} is {len} bytes long"
                )));
            }
        }
        Ok(Self { pieces, eos })
    }

    /// A byte-level BPE vocabulary (GPT-2, SmolLM2, Llama 3, ...) from its token strings:
    /// `tokens[id]` is `None` for an unused id, else the token string and whether it is a
    /// special token. Ordinary token strings are mapped through the GPT-2 byte-to-unicode
    /// table; a string with a character outside that alphabet (an added token written as
    /// plain text) stands for its own UTF-8 bytes, as the byte-level decoder reads it.
    pub fn byte_level(
        tokens: impl IntoIterator<Item = Option<(String, bool)>>,
        eos: Vec<u32>,
    ) -> Result<Self> {
        let pieces = tokens
            .into_iter()
            .map(|token| match token {
                None => TokenPiece::Unused,
                Some((text, true)) => TokenPiece::Special(text),
                Some((text, false)) => {
                    TokenPiece::Bytes(byte_level_bytes(&text).unwrap_or_else(|| text.into_bytes()))
                }
            })
            .collect();
        Self::new(pieces, eos)
    }

    /// Number of ids (the model's vocabulary size).
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Always false (a vocabulary has at least one token).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The end-of-sequence ids.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    /// What `id` stands for (`None` outside the vocabulary).
    pub fn piece(&self, id: u32) -> Option<&TokenPiece> {
        self.pieces.get(id as usize)
    }

    /// The text of `ids`: ordinary tokens' bytes, special tokens' text, unused ids nothing
    /// (what a tokenizer decodes with special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            match self.piece(id) {
                Some(TokenPiece::Bytes(b)) => out.extend_from_slice(b),
                Some(TokenPiece::Special(s)) => out.extend_from_slice(s.as_bytes()),
                Some(TokenPiece::Unused) | None => {}
            }
        }
        out
    }

    /// The token environment llguidance compiles grammars against.
    pub(crate) fn tok_env(&self) -> TokEnv {
        let words: Vec<Vec<u8>> = self
            .pieces
            .iter()
            .map(|p| match p {
                TokenPiece::Bytes(b) => b.clone(),
                // The trie's convention for special tokens: a 0xFF marker, then the text.
                TokenPiece::Special(s) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(s.as_bytes());
                    w
                }
                TokenPiece::Unused => Vec::new(),
            })
            .collect();
        let info = TokRxInfo::new(self.pieces.len() as u32, self.eos[0]);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&self.eos);
        Arc::new(BytesEnv { trie })
    }
}

/// llguidance's token environment over a [`TokenBytes`]: the trie, and greedy tokenization
/// for the few places that turn text into tokens (declared non-canonical, so llguidance never
/// forces tokens from it; masks and token consumption only use the trie).
struct BytesEnv {
    trie: TokTrie,
}

impl TokenizerEnv for BytesEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Whether byte `b` stands for itself in the GPT-2 byte-to-unicode table (the printable
/// Latin-1 characters); the other 68 bytes map to U+0100.. in increasing order.
fn is_printable_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The bytes of a byte-level BPE token string (`"Ġthe"` is `b" the"`), `None` if it has a
/// character outside the 256-character alphabet of the GPT-2 byte-to-unicode table.
pub fn byte_level_bytes(token: &str) -> Option<Vec<u8>> {
    let shifted: Vec<u8> = (0..=255u8).filter(|&b| !is_printable_byte(b)).collect();
    token
        .chars()
        .map(|c| {
            let code = u32::from(c);
            match u8::try_from(code) {
                Ok(b) if is_printable_byte(b) => Some(b),
                _ => code
                    .checked_sub(256)
                    .and_then(|i| shifted.get(i as usize).copied()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as GPT-2 builds it: printable bytes keep their code point, the others get
    /// 256, 257, ... in byte order.
    fn byte_to_char(b: u8) -> char {
        let shifted = (0..b).filter(|&x| !is_printable_byte(x)).count() as u32;
        if is_printable_byte(b) {
            char::from(b)
        } else {
            char::from_u32(256 + shifted).unwrap()
        }
    }

    #[test]
    fn byte_level_table_is_a_bijection_with_known_points() {
        let all: String = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(
            byte_level_bytes(&all).unwrap(),
            (0..=255u8).collect::<Vec<_>>()
        );
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_bytes("Ġthe").unwrap(), b" the");
        assert_eq!(byte_level_bytes("ĊĊ").unwrap(), b"\n\n");
        // "é" is two bytes, each its own character in the table.
        assert_eq!(byte_level_bytes("Ã©").unwrap(), "é".as_bytes());
        assert_eq!(byte_level_bytes("€"), None);
        assert_eq!(byte_level_bytes("\u{144}"), None);
    }

    #[test]
    fn vocabularies_are_checked_and_decode_specials_as_text() {
        let v = TokenBytes::byte_level(
            [
                Some(("<|end|>".to_string(), true)),
                Some(("Ġa".to_string(), false)),
                None,
                Some(("b".to_string(), false)),
            ],
            vec![0],
        )
        .unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v.decode(&[1, 3, 2, 0]), b" ab<|end|>");
        assert!(TokenBytes::new(vec![], vec![0]).is_err());
        let e = TokenBytes::new(vec![TokenPiece::Unused], vec![1]).unwrap_err();
        assert!(e.to_string().contains("end-of-sequence id 1"), "{e}");
        assert!(TokenBytes::new(vec![TokenPiece::Unused], vec![]).is_err());
        let plain = TokenBytes::byte_level([Some(("x€".to_string(), false))], vec![0]).unwrap();
        assert_eq!(plain.decode(&[0]), "x€".as_bytes());
    }
}
