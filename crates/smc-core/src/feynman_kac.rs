//! The generic SMC loop over a Feynman–Kac model, in the style of Chopin's `particles`:
//! a model moves particles and returns the log potentials (incremental log weights); the loop
//! owns the weights, the resampling decisions, the ESS, the genealogy and log Zhat.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SmcError};
use crate::logspace::{ess, log_sum_exp, normalized_weights};
use crate::resampling::{Criterion, Scheme};

/// A Feynman–Kac model over token sequences: M_t moves every particle one token forward and
/// G_t weighs it. Particle 0 can be clamped to a reference token (conditional SMC).
pub trait FeynmanKac {
    /// Number of particles K.
    fn num_particles(&self) -> usize;

    /// Number of steps T.
    fn horizon(&self) -> usize;

    /// Step t (1-based): extends every particle by one token drawn from M_t (particle 0 takes
    /// `clamp` instead when given) and returns log G_t, the incremental log weight, per particle.
    fn step(&mut self, t: usize, clamp: Option<u32>, rng: &mut dyn Rng) -> Result<Vec<f64>>;

    /// Replaces the particles by their ancestors (particle k continues from `ancestors[k]`).
    fn reorder(&mut self, ancestors: &[usize]) -> Result<()>;

    /// Whether every particle has ended (end of sequence) after the last step: the loop then
    /// stops before the horizon, since no later step can change a weight.
    fn finished(&self) -> bool {
        false
    }

    /// Whether `particle` is at a boundary after the last step, where it may be resampled
    /// (every particle by default). When the criterion fires and only some particles are at
    /// a boundary, those are resampled among themselves and share their total weight (partial
    /// resampling): the others keep their lineage and weight, so the sum of the weights, and
    /// with it the unbiasedness of Zhat, is unchanged.
    fn at_boundary(&self, _particle: usize) -> bool {
        true
    }
}

/// How the loop resamples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Resampling {
    /// The scheme.
    pub scheme: Scheme,
    /// When it fires.
    pub criterion: Criterion,
}

impl Resampling {
    /// Whether conditional SMC (a reference particle kept at every resampling, the SMC upper
    /// bound and particle Gibbs) is valid with this resampling.
    ///
    /// Drawing K - 1 ancestors with the plain scheme is the conditional form of multinomial
    /// resampling only: systematic, stratified and residual resampling have their own
    /// conditional forms (uniforms drawn given that particle 0 keeps its ancestor; Chopin and
    /// Singh 2015), which are not implemented, and with the plain draws E[log Zhat_CSMC] >= log Z
    /// is not guaranteed. Without resampling ([`Criterion::Never`], the SIS upper bound) the
    /// scheme is never used, so any scheme is valid.
    pub fn supports_conditional(self) -> bool {
        self.scheme == Scheme::Multinomial || self.criterion == Criterion::Never
    }

    /// [`Resampling::supports_conditional`] as a typed error naming the scheme: the one check
    /// that every conditional driver (conditional SMC, the SMC upper bound, particle Gibbs)
    /// goes through.
    pub fn check_conditional(self) -> Result<()> {
        if self.supports_conditional() {
            Ok(())
        } else {
            Err(SmcError::config(
                "conditional SMC resampling scheme",
                "multinomial (the only scheme whose conditional form is implemented), or \
                 criterion never (no resampling)",
                format!("{} with criterion {}", self.scheme, self.criterion),
            ))
        }
    }
}

/// What the loop records of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step t (1-based).
    pub step: usize,
    /// ESS of the weights after step t's reweighting, before any resampling.
    pub ess: f64,
    /// log Zhat of the intermediate target after step t.
    pub log_z_hat: f64,
    /// Whether the particles were resampled after this step.
    pub resampled: bool,
}

/// The result of the SMC loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopOutput {
    /// Final unnormalised log weights (since the last resampling).
    pub log_w: Vec<f64>,
    /// log Zhat of the final target.
    pub log_z_hat: f64,
    /// One record per step.
    pub steps: Vec<StepRecord>,
    /// The genealogy: `ancestors[t-1][k]` is the index, among the particles after step t, of
    /// the parent of particle k at step t+1 (the identity where no resampling happened). Has
    /// T - 1 rows: nothing is resampled after the last step.
    pub ancestors: Vec<Vec<usize>>,
}

