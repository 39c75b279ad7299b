//! Grammar constraints over a model's vocabulary, and the checks made before a model loads.

use std::cell::OnceCell;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use lm_burn::BurnLm;
use smc_grammar::{GrammarCompiler, GrammarConstraint, GrammarSpec, TokenBytes, TokenPiece};

/// The token bytes of `lm`'s vocabulary and its end-of-sequence ids, for grammar engines.
/// Needs a byte-level BPE tokenizer (every model tsmc loads from GGUF has one).
pub fn token_bytes(lm: &BurnLm) -> Result<TokenBytes> {
    let tokenizer = lm.tokenizer()?;
    if !tokenizer.is_byte_level() {
        bail!(
            "grammar constraints need a byte-level BPE tokenizer (GPT-2 style) to know each \
             token's bytes; {} has another kind",
            tokenizer.source_name()
        );
    }
    if lm.eos_tokens().is_empty() {
        bail!(
            "grammar constraints need the model's end-of-sequence token; {} declares none",
            lm.name()
        );
    }
    let strings = tokenizer.token_strings(lm.dims().vocab);
    Ok(TokenBytes::byte_level(strings, lm.eos_tokens().to_vec())?)
}

/// Compiles grammars against one model's vocabulary, building its token bytes and
/// llguidance's tokenizer state once, on first use.
pub struct GrammarConstraints<'a> {
    lm: &'a BurnLm,
    tokens: OnceCell<TokenBytes>,
    compiler: OnceCell<GrammarCompiler>,
}

impl<'a> GrammarConstraints<'a> {
    /// Grammars for `lm`.
    pub fn new(lm: &'a BurnLm) -> Self {
        Self {
            lm,
            tokens: OnceCell::new(),
            compiler: OnceCell::new(),
        }
    }

    /// The model's token bytes (see [`token_bytes`]).
    pub fn tokens(&self) -> Result<&TokenBytes> {
        if let Some(t) = self.tokens.get() {
            return Ok(t);
        }
        let t = token_bytes(self.lm)?;
        Ok(self.tokens.get_or_init(|| t))
    }

    /// Compiles `spec` into a constraint named `name`.
    pub fn compile(&self, name: &str, spec: &GrammarSpec) -> Result<GrammarConstraint> {
        let compiler = match self.compiler.get() {
            Some(c) => c,
            None => {
                let tokens = self
                    .tokens()
                    .with_context(|| format!("constraint {name}"))?;
                let c = GrammarCompiler::new(tokens)?;
                self.compiler.get_or_init(|| c)
            }
        };
        Ok(compiler.compile(name, spec)?)
    }
}

/// A compiler over single bytes (and an end token): every text has a tokenization, so a
/// grammar that compiles here and accepts something does so for any byte-level vocabulary.
fn byte_compiler() -> Result<&'static GrammarCompiler> {
    static COMPILER: OnceLock<Result<GrammarCompiler, String>> = OnceLock::new();
    COMPILER
        .get_or_init(|| {
            let mut pieces: Vec<TokenPiece> =
                (0..=255u8).map(|b| TokenPiece::Bytes(vec![b])).collect();
            pieces.push(TokenPiece::Special("<|end|>".into()));
            TokenBytes::new(pieces, vec![256])
                .and_then(|t| GrammarCompiler::new(&t))
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("the byte vocabulary for checking grammars: {e}"))
}

/// Checks that `spec` compiles and accepts some output (llguidance's message otherwise).
pub fn check(name: &str, spec: &GrammarSpec) -> Result<()> {
    byte_compiler()?.compile(name, spec)?;
    Ok(())
}

/// The grammar of outputs that contain a match of `pattern` (Rust regex syntax, as the
/// complete-output `regex:` potential reads it), and whether it is exact. Zero-width
/// assertions (`\b`, `\B`, `^`, `$`, `\A`, `\z`) are beyond llguidance's automata; without
/// them the language only grows, so the grammar is then a superset (its masks stay valid
/// twists; the potential's final check keeps the target exact).
pub fn search_grammar(pattern: &str) -> Result<(GrammarSpec, bool)> {
    let exact = GrammarSpec::regex_search(pattern);
    let first = match check(&format!("search:{pattern}"), &exact) {
        Ok(()) => return Ok((exact, true)),
        Err(e) => e,
    };
    let relaxed = without_assertions(pattern);
    if relaxed != pattern {
        let spec = GrammarSpec::regex_search(&relaxed);
        if check(&format!("search:{relaxed}"), &spec).is_ok() {
            return Ok((spec, false));
        }
    }
    Err(first)
}

/// `pattern` without its zero-width assertions outside character classes (escaped
/// characters and classes stay as they are).
pub(crate) fn without_assertions(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    // Depth of character classes ([a-z], nested [[:alpha:]]).
    let mut class = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('b' | 'B' | 'A' | 'z') if class == 0 => {}
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '^' | '$' if class == 0 => {}
            '[' => {
                class += 1;
                out.push('[');
                // A ']' right after '[' or '[^' is a literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if class > 0 => {
                class -= 1;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_are_dropped_and_escapes_and_classes_kept() {
        assert_eq!(
            without_assertions(r"(?i)\b(dragon|king)\b"),
            "(?i)(dragon|king)"
        );
        assert_eq!(without_assertions(r"a\\b\Bc\d"), r"a\\bc\d");
        assert_eq!(without_assertions(r"^a[^$\]]$[]^]\z"), r"a[^$\]][]^]");
    }

    #[test]
    fn search_grammars_are_exact_where_llguidance_can_and_supersets_where_not() {
        assert!(search_grammar("dragon|king").unwrap().1);
        let (spec, exact) = search_grammar(r"(?i)\b(dragon|king)\b").unwrap();
        assert!(!exact);
        assert_eq!(spec, GrammarSpec::regex_search("(?i)(dragon|king)"));
        assert!(!search_grammar(r"(?m)^The$").unwrap().1);
        let e = search_grammar(r"a(?=b)").unwrap_err();
        assert!(format!("{e:#}").contains("search:a(?=b)"), "{e:#}");
    }
}
