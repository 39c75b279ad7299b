//! Twisted SMC for language models: the Feynman–Kac model built from a base LM, an optional
//! twist and a potential, and the drivers (SIS, bootstrap SMC with twisted targets, twisted SMC,
//! conditional SMC).
//!
//! Per particle the model carries log gamma_t = log p0(s_{1:t}) + log psi_t(s_{1:t}) implicitly
//! through `log_psi_prev` (log psi_{t-1}(s_{1:t-1}), 0 at t = 1) and the incremental weights of
//! spec §3:
//! - twisted proposal, t < T: log alpha_t = log Z_t - log psi_{t-1}
//! - twisted proposal, t = T: log alpha_T = log Z_T + log phi - log psi_{T-1} - log psi_T(s_{1:T})
//! - base proposal, t < T:    log alpha_t = log psi_t - log psi_{t-1}
//! - base proposal, t = T:    log alpha_T = log phi - log psi_{T-1}
//!
//! A session whose rows are p0 on a subset only (`DecodeSession::log_probs_normalised` false)
//! makes the base proposal the renormalised row and adds log M_t (the row's log-sum-exp) to
//! the base proposal's log alpha_t; the twisted proposal's log Z_t already includes it.
//!
//! With a prefix constraint ([`crate::constraint`], spec §8) the twist becomes
//! psi_t = psi^C_t psi_t, psi^C_t = 1[s_{1:t} viable]: both proposals draw from the masked,
//! renormalised distribution (the twisted one from p0 psi_t on A_t, the base one from p0 on
//! A_t) and the proposal's log normaliser over A_t enters the weight (for the base proposal it
//! is log of the allowed p0 mass, llamppl's `observe(mask)`); the final potential is
//! phi × 1\[accepted\]. Without a constraint every formula and every draw is unchanged.

use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::batch::{LogTable, TokenBuffer, gather};
use crate::constraint::{Constraint, ConstraintSession, TokenMask};
use crate::error::{Result, SmcError};
use crate::feynman_kac::{self, FeynmanKac, LoopOutput, Resampling, StepRecord};
use crate::logspace::{log_sum_exp, log_sum_exp_sum, normalized_weights};
use crate::model::{DecodeSession, LanguageModel, Potential, Twist, TwistInput, checked_log_phi};
use crate::resampling::{Criterion, Scheme};

/// The random number generator of every driver: portable, so a seed gives the same result on
/// every platform and version of this crate.
pub type SmcRng = rand::rngs::Xoshiro256PlusPlus;

/// Makes the driver RNG from a seed.
pub fn rng_from_seed(seed: u64) -> SmcRng {
    SmcRng::seed_from_u64(seed)
}

/// Which distribution proposes s_t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proposal {
    /// The base model p0 (bootstrap proposal; twists only enter the targets).
    Base,
    /// The twisted proposal q_t(v) ∝ p0(v | s_{<t}) psi_t(s_{<t}, v).
    #[default]
    Twisted,
}

/// Configuration of one SMC run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmcConfig {
    /// Number of particles K.
    pub num_particles: usize,
    /// Number of output tokens T.
    pub horizon: usize,
    /// The proposal.
    pub proposal: Proposal,
    /// Resampling scheme and criterion.
    pub resampling: Resampling,
    /// Seed of the RNG.
    pub seed: u64,
}

impl SmcConfig {
    /// Sequential importance sampling (no resampling) with the given proposal.
    pub fn sis(num_particles: usize, horizon: usize, proposal: Proposal) -> Self {
        Self {
            num_particles,
            horizon,
            proposal,
            resampling: Resampling {
                scheme: Scheme::Multinomial,
                criterion: Criterion::Never,
            },
            seed: 0,
        }
    }

    /// Bootstrap SMC: proposal p0, resampling every step (twists, if any, shape the targets).
    pub fn bootstrap(num_particles: usize, horizon: usize) -> Self {
        Self {
            num_particles,
            horizon,
            proposal: Proposal::Base,
            resampling: Resampling::default(),
            seed: 0,
        }
    }

    /// Twisted SMC: twisted proposal, resampling every step.
    pub fn twisted(num_particles: usize, horizon: usize) -> Self {
        Self {
            num_particles,
            horizon,
            proposal: Proposal::Twisted,
            resampling: Resampling::default(),
            seed: 0,
        }
    }

    /// The same configuration with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same configuration with another scheme.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.resampling.scheme = scheme;
        self
    }

    /// The same configuration with another criterion.
    pub fn with_criterion(mut self, criterion: Criterion) -> Self {
        self.resampling.criterion = criterion;
        self
    }
}

