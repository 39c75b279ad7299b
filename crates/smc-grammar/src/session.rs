//! A run's grammar states: one llguidance matcher per particle, shared copy-on-write.
//!
//! Resampling duplicates particles; duplicates share one matcher (an `Rc`) until they push
//! different tokens, so a mask is computed once per distinct state and step, and a matcher is
//! cloned only when a shared state forks. The matcher of the last group of holders advances in
//! place.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use llguidance::Matcher;
use llguidance::toktrie::SimpleVob;
use smc_core::constraint::{Constraint, ConstraintSession, TokenMask};
use smc_core::{Result, SmcError};

use crate::grammar::GrammarConstraint;

/// A particle's grammar state.
enum Slot {
    /// Matching; the matcher may have stopped (the grammar admits no further byte). Boxed:
    /// a matcher is large and dead slots are common.
    Live(Box<Matcher>),
    /// A token the grammar does not allow was pushed: no completion is accepted.
    Dead,
}

type Shared = Rc<RefCell<Slot>>;

/// The particles that hold one slot when tokens are pushed.
#[derive(Default)]
struct Holders {
    /// Some holder has ended: the slot must stay as it is.
    frozen: bool,
    /// The other holders, grouped by the token they push.
    groups: Vec<(u32, Vec<usize>)>,
}

/// The address of a shared slot: its identity while some `Rc` keeps it alive.
fn key(slot: &Shared) -> usize {
    Rc::as_ptr(slot) as usize
}

impl Constraint for GrammarConstraint {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(
        &self,
        _prompt: &[u32],
        num_particles: usize,
        _horizon: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        GrammarSession::start(self, num_particles, vocab, false)
    }

    fn start_within(
        &self,
        _prompt: &[u32],
        num_particles: usize,
        _max_tokens: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        GrammarSession::start(self, num_particles, vocab, true)
    }
}

struct GrammarSession<'a> {
    grammar: &'a GrammarConstraint,
    slots: Vec<Shared>,
    /// Particles that drew an end token: their state is frozen (accepting).
    ended: Vec<bool>,
    /// Variable-length outputs: end tokens are allowed exactly where the prefix is accepted.
    within: bool,
    /// The masks computed since the last push, by slot (the `Rc` keeps the address valid).
    masks: HashMap<usize, (Shared, TokenMask)>,
    pushed: usize,
}

impl<'a> GrammarSession<'a> {
    fn start(
        grammar: &'a GrammarConstraint,
        num_particles: usize,
        vocab: usize,
        within: bool,
    ) -> Result<Box<dyn ConstraintSession + 'a>> {
        if vocab != grammar.vocab {
            return Err(SmcError::Shape {
                component: format!(
                    "constraint {}: vocabulary it was compiled for",
                    grammar.name
                ),
                step: 0,
                expected: vocab,
                found: grammar.vocab,
            });
        }
        let first: Shared = Rc::new(RefCell::new(Slot::Live(Box::new(grammar.initial.clone()))));
        Ok(Box::new(Self {
            grammar,
            slots: vec![first; num_particles],
            ended: vec![false; num_particles],
            within,
            masks: HashMap::new(),
            pushed: 0,
        }))
    }

    fn engine_error(&self, what: &str, particle: usize, e: impl ToString) -> SmcError {
        SmcError::backend(
            format!(
                "constraint {}: {what} of particle {particle} after {} tokens",
                self.grammar.name, self.pushed
            ),
            e.to_string(),
        )
    }

    /// Sets the end tokens of `mask` to `accepting` with variable-length outputs, clears them
    /// otherwise (with exactly T tokens nothing ends an output).
    fn set_end_tokens(&self, mask: &mut TokenMask, accepting: bool) {
        for &e in &self.grammar.eos {
            if self.within && accepting {
                mask.insert(e);
            } else {
                mask.remove(e);
            }
        }
    }

    /// Computes the mask of `slot` into `mask`.
    fn compute(&self, particle: usize, slot: &Shared, mask: &mut TokenMask) -> Result<()> {
        let mut slot = slot.borrow_mut();
        let Slot::Live(m) = &mut *slot else {
            mask.fill(false);
            return Ok(());
        };
        let accepting = m
            .is_accepting()
            .map_err(|e| self.engine_error("acceptance", particle, e))?;
        if m.is_stopped() {
            mask.fill(false);
        } else {
            let vob = m
                .compute_mask()
                .map_err(|e| self.engine_error("token mask", particle, e))?;
            copy_vob(&vob, mask);
        }
        self.set_end_tokens(mask, accepting);
        Ok(())
    }

    /// The state after `token` from `slot`'s state: in place when `in_place`, else in a clone.
    /// `in_mask` says whether the token was in the slot's mask at this step (when computed).
    fn advance(
        &self,
        particle: usize,
        slot: &Shared,
        token: u32,
        in_mask: Option<bool>,
        in_place: bool,
    ) -> Result<Shared> {
        let dead = || Rc::new(RefCell::new(Slot::Dead));
        if in_mask == Some(false) || self.grammar.eos.contains(&token) {
            return Ok(dead());
        }
        let mut m = {
            let guard = slot.borrow();
            match &*guard {
                Slot::Dead => return Ok(Rc::clone(slot)),
                Slot::Live(m) if m.is_stopped() => return Ok(dead()),
                Slot::Live(_) if in_place => {
                    drop(guard);
                    return self.advance_in_place(particle, slot, token, in_mask);
                }
                Slot::Live(m) => m.as_ref().clone(),
            }
        };
        match m.consume_token(token) {
            Ok(()) => Ok(Rc::new(RefCell::new(Slot::Live(Box::new(m))))),
            Err(e) if in_mask == Some(true) => Err(self.engine_error("advancing", particle, e)),
            Err(_) => Ok(dead()),
        }
    }

    fn advance_in_place(
        &self,
        particle: usize,
        slot: &Shared,
        token: u32,
        in_mask: Option<bool>,
    ) -> Result<Shared> {
        let mut guard = slot.borrow_mut();
        let result = match &mut *guard {
            Slot::Live(m) => m.consume_token(token),
            Slot::Dead => return Ok(Rc::clone(slot)),
        };
        match result {
            Ok(()) => {}
            Err(e) if in_mask == Some(true) => {
                return Err(self.engine_error("advancing", particle, e));
            }
            Err(_) => *guard = Slot::Dead,
        }
        Ok(Rc::clone(slot))
    }
}

