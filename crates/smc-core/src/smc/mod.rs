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
//!
//! With variable-length outputs ([`EndOfSequence`]) T is the maximum number of tokens. A
//! particle that draws an end token at step t is complete: its weight takes the terminal form
//! above at step t (psi_t of the end token traded for phi of the text before it), and it takes
//! incremental weight 1 at every later step; the loop stops once every particle has ended.
//! Under a constraint an end token is allowed exactly when the constraint accepts the prefix,
//! and masks ask for completions within (not exactly) the remaining steps.
//!
//! With boundaries ([`RunOptions::boundaries`]) a firing criterion resamples only the
//! particles at a boundary, among themselves, sharing their total weight (partial resampling):
//! the sum of the weights is unchanged, so Zhat stays unbiased.

mod ending;
mod twisted;
mod weights;

pub use ending::{AtMaxTokens, EndOfSequence, PrefixTwist, RunOptions};
pub use twisted::TwistedLm;
pub use weights::{log_weights_of, log_weights_of_constrained, sample_base};

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::error::{Result, SmcError};
use crate::feynman_kac::{self, Resampling, StepRecord};
use crate::logspace::normalized_weights;
use crate::model::{DecodeSession, LanguageModel, Potential, Twist};
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
    /// The final particles' tokens s_{1:T} (without the end token of a finished output).
    pub tokens: Vec<Vec<u32>>,
    /// Each output's number of tokens (T for all without variable-length outputs).
    #[serde(default)]
    pub lengths: Vec<usize>,
    /// Whether each output ended with an end-of-sequence token (never without
    /// variable-length outputs; an output stopped at the maximum is unfinished).
    #[serde(default)]
    pub finished: Vec<bool>,
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
    /// The genealogy (see [`crate::feynman_kac::LoopOutput::ancestors`]).
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

/// Runs SMC (or SIS, with [`Criterion::Never`]) for the target p0(s | prompt) phi(s) / Z,
/// with intermediate targets p0 psi_t when a twist is given.
pub fn run_smc<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    prompt: &[u32],
    config: &SmcConfig,
) -> Result<SmcOutput> {
    run_smc_with(lm, potential, &RunOptions::twist(twist), prompt, config)
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
    let options = RunOptions::twist(twist).with_constraint(constraint);
    run_smc_with(lm, potential, &options, prompt, config)
}

/// SMC with every option of [`RunOptions`]: twist, constraint, variable-length outputs and
/// boundary resampling. Zhat is unbiased for Z = Σ_s p0(s | prompt) phi(s) 1\[accepted\] over
/// the outputs the options define.
pub fn run_smc_with<L: LanguageModel>(
    lm: &L,
    potential: &dyn Potential,
    options: &RunOptions<'_>,
    prompt: &[u32],
    config: &SmcConfig,
) -> Result<SmcOutput> {
    run_inner(lm, potential, options, prompt, config, None)
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
    run_csmc_with(
        lm,
        potential,
        &RunOptions::twist(twist),
        prompt,
        config,
        reference,
    )
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
    let options = RunOptions::twist(twist).with_constraint(constraint);
    run_csmc_with(lm, potential, &options, prompt, config, reference)
}

/// [`run_csmc`] with every option of [`RunOptions`] but boundaries (refused: the conditional
/// form of partial resampling is not implemented). With variable-length outputs the reference
/// is an output with its end token when it finished (e.g. `[5, 7, EOS]`), or of exactly T
/// tokens when it stopped at the maximum ([`AtMaxTokens::Truncate`] only).
pub fn run_csmc_with<L: LanguageModel>(
    lm: &L,
    potential: &dyn Potential,
    options: &RunOptions<'_>,
    prompt: &[u32],
    config: &SmcConfig,
    reference: &[u32],
) -> Result<SmcOutput> {
    if options.boundaries.is_some() {
        return Err(SmcError::config(
            "conditional SMC resampling",
            "without boundaries (the conditional form of partial resampling is not implemented)",
            "boundaries given",
        ));
    }
    let padded = match options.end {
        Some(end) => pad_reference(end, reference, config.horizon)?,
        None => reference.to_vec(),
    };
    run_inner(lm, potential, options, prompt, config, Some(&padded))
}

/// The reference as the loop steps through it: a finished output repeats its end token up to
/// the loop's horizon.
fn pad_reference(end: &EndOfSequence, reference: &[u32], max_tokens: usize) -> Result<Vec<u32>> {
    let steps = match end.at_max() {
        AtMaxTokens::Truncate => max_tokens,
        AtMaxTokens::ForceEnd => max_tokens + 1,
    };
    let ended_at = reference.iter().position(|&tok| end.ends(tok));
    match ended_at {
        Some(i) if i + 1 == reference.len() && reference.len() <= steps => {
            let mut padded = reference.to_vec();
            padded.resize(steps, reference[i]);
            Ok(padded)
        }
        Some(i) => Err(SmcError::Reference(format!(
            "ends at token {} of {} (an end-of-sequence token must be its last, within {steps} \
             steps)",
            i + 1,
            reference.len()
        ))),
        None if end.at_max() == AtMaxTokens::Truncate && reference.len() == max_tokens => {
            Ok(reference.to_vec())
        }
        None => Err(SmcError::Reference(format!(
            "has {} tokens and no end-of-sequence token: expected an output that ends with one, \
             or (when outputs are truncated) exactly T = {max_tokens} tokens",
            reference.len()
        ))),
    }
}

fn run_inner<L: LanguageModel>(
    lm: &L,
    potential: &dyn Potential,
    options: &RunOptions<'_>,
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
    let mut session = lm.start(prompt, config.num_particles)?;
    session.reserve(config.horizon)?;
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
        options.twist,
        potential,
        config.proposal,
        prompt,
        config.horizon,
    );
    if let Some(end) = options.end {
        model = model.with_end(end)?;
    }
    if let Some(c) = options.constraint {
        model = model.with_constraint(c)?;
    }
    if let Some(b) = options.boundaries {
        model = model.with_boundaries(b)?;
    }
    if let Some(prefix) = options.prefix_twist {
        model = model.with_prefix_twist(prefix)?;
    }
    let mut rng = rng_from_seed(config.seed);
    let out = feynman_kac::run(&mut model, config.resampling, reference, &mut rng)?;
    Ok(model.into_output(out))
}
