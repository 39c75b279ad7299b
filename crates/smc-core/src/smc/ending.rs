//! Variable-length outputs and the options of a run beyond its configuration.

use serde::{Deserialize, Serialize};

use crate::constraint::{Constraint, TokenMask};
use crate::error::{Result, SmcError};
use crate::model::{Potential, Twist};

/// What happens to a particle that has not ended when its output reaches `--max-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AtMaxTokens {
    /// The output stops there, unfinished: the target is p0 of the process stopped at the
    /// first end-of-sequence token or after the maximum, whichever comes first (its total
    /// mass is 1), times phi.
    #[default]
    Truncate,
    /// An end-of-sequence token is forced after the maximum: one more step proposes from the
    /// end-of-sequence tokens alone, and the weight gains their p0 mass (the forced-EOS
    /// correction), so the target is p0 of the outputs that end within the maximum, times phi.
    ForceEnd,
}

/// Which tokens end an output (EOS), and what happens at the maximum length.
///
/// A particle that draws one of these tokens is finished: it keeps its weight, is weighed by
/// the potential on its text without the end token at that step, and takes no further token
/// (later steps push the same end token for it and give it incremental weight 1). Under a
/// constraint an end token is allowed exactly when the constraint accepts the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfSequence {
    tokens: Vec<u32>,
    at_max: AtMaxTokens,
}

impl EndOfSequence {
    /// End tokens (at least one) and the rule at the maximum length.
    pub fn new(tokens: Vec<u32>, at_max: AtMaxTokens) -> Result<Self> {
        if tokens.is_empty() {
            return Err(SmcError::config(
                "end-of-sequence tokens",
                "at least one token id",
                "none",
            ));
        }
        Ok(Self { tokens, at_max })
    }

    /// The end tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The rule at the maximum length.
    pub fn at_max(&self) -> AtMaxTokens {
        self.at_max
    }

    /// The end tokens as a mask over `vocab` tokens (an error naming an id outside it).
    pub fn mask(&self, vocab: usize) -> Result<TokenMask> {
        TokenMask::from_ids(vocab, self.tokens.iter().copied())
    }

    /// Whether `token` ends an output.
    pub fn ends(&self, token: u32) -> bool {
        self.tokens.contains(&token)
    }
}

/// What a run uses beside the language model, the potential and the configuration; every
/// field is optional and the default is plain SMC on p0 with outputs of exactly T tokens.
#[derive(Clone, Copy, Default)]
pub struct RunOptions<'a> {
    /// A twist psi_t (learned or exact).
    pub twist: Option<&'a dyn Twist>,
    /// A prefix constraint, an exact indicator twist (spec §8).
    pub constraint: Option<&'a dyn Constraint>,
    /// Variable-length outputs: T becomes the maximum number of tokens.
    pub end: Option<&'a EndOfSequence>,
    /// Tokens after which a particle is at a boundary (a word, a sentence, a line): when the
    /// criterion fires, only particles at a boundary (or finished) are resampled, among
    /// themselves (see [`crate::feynman_kac::FeynmanKac::at_boundary`]).
    pub boundaries: Option<&'a TokenMask>,
    /// A potential that can score prefixes (a classifier on partial text), used as a twist
    /// on the targets: see [`PrefixTwist`].
    pub prefix_twist: Option<PrefixTwist<'a>>,
}

/// A potential scoring prefixes, used as a factor rho_t of the intermediate targets:
/// gamma_t = p0 psi_t rho_t, with rho_t = rho(s_{1:tau}) at tau = the last multiple of `stride`
/// up to t (rho_0 = 1), and gamma_T = p0 phi at the end. Whatever the proposal, the weight
/// gains rho_t / rho_{t-1}, and the terminal weight divides by the last rho: Zhat stays
/// unbiased for the same Z. Useful when phi is itself a smooth score of the text (a
/// classifier): SMC then resamples towards prefixes the classifier already likes. rho must be
/// positive (finite log) on every prefix: a zero would drop target mass, so `-inf` is an error.
#[derive(Clone, Copy)]
pub struct PrefixTwist<'a> {
    /// The potential, evaluated on prefixes.
    pub potential: &'a dyn Potential,
    /// Evaluate every `stride` tokens (>= 1).
    pub stride: usize,
}

impl<'a> RunOptions<'a> {
    /// Options with a twist.
    pub fn twist(twist: Option<&'a dyn Twist>) -> Self {
        Self {
            twist,
            ..Self::default()
        }
    }

    /// The same options with a constraint.
    pub fn with_constraint(mut self, constraint: &'a dyn Constraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// The same options with variable-length outputs.
    pub fn with_end(mut self, end: &'a EndOfSequence) -> Self {
        self.end = Some(end);
        self
    }

    /// The same options with a prefix twist.
    pub fn with_prefix_twist(mut self, potential: &'a dyn Potential, stride: usize) -> Self {
        self.prefix_twist = Some(PrefixTwist { potential, stride });
        self
    }

    /// The same options with boundary resampling.
    pub fn with_boundaries(mut self, boundaries: &'a TokenMask) -> Self {
        self.boundaries = Some(boundaries);
        self
    }
}
