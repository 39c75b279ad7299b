//! The Feynman–Kac model of twisted SMC on a language model (see the module docs of
//! [`crate::smc`] for the weights).

use rand::{Rng, RngExt};
use rayon::prelude::*;

use super::ending::{AtMaxTokens, EndOfSequence, PrefixTwist};
use super::{Proposal, SmcOutput};
use crate::batch::{LogTable, TokenBuffer, gather};
use crate::constraint::{Constraint, ConstraintSession, TokenMask};
use crate::error::{Result, SmcError};
use crate::feynman_kac::{FeynmanKac, LoopOutput};
use crate::logspace::{ExpSums, RowTerms};
use crate::model::{DecodeSession, NextToken, Potential, Twist, TwistInput, checked_log_phi};

/// The Feynman–Kac model of twisted SMC on a language model.
pub struct TwistedLm<'a, S: DecodeSession> {
    session: S,
    twist: Option<&'a dyn Twist>,
    potential: &'a dyn Potential,
    proposal: Proposal,
    prompt: &'a [u32],
    /// Steps of the loop: T, or T + 1 when an end token is forced after T tokens.
    horizon: usize,
    /// The most tokens an output has (T).
    max_tokens: usize,
    vocab: usize,
    tokens: TokenBuffer,
    log_psi_prev: Vec<f64>,
    log_p0: Vec<f64>,
    log_q: Vec<f64>,
    log_phi: Vec<f64>,
    constraint: Option<ActiveConstraint<'a>>,
    end: Option<ActiveEnd<'a>>,
    boundaries: Option<&'a TokenMask>,
    /// Whether some particle's output has been accepted by the constraint so far.
    accepted_any: bool,
    prefix: Option<ActivePrefix<'a>>,
    /// Each particle's row sums of the current step, kept to reuse their buffers.
    row_sums: Vec<ExpSums>,
}

/// Entries (K x V) from which a step's row normalisers are spread over the threads.
const PARALLEL_ROW_WORK: usize = 1 << 16;

/// A prefix twist during a run: log rho of each particle's last scored prefix.
struct ActivePrefix<'a> {
    twist: PrefixTwist<'a>,
    prev: Vec<f64>,
}

/// A constraint's session during a run, with its mask buffer.
struct ActiveConstraint<'a> {
    name: String,
    session: Box<dyn ConstraintSession + 'a>,
    mask: TokenMask,
}

/// Variable-length outputs during a run.
struct ActiveEnd<'a> {
    rule: &'a EndOfSequence,
    /// The end tokens as a mask (the proposal of the forced step).
    mask: TokenMask,
    /// Whether each particle has ended, and its output length (without the end token).
    finished: Vec<bool>,
    lengths: Vec<usize>,
}

impl<'a, S: DecodeSession> TwistedLm<'a, S> {
    /// Builds the model from a started session, for outputs of exactly `horizon` tokens.
    pub fn new(
        session: S,
        vocab: usize,
        twist: Option<&'a dyn Twist>,
        potential: &'a dyn Potential,
        proposal: Proposal,
        prompt: &'a [u32],
        horizon: usize,
    ) -> Self {
        let k = session.num_particles();
        Self {
            session,
            twist,
            potential,
            proposal,
            prompt,
            horizon,
            max_tokens: horizon,
            vocab,
            tokens: TokenBuffer::new(k, horizon),
            log_psi_prev: vec![0.0; k],
            log_p0: vec![0.0; k],
            log_q: vec![0.0; k],
            log_phi: vec![0.0; k],
            constraint: None,
            end: None,
            boundaries: None,
            accepted_any: false,
            prefix: None,
            row_sums: Vec::new(),
        }
    }

    /// The same model with variable-length outputs of at most `horizon` tokens (call before
    /// [`TwistedLm::with_constraint`]): a particle ends at an end token; with
    /// [`AtMaxTokens::ForceEnd`] one more step forces an end token after T tokens.
    pub fn with_end(mut self, end: &'a EndOfSequence) -> Result<Self> {
        if self.constraint.is_some() {
            return Err(SmcError::config(
                "order of TwistedLm options",
                "with_end before with_constraint",
                "with_constraint first",
            ));
        }
        let k = self.tokens.num_particles();
        let mask = end.mask(self.vocab)?;
        if end.at_max() == AtMaxTokens::ForceEnd {
            self.horizon = self.max_tokens + 1;
            self.tokens = TokenBuffer::new(k, self.horizon);
        }
        self.end = Some(ActiveEnd {
            rule: end,
            mask,
            finished: vec![false; k],
            lengths: vec![0; k],
        });
        Ok(self)
    }