/// The result of an SMC run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmcOutput {
    /// The final particles' tokens s_{1:T}.
    pub tokens: Vec<Vec<u32>>,
    /// Final unnormalised log weights.
    pub log_w: Vec<f64>,
    /// log p0(s_{1:T} | prompt) of each final particle.
    pub log_p0: Vec<f64>,
    /// log q(s_{1:T}) of each final particle under the proposal (the product of the per-step
    /// proposal probabilities along its lineage).
    pub log_q: Vec<f64>,
    /// log phi(s_{1:T}) of each final particle.
    pub log_phi: Vec<f64>,
    /// log Zhat.
    pub log_z_hat: f64,
    /// Per-step ESS, running log Zhat and resampling events.
    pub steps: Vec<StepRecord>,
    /// The genealogy (see [`LoopOutput::ancestors`]).
    pub ancestors: Vec<Vec<usize>>,
}

impl SmcOutput {
    /// Normalised final weights.
    pub fn weights(&self) -> Vec<f64> {
        normalized_weights(&self.log_w)
    }

    /// Per-step ESS.
    pub fn ess(&self) -> Vec<f64> {
        self.steps.iter().map(|s| s.ess).collect()
    }

    /// Number of steps after which the particles were resampled.
    pub fn num_resamplings(&self) -> usize {
        self.steps.iter().filter(|s| s.resampled).count()
    }
}

/// The Feynman–Kac model of twisted SMC on a language model.
pub struct TwistedLm<'a, S: DecodeSession> {
    session: S,
    twist: Option<&'a dyn Twist>,
    potential: &'a dyn Potential,
    proposal: Proposal,
    prompt: &'a [u32],
    horizon: usize,
    vocab: usize,
    tokens: TokenBuffer,
    log_psi_prev: Vec<f64>,
    log_p0: Vec<f64>,
    log_q: Vec<f64>,
    log_phi: Vec<f64>,
    constraint: Option<ActiveConstraint<'a>>,
}

/// A constraint's session during a run, with its mask buffer.
struct ActiveConstraint<'a> {
    name: String,
    session: Box<dyn ConstraintSession + 'a>,
    mask: TokenMask,
}

