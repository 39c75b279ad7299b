//! Collectors of exact target samples s* ~ sigma (spec §4), which the upper bounds and G_q need.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use smc_core::batch::TokenBuffer;
use smc_core::logspace::{LOG_INDICATOR_FLOOR, normalized_weights};
use smc_core::model::{LanguageModel, Potential, Twist};
use smc_core::resampling::Scheme;
use smc_core::seed::{self, label};
use smc_core::smc::{SmcConfig, rng_from_seed, run_csmc, sample_base};
use smc_core::{Result, SmcError};

/// An exact sample of the target, with the conditioning tokens it is exact for (infilling).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactSample {
    /// The output tokens s_{1:T}.
    pub tokens: Vec<u32>,
    /// For infilling: the continuation c whose conditional target s is exact for.
    pub conditioning: Option<Vec<u32>>,
}

/// What a rejection collector produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    /// The accepted exact samples (fewer than asked for if the draw budget ran out).
    pub samples: Vec<ExactSample>,
    /// Number of proposals drawn from p0.
    pub draws: usize,
    /// Number of draws accepted (can exceed `samples.len()`: a batch is finished once
    /// started, and its surplus acceptances still count for the acceptance rate).
    pub accepted: usize,
}

impl Collected {
    /// The acceptance rate, which estimates Z = E_{p0}(phi) for both rejection collectors.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.draws.max(1) as f64
    }
}

/// How a draw from p0 is accepted.
#[derive(Debug, Clone, Copy)]
enum Acceptance {
    /// phi is an indicator: keep s when it is on.
    Indicator,
    /// phi = p(c | s) <= 1: keep s with probability phi (draw c, keep if it is the target class).
    Class,
}

/// Rejection sampling for an indicator potential (log phi is 0 or at most the 1e-16 floor):
/// draws from p0 in batches of `batch` and keeps those with the indicator on, until `n` are
/// kept or `max_draws` were drawn.
#[allow(clippy::too_many_arguments)]
pub fn rejection_indicator<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    potential: &dyn Potential,
    n: usize,
    batch: usize,
    max_draws: usize,
    rng: &mut dyn Rng,
) -> Result<Collected> {
    collect(
        lm,
        prompt,
        horizon,
        potential,
        n,
        batch,
        max_draws,
        rng,
        Acceptance::Indicator,
    )
}

/// Class rejection for a beta = 1 classifier potential phi = p(c | s) <= 1: draws s ~ p0 and
/// keeps it with probability phi(s), which is an exact draw from sigma.
#[allow(clippy::too_many_arguments)]
pub fn rejection_class<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    potential: &dyn Potential,
    n: usize,
    batch: usize,
    max_draws: usize,
    rng: &mut dyn Rng,
) -> Result<Collected> {
    collect(
        lm,
        prompt,
        horizon,
        potential,
        n,
        batch,
        max_draws,
        rng,
        Acceptance::Class,
    )
}

#[allow(clippy::too_many_arguments)]
fn collect<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    potential: &dyn Potential,
    n: usize,
    batch: usize,
    max_draws: usize,
    rng: &mut dyn Rng,
    acceptance: Acceptance,
) -> Result<Collected> {
    if batch == 0 {
        return Err(SmcError::InvalidConfig {
            field: "rejection batch size",
            expected: ">= 1".into(),
            found: "0".into(),
        });
    }
    let mut samples = Vec::with_capacity(n);
    let (mut draws, mut accepted) = (0, 0);
    while samples.len() < n && draws < max_draws {
        let size = batch.min(max_draws - draws);
        let (tokens, _) = sample_base(lm, prompt, horizon, size, rng)?;
        let log_phi = potential.log_phi(prompt, &TokenBuffer::from_rows(&tokens))?;
        for (i, (s, lphi)) in tokens.into_iter().zip(log_phi).enumerate() {
            draws += 1;
            let keep = match acceptance {
                Acceptance::Indicator => {
                    if lphi.abs() <= 1e-9 {
                        true
                    } else if lphi <= LOG_INDICATOR_FLOOR + 1e-9 {
                        false
                    } else {
                        return Err(not_in_range(
                            potential,
                            i,
                            lphi,
                            "0 or <= log 1e-16 (an indicator); use class rejection for a classifier",
                        ));
                    }
                }
                Acceptance::Class => {
                    if lphi.is_nan() || lphi > 1e-12 {
                        return Err(not_in_range(
                            potential,
                            i,
                            lphi,
                            "<= 0 (phi = p(c | s) <= 1)",
                        ));
                    }
                    rng.random::<f64>() < lphi.exp()
                }
            };
            accepted += usize::from(keep);
            if keep && samples.len() < n {
                samples.push(ExactSample {
                    tokens: s,
                    conditioning: None,
                });
            }
        }
    }
    Ok(Collected {
        samples,
        draws,
        accepted,
    })
}