/// Copies llguidance's bitset (32-bit words, bit i % 32 of word i / 32) into a mask.
fn copy_vob(vob: &SimpleVob, mask: &mut TokenMask) {
    let src = vob.as_slice();
    let len = mask.len();
    let words = mask.words_mut();
    for (i, w) in words.iter_mut().enumerate() {
        let lo = u64::from(src.get(2 * i).copied().unwrap_or(0));
        let hi = u64::from(src.get(2 * i + 1).copied().unwrap_or(0));
        *w = lo | hi << 32;
    }
    // llguidance's bitset may be longer than the vocabulary (room for a sentinel id).
    let r = len % 64;
    if r != 0
        && let Some(last) = words.last_mut()
    {
        *last &= (1u64 << r) - 1;
    }
}

impl ConstraintSession for GrammarSession<'_> {
    fn num_particles(&self) -> usize {
        self.slots.len()
    }

    fn allowed(&mut self, particle: usize, mask: &mut TokenMask) -> Result<()> {
        if self.ended[particle] {
            mask.fill(false);
            self.set_end_tokens(mask, true);
            return Ok(());
        }
        let slot = Rc::clone(&self.slots[particle]);
        if let Some((_, cached)) = self.masks.get(&key(&slot)) {
            mask.copy_from(cached);
            return Ok(());
        }
        self.compute(particle, &slot, mask)?;
        self.masks.insert(key(&slot), (slot, mask.clone()));
        Ok(())
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        let k = self.slots.len();
        if tokens.len() != k {
            return Err(SmcError::Shape {
                component: format!("{} tokens pushed", self.grammar.name),
                step: self.pushed + 1,
                expected: k,
                found: tokens.len(),
            });
        }
        // A driver that does not call `end` first still ends a particle at an end token.
        if self.within {
            for (p, token) in tokens.iter().enumerate() {
                if !self.ended[p] && self.grammar.eos.contains(token) && self.accepts(p)? {
                    self.ended[p] = true;
                }
            }
        }
        let in_mask: Vec<Option<bool>> = tokens
            .iter()
            .zip(&self.slots)
            .map(|(&t, slot)| self.masks.get(&key(slot)).map(|(_, m)| m.contains(t)))
            .collect();
        self.masks.clear();
        // Holders of each slot, in order of first appearance, split by the token they push.
        let mut order: Vec<usize> = Vec::new();
        let mut holders: HashMap<usize, Holders> = HashMap::new();
        for (p, &token) in tokens.iter().enumerate() {
            let entry = holders.entry(key(&self.slots[p])).or_insert_with(|| {
                order.push(p);
                Holders::default()
            });
            if self.ended[p] {
                entry.frozen = true;
                continue;
            }
            match entry.groups.iter_mut().find(|(t, _)| *t == token) {
                Some((_, ps)) => ps.push(p),
                None => entry.groups.push((token, vec![p])),
            }
        }
        let mut next = self.slots.clone();
        for first in order {
            let slot = Rc::clone(&self.slots[first]);
            let Some(Holders { frozen, groups }) = holders.remove(&key(&slot)) else {
                continue;
            };
            let n = groups.len();
            for (i, (token, members)) in groups.into_iter().enumerate() {
                // The last group may take the state itself unless an ended particle keeps it.
                let in_place = i + 1 == n && !frozen;
                let advanced =
                    self.advance(members[0], &slot, token, in_mask[members[0]], in_place)?;
                for p in members {
                    next[p] = Rc::clone(&advanced);
                }
            }
        }
        self.slots = next;
        self.pushed += 1;
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.slots = ancestors
            .iter()
            .map(|&a| Rc::clone(&self.slots[a]))
            .collect();
        self.ended = ancestors.iter().map(|&a| self.ended[a]).collect();
        Ok(())
    }

    fn accepts(&self, particle: usize) -> Result<bool> {
        let mut slot = self.slots[particle].borrow_mut();
        match &mut *slot {
            Slot::Dead => Ok(false),
            Slot::Live(m) => m
                .is_accepting()
                .map_err(|e| self.engine_error("acceptance", particle, e)),
        }
    }

    fn end(&mut self, particle: usize) -> Result<()> {
        self.ended[particle] = true;
        Ok(())
    }
}
