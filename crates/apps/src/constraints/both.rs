//! Several constraints at once: the indicator twist of their intersection is the product of
//! their indicator twists, so the mask is the intersection of their masks and an output is
//! accepted when every one accepts it.

use smc_core::constraint::{Constraint, ConstraintSession, TokenMask};
use smc_core::{Result, SmcError};

/// The intersection of constraints (e.g. `--constraint no-chars:e` with the prefix check of
/// `--potential keyword:dragon`).
pub struct AllOf {
    name: String,
    parts: Vec<Box<dyn Constraint>>,
}

impl AllOf {
    /// The intersection of `parts` (at least one).
    pub fn new(parts: Vec<Box<dyn Constraint>>) -> Self {
        let name = parts
            .iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>()
            .join(" and ");
        Self { name, parts }
    }

    fn sessions<'a>(
        &'a self,
        start: impl Fn(&'a dyn Constraint) -> Result<Box<dyn ConstraintSession + 'a>>,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + 'a>> {
        if self.parts.is_empty() {
            return Err(SmcError::backend(
                "an intersection of constraints",
                "no constraint given",
            ));
        }
        let sessions = self
            .parts
            .iter()
            .map(|p| start(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(AllOfSession {
            sessions,
            scratch: TokenMask::none(vocab),
        }))
    }
}

impl Constraint for AllOf {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(
        &self,
        prompt: &[u32],
        num_particles: usize,
        horizon: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        self.sessions(|c| c.start(prompt, num_particles, horizon, vocab), vocab)
    }

    fn start_within(
        &self,
        prompt: &[u32],
        num_particles: usize,
        max_tokens: usize,
        vocab: usize,
    ) -> Result<Box<dyn ConstraintSession + '_>> {
        self.sessions(
            |c| c.start_within(prompt, num_particles, max_tokens, vocab),
            vocab,
        )
    }
}

struct AllOfSession<'a> {
    sessions: Vec<Box<dyn ConstraintSession + 'a>>,
    scratch: TokenMask,
}

impl ConstraintSession for AllOfSession<'_> {
    fn num_particles(&self) -> usize {
        self.sessions[0].num_particles()
    }

    fn allowed(&mut self, particle: usize, mask: &mut TokenMask) -> Result<()> {
        let (first, rest) = self.sessions.split_at_mut(1);
        first[0].allowed(particle, mask)?;
        for s in rest {
            if !mask.any() {
                break;
            }
            s.allowed(particle, &mut self.scratch)?;
            mask.intersect_with(&self.scratch);
        }
        Ok(())
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        self.sessions.iter_mut().try_for_each(|s| s.push(tokens))
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.sessions
            .iter_mut()
            .try_for_each(|s| s.reorder(ancestors))
    }

    fn accepts(&self, particle: usize) -> Result<bool> {
        for s in &self.sessions {
            if !s.accepts(particle)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn end(&mut self, particle: usize) -> Result<()> {
        self.sessions.iter_mut().try_for_each(|s| s.end(particle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smc_core::constraint::TokenSetConstraint;

    #[test]
    fn masks_intersect_and_acceptance_needs_every_part() {
        let a = TokenSetConstraint::forbidding("no 0", 4, [0]).unwrap();
        let b = TokenSetConstraint::forbidding("no 1", 4, [1]).unwrap();
        let both = AllOf::new(vec![Box::new(a), Box::new(b)]);
        assert_eq!(both.name(), "no 0 and no 1");
        let mut s = both.start(&[], 2, 3, 4).unwrap();
        let mut mask = TokenMask::none(4);
        s.allowed(0, &mut mask).unwrap();
        assert_eq!(mask.iter().collect::<Vec<_>>(), vec![2, 3]);
        s.push(&[2, 1]).unwrap();
        s.reorder(&[1, 1]).unwrap();
        assert!(!s.accepts(0).unwrap());
        s.allowed(0, &mut mask).unwrap();
        assert!(!mask.any());
    }
}