fn not_in_range(potential: &dyn Potential, i: usize, value: f64, expected: &str) -> SmcError {
    SmcError::InvalidConfig {
        field: "log phi for exact sampling",
        expected: expected.to_string(),
        found: format!("{value} from {} on draw {i} of a batch", potential.name()),
    }
}

/// Joint ancestral draws for infilling: draws T + m tokens from p0; the first T are an exact
/// sample of sigma(s | c) ∝ p0(s) p0(c | s) for c = the last m tokens.
pub fn joint_ancestral<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    m: usize,
    n: usize,
    rng: &mut dyn Rng,
) -> Result<Vec<ExactSample>> {
    let (draws, _) = sample_base(lm, prompt, horizon + m, n, rng)?;
    Ok(draws
        .into_iter()
        .map(|mut s| {
            let c = s.split_off(horizon);
            ExactSample {
                tokens: s,
                conditioning: Some(c),
            }
        })
        .collect())
}

/// The states of a particle Gibbs chain and how often it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GibbsChain {
    /// The state after each sweep (the start state is not repeated here).
    pub states: Vec<Vec<u32>>,
    /// Number of sweeps whose new state differs from the previous one.
    pub moves: usize,
}

impl GibbsChain {
    /// The number of distinct sequences among the states.
    pub fn distinct(&self) -> usize {
        let mut seen: Vec<&Vec<u32>> = self.states.iter().collect();
        seen.sort();
        seen.dedup();
        seen.len()
    }
}

/// Particle Gibbs (iterated conditional SMC; Andrieu, Doucet and Holenstein 2010): each sweep
/// runs conditional SMC with the current state as the reference particle and draws the next
/// state from the final particles in proportion to their weights. The kernel leaves sigma
/// invariant whatever the proposal and twist, so a chain started at an exact sample s* ~ sigma
/// yields states that are each, marginally, exact samples too (correlated with one another):
/// more exact samples for G_q and the upper bounds where only one can be drawn, as for
/// infilling with one fixed continuation c. The twist must not depend on s* (train it without
/// s*), or the states are no longer exact.
///
/// `config` gives K, T, the proposal and the resampling; resampling must be multinomial unless
/// it never fires ([`smc_core::feynman_kac::Resampling::check_conditional`]: the conditional
/// forms of the other schemes are not the plain scheme on K - 1 particles).
/// Sweep i's conditional SMC runs with seed `derive(seed, label::GIBBS_SWEEP, i)` and its next
/// state is drawn with `derive(seed, label::GIBBS_PICK, i)` ([`smc_core::seed`]).
#[allow(clippy::too_many_arguments)]
pub fn particle_gibbs<L: LanguageModel>(
    lm: &L,
    twist: Option<&dyn Twist>,
    potential: &dyn Potential,
    prompt: &[u32],
    config: &SmcConfig,
    start: &[u32],
    sweeps: usize,
    seed: u64,
) -> Result<GibbsChain> {
    // The same rule as every conditional driver: the sweep is conditional SMC.
    config.resampling.check_conditional()?;
    if config.num_particles < 2 {
        return Err(SmcError::InvalidConfig {
            field: "particle Gibbs particles K",
            expected: ">= 2".into(),
            found: config.num_particles.to_string(),
        });
    }
    let mut state = start.to_vec();
    let mut chain = GibbsChain {
        states: Vec::with_capacity(sweeps),
        moves: 0,
    };
    for i in 0..sweeps {
        let out = run_csmc(
            lm,
            twist,
            potential,
            prompt,
            &config.with_seed(seed::derive(seed, label::GIBBS_SWEEP, i as u64)),
            &state,
        )?;
        let weights = normalized_weights(&out.log_w);
        let mut rng = rng_from_seed(seed::derive(seed, label::GIBBS_PICK, i as u64));
        let pick = Scheme::Multinomial.resample(&weights, 1, &mut rng)[0];
        let next = out.tokens[pick].clone();
        if next != state {
            chain.moves += 1;
        }
        state = next;
        chain.states.push(state.clone());
    }
    Ok(chain)
}
