//! The twist-learning losses of spec §5 as functions of a batch's raw twist outputs, with
//! their gradients. Every importance weight and every RL target is computed once, at sampling
//! time, into [`Targets`] and treated as a constant (stop-gradient); time averages are means
//! over T.

use smc_core::batch::LogTable;
use smc_core::logspace::{log_sigmoid, log_sum_exp, log_sum_exp_sum, normalized_weights};
use smc_core::smc::Proposal;

use crate::batch::Batch;
pub use crate::method::Method;

/// Stop-gradient quantities of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Weights of the positive (target) term per sequence (Wbar^phi; zero for negatives).
    pub w_pos: Vec<f64>,
    /// Weights of the negative term per sequence (SIXO's samples from p0; zero for positives).
    pub w_neg: Vec<f64>,
    /// Wbar_t^psi per step (index t-1) and sequence, normalised over the positives.
    pub w_psi: Vec<Vec<f64>>,
    /// RL targets y_t per step and sequence (empty from [`targets_for`] for other methods).
    pub rl_target: Vec<Vec<f64>>,
    /// FUDGE labels phi(s) in [0, 1].
    pub label: Vec<f64>,
}

/// Which sequences of a batch are what.
///
/// There is no role for exact target samples on their own: CTL's negative term needs
/// E_{pi_t}, and weighting samples of sigma by psi_t targets sigma_t psi_t instead of
/// pi_t ∝ p0 psi_t (its gradient does not vanish at psi*). Exact samples enter CTL as the
/// reference of conditional SMC, with negatives from q ([`crate::gibbs::ctl_csmc_update`]),
/// or as the positives themselves, weight 1/K each, beside negatives from q
/// ([`crate::replay::ctl_replay_update`]); both set the targets' weights directly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Roles {
    /// All sequences were drawn from the proposal (`proposal`) and are importance-weighted.
    Proposal(Proposal),
    /// All sequences were drawn from p0 with uniform weights (RL reference, FUDGE).
    Uniform,
    /// The first `positives` sequences were drawn from the proposal (weighted), the rest from
    /// p0 (SIXO's negatives, uniform).
    Contrast {
        /// The proposal of the positives.
        proposal: Proposal,
        /// Number of positives.
        positives: usize,
    },
}

/// Per step t (index t-1) and sequence: log p0(s_{1:t}) - log q(s_{1:t}) under `proposal`
/// (0 for [`Proposal::Base`], where q = p0).
fn log_ratios(batch: &Batch, proposal: Proposal) -> Vec<Vec<f64>> {
    let k = batch.num_sequences();
    let horizon = batch.horizon();
    let mut log_ratio = vec![vec![0.0; k]; horizon];
    if proposal == Proposal::Base {
        return log_ratio;
    }
    #[allow(clippy::needless_range_loop)] // fills a step-major table sequence by sequence
    for s in 0..k {
        let mut acc = 0.0;
        for t in 1..=horizon {
            let lp0 = batch.log_p0[t - 1].row(s)[batch.token(s, t)];
            let log_q = lp0 + batch.log_psi_at(s, t) - batch.log_z_t(s, t);
            acc += lp0 - log_q;
            log_ratio[t - 1][s] = acc;
        }
    }
    log_ratio
}

/// The unnormalised intermediate log weights log p0(s_{1:t}) + log psi_t(s_{1:t}) - log q(s_{1:t})
/// of sequences drawn from `proposal`, per step t (index t-1) and sequence (psi_T at t = T, not
/// phi): their normalisation over a set of sequences is Wbar_t^psi. Kept in log space so that a
/// normalisation over a subset of the sequences never takes the log of an underflowed weight.
pub fn log_psi_weights(batch: &Batch, proposal: Proposal) -> Vec<Vec<f64>> {
    psi_weights_from(batch, log_ratios(batch, proposal))
}

/// [`log_psi_weights`] from the log ratios of [`log_ratios`].
fn psi_weights_from(batch: &Batch, mut log_w: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    for (t, row) in (1..=batch.horizon()).zip(log_w.iter_mut()) {
        for (s, w) in row.iter_mut().enumerate() {
            *w += batch.log_psi_at(s, t);
        }
    }
    log_w
}

/// Weights normalised over the sequences in `range` (log-sum-exp, never through linear space),
/// zero elsewhere: Wbar over a subset of a batch.
pub fn normalized_over(log_w: &[f64], range: std::ops::Range<usize>) -> Vec<f64> {
    let mut w = vec![0.0; log_w.len()];
    if let Some(part) = log_w.get(range.clone()) {
        w[range].copy_from_slice(&normalized_weights(part));
    }
    w
}

/// [`targets`] without what `method` does not read: the RL look-ahead targets (a log-sum-exp
/// over the vocabulary for every sequence and step) are left empty for the other methods.
pub fn targets_for(method: Method, batch: &Batch, roles: Roles) -> Targets {
    targets_inner(batch, roles, method == Method::Rl)
}

/// Computes the stop-gradient targets of a batch from its current raw outputs.
pub fn targets(batch: &Batch, roles: Roles) -> Targets {
    targets_inner(batch, roles, true)
}