    /// The same model under a prefix constraint: psi^C_t = 1[viable prefix] multiplies the
    /// twist (or replaces psi = 1), proposals draw from the masked distribution, and the final
    /// potential is phi × 1\[accepted\] (spec §8).
    pub fn with_constraint(mut self, constraint: &'a dyn Constraint) -> Result<Self> {
        let k = self.tokens.num_particles();
        let session = match self.end {
            Some(_) => constraint.start_within(self.prompt, k, self.max_tokens, self.vocab)?,
            None => constraint.start(self.prompt, k, self.horizon, self.vocab)?,
        };
        if session.num_particles() != k {
            return Err(SmcError::Shape {
                component: format!("{} session particles", constraint.name()),
                step: 0,
                expected: k,
                found: session.num_particles(),
            });
        }
        self.constraint = Some(ActiveConstraint {
            name: constraint.name().to_string(),
            session,
            mask: TokenMask::none(self.vocab),
        });
        Ok(self)
    }

    /// The same model resampling only particles at a boundary: those whose last token is in
    /// `boundaries`, and finished ones.
    pub fn with_boundaries(mut self, boundaries: &'a TokenMask) -> Result<Self> {
        if boundaries.len() != self.vocab {
            return Err(SmcError::Shape {
                component: "boundary token mask".into(),
                step: 0,
                expected: self.vocab,
                found: boundaries.len(),
            });
        }
        self.boundaries = Some(boundaries);
        Ok(self)
    }

    /// The same model with a prefix twist rho on the targets (see [`PrefixTwist`]).
    pub fn with_prefix_twist(mut self, twist: PrefixTwist<'a>) -> Result<Self> {
        if twist.stride == 0 {
            return Err(SmcError::config("prefix twist stride", ">= 1", 0));
        }
        let k = self.tokens.num_particles();
        self.prefix = Some(ActivePrefix {
            twist,
            prev: vec![0.0; k],
        });
        Ok(self)
    }