impl<'a, S: DecodeSession> TwistedLm<'a, S> {
    /// Builds the model from a started session.
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
            vocab,
            tokens: TokenBuffer::new(k, horizon),
            log_psi_prev: vec![0.0; k],
            log_p0: vec![0.0; k],
            log_q: vec![0.0; k],
            log_phi: vec![0.0; k],
            constraint: None,
        }
    }

    /// The same model under a prefix constraint: psi^C_t = 1[viable prefix] multiplies the
    /// twist (or replaces psi = 1), proposals draw from the masked distribution, and the final
    /// potential is phi × 1\[accepted\] (spec §8).
    pub fn with_constraint(mut self, constraint: &'a dyn Constraint) -> Result<Self> {
        let k = self.tokens.num_particles();
        let session = constraint.start(self.prompt, k, self.horizon, self.vocab)?;
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

    /// Consumes the model into the run's output.
    fn into_output(self, out: LoopOutput) -> SmcOutput {
        SmcOutput {
            tokens: self.tokens.to_rows(),
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

fn invalid(component: &str, step: usize, particle: usize, value: f64) -> SmcError {
    SmcError::InvalidValue {
        component: component.to_string(),
        step,
        particle,
        value,
    }
}

/// Draws an index from an unnormalised log-distribution with log normaliser `lse`.
fn sample_categorical(
    log_p: impl Iterator<Item = f64>,
    lse: f64,
    rng: &mut dyn Rng,
) -> Option<usize> {
    let u: f64 = rng.random();
    let mut cum = 0.0;
    let mut last_positive = None;
    for (i, lp) in log_p.enumerate() {
        let p = (lp - lse).exp();
        if p > 0.0 {
            cum += p;
            last_positive = Some(i);
            if u < cum {
                return Some(i);
            }
        }
    }
    last_positive
}

/// log Σ_{v in mask} exp(row_p0[v] + row_psi[v]) (row_psi = 0 when absent); `-inf` for an
/// empty mask; NaN if an allowed entry is NaN. Same arithmetic as [`log_sum_exp_sum`] and
/// [`log_sum_exp`] when every token is allowed.
fn masked_log_sum_exp(row_p0: &[f64], row_psi: Option<&[f64]>, mask: &TokenMask) -> f64 {
    let term = |v: u32| row_p0[v as usize] + row_psi.map_or(0.0, |psi| psi[v as usize]);
    let mut max = f64::NEG_INFINITY;
    for v in mask.iter() {
        let x = term(v);
        if x.is_nan() {
            return f64::NAN;
        }
        max = max.max(x);
    }
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = mask.iter().map(|v| (term(v) - max).exp()).sum();
    max + sum.ln()
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
        let out = self.session.next_log_probs()?;
        self.check_table(&out.log_probs, "language model", t)?;
        let log_psi = match self.twist {
            Some(twist) => {
                let table = twist.log_psi(&TwistInput {
                    step: t,
                    horizon: self.horizon,
                    prompt: self.prompt,
                    prefixes: &self.tokens,
                    hidden: out.hidden.as_ref(),
                })?;
                self.check_table(&table, twist.name(), t)?;
                Some(table)
            }
            None => None,
        };
        let twist_name = self.twist.map_or("twist", |tw| tw.name());
        // An unnormalised table (p0 on a subset of the vocabulary): the base proposal is the
        // renormalised row, and its weight carries the row's mass (see
        // `DecodeSession::log_probs_normalised`).
        let base_mass = !self.session.log_probs_normalised();

        let mut next = vec![0u32; k];
        let mut log_alpha = vec![0.0; k];
        let mut log_psi_now = vec![0.0; k];
        let mut empty_masks = 0;
        for p in 0..k {
            let row_p0 = out.log_probs.row(p);
            let row_psi = log_psi.as_ref().map(|tab| tab.row(p));
            let twisted = self.proposal == Proposal::Twisted && row_psi.is_some();
            if let Some(c) = self.constraint.as_mut() {
                c.session.allowed(p, &mut c.mask)?;
                if c.mask.len() != self.vocab {
                    return Err(SmcError::Shape {
                        component: format!("{} mask", c.name),
                        step: t,
                        expected: self.vocab,
                        found: c.mask.len(),
                    });
                }
            }
            let mask = self.constraint.as_ref().map(|c| (&c.mask, c.name.as_str()));
            // The proposal's log normaliser: log Z_t for the twisted proposal, 0 for p0; under
            // a constraint, over the allowed tokens only.
            let log_norm = match (mask, twisted) {
                (None, true) => log_sum_exp_sum(row_p0, row_psi.unwrap_or_default()),
                (None, false) => log_sum_exp(row_p0),
                (Some((m, _)), true) => masked_log_sum_exp(row_p0, row_psi, m),
                (Some((m, _)), false) => masked_log_sum_exp(row_p0, None, m),
            };
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
                _ => {
                    let drawn = match (mask, twisted, row_psi) {
                        (None, true, Some(psi)) => sample_categorical(
                            row_p0.iter().zip(psi).map(|(a, b)| a + b),
                            log_norm,
                            rng,
                        ),
                        (None, _, _) => sample_categorical(row_p0.iter().copied(), log_norm, rng),
                        (Some((m, _)), _, _) => {
                            let psi = if twisted { row_psi } else { None };
                            sample_categorical(
                                (0..self.vocab as u32).map(|v| {
                                    if m.contains(v) {
                                        row_p0[v as usize] + psi.map_or(0.0, |psi| psi[v as usize])
                                    } else {
                                        f64::NEG_INFINITY
                                    }
                                }),
                                log_norm,
                                rng,
                            )
                        }
                    };
                    drawn.ok_or(SmcError::NoPositiveWeight {
                        step: t,
                        horizon: self.horizon,
                        num_particles: k,
                    })?
                }
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
            log_alpha[p] = match self.proposal {
                Proposal::Twisted if t < self.horizon => log_norm - self.log_psi_prev[p],
                Proposal::Twisted => log_norm - self.log_psi_prev[p] - lpsi,
                Proposal::Base if t < self.horizon => lpsi - self.log_psi_prev[p],
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
        }
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
        self.tokens.push(&next);
        self.session.push(&next)?;
        if let Some(c) = self.constraint.as_mut() {
            c.session.push(&next)?;
        }
        self.log_psi_prev = log_psi_now;

        if t == self.horizon {
            let mut log_phi = checked_log_phi(self.potential, self.prompt, &self.tokens, t)?;
            if let Some(c) = &self.constraint {
                let mut any_accepted = false;
                for (p, lphi) in log_phi.iter_mut().enumerate() {
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
                if !any_accepted {
                    return Err(SmcError::Constraint {
                        constraint: c.name.clone(),
                        step: t,
                        horizon: self.horizon,
                        num_particles: k,
                    });
                }
            }
            for (&lphi, a) in log_phi.iter().zip(log_alpha.iter_mut()) {
                if *a != f64::NEG_INFINITY {
                    // For the twisted proposal the sampled token's psi_T cancels only where it
                    // is finite; a particle with psi_T = 0 cannot have been proposed.
                    *a = if lphi == f64::NEG_INFINITY {
                        f64::NEG_INFINITY
                    } else {
                        *a + lphi
                    };
                }
            }
            self.log_phi = log_phi;
        }
        Ok(log_alpha)
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.tokens.gather(ancestors);
        gather(&mut self.log_psi_prev, ancestors);
        gather(&mut self.log_p0, ancestors);
        gather(&mut self.log_q, ancestors);
        if let Some(c) = self.constraint.as_mut() {
            c.session.reorder(ancestors)?;
        }
        self.session.reorder(ancestors)
    }
}

/// Runs SMC (or SIS, with [`Criterion::Never`]) for the target p0(s | prompt) phi(s) / Z,
/// with intermediate targets p0 psi_t when a twist is given.
pub fn run_smc<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    prompt: &[u32],
    config: &SmcConfig,
) -> Result<SmcOutput> {
    run_inner(lm, twist, potential, None, prompt, config, None)
}

/// [`run_smc`] under a prefix constraint (spec §8): the target is
/// p0(s | prompt) phi(s) 1[s accepted] / Z, the twist (or psi = 1) is multiplied by the
/// constraint's indicator twist 1[viable prefix], proposals draw from the masked, renormalised
/// distribution, and the incremental weights gain the log of the allowed proposal mass.
/// Zhat stays unbiased for Z = E_{p0}[phi 1\[accepted\]].
///
/// Errors with [`SmcError::Constraint`] when every particle's mask is empty at some step or no
/// particle's output is accepted at T.
pub fn run_smc_constrained<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    constraint: &dyn Constraint,
    prompt: &[u32],
    config: &SmcConfig,
) -> Result<SmcOutput> {
    run_inner(lm, twist, potential, Some(constraint), prompt, config, None)
}

/// Conditional SMC: particle 0 is clamped to `reference` (an exact target sample gives the SMC
/// upper bound E[log Zhat] >= log Z; with [`Criterion::Never`] this is the SIS upper bound).
///
/// Resampling must be multinomial unless the criterion is [`Criterion::Never`]: the K - 1 plain
/// draws are the conditional form of multinomial resampling only, so any other scheme that
/// resamples is refused with [`SmcError::InvalidConfig`] naming it
/// ([`Resampling::check_conditional`]).
pub fn run_csmc<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    prompt: &[u32],
    config: &SmcConfig,
    reference: &[u32],
) -> Result<SmcOutput> {
    run_inner(lm, twist, potential, None, prompt, config, Some(reference))
}

/// [`run_csmc`] under a prefix constraint (see [`run_smc_constrained`]). A reference with a
/// token outside the constraint's mask, or not accepted at T, is an
/// [`SmcError::Reference`] error naming the constraint.
pub fn run_csmc_constrained<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    constraint: &dyn Constraint,
    prompt: &[u32],
    config: &SmcConfig,
    reference: &[u32],
) -> Result<SmcOutput> {
    run_inner(
        lm,
        twist,
        potential,
        Some(constraint),
        prompt,
        config,
        Some(reference),
    )
}