fn targets_inner(batch: &Batch, roles: Roles, with_rl: bool) -> Targets {
    let k = batch.num_sequences();
    let horizon = batch.horizon();
    let (positives, proposal, weighted) = match roles {
        Roles::Proposal(p) => (k, p, true),
        Roles::Uniform => (k, Proposal::Base, false),
        Roles::Contrast {
            proposal,
            positives,
        } => (positives.min(k), proposal, true),
    };
    let log_ratio = log_ratios(batch, proposal);
    let w_pos = if weighted {
        let log_w: Vec<f64> = (0..k)
            .map(|s| log_ratio[horizon - 1][s] + batch.log_phi[s])
            .collect();
        normalized_over(&log_w, 0..positives)
    } else {
        normalized_over(&vec![0.0; k], 0..positives)
    };
    let w_psi = psi_weights_from(batch, log_ratio)
        .iter()
        .map(|log_w| normalized_over(log_w, 0..positives))
        .collect();
    let mut w_neg = vec![0.0; k];
    if positives < k {
        let n = (k - positives) as f64;
        w_neg[positives..].iter_mut().for_each(|w| *w = 1.0 / n);
    }
    let rl_steps = 1..=if with_rl { horizon } else { 0 };
    let rl_target = rl_steps
        .map(|t| {
            (0..k)
                .map(|s| {
                    if t < horizon {
                        log_sum_exp_sum(batch.log_p0[t].row(s), &batch.log_psi_row(s, t + 1))
                    } else {
                        batch.log_phi[s]
                    }
                })
                .collect()
        })
        .collect();
    let label = batch
        .log_phi
        .iter()
        .map(|l| l.exp().clamp(0.0, 1.0))
        .collect();
    Targets {
        w_pos,
        w_neg,
        w_psi,
        rl_target,
        label,
    }
}

fn sigmoid(x: f64) -> f64 {
    log_sigmoid(x).exp()
}

/// The loss of `method` on `batch` with stop-gradient `targets`, and its gradient with respect
/// to every raw output (one K x V table per step).
pub fn loss_and_grads(method: Method, batch: &Batch, targets: &Targets) -> (f64, Vec<LogTable>) {
    let k = batch.num_sequences();
    let horizon = batch.horizon();
    let inv_t = 1.0 / horizon as f64;
    let v = batch.raw[0].cols();
    let mut loss = 0.0;
    let mut grads: Vec<LogTable> = (0..horizon).map(|_| LogTable::filled(k, v, 0.0)).collect();
    for t in 1..=horizon {
        for s in 0..k {
            let tok = batch.token(s, t);
            let raw = batch.raw[t - 1].row(s)[tok];
            let lpsi = batch.param.log_psi(raw);
            let dlpsi = batch.param.dlog_psi(raw);
            let g = grads[t - 1].row_mut(s);
            match method {
                Method::Ctl => {
                    let c = -(targets.w_pos[s] - targets.w_psi[t - 1][s]) * inv_t;
                    loss += c * lpsi;
                    g[tok] += c * dlpsi;
                }
                Method::Rl => {
                    let diff = lpsi - targets.rl_target[t - 1][s];
                    loss += targets.w_pos[s] * inv_t * diff * diff;
                    g[tok] += 2.0 * targets.w_pos[s] * inv_t * diff * dlpsi;
                }
                Method::Sixo => {
                    let (wp, wn) = (targets.w_pos[s] * inv_t, targets.w_neg[s] * inv_t);
                    loss -= wp * log_sigmoid(lpsi) + wn * log_sigmoid(-lpsi);
                    g[tok] += (-wp * sigmoid(-lpsi) + wn * sigmoid(lpsi)) * dlpsi;
                }
                Method::Fudge => {
                    // psi = sigmoid(raw): cross-entropy in log_sigmoid form, gradient w.r.t. raw.
                    let (w, y) = (targets.w_pos[s] * inv_t, targets.label[s]);
                    loss -= w * (y * log_sigmoid(raw) + (1.0 - y) * log_sigmoid(-raw));
                    g[tok] += w * (sigmoid(raw) - y);
                }
                Method::Dpg => {
                    let w = targets.w_pos[s] * inv_t;
                    let p0 = batch.log_p0[t - 1].row(s);
                    let lrow = batch.log_psi_row(s, t);
                    let log_z = log_sum_exp_sum(p0, &lrow);
                    loss -= w * (p0[tok] + lpsi - log_z);
                    let raw_row = batch.raw[t - 1].row(s);
                    for x in 0..v {
                        let q = (p0[x] + lrow[x] - log_z).exp();
                        let ind = if x == tok { 1.0 } else { 0.0 };
                        g[x] += -w * (ind - q) * batch.param.dlog_psi(raw_row[x]);
                    }
                }
            }
        }
    }
    (loss, grads)
}

/// log-sum-exp of a slice (re-exported for the trainer's diagnostics).
pub fn lse(xs: &[f64]) -> f64 {
    log_sum_exp(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_normalised_over_a_subset_survive_where_linear_space_underflows() {
        // Positives at log weight 0, negatives 1000 nats below: normalised over all four,
        // the negatives' weights are exactly 0.0 in f64 and their log is -inf, so the old
        // renormalisation over the negatives gave all-zero weights. In log space they keep
        // their ratio e^-1 (to rounding: x - lse loses digits at |x| = 1000).
        let log_w = [0.0, -0.5, -1000.0, -1001.0];
        let linear = normalized_weights(&log_w);
        assert_eq!(&linear[2..], &[0.0, 0.0]);
        let w = normalized_over(&log_w, 2..4);
        let e = (-1.0f64).exp();
        assert_eq!(&w[..2], &[0.0, 0.0]);
        assert!((w[2] - 1.0 / (1.0 + e)).abs() < 1e-12, "{w:?}");
        assert!((w[3] - e / (1.0 + e)).abs() < 1e-12, "{w:?}");
        // The empty and the full range.
        assert_eq!(normalized_over(&log_w, 4..4), vec![0.0; 4]);
        assert_eq!(normalized_over(&log_w, 0..4), linear);
    }
}
