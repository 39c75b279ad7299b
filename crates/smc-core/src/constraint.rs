//! Prefix constraints as exact twists (spec §8).
//!
//! A constraint C (a token set, an automaton, later a regex or grammar engine) defines the hard
//! potential 1[s in C]. Per particle it keeps a state that says which next tokens keep the
//! prefix completable: the set A_t(s_{<t}). The indicator twist
//! psi^C_t(s_{1:t}) = 1[s_{1:t} is a viable prefix] is zero only where 1[s in C] is zero for
//! every completion, so it may multiply any learned twist; the drivers
//! [`run_smc_constrained`](crate::smc::run_smc_constrained) and friends then propose from the
//! masked, renormalised distribution and gain the log of the allowed mass as incremental weight
//! (llamppl's `observe(mask)` with p0 proposals), and multiply the final potential by
//! 1\[accepted\].
//!
//! Two levels of interface:
//! - [`Constraint`] / [`ConstraintSession`]: a batch of K particle states, advanced with the
//!   chosen tokens, reordered at resampling, asked for masks ([`TokenMask`], a bitset over the
//!   vocabulary) and for final acceptance. Engines that batch their work implement this.
//! - [`PrefixAutomaton`]: one state per particle (`Clone`); every automaton is a
//!   [`Constraint`] through a session that shares states copy-on-write ([`Arc`]) between the
//!   duplicates that resampling makes, and computes a mask once for adjacent duplicates.
//!
//! Implementations here: [`TokenSetConstraint`] (a fixed set of forbidden token ids at every
//! step; "no token contains a character from SET" once a tokenizer names the ids) and
//! [`DfaConstraint`] (a deterministic automaton over token ids, for tests and small languages).

use std::sync::Arc;

use crate::batch::TokenBuffer;
use crate::error::{Result, SmcError};
use crate::model::Potential;

/// A set of token ids in `0..len` as a bitset (one bit per vocabulary token: 6.3 KB for
/// V = 50k, cheap to fill, copy and test whether most tokens are allowed or few).
///
/// Bits at positions `>= len` are always zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenMask {
    len: usize,
    words: Vec<u64>,
}

impl TokenMask {
    /// The empty set over a vocabulary of `len` tokens.
    pub fn none(len: usize) -> Self {
        Self {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Every token of a vocabulary of `len` tokens.
    pub fn all(len: usize) -> Self {
        let mut m = Self::none(len);
        m.fill(true);
        m
    }

    /// The given ids (ids `>= len` are an error).
    pub fn from_ids(len: usize, ids: impl IntoIterator<Item = u32>) -> Result<Self> {
        let mut m = Self::none(len);
        for id in ids {
            if id as usize >= len {
                return Err(SmcError::config(
                    "token id in a mask",
                    format!("< vocabulary size {len}"),
                    id,
                ));
            }
            m.insert(id);
        }
        Ok(m)
    }

    /// Vocabulary size (number of positions, allowed or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a vocabulary of size zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `token` is in the set (false for ids outside the vocabulary).
    pub fn contains(&self, token: u32) -> bool {
        let i = token as usize;
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Adds `token`.
    ///
    /// # Panics
    /// If `token >= len`.
    pub fn insert(&mut self, token: u32) {
        let i = token as usize;
        assert!(
            i < self.len,
            "token {i} outside a mask of {} tokens",
            self.len
        );
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Removes `token` (no effect outside the vocabulary).
    pub fn remove(&mut self, token: u32) {
        let i = token as usize;
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Sets every position to `allowed`.
    pub fn fill(&mut self, allowed: bool) {
        let fill = if allowed { u64::MAX } else { 0 };
        self.words.iter_mut().for_each(|w| *w = fill);
        self.clear_tail();
    }

    /// Keeps only the tokens also in `other` (same vocabulary size).
    pub fn intersect_with(&mut self, other: &TokenMask) {
        debug_assert_eq!(self.len, other.len);
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// Overwrites this mask with `other` (same vocabulary size; no allocation).
    pub fn copy_from(&mut self, other: &TokenMask) {
        self.len = other.len;
        self.words.clone_from(&other.words);
    }

    /// Number of tokens in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set has any token.
    pub fn any(&self) -> bool {
        self.words.iter().any(|&w| w != 0)
    }

    /// The tokens in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some((i * 64) as u32 + b)
            })
        })
    }

    /// The 64-bit words, bit `i % 64` of word `i / 64` for token i (for engines that fill
    /// masks word by word).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The words, mutable; bits at positions `>= len` must stay zero (use
    /// [`TokenMask::fill`] or [`TokenMask::insert`] if in doubt).
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << r) - 1;
        }
    }
}

