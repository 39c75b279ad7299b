//! Where a `tsmc sample` run's wall time went.

use serde::Serialize;

use crate::progress::PhaseTimes;

/// Where a run's wall time went: the model's phases (prefill, forward passes, output head and
/// log-softmax, reorder), the final lookahead's model runs (`--lookahead`; they do not pass
/// through the timed model wrapper) and the rest (SMC itself: twist, sampling, weights,
/// resampling, and the potential), with particle-tokens per second (K x T / wall time, prefill
/// included, model load excluded). A served model's requests are timed as the `head` phase
/// (`next_log_probs`).
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Timing {
    wall_s: f64,
    particle_tokens_per_s: f64,
    model: PhaseTimes,
    #[serde(skip_serializing_if = "Option::is_none")]
    lookahead_s: Option<f64>,
    smc_and_potential_s: f64,
    #[serde(skip)]
    served: bool,
}

impl Timing {
    pub(super) fn new(
        wall_s: f64,
        model: PhaseTimes,
        lookahead_s: Option<f64>,
        particles: usize,
        steps: usize,
        served: bool,
    ) -> Self {
        let tokens = (particles * steps) as f64;
        Self {
            wall_s,
            particle_tokens_per_s: tokens / wall_s.max(1e-9),
            model,
            lookahead_s,
            smc_and_potential_s: (wall_s - model.model_s() - lookahead_s.unwrap_or(0.0)).max(0.0),
            served,
        }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.model;
        if self.served {
            return write!(
                f,
                "{:.1} particle-tokens/s: {:.2} s = server requests {:.2} + SMC and potential {:.2}",
                self.particle_tokens_per_s,
                self.wall_s,
                m.model_s(),
                self.smc_and_potential_s
            );
        }
        write!(
            f,
            "{:.1} particle-tokens/s: {:.2} s = prefill {:.2} + forward {:.2} + head and log-softmax {:.2} + reorder {:.2}{} + SMC and potential {:.2}",
            self.particle_tokens_per_s,
            self.wall_s,
            m.prefill_s,
            m.forward_s,
            m.head_s,
            m.reorder_s,
            self.lookahead_s
                .map_or(String::new(), |s| format!(" + final lookahead {s:.2}")),
            self.smc_and_potential_s
        )
    }
}
