//! # smc-grammar
//!
//! Regular expressions, JSON schemas and Lark grammars as prefix constraints of smc-core
//! ([`smc_core::constraint::Constraint`], spec §8), on the llguidance grammar engine.
//!
//! A grammar constrains the output's text; llguidance turns it into token masks given the
//! exact bytes of every token. [`TokenBytes`] describes a vocabulary (token id -> bytes, the
//! end-of-sequence ids) without any tokenizer library: the caller builds it from its own
//! tokenizer (for byte-level BPE, [`TokenBytes::byte_level`] from the token strings).
//! [`GrammarCompiler`] compiles grammars against it once; each [`GrammarConstraint`] then runs
//! in smc-core's constrained drivers: per particle a matcher says which next tokens keep the
//! text completable, so SMC proposes only those and weighs by their p0 mass, and with
//! variable-length outputs the end token is allowed exactly when the text is a sentence.
//!
//! ```
//! use smc_grammar::{GrammarCompiler, GrammarSpec, TokenBytes, TokenPiece};
//! use smc_core::prelude::*;
//!
//! // Tokens "a", "b", "ab" and an end token.
//! let pieces = vec![
//!     TokenPiece::Bytes(b"a".to_vec()),
//!     TokenPiece::Bytes(b"b".to_vec()),
//!     TokenPiece::Bytes(b"ab".to_vec()),
//!     TokenPiece::Special("<end>".into()),
//! ];
//! let vocab = TokenBytes::new(pieces, vec![3]).unwrap();
//! let compiler = GrammarCompiler::new(&vocab).unwrap();
//! let c = compiler.compile("regex a+b", &GrammarSpec::Regex("a+b".into())).unwrap();
//! assert!(c.accepts_tokens(&[0, 2]));
//! assert!(!c.accepts_tokens(&[1]));
//!
//! let lm = TabularLm::random(4, 1, 1.0, 7);
//! let end = EndOfSequence::new(vec![3], AtMaxTokens::Truncate).unwrap();
//! let options = RunOptions::default().with_constraint(&c).with_end(&end);
//! let out = run_smc_with(&lm, &UnitPotential, &options, &[0], &SmcConfig::bootstrap(8, 4)).unwrap();
//! for (k, tokens) in out.tokens.iter().enumerate() {
//!     if out.log_w[k] > f64::NEG_INFINITY {
//!         assert!(c.accepts_tokens(tokens));
//!     }
//! }
//! ```

mod error;
mod grammar;
mod session;
mod vocab;

pub use error::{GrammarError, Result};
pub use grammar::{GrammarCompiler, GrammarConstraint, GrammarSpec};
pub use vocab::{TokenBytes, TokenPiece, byte_level_bytes};