/// A prefix constraint on the output tokens s_{1:T}: starts a batch of particle states.
pub trait Constraint {
    /// A short name for error messages and reports.
    fn name(&self) -> &str {
        "constraint"
    }

    /// Starts `num_particles` states for outputs of exactly `horizon` tokens after `prompt`,
    /// over a vocabulary of `vocab` tokens.
    fn start(
        &self,
        prompt: &[u32],
        num_particles: usize,
        horizon: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>>;

    /// Starts states for variable-length outputs of at most `max_tokens` tokens: masks then
    /// keep the prefixes that can be completed within (not exactly) the remaining steps. The
    /// default is [`Constraint::start`], right for constraints whose masks do not depend on
    /// the number of remaining steps (grammars, token sets); a [`PrefixAutomaton`] gets it
    /// from [`PrefixAutomaton::allowed_within`].
    fn start_within(
        &self,
        prompt: &[u32],
        num_particles: usize,
        max_tokens: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        self.start(prompt, num_particles, max_tokens, vocab)
    }
}

/// The constraint states of K particles during one run.
///
/// A session must accept any token in [`ConstraintSession::push`], also one outside the last
/// mask (the drivers push a placeholder for a particle whose mask was empty, whose weight is
/// zero from then on): such a particle is dead, its masks are empty and it is not accepted.
pub trait ConstraintSession {
    /// Number of particles K.
    fn num_particles(&self) -> usize;

    /// Overwrites `mask` (of the session's vocabulary size) with A_t(s_{<t}) of `particle`:
    /// the next tokens v after which s_{<t} v can still be completed within the constraint in
    /// the remaining steps. A superset is allowed (the weights stay exact: the final
    /// acceptance removes what the mask let through), a subset is not.
    fn allowed(&mut self, particle: usize, mask: &mut TokenMask) -> Result<()>;

    /// Appends one token to every particle (`tokens.len() == K`).
    fn push(&mut self, tokens: &[u32]) -> Result<()>;

    /// Reorders the particles: particle k continues from old particle `ancestors[k]`.
    fn reorder(&mut self, ancestors: &[usize]) -> Result<()>;

    /// Whether the constraint accepts the particle's output so far (asked after T pushes, and
    /// with variable-length outputs before any step, where it decides whether an end token is
    /// allowed).
    fn accepts(&self, particle: usize) -> Result<bool>;

    /// The particle has drawn an end-of-sequence token (variable-length outputs): the next
    /// [`ConstraintSession::push`] carries that end token for it, and so does every later one.
    /// The session must keep the particle's acceptance as it was before the end token (it was
    /// accepting, since the end token was allowed) and ignore those tokens. The default does
    /// nothing, right for sessions that consume an end token as accepting and ignore tokens
    /// after it (as grammar matchers do).
    fn end(&mut self, _particle: usize) -> Result<()> {
        Ok(())
    }
}

/// A constraint given by one state per particle: implement this and the type is a
/// [`Constraint`] (states shared copy-on-write between resampled duplicates).
pub trait PrefixAutomaton {
    /// The per-particle state (e.g. a DFA state, a grammar matcher).
    type State: Clone;

    /// A short name for error messages and reports.
    fn name(&self) -> &str {
        "constraint"
    }

    /// The state after the prompt, for outputs of `horizon` tokens.
    fn initial(&self, prompt: &[u32], horizon: usize, vocab: usize) -> Result<Self::State>;

