//! Where particles may be resampled: the tokens after which a particle's text is at a word,
//! sentence or line boundary, built from a model's tokenizer (smc-core's partial resampling
//! resamples only particles at a boundary, keeping Zhat unbiased).

use std::fmt;

use anyhow::{Result, bail};
use lm_burn::{BurnLm, Tokenizer};
use smc_core::constraint::TokenMask;

/// A kind of boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The token's text ends with whitespace or punctuation: the word before it is complete
    /// (byte-level BPE puts a word's space in front of it, so "Ġcat" alone does not end one).
    Word,
    /// The token's text, trailing spaces and quotes aside, ends with `.`, `!`, `?` or holds a
    /// newline.
    Sentence,
    /// The token's text holds a newline.
    Newline,
}

impl Boundary {
    /// Whether a particle whose last token decodes to `text` is at this boundary.
    pub fn ends(self, text: &str) -> bool {
        match self {
            Boundary::Newline => text.contains('\n'),
            Boundary::Sentence => {
                text.contains('\n')
                    || text
                        .trim_end_matches(|c: char| c.is_whitespace() || "\"')]".contains(c))
                        .ends_with(['.', '!', '?'])
            }
            Boundary::Word => text
                .chars()
                .last()
                .is_some_and(|c| c.is_whitespace() || c.is_ascii_punctuation()),
        }
    }

    /// The tokens of `lm`'s vocabulary after which a particle is at this boundary.
    pub fn mask(self, lm: &BurnLm) -> Result<TokenMask> {
        self.mask_for(lm.tokenizer()?, lm.dims().vocab, lm.name())
    }

    /// The tokens of a vocabulary of `vocab` tokens read with `tokenizer` after which a
    /// particle is at this boundary (`name`: the model, for the error).
    pub fn mask_for(self, tokenizer: &Tokenizer, vocab: usize, name: &str) -> Result<TokenMask> {
        let mut mask = TokenMask::none(vocab);
        for id in 0..vocab as u32 {
            if tokenizer.decode(&[id]).is_ok_and(|text| self.ends(&text)) {
                mask.insert(id);
            }
        }
        if !mask.any() {
            bail!("no token of {name} ends a {self} boundary");
        }
        Ok(mask)
    }
}

impl fmt::Display for Boundary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Boundary::Word => "word",
            Boundary::Sentence => "sentence",
            Boundary::Newline => "newline",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_of_token_texts() {
        assert!(
            Boundary::Word.ends("cat ") && Boundary::Word.ends(",") && !Boundary::Word.ends(" cat")
        );
        assert!(
            Boundary::Sentence.ends(" end.")
                && Boundary::Sentence.ends("!\" ")
                && !Boundary::Sentence.ends(",")
        );
        assert!(Boundary::Newline.ends("\n") && !Boundary::Newline.ends("."));
        assert!(Boundary::Sentence.ends(".\n\n"));
    }
}
