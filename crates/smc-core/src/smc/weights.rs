//! Importance weights of given sequences (teacher forcing) and plain ancestral sampling.

use rand::{Rng, RngExt};

use super::Proposal;
use super::twisted::{invalid, uniform};
use crate::batch::TokenBuffer;
use crate::constraint::{Constraint, TokenMask};
use crate::error::{Result, SmcError};
use crate::logspace::{ExpSums, RowTerms, row_log_sum_exp};
use crate::model::{
    DecodeSession, LanguageModel, NextToken, Potential, Twist, TwistInput, checked_log_phi,
};

/// The importance log weights log sigma~(s) - log q(s) of given sequences (all of the same
/// length T) under a proposal: q = p0 for [`Proposal::Base`] or without a twist, the twisted
/// proposal otherwise. These are the single-sample values whose means are F_q (s ~ q) and G_q
/// (s ~ sigma); one teacher-forced pass ([`LanguageModel::teacher_forced`]) instead of a
/// conditional-SMC run per sequence. Equal to what a one-particle SIS run clamped to `s` returns.
pub fn log_weights_of<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    prompt: &[u32],
    proposal: Proposal,
    sequences: &[Vec<u32>],
) -> Result<Vec<f64>> {
    log_weights_inner(lm, twist, potential, None, prompt, proposal, sequences)
}

/// [`log_weights_of`] under a prefix constraint: log sigma~(s) - log q(s) with
/// sigma~ = p0 phi 1\[accepted\] and q the masked proposal of [`run_smc_constrained`], i.e.
/// Σ_t (log M_t - log psi_t(s_{1:t})) + log phi(s) for the twisted proposal and
/// Σ_t log M_t + log phi(s) for the base one, M_t the proposal's mass on the allowed tokens;
/// `-inf` for an output that the constraint does not accept at T. A token outside the mask
/// (q(s) = 0) is an [`SmcError::Reference`] error naming the constraint.
pub fn log_weights_of_constrained<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    constraint: &dyn Constraint,
    prompt: &[u32],
    proposal: Proposal,
    sequences: &[Vec<u32>],
) -> Result<Vec<f64>> {
    log_weights_inner(
        lm,
        twist,
        potential,
        Some(constraint),
        prompt,
        proposal,
        sequences,
    )
}

fn log_weights_inner<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    constraint: Option<&dyn Constraint>,
    prompt: &[u32],
    proposal: Proposal,
    sequences: &[Vec<u32>],
) -> Result<Vec<f64>> {
    let n = sequences.len();
    let horizon = sequences.first().map_or(0, Vec::len);
    if n == 0 {
        return Ok(Vec::new());
    }
    if horizon == 0 {
        return Err(SmcError::config("number of steps T", ">= 1", 0));
    }
    let vocab = lm.vocab_size();
    let outputs = lm.teacher_forced(prompt, sequences)?;
    let mut log_w = vec![0.0; n];
    let mut prefixes = TokenBuffer::new(n, horizon);
    let twisted = match twist {
        Some(tw) if proposal == Proposal::Twisted => Some(tw),
        _ => None,
    };
    let mut active = match constraint {
        Some(c) => Some((
            c.name(),
            c.start(prompt, n, horizon, vocab)?,
            TokenMask::none(vocab),
        )),
        None => None,
    };
    for (t, out) in (1..=horizon).zip(&outputs) {
        let column: Vec<u32> = sequences.iter().map(|s| s[t - 1]).collect();
        if let Some(&tok) = column.iter().find(|&&tok| tok as usize >= vocab) {
            return Err(SmcError::Reference(format!(
                "token {tok} at step {t} is outside the vocabulary of size {vocab}"
            )));
        }
        let psi = match twisted {
            Some(tw) => Some(tw.log_psi(&TwistInput {
                step: t,
                horizon,
                prompt,
                prefixes: &prefixes,
                hidden: out.hidden.as_ref(),
            })?),
            None => None,
        };
        for (p, &tok) in column.iter().enumerate() {
            let row_p0 = out.log_probs.row(p);
            if row_p0[tok as usize] == f64::NEG_INFINITY {
                log_w[p] = f64::NEG_INFINITY;
            }
            let row_psi = psi.as_ref().map(|table| table.row(p));
            let lpsi = match (twisted, row_psi) {
                (Some(tw), Some(row_psi)) => {
                    let lpsi = row_psi[tok as usize];
                    if lpsi.is_nan() || lpsi == f64::INFINITY {
                        return Err(invalid(tw.name(), t, p, lpsi));
                    }
                    if lpsi == f64::NEG_INFINITY {
                        return Err(SmcError::Reference(format!(
                            "token {tok} at step {t} of sequence {p} has zero probability under \
                             the twisted proposal ({} gives log psi = -inf)",
                            tw.name()
                        )));
                    }
                    lpsi
                }
                _ => 0.0,
            };
            let log_norm = if let Some((name, session, mask)) = active.as_mut() {
                session.allowed(p, mask)?;
                if !mask.contains(tok) {
                    return Err(SmcError::Reference(format!(
                        "token {tok} at step {t} of sequence {p} is not allowed by constraint \
                         {name}"
                    )));
                }
                row_log_sum_exp(
                    RowTerms::new(row_p0)
                        .plus(row_psi)
                        .masked(Some(mask.words())),
                )
            } else if let Some(row_psi) = row_psi {
                row_log_sum_exp(RowTerms::new(row_p0).plus(Some(row_psi)))
            } else {
                continue;
            };
            if log_norm.is_nan() || log_norm == f64::INFINITY {
                let component = twisted.map_or("language model", |tw| tw.name());
                return Err(invalid(component, t, p, log_norm));
            }
            log_w[p] += log_norm - lpsi;
        }
        if let Some((_, session, _)) = active.as_mut() {
            session.push(&column)?;
        }
        prefixes.push(&column);
    }
    let log_phi = checked_log_phi(potential, prompt, &prefixes, horizon)?;
    for (p, (w, &lphi)) in log_w.iter_mut().zip(&log_phi).enumerate() {
        *w += lphi;
        if let Some((_, session, _)) = &active
            && !session.accepts(p)?
        {
            *w = f64::NEG_INFINITY;
        }
    }
    Ok(log_w)
}