    /// Overwrites `mask` with the tokens v such that the prefix followed by v can be completed
    /// with exactly `remaining` more tokens (T - t at step t) into an accepted output (a
    /// superset is allowed, see [`ConstraintSession::allowed`]).
    fn allowed(&self, state: &Self::State, remaining: usize, mask: &mut TokenMask) -> Result<()>;

    /// Overwrites `mask` with the tokens v such that the prefix followed by v can be completed
    /// with at most `remaining` more tokens into an accepted output (variable-length outputs).
    /// The default is the union of [`PrefixAutomaton::allowed`] over 0..=remaining.
    fn allowed_within(
        &self,
        state: &Self::State,
        remaining: usize,
        mask: &mut TokenMask,
    ) -> Result<()> {
        let mut exact = TokenMask::none(mask.len());
        mask.fill(false);
        for r in 0..=remaining {
            self.allowed(state, r, &mut exact)?;
            for (w, e) in mask.words_mut().iter_mut().zip(exact.words()) {
                *w |= e;
            }
        }
        Ok(())
    }

    /// The state after `token`; `None` if no accepted output starts with the extended prefix.
    fn advance(&self, state: &Self::State, token: u32) -> Result<Option<Self::State>>;

    /// Whether a complete output in this state is accepted.
    fn accepts(&self, state: &Self::State) -> bool;
}

impl<A: PrefixAutomaton> Constraint for A {
    fn name(&self) -> &str {
        PrefixAutomaton::name(self)
    }

    fn start(
        &self,
        prompt: &[u32],
        num_particles: usize,
        horizon: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        Ok(Box::new(AutomatonSession::new(
            self,
            prompt,
            num_particles,
            horizon,
            vocab,
            false,
        )?))
    }

    fn start_within(
        &self,
        prompt: &[u32],
        num_particles: usize,
        max_tokens: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        Ok(Box::new(AutomatonSession::new(
            self,
            prompt,
            num_particles,
            max_tokens,
            vocab,
            true,
        )?))
    }
}

impl<'a, A: PrefixAutomaton> AutomatonSession<'a, A> {
    /// Every particle in the automaton's state after `prompt`; masks ask for completions in
    /// exactly (`within` false) or at most (`within` true) the remaining steps.
    fn new(
        automaton: &'a A,
        prompt: &[u32],
        num_particles: usize,
        horizon: usize,
        vocab: usize,
        within: bool,
    ) -> Result<Self> {
        let first = Arc::new(automaton.initial(prompt, horizon, vocab)?);
        Ok(Self {
            automaton,
            states: vec![Some(first); num_particles],
            ended: vec![false; num_particles],
            horizon,
            within,
            pushed: 0,
            cache: None,
        })
    }
}

/// The session of a [`PrefixAutomaton`]: `None` is a dead particle.
struct AutomatonSession<'a, A: PrefixAutomaton> {
    automaton: &'a A,
    states: Vec<Option<Arc<A::State>>>,
    /// Particles that drew an end token: their state is frozen.
    ended: Vec<bool>,
    horizon: usize,
    /// Masks for completions within, not exactly, the remaining steps.
    within: bool,
    pushed: usize,
    /// The last mask computed, with the state it belongs to (kept alive, so the pointer
    /// identifies it) and the step: resampled duplicates share a state and are adjacent.
    cache: Option<(Arc<A::State>, usize, TokenMask)>,
}

