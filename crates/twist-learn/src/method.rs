//! What is trained and how: the twist-learning methods and the map from a twist's raw outputs
//! to log psi. Every other module of the crate builds on these two enums.

use serde::{Deserialize, Serialize};
use smc_core::batch::LogTable;
use smc_core::logspace::log_sigmoid;

/// A twist-learning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Contrastive twist learning (the paper's method).
    Ctl,
    /// Soft Q-learning: squared error in log space against the one-step look-ahead.
    Rl,
    /// SIXO: density-ratio classification of sigma against p0.
    Sixo,
    /// FUDGE: binary cross-entropy of psi = sigmoid(head) against phi, samples from p0.
    Fudge,
    /// DPG: proposal learning by forward KL (maximum likelihood on weighted samples).
    Dpg,
}

impl Method {
    /// All methods.
    pub const ALL: [Method; 5] = [
        Method::Ctl,
        Method::Rl,
        Method::Sixo,
        Method::Fudge,
        Method::Dpg,
    ];
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ctl" => Ok(Method::Ctl),
            "rl" | "soft-q" => Ok(Method::Rl),
            "sixo" => Ok(Method::Sixo),
            "fudge" => Ok(Method::Fudge),
            "dpg" => Ok(Method::Dpg),
            other => Err(format!(
                "unknown method {other:?}: expected ctl, rl, sixo, fudge or dpg"
            )),
        }
    }
}

/// How a twist's raw output r becomes log psi.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Parameterization {
    /// log psi = r (CTL, RL, SIXO, DPG).
    #[default]
    Identity,
    /// log psi = log sigmoid(r), psi in (0, 1) (FUDGE).
    LogSigmoid,
}

impl Parameterization {
    /// The parameterisation a method trains: log sigmoid for FUDGE (psi is a probability),
    /// the identity for the others.
    pub fn for_method(method: Method) -> Self {
        if method == Method::Fudge {
            Parameterization::LogSigmoid
        } else {
            Parameterization::Identity
        }
    }

    /// log psi from the raw output.
    pub fn log_psi(self, r: f64) -> f64 {
        match self {
            Parameterization::Identity => r,
            Parameterization::LogSigmoid => log_sigmoid(r),
        }
    }

    /// Maps a table of raw outputs to log psi in place.
    pub fn apply(self, mut table: LogTable) -> LogTable {
        if self != Parameterization::Identity {
            for k in 0..table.rows() {
                for x in table.row_mut(k) {
                    *x = self.log_psi(*x);
                }
            }
        }
        table
    }

    /// d log psi / d r.
    pub fn dlog_psi(self, r: f64) -> f64 {
        match self {
            Parameterization::Identity => 1.0,
            Parameterization::LogSigmoid => (log_sigmoid(-r)).exp(),
        }
    }
}