/// Draws `n` independent sequences of `horizon` tokens from p0(. | prompt) by ancestral
/// sampling, returning the tokens and their log p0.
pub fn sample_base<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    n: usize,
    rng: &mut dyn Rng,
) -> Result<(Vec<Vec<u32>>, Vec<f64>)> {
    if n == 0 || horizon == 0 {
        return Ok((vec![Vec::new(); n], vec![0.0; n]));
    }
    let mut session = lm.start(prompt, n)?;
    session.reserve(horizon)?;
    let mut tokens = TokenBuffer::new(n, horizon);
    let mut log_p0 = vec![0.0; n];
    if session.draws_from_p0() {
        // The model draws from p0 itself (a serving engine: whole vocabulary, several tokens
        // per round trip).
        let wanted = vec![NextToken::Draw; n];
        for t in 1..=horizon {
            let seed: u64 = rng.random();
            let drawn = session.draw_from_p0(&wanted, horizon - t + 1, seed)?;
            let mut next = vec![0u32; n];
            for (p, tok) in next.iter_mut().enumerate() {
                let (token, lp0) =
                    drawn
                        .get(p)
                        .copied()
                        .flatten()
                        .ok_or_else(|| SmcError::Shape {
                            component: format!("tokens drawn from p0 by the model (particle {p})"),
                            step: t,
                            expected: 1,
                            found: 0,
                        })?;
                if token as usize >= lm.vocab_size() || lp0.is_nan() || lp0 > 1e-6 {
                    return Err(invalid("language model", t, p, lp0));
                }
                log_p0[p] += lp0;
                *tok = token;
            }
            tokens.push(&next);
            if t < horizon {
                session.push(&next)?;
            }
        }
        return Ok((tokens.to_rows(), log_p0));
    }
    let mut sums = ExpSums::new();
    for t in 1..=horizon {
        let out = session.next_log_probs()?;
        let mut next = vec![0u32; n];
        for (p, tok) in next.iter_mut().enumerate() {
            let row = out.log_probs.row(p);
            let lse = sums.log_sum_exp(RowTerms::new(row));
            let i =
                sums.draw(RowTerms::new(row), uniform(rng))
                    .ok_or(SmcError::NoPositiveWeight {
                        step: t,
                        horizon,
                        num_particles: n,
                    })?;
            log_p0[p] += row[i] - lse;
            *tok = i as u32;
        }
        tokens.push(&next);
        session.push(&next)?;
    }
    Ok((tokens.to_rows(), log_p0))
}