impl<A: PrefixAutomaton> ConstraintSession for AutomatonSession<'_, A> {
    fn num_particles(&self) -> usize {
        self.states.len()
    }

    fn allowed(&mut self, particle: usize, mask: &mut TokenMask) -> Result<()> {
        let Some(state) = &self.states[particle] else {
            mask.fill(false);
            return Ok(());
        };
        if let Some((s, step, cached)) = &self.cache
            && *step == self.pushed
            && Arc::ptr_eq(s, state)
        {
            mask.copy_from(cached);
            return Ok(());
        }
        let remaining = self.horizon.saturating_sub(self.pushed + 1);
        if self.within {
            self.automaton.allowed_within(state, remaining, mask)?;
        } else {
            self.automaton.allowed(state, remaining, mask)?;
        }
        self.cache = Some((Arc::clone(state), self.pushed, mask.clone()));
        Ok(())
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.len() != self.states.len() {
            return Err(SmcError::Shape {
                component: format!("{} tokens pushed", PrefixAutomaton::name(self.automaton)),
                step: self.pushed + 1,
                expected: self.states.len(),
                found: tokens.len(),
            });
        }
        for ((slot, &tok), &ended) in self.states.iter_mut().zip(tokens).zip(&self.ended) {
            if ended {
                continue;
            }
            *slot = match slot.take() {
                Some(s) => self.automaton.advance(&s, tok)?.map(Arc::new),
                None => None,
            };
        }
        self.pushed += 1;
        self.cache = None;
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        let old = std::mem::take(&mut self.states);
        self.states = ancestors.iter().map(|&a| old[a].clone()).collect();
        self.ended = ancestors.iter().map(|&a| self.ended[a]).collect();
        Ok(())
    }

    fn end(&mut self, particle: usize) -> Result<()> {
        self.ended[particle] = true;
        Ok(())
    }

    fn accepts(&self, particle: usize) -> Result<bool> {
        Ok(self.states[particle]
            .as_ref()
            .is_some_and(|s| self.automaton.accepts(s)))
    }
}

/// Forbids a fixed set of token ids at every step (e.g. every token whose text contains a
/// character of a set, once a tokenizer names them). Accepts every output made of allowed
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSetConstraint {
    name: String,
    allowed: TokenMask,
}

impl TokenSetConstraint {
    /// Forbids `forbidden` (ids `< vocab`) in a vocabulary of `vocab` tokens.
    pub fn forbidding(
        name: impl Into<String>,
        vocab: usize,
        forbidden: impl IntoIterator<Item = u32>,
    ) -> Result<Self> {
        let forbidden = TokenMask::from_ids(vocab, forbidden)?;
        let mut allowed = TokenMask::all(vocab);
        for tok in forbidden.iter() {
            allowed.remove(tok);
        }
        Ok(Self {
            name: name.into(),
            allowed,
        })
    }

    /// Allows exactly the tokens of `allowed` at every step (its length is the vocabulary).
    pub fn allowing(name: impl Into<String>, allowed: TokenMask) -> Self {
        Self {
            name: name.into(),
            allowed,
        }
    }

    /// The tokens allowed at every step.
    pub fn allowed_tokens(&self) -> &TokenMask {
        &self.allowed
    }

    /// Whether a complete output is accepted (every token allowed).
    pub fn accepts_sequence(&self, tokens: &[u32]) -> bool {
        tokens.iter().all(|&t| self.allowed.contains(t))
    }
}

impl PrefixAutomaton for TokenSetConstraint {
    /// No state: only whether the particle is alive, which the session keeps.
    type State = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn initial(&self, _prompt: &[u32], _horizon: usize, vocab: usize) -> Result<()> {
        check_vocab(&self.name, self.allowed.len(), vocab)
    }

    fn allowed(&self, _state: &(), _remaining: usize, mask: &mut TokenMask) -> Result<()> {
        // Some allowed token exists, or none: then no prefix is viable, and the mask is empty.
        mask.copy_from(&self.allowed);
        Ok(())
    }

    fn advance(&self, _state: &(), token: u32) -> Result<Option<()>> {
        Ok(self.allowed.contains(token).then_some(()))
    }

    fn accepts(&self, _state: &()) -> bool {
        true
    }
}

fn check_vocab(name: &str, own: usize, vocab: usize) -> Result<()> {
    if own != vocab {
        return Err(SmcError::InvalidConfig {
            field: "constraint vocabulary size",
            expected: format!("the language model's {vocab}"),
            found: format!("{own} ({name})"),
        });
    }
    Ok(())
}