/// Runs SMC on a Feynman–Kac model. With `reference` given, runs conditional SMC: particle 0
/// follows the reference tokens and keeps its own lineage; particles 1..K-1 draw ancestors from
/// the weights of all K particles; the resampling must pass
/// [`Resampling::check_conditional`].
pub fn run<M: FeynmanKac + ?Sized>(
    model: &mut M,
    resampling: Resampling,
    reference: Option<&[u32]>,
    rng: &mut dyn Rng,
) -> Result<LoopOutput> {
    let k = model.num_particles();
    let horizon = model.horizon();
    if k == 0 {
        return Err(SmcError::config("number of particles K", ">= 1", k));
    }
    if horizon == 0 {
        return Err(SmcError::config("number of steps T", ">= 1", horizon));
    }
    resampling.criterion.validate()?;
    if reference.is_some() {
        resampling.check_conditional()?;
    }
    if let Some(r) = reference
        && r.len() != horizon
    {
        return Err(SmcError::Reference(format!(
            "has {} tokens, expected T = {horizon}",
            r.len()
        )));
    }

    let mut log_w = vec![0.0; k];
    let mut log_z_hat = 0.0;
    let mut lse_prev = (k as f64).ln();
    let mut steps = Vec::with_capacity(horizon);
    let mut genealogy = Vec::with_capacity(horizon.saturating_sub(1));
    for t in 1..=horizon {
        let log_g = model.step(t, reference.map(|r| r[t - 1]), rng)?;
        if log_g.len() != k {
            return Err(SmcError::Shape {
                component: "Feynman-Kac model log potentials".into(),
                step: t,
                expected: k,
                found: log_g.len(),
            });
        }
        for (p, (w, g)) in log_w.iter_mut().zip(&log_g).enumerate() {
            if g.is_nan() || *g == f64::INFINITY {
                return Err(SmcError::InvalidValue {
                    component: "incremental log weight".into(),
                    step: t,
                    particle: p,
                    value: *g,
                });
            }
            *w += g;
        }
        let lse = log_sum_exp(&log_w);
        if lse == f64::NEG_INFINITY {
            return Err(SmcError::NoPositiveWeight {
                step: t,
                horizon,
                num_particles: k,
            });
        }
        log_z_hat += lse - lse_prev;
        lse_prev = lse;
        let step_ess = ess(&log_w);
        let finished = model.finished();
        let mut resampled = false;
        if t < horizon && !finished {
            let mut ancestors: Vec<usize> = (0..k).collect();
            if resampling.criterion.fires(t, &log_w) {
                let at: Vec<usize> = (0..k).filter(|&p| model.at_boundary(p)).collect();
                if at.len() == k {
                    ancestors = draw_ancestors(resampling, &log_w, reference.is_some(), rng);
                    log_w.iter_mut().for_each(|w| *w = 0.0);
                    lse_prev = (k as f64).ln();
                    resampled = true;
                } else if at.len() >= 2 {
                    let sub: Vec<f64> = at.iter().map(|&p| log_w[p]).collect();
                    let lse_sub = log_sum_exp(&sub);
                    if lse_sub > f64::NEG_INFINITY {
                        // Particle 0 is the reference: kept when it is at a boundary.
                        let keep_first = reference.is_some() && at[0] == 0;
                        let drawn = draw_ancestors(resampling, &sub, keep_first, rng);
                        let shared = lse_sub - (at.len() as f64).ln();
                        for (slot, a) in at.iter().zip(drawn) {
                            ancestors[*slot] = at[a];
                            log_w[*slot] = shared;
                        }
                        lse_prev = log_sum_exp(&log_w);
                        resampled = true;
                    }
                }
                if resampled {
                    model.reorder(&ancestors)?;
                }
            }
            genealogy.push(ancestors);
        }
        steps.push(StepRecord {
            step: t,
            ess: step_ess,
            log_z_hat,
            resampled,
        });
        if finished {
            break;
        }
    }
    Ok(LoopOutput {
        log_w,
        log_z_hat,
        steps,
        ancestors: genealogy,
    })
}

/// Ancestors of `log_w.len()` particles drawn by the scheme from their normalised weights;
/// with `keep_first`, particle 0 keeps its own lineage and the others are drawn from all
/// (the conditional form of multinomial resampling).
fn draw_ancestors(
    resampling: Resampling,
    log_w: &[f64],
    keep_first: bool,
    rng: &mut dyn Rng,
) -> Vec<usize> {
    let weights = normalized_weights(log_w);
    let n = log_w.len();
    if keep_first {
        let mut a = Vec::with_capacity(n);
        a.push(0);
        a.extend(resampling.scheme.resample(&weights, n - 1, rng));
        a
    } else {
        resampling.scheme.resample(&weights, n, rng)
    }
}