    /// Multiplies the weights by rho_t / rho_{t-1} (scoring the running particles' prefixes at
    /// multiples of the stride) and divides the complete outputs' weights by their last rho.
    fn apply_prefix_twist(
        &mut self,
        t: usize,
        terminal: &[usize],
        log_alpha: &mut [f64],
    ) -> Result<()> {
        let Some(prefix) = self.prefix.as_mut() else {
            return Ok(());
        };
        for &p in terminal {
            log_alpha[p] -= prefix.prev[p];
        }
        let scores_now = t < self.horizon && t.is_multiple_of(prefix.twist.stride);
        if !scores_now {
            return Ok(());
        }
        let end = self.end.as_ref();
        let running: Vec<usize> = (0..log_alpha.len())
            .filter(|&p| {
                !terminal.contains(&p)
                    && !end.is_some_and(|e| e.finished[p])
                    && log_alpha[p] > f64::NEG_INFINITY
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let rows: Vec<Vec<u32>> = running
            .iter()
            .map(|&p| self.tokens.row(p).to_vec())
            .collect();
        let potential = prefix.twist.potential;
        let scores = checked_log_phi(potential, self.prompt, &TokenBuffer::from_rows(&rows), t)?;
        for (&p, &lrho) in running.iter().zip(&scores) {
            if lrho == f64::NEG_INFINITY {
                return Err(SmcError::InvalidValue {
                    component: format!(
                        "prefix twist {} (must be positive on every prefix)",
                        potential.name()
                    ),
                    step: t,
                    particle: p,
                    value: lrho,
                });
            }
            log_alpha[p] += lrho - prefix.prev[p];
            prefix.prev[p] = lrho;
        }
        Ok(())
    }

    fn check_table(&self, table: &LogTable, component: &str, step: usize) -> Result<()> {
        let k = self.tokens.num_particles();
        if table.rows() != k || table.cols() != self.vocab {
            return Err(SmcError::Shape {
                component: component.to_string(),
                step,
                expected: k * self.vocab,
                found: table.rows() * table.cols(),
            });
        }
        Ok(())
    }

    fn is_finished(&self, p: usize) -> bool {
        self.end.as_ref().is_some_and(|e| e.finished[p])
    }

    /// Fills the constraint's mask for particle `p`, with the end tokens allowed exactly when
    /// the constraint accepts the prefix; `Ok(false)` without a constraint.
    fn constraint_mask(&mut self, p: usize, t: usize) -> Result<bool> {
        let Some(c) = self.constraint.as_mut() else {
            return Ok(false);
        };
        c.session.allowed(p, &mut c.mask)?;
        if c.mask.len() != self.vocab {
            return Err(SmcError::Shape {
                component: format!("{} mask", c.name),
                step: t,
                expected: self.vocab,
                found: c.mask.len(),
            });
        }
        if let Some(end) = &self.end {
            let accepts = c.session.accepts(p)?;
            for &eos in end.rule.tokens() {
                if accepts {
                    c.mask.insert(eos);
                } else {
                    c.mask.remove(eos);
                }
            }
            if t == self.horizon && end.rule.at_max() == AtMaxTokens::ForceEnd {
                c.mask.intersect_with(&end.mask);
            }
        }
        Ok(true)
    }

    /// log phi of the particles `which` (each with `len` tokens), with the constraint's
    /// acceptance (a particle it does not accept gets phi = 0); errors for a reference that
    /// is not accepted. Returns whether any of them is accepted.
    fn weigh_outputs(
        &mut self,
        which: &[usize],
        len: usize,
        t: usize,
        clamp: Option<u32>,
        log_alpha: &mut [f64],
    ) -> Result<bool> {
        if which.is_empty() {
            return Ok(false);
        }
        let rows: Vec<Vec<u32>> = which
            .iter()
            .map(|&p| self.tokens.row(p)[..len].to_vec())
            .collect();
        let mut log_phi = checked_log_phi(
            self.potential,
            self.prompt,
            &TokenBuffer::from_rows(&rows),
            t,
        )?;
        let mut any_accepted = false;
        for (&p, lphi) in which.iter().zip(log_phi.iter_mut()) {
            if let Some(c) = &self.constraint {
                if c.session.accepts(p)? {
                    any_accepted = true;
                } else {
                    if p == 0 && clamp.is_some() {
                        return Err(SmcError::Reference(format!(
                            "the reference is not accepted by constraint {}",
                            c.name
                        )));
                    }
                    *lphi = f64::NEG_INFINITY;
                }
            }
            let a = &mut log_alpha[p];
            if *a != f64::NEG_INFINITY {
                // For the twisted proposal the sampled token's psi cancels only where it is
                // finite; a particle with psi = 0 cannot have been proposed.
                *a = if *lphi == f64::NEG_INFINITY {
                    f64::NEG_INFINITY
                } else {
                    *a + *lphi
                };
            }
            self.log_phi[p] = *lphi;
        }
        Ok(any_accepted)
    }

    /// The end of a step once each particle's token and incremental weight are known: the
    /// constraint and the model take the tokens, the outputs that ended are weighed by phi.
    fn finish_step(
        &mut self,
        t: usize,
        clamp: Option<u32>,
        next: Vec<u32>,
        mut log_alpha: Vec<f64>,
        log_psi_now: Vec<f64>,
        ending: Vec<usize>,
    ) -> Result<Vec<f64>> {
        let k = self.num_particles();
        if let Some(c) = self.constraint.as_mut() {
            for &p in &ending {
                c.session.end(p)?;
            }
        }
        self.tokens.push(&next);
        // The model's forward pass over the new tokens only serves the next step: after the
        // last step, or once every particle has ended, nobody reads it.
        let all_ended = self.end.as_ref().is_some_and(|e| {
            e.finished
                .iter()
                .enumerate()
                .all(|(p, &f)| f || ending.contains(&p))
        });
        if t < self.horizon && !all_ended {
            self.session.push(&next)?;
        }
        if let Some(c) = self.constraint.as_mut() {
            c.session.push(&next)?;
        }
        for (p, psi) in log_psi_now.into_iter().enumerate() {
            if !self.is_finished(p) {
                self.log_psi_prev[p] = psi;
            }
        }
        let mut terminal = ending.clone();
        if t == self.horizon {
            terminal.extend((0..k).filter(|&p| !self.is_finished(p) && !ending.contains(&p)));
        }
        self.apply_prefix_twist(t, &terminal, &mut log_alpha)?;
        let mut any_accepted = self.weigh_outputs(&ending, t - 1, t, clamp, &mut log_alpha)?;
        if let Some(e) = self.end.as_mut() {
            for &p in &ending {
                e.finished[p] = true;
                e.lengths[p] = t - 1;
            }
        }
        if t == self.horizon {
            let running: Vec<usize> = (0..k)
                .filter(|&p| !self.is_finished(p) && !ending.contains(&p))
                .collect();
            any_accepted |= self.weigh_outputs(&running, t, t, clamp, &mut log_alpha)?;
        }
        self.accepted_any |= any_accepted;
        if let Some(c) = &self.constraint
            && t == self.horizon
            && !self.accepted_any
        {
            return Err(SmcError::Constraint {
                constraint: c.name.clone(),
                step: t,
                horizon: self.horizon,
                num_particles: k,
            });
        }
        Ok(log_alpha)
    }

    /// A step of the base proposal on a session that draws from p0 itself
    /// ([`DecodeSession::draws_from_p0`]): no row is fetched; the incremental weight is
    /// psi_t / psi_{t-1} (spec §3), exact for the whole vocabulary.
    fn step_drawn(&mut self, t: usize, clamp: Option<u32>, rng: &mut dyn Rng) -> Result<Vec<f64>> {
        let k = self.num_particles();
        if let Some(tok) = clamp
            && tok as usize >= self.vocab
        {
            return Err(SmcError::Reference(format!(
                "token {tok} at step {t} is outside the vocabulary of size {}",
                self.vocab
            )));
        }
        let finished: Vec<bool> = (0..k).map(|p| self.is_finished(p)).collect();
        let wanted: Vec<NextToken> = (0..k)
            .map(|p| match (p, clamp) {
                _ if finished[p] => NextToken::Skip,
                (0, Some(tok)) => NextToken::Given(tok),
                _ => NextToken::Draw,
            })
            .collect();
        let seed: u64 = rng.random();
        let drawn = self
            .session
            .draw_from_p0(&wanted, self.horizon - t + 1, seed)?;
        if drawn.len() != k {
            return Err(SmcError::Shape {
                component: "tokens drawn from p0 by the model".into(),
                step: t,
                expected: k,
                found: drawn.len(),
            });
        }
        let log_psi = match self.twist {
            Some(twist) => {
                let table = twist.log_psi(&TwistInput {
                    step: t,
                    horizon: self.max_tokens,
                    prompt: self.prompt,
                    prefixes: &self.tokens,
                    hidden: None,
                })?;
                self.check_table(&table, twist.name(), t)?;
                Some(table)
            }
            None => None,
        };
        let twist_name = self.twist.map_or("twist", |tw| tw.name());
        let mut next = vec![0u32; k];
        let mut log_alpha = vec![0.0; k];
        let mut log_psi_now = vec![0.0; k];
        let mut ending = Vec::new();
        for p in 0..k {
            if finished[p] {
                next[p] = self.tokens.row(p)[t - 2];
                continue;
            }
            let (token, lp0) = match (drawn[p], wanted[p]) {
                (Some((tok, _)), NextToken::Given(given)) if tok != given => {
                    return Err(SmcError::Reference(format!(
                        "the model returned token {tok} at step {t} for the reference's {given}"
                    )));
                }
                (Some(d), _) => d,
                (None, _) => {
                    return Err(SmcError::Shape {
                        component: format!("tokens drawn from p0 by the model (particle {p})"),
                        step: t,
                        expected: 1,
                        found: 0,
                    });
                }
            };
            if token as usize >= self.vocab {
                return Err(invalid("language model", t, p, f64::from(token)));
            }
            if lp0.is_nan() || lp0 > 1e-6 {
                return Err(invalid("language model", t, p, lp0));
            }
            let lpsi = log_psi
                .as_ref()
                .map_or(0.0, |tab| tab.row(p)[token as usize]);
            if lpsi.is_nan() || lpsi == f64::INFINITY {
                return Err(invalid(twist_name, t, p, lpsi));
            }
            self.log_p0[p] += lp0;
            self.log_q[p] += lp0;
            next[p] = token;
            log_psi_now[p] = lpsi;
            let ends = self.end.as_ref().is_some_and(|e| e.rule.ends(token));
            let terminal = ends || t == self.horizon;
            log_alpha[p] = if terminal {
                -self.log_psi_prev[p]
            } else {
                lpsi - self.log_psi_prev[p]
            };
            if lp0 == f64::NEG_INFINITY || self.log_psi_prev[p] == f64::NEG_INFINITY {
                log_alpha[p] = f64::NEG_INFINITY;
            }
            if ends {
                ending.push(p);
            }
        }
        self.finish_step(t, clamp, next, log_alpha, log_psi_now, ending)
    }

    /// Consumes the model into the run's output.
    pub(super) fn into_output(self, out: LoopOutput) -> SmcOutput {
        let steps_run = self.tokens.len();
        let (lengths, finished) = match &self.end {
            Some(e) => (
                e.lengths
                    .iter()
                    .zip(&e.finished)
                    .map(|(&l, &f)| if f { l } else { steps_run })
                    .collect(),
                e.finished.clone(),
            ),
            None => (
                vec![steps_run; self.log_p0.len()],
                vec![false; self.log_p0.len()],
            ),
        };
        let tokens = self
            .tokens
            .iter()
            .zip(&lengths)
            .map(|(row, &l)| row[..l].to_vec())
            .collect();
        SmcOutput {
            tokens,
            lengths,
            finished,
            log_w: out.log_w,
            log_p0: self.log_p0,
            log_q: self.log_q,
            log_phi: self.log_phi,
            log_z_hat: out.log_z_hat,
            steps: out.steps,
            ancestors: out.ancestors,
        }
    }
}

pub(super) fn invalid(component: &str, step: usize, particle: usize, value: f64) -> SmcError {
    SmcError::InvalidValue {
        component: component.to_string(),
        step,
        particle,
        value,
    }
}

/// A uniform draw on [0, 1) for [`ExpSums::draw`].
pub(super) fn uniform(rng: &mut dyn Rng) -> f64 {
    rng.random()
}

impl<S: DecodeSession> FeynmanKac for TwistedLm<'_, S> {
    fn num_particles(&self) -> usize {
        self.tokens.num_particles()
    }

    fn horizon(&self) -> usize {
        self.horizon
    }

    fn step(&mut self, t: usize, clamp: Option<u32>, rng: &mut dyn Rng) -> Result<Vec<f64>> {
        let k = self.num_particles();
        // The base proposal without a token mask is p0 itself: a session that draws from p0
        // (a serving engine, over its whole vocabulary) is asked for tokens, not rows.
        let base = self.proposal == Proposal::Base || self.twist.is_none();
        if base && self.constraint.is_none() && t <= self.max_tokens && self.session.draws_from_p0()
        {
            return self.step_drawn(t, clamp, rng);
        }
        let out = self.session.next_log_probs()?;
        self.check_table(&out.log_probs, "language model", t)?;
        // The forced end step proposes end tokens only, with psi = 1 there.
        let forced = t > self.max_tokens;
        let log_psi = match self.twist {
            Some(twist) if !forced => {
                let table = twist.log_psi(&TwistInput {
                    step: t,
                    horizon: self.max_tokens,
                    prompt: self.prompt,
                    prefixes: &self.tokens,
                    hidden: out.hidden.as_ref(),
                })?;
                self.check_table(&table, twist.name(), t)?;
                Some(table)
            }
            _ => None,
        };
        let twist_name = self.twist.map_or("twist", |tw| tw.name());
        // An unnormalised table (p0 on a subset of the vocabulary): the base proposal is the
        // renormalised row, and its weight carries the row's mass (see
        // `DecodeSession::log_probs_normalised`).
        let base_mass = !self.session.log_probs_normalised();

        let mut next = vec![0u32; k];
        let mut log_alpha = vec![0.0; k];
        let mut log_psi_now = vec![0.0; k];
        let mut ending = Vec::new();
        let mut empty_masks = 0;
        // The constraint's masks, particle by particle (its sessions are sequential), kept so
        // that the proposals' normalisers (the step's largest cost outside the model) run on
        // all cores at once.
        let finished: Vec<bool> = (0..k).map(|p| self.is_finished(p)).collect();
        let mut masks: Vec<Option<TokenMask>> = Vec::with_capacity(k);
        for (p, &done) in finished.iter().enumerate() {
            let mask = if !done && self.constraint_mask(p, t)? {
                self.constraint.as_ref().map(|c| c.mask.clone())
            } else {
                None
            };
            masks.push(mask);
        }
        // Without a constraint, the forced end step proposes the end tokens only.
        let end_mask = (self.end.as_ref())
            .filter(|_| forced && self.constraint.is_none())
            .map(|e| &e.mask);
        let mask_of = |p: usize| masks[p].as_ref().or(end_mask);
        let twisted = self.proposal == Proposal::Twisted && log_psi.is_some();
        // The proposal's log normaliser: log Z_t for the twisted proposal, 0 for p0; under a
        // constraint, over the allowed tokens only. The same terms are drawn from below.
        let terms = |p: usize| {
            RowTerms::new(out.log_probs.row(p))
                .plus(log_psi.as_ref().filter(|_| twisted).map(|tab| tab.row(p)))
                .masked(mask_of(p).map(TokenMask::words))
        };
        let mut sums = std::mem::take(&mut self.row_sums);
        sums.resize_with(k, ExpSums::new);
        let normaliser = |(p, s): (usize, &mut ExpSums)| {
            if finished[p] {
                0.0
            } else {
                s.log_sum_exp(terms(p))
            }
        };
        let log_norms: Vec<f64> = if k > 1 && k * self.vocab >= PARALLEL_ROW_WORK {
            sums.par_iter_mut().enumerate().map(normaliser).collect()
        } else {
            sums.iter_mut().enumerate().map(normaliser).collect()
        };
        for p in 0..k {
            if finished[p] {
                // A finished particle repeats its end token and keeps its weight.
                next[p] = self.tokens.row(p)[t - 2];
                continue;
            }
            let row_p0 = out.log_probs.row(p);
            let row_psi = log_psi.as_ref().map(|tab| tab.row(p));
            let mask = match (&self.constraint, masks[p].as_ref()) {
                (Some(c), Some(m)) => Some((m, c.name.as_str())),
                _ => end_mask.map(|m| (m, "end of sequence")),
            };
            let terms = terms(p);
            let log_norm = log_norms[p];
            if log_norm.is_nan() || log_norm == f64::INFINITY {
                let component = if twisted {
                    twist_name
                } else {
                    "language model"
                };
                return Err(invalid(component, t, p, log_norm));
            }
            if let (Some((m, name)), 0, Some(tok)) = (mask, p, clamp)
                && !m.contains(tok)
            {
                return Err(SmcError::Reference(format!(
                    "token {tok} at step {t} is not allowed by constraint {name}: no output \
                     accepted by the constraint starts with the reference's prefix"
                )));
            }
            if log_norm == f64::NEG_INFINITY {
                let Some((m, _)) = mask else {
                    return Err(SmcError::NoPositiveWeight {
                        step: t,
                        horizon: self.horizon,
                        num_particles: k,
                    });
                };
                // Under a constraint: nothing allowed has positive proposal mass, so the
                // particle's weight is zero from here on; it carries a placeholder token.
                if !m.any() {
                    empty_masks += 1;
                }
                let token = match (p, clamp) {
                    (0, Some(tok)) => tok,
                    _ => m.iter().next().unwrap_or(0),
                };
                self.log_p0[p] += row_p0[token as usize];
                self.log_q[p] = f64::NEG_INFINITY;
                next[p] = token;
                log_psi_now[p] = f64::NEG_INFINITY;
                log_alpha[p] = f64::NEG_INFINITY;
                if forced {
                    ending.push(p);
                }
                continue;
            }
            let token = match (p, clamp) {
                (0, Some(tok)) => {
                    if tok as usize >= self.vocab {
                        return Err(SmcError::Reference(format!(
                            "token {tok} at step {t} is outside the vocabulary of size {}",
                            self.vocab
                        )));
                    }
                    tok as usize
                }
                _ => sums[p]
                    .draw(terms, uniform(rng))
                    .ok_or(SmcError::NoPositiveWeight {
                        step: t,
                        horizon: self.horizon,
                        num_particles: k,
                    })?,
            };
            let lp0 = row_p0[token];
            let lpsi = row_psi.map_or(0.0, |psi| psi[token]);
            if lpsi.is_nan() || lpsi == f64::INFINITY {
                return Err(invalid(twist_name, t, p, lpsi));
            }
            if clamp.is_some()
                && p == 0
                && self.proposal == Proposal::Twisted
                && lpsi == f64::NEG_INFINITY
            {
                return Err(SmcError::Reference(format!(
                    "token {token} at step {t} has zero probability under the twisted proposal \
                     ({twist_name} gives log psi = -inf): the twist must be positive wherever the \
                     target is"
                )));
            }
            let log_q_token = if twisted {
                lp0 + lpsi - log_norm
            } else {
                lp0 - log_norm
            };
            self.log_p0[p] += lp0;
            self.log_q[p] += log_q_token;
            next[p] = token as u32;
            log_psi_now[p] = lpsi;
            // The output is complete after an end token or at the last step: the target
            // trades psi for phi there (added once the potential is known).
            let ends = self.end.as_ref().is_some_and(|e| e.rule.ends(token as u32));
            let terminal = ends || t == self.horizon;
            log_alpha[p] = match self.proposal {
                Proposal::Twisted if !terminal => log_norm - self.log_psi_prev[p],
                Proposal::Twisted => log_norm - self.log_psi_prev[p] - lpsi,
                Proposal::Base if !terminal => lpsi - self.log_psi_prev[p],
                Proposal::Base => -self.log_psi_prev[p],
            };
            // The base proposal under a constraint is p0 restricted to A_t, and with an
            // unnormalised session p0 on the returned subset: in both p0 / q = the row's mass on
            // what may be drawn (log_norm is log 1 = 0 up to rounding otherwise, and is left
            // out there so that unconstrained runs stay bit-identical).
            if (base_mass || mask.is_some()) && self.proposal == Proposal::Base {
                log_alpha[p] += log_norm;
            }
            // A particle whose p0 or twist weight is zero stays at weight zero (never NaN).
            if lp0 == f64::NEG_INFINITY || self.log_psi_prev[p] == f64::NEG_INFINITY {
                log_alpha[p] = f64::NEG_INFINITY;
            }
            if ends {
                ending.push(p);
            }
        }
        self.row_sums = sums;
        if let Some(c) = &self.constraint
            && empty_masks == k
        {
            return Err(SmcError::Constraint {
                constraint: c.name.clone(),
                step: t,
                horizon: self.horizon,
                num_particles: k,
            });
        }
        self.finish_step(t, clamp, next, log_alpha, log_psi_now, ending)
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.tokens.gather(ancestors);
        gather(&mut self.log_psi_prev, ancestors);
        gather(&mut self.log_p0, ancestors);
        gather(&mut self.log_q, ancestors);
        gather(&mut self.log_phi, ancestors);
        if let Some(prefix) = self.prefix.as_mut() {
            gather(&mut prefix.prev, ancestors);
        }
        if let Some(e) = self.end.as_mut() {
            gather(&mut e.finished, ancestors);
            gather(&mut e.lengths, ancestors);
        }
        if let Some(c) = self.constraint.as_mut() {
            c.session.reorder(ancestors)?;
        }
        self.session.reorder(ancestors)
    }

    fn finished(&self) -> bool {
        self.end
            .as_ref()
            .is_some_and(|e| e.finished.iter().all(|&f| f))
    }

    fn at_boundary(&self, particle: usize) -> bool {
        match self.boundaries {
            None => true,
            Some(b) => {
                self.is_finished(particle)
                    || self
                        .tokens
                        .row(particle)
                        .last()
                        .is_some_and(|&tok| b.contains(tok))
            }
        }
    }
}