/// A deterministic finite automaton over token ids: `transitions[q * V + v]` is the state
/// after token v in state q (`None`: no accepted output continues this way). The prompt is not
/// read: the automaton starts in `start` at the first output token. A prefix is viable when an
/// accepting state is reachable with exactly the remaining number of tokens, so the masks are
/// exact (not a superset) for outputs of exactly T tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfaConstraint {
    name: String,
    vocab: usize,
    start: u32,
    transitions: Vec<Option<u32>>,
    accepting: Vec<bool>,
}

/// The state of a [`DfaConstraint`] particle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfaState {
    state: u32,
    /// `viable[r][q]`: an accepting state is reachable from q with exactly r tokens
    /// (shared by all particles of a run).
    viable: Arc<Vec<Vec<bool>>>,
    /// `within[r][q]`: with at most r tokens.
    within: Arc<Vec<Vec<bool>>>,
}

impl DfaState {
    /// The automaton state.
    pub fn state(&self) -> u32 {
        self.state
    }
}

impl DfaConstraint {
    /// Builds the automaton; `accepting.len()` is the number of states, `transitions` has
    /// `states * vocab` entries, each `None` or a state.
    pub fn new(
        name: impl Into<String>,
        vocab: usize,
        start: u32,
        transitions: Vec<Option<u32>>,
        accepting: Vec<bool>,
    ) -> Result<Self> {
        let states = accepting.len();
        if transitions.len() != states * vocab {
            return Err(SmcError::config(
                "DFA transition table length",
                format!("states * V = {}", states * vocab),
                transitions.len(),
            ));
        }
        if start as usize >= states {
            return Err(SmcError::config(
                "DFA start state",
                format!("< number of states {states}"),
                start,
            ));
        }
        if let Some(bad) = transitions
            .iter()
            .flatten()
            .find(|&&q| q as usize >= states)
        {
            return Err(SmcError::config(
                "DFA transition target",
                format!("< number of states {states}"),
                bad,
            ));
        }
        Ok(Self {
            name: name.into(),
            vocab,
            start,
            transitions,
            accepting,
        })
    }

    /// The state after `token` in state `q`.
    pub fn next(&self, q: u32, token: u32) -> Option<u32> {
        if token as usize >= self.vocab {
            return None;
        }
        self.transitions[q as usize * self.vocab + token as usize]
    }

    /// Whether the automaton accepts a complete output.
    pub fn accepts_sequence(&self, tokens: &[u32]) -> bool {
        let mut q = self.start;
        for &t in tokens {
            match self.next(q, t) {
                Some(n) => q = n,
                None => return false,
            }
        }
        self.accepting[q as usize]
    }

    /// `viable[r][q]` for r = 0..=horizon.
    fn viability(&self, horizon: usize) -> Vec<Vec<bool>> {
        let states = self.accepting.len();
        let mut viable = vec![self.accepting.clone()];
        for r in 1..=horizon {
            let prev = &viable[r - 1];
            let row = (0..states)
                .map(|q| {
                    self.transitions[q * self.vocab..(q + 1) * self.vocab]
                        .iter()
                        .any(|n| n.is_some_and(|n| prev[n as usize]))
                })
                .collect();
            viable.push(row);
        }
        viable
    }
}

impl PrefixAutomaton for DfaConstraint {
    type State = DfaState;

    fn name(&self) -> &str {
        &self.name
    }

    fn initial(&self, _prompt: &[u32], horizon: usize, vocab: usize) -> Result<DfaState> {
        check_vocab(&self.name, self.vocab, vocab)?;
        let viable = self.viability(horizon);
        let mut within = viable.clone();
        for r in 1..within.len() {
            let (done, rest) = within.split_at_mut(r);
            for (w, prev) in rest[0].iter_mut().zip(&done[r - 1]) {
                *w |= prev;
            }
        }
        Ok(DfaState {
            state: self.start,
            viable: Arc::new(viable),
            within: Arc::new(within),
        })
    }

    fn allowed(&self, state: &DfaState, remaining: usize, mask: &mut TokenMask) -> Result<()> {
        self.mask_from(state, state.viable.get(remaining), mask);
        Ok(())
    }