fn run_inner<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    constraint: Option<&dyn Constraint>,
    prompt: &[u32],
    config: &SmcConfig,
    reference: Option<&[u32]>,
) -> Result<SmcOutput> {
    if config.num_particles == 0 {
        return Err(SmcError::config("number of particles K", ">= 1", 0));
    }
    if config.horizon == 0 {
        return Err(SmcError::config("number of steps T", ">= 1", 0));
    }
    if reference.is_some() {
        config.resampling.check_conditional()?;
    }
    let session = lm.start(prompt, config.num_particles)?;
    if session.num_particles() != config.num_particles {
        return Err(SmcError::Shape {
            component: "language model session particles".into(),
            step: 0,
            expected: config.num_particles,
            found: session.num_particles(),
        });
    }
    let mut model = TwistedLm::new(
        session,
        lm.vocab_size(),
        twist,
        potential,
        config.proposal,
        prompt,
        config.horizon,
    );
    if let Some(c) = constraint {
        model = model.with_constraint(c)?;
    }
    let mut rng = rng_from_seed(config.seed);
    let out = feynman_kac::run(&mut model, config.resampling, reference, &mut rng)?;
    Ok(model.into_output(out))
}

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
                masked_log_sum_exp(row_p0, row_psi, mask)
            } else if let Some(row_psi) = row_psi {
                log_sum_exp_sum(row_p0, row_psi)
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
    let mut tokens = TokenBuffer::new(n, horizon);
    let mut log_p0 = vec![0.0; n];
    for t in 1..=horizon {
        let out = session.next_log_probs()?;
        let mut next = vec![0u32; n];
        for (p, tok) in next.iter_mut().enumerate() {
            let row = out.log_probs.row(p);
            let lse = log_sum_exp(row);
            let i = sample_categorical(row.iter().copied(), lse, rng).ok_or(
                SmcError::NoPositiveWeight {
                    step: t,
                    horizon,
                    num_particles: n,
                },
            )?;
            log_p0[p] += row[i] - lse;
            *tok = i as u32;
        }
        tokens.push(&next);
        session.push(&next)?;
    }
    Ok((tokens.to_rows(), log_p0))
}