    fn allowed_within(
        &self,
        state: &DfaState,
        remaining: usize,
        mask: &mut TokenMask,
    ) -> Result<()> {
        self.mask_from(state, state.within.get(remaining), mask);
        Ok(())
    }

    fn advance(&self, state: &DfaState, token: u32) -> Result<Option<DfaState>> {
        Ok(self.next(state.state, token).map(|n| DfaState {
            state: n,
            viable: Arc::clone(&state.viable),
            within: Arc::clone(&state.within),
        }))
    }

    fn accepts(&self, state: &DfaState) -> bool {
        self.accepting[state.state as usize]
    }
}

impl DfaConstraint {
    /// The tokens leading from `state` to a state marked in `viable` (none without a row).
    fn mask_from(&self, state: &DfaState, viable: Option<&Vec<bool>>, mask: &mut TokenMask) {
        mask.fill(false);
        let Some(viable) = viable else {
            return;
        };
        let row = &self.transitions
            [state.state as usize * self.vocab..(state.state as usize + 1) * self.vocab];
        for (v, n) in row.iter().enumerate() {
            if n.is_some_and(|n| viable[n as usize]) {
                mask.insert(v as u32);
            }
        }
    }
}

/// Whether `constraint` accepts each of the given complete outputs (all of length T), by
/// pushing them through a session.
pub fn accepts_all(
    constraint: &dyn Constraint,
    prompt: &[u32],
    sequences: &TokenBuffer,
    vocab: usize,
) -> Result<Vec<bool>> {
    let k = sequences.num_particles();
    let horizon = sequences.len();
    let mut session = constraint.start(prompt, k, horizon, vocab)?;
    for t in 0..horizon {
        let column: Vec<u32> = sequences.iter().map(|s| s[t]).collect();
        session.push(&column)?;
    }
    (0..k).map(|p| session.accepts(p)).collect()
}

/// The hard potential phi(s) = 1[s accepted] (log phi = 0 or -inf, no floor), optionally times
/// another potential: the target of constrained SMC, for [`crate::tabular::Enumeration`].
pub struct ConstrainedPotential<'a> {
    name: String,
    constraint: &'a dyn Constraint,
    potential: Option<&'a dyn Potential>,
    vocab: usize,
}

impl<'a> ConstrainedPotential<'a> {
    /// phi × 1\[accepted\] (phi = 1 when `potential` is `None`), over a vocabulary of `vocab`.
    pub fn new(
        constraint: &'a dyn Constraint,
        potential: Option<&'a dyn Potential>,
        vocab: usize,
    ) -> Self {
        let name = match potential {
            Some(p) => format!("{} × 1[{}]", p.name(), constraint.name()),
            None => format!("1[{}]", constraint.name()),
        };
        Self {
            name,
            constraint,
            potential,
            vocab,
        }
    }
}

impl Potential for ConstrainedPotential<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        let accepted = accepts_all(self.constraint, prompt, sequences, self.vocab)?;
        let base = match self.potential {
            Some(p) => p.log_phi(prompt, sequences)?,
            None => vec![0.0; sequences.num_particles()],
        };
        Ok(base
            .into_iter()
            .zip(accepted)
            .map(|(l, a)| if a { l } else { f64::NEG_INFINITY })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_set_operations_and_tail_bits() {
        let mut m = TokenMask::all(70);
        assert_eq!(m.count(), 70);
        m.remove(3);
        m.remove(69);
        m.remove(100);
        assert!(!m.contains(3) && !m.contains(69) && !m.contains(70) && m.contains(68));
        assert_eq!(m.count(), 68);
        let ids: Vec<u32> = m.iter().collect();
        assert_eq!(ids.len(), 68);
        assert_eq!(ids[..4], [0, 1, 2, 4]);
        let other = TokenMask::from_ids(70, [1, 3, 68]).unwrap();
        m.intersect_with(&other);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![1, 68]);
        m.fill(false);
        assert!(!m.any());
        assert!(TokenMask::from_ids(4, [4]).is_err());
        assert_eq!(TokenMask::all(64).count(), 64);
    }
}
