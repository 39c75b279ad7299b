//! The twist head's arguments, shared by `tsmc train` and `tsmc reproduce`, checked once into a
//! [`HeadChoice`].

use clap::{Args, ValueEnum};

use lm_burn::heads::{BiasGate, CondEncoding, HeadKind};
use twist_learn::BiasOptimizer;

use crate::training::HeadChoice;

/// The shape and initialisation of a fresh twist head.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Twist head")]
pub struct HeadArgs {
    /// The head's architecture: `embedding` (the default: e_v · (A h) + b_v through the base
    /// model's frozen output embedding, A and b starting at zero so q = p0; every measured
    /// improvement over p0 used it), `low-rank:R` (the same with A of rank R), `linear`
    /// (hidden state -> vocabulary, tens of millions of parameters starting away from p0) or
    /// `mlp` (three layers).
    #[arg(long, default_value = "embedding")]
    pub head: HeadArg,
    /// Initialisation: `xavier` (every layer N(0, 2/(fan_in + fan_out)), the spec's) or
    /// `zero-output` (the output layer at 0, so the twisted proposal starts at p0).
    #[arg(long, value_enum, default_value_t = InitArg::Xavier)]
    pub init: InitArg,
    /// Learning rate of an embedding head's per-token bias b (default: --lr). Adam moves b_v
    /// by about its rate per update, log psi through A by up to about 3e4 times its rate on
    /// SmolLM2, so b wants a rate hundreds of times larger (docs/training.md).
    #[arg(long)]
    pub bias_lr: Option<f64>,
    /// How b is stepped at --bias-lr: `adam` (with the rest of the head: every b_v with any
    /// gradient moves by about the rate) or `sgd` (in proportion to its gradient, the gap
    /// between the token's frequency among positives and negatives, with rates of order 1 to
    /// 16; the gradient is clipped so that no b_v moves more than 0.1 nats an update, so gaps
    /// above 0.1 / rate all move by 0.1).
    #[arg(long, value_enum, default_value_t = BiasOptimArg::Adam)]
    pub bias_optim: BiasOptimArg,
    /// Scale an embedding head's bias by a learned gate of the hidden state,
    /// e_v · (A h) + g(h) b_v: `sigmoid` (g = 2 sigmoid(w · h + c), in (0, 2)) or `linear`
    /// (g = 1 + w · h + c); w and c start at zero (g = 1) and train at --lr. Lets the head
    /// turn b down where the prefix no longer needs it.
    #[arg(long, value_enum, default_value_t = BiasGateArg::None)]
    pub bias_gate: BiasGateArg,
    /// Adam learning rate of the gate's w and c (default: --lr). At --lr 1e-5 the gate stays
    /// near 1 for hundreds of updates.
    #[arg(long)]
    pub gate_lr: Option<f64>,
    /// How a conditional (infilling) head encodes the conditioning tokens c into the vector
    /// h_c it reads beside h_t: `last` (the hidden state after c, c encoded alone), `mean-hidden`
    /// (the mean of c's hidden states) or `mean-embedding` (the mean of c's output-embedding
    /// vectors, so that e_v · (A h_c) can copy c's tokens). Default `last`; a resumed head keeps
    /// its own.
    #[arg(long, value_enum)]
    pub cond_encoding: Option<CondEncodingArg>,
}

/// How a conditional head encodes its conditioning tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CondEncodingArg {
    /// The final-norm hidden state at c's last position.
    Last,
    /// The mean of c's final-norm hidden states.
    MeanHidden,
    /// The mean of c's output-embedding vectors.
    MeanEmbedding,
}

/// Whether and how an embedding head's bias is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BiasGateArg {
    /// No gate: e_v · (A h) + b_v.
    None,
    /// g = 2 sigmoid(w · h + c).
    Sigmoid,
    /// g = 1 + w · h + c.
    Linear,
}

/// How an embedding head's per-token bias is stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BiasOptimArg {
    /// Adam, the head's own optimiser.
    Adam,
    /// Plain gradient descent.
    Sgd,
}

impl HeadArgs {
    /// The head choice, checked: a bias learning rate is a positive number, and only
    /// embedding heads (`embedding`, `low-rank:R`) have the per-token bias it is for.
    pub fn choice(self) -> anyhow::Result<HeadChoice> {
        let (kind, rank) = match self.head {
            HeadArg::Linear => (HeadKind::Linear, None),
            HeadArg::Mlp => (HeadKind::Mlp, None),
            HeadArg::Embedding => (HeadKind::Embedding, None),
            HeadArg::LowRank(r) => (HeadKind::Embedding, Some(r)),
        };
        if let Some(lr) = self.bias_lr {
            if !(lr.is_finite() && lr > 0.0) {
                anyhow::bail!("--bias-lr must be a positive number, found {lr}");
            }
            if kind != HeadKind::Embedding {
                let head = if kind == HeadKind::Mlp {
                    "mlp"
                } else {
                    "linear"
                };
                anyhow::bail!(
                    "--bias-lr is for the per-token bias of --head embedding or low-rank:R; \
                     found --head {head}"
                );
            }
        }
        if self.bias_gate != BiasGateArg::None && kind != HeadKind::Embedding {
            anyhow::bail!(
                "--bias-gate is for the per-token bias of --head embedding or low-rank:R; \
                 found --head {}",
                if kind == HeadKind::Mlp {
                    "mlp"
                } else {
                    "linear"
                }
            );
        }
        if let Some(lr) = self.gate_lr {
            if !(lr.is_finite() && lr > 0.0) {
                anyhow::bail!("--gate-lr must be a positive number, found {lr}");
            }
            if self.bias_gate == BiasGateArg::None {
                anyhow::bail!("--gate-lr is for the gate of --bias-gate sigmoid or linear");
            }
        }
        if self.bias_optim == BiasOptimArg::Sgd && self.bias_lr.is_none() {
            anyhow::bail!(
                "--bias-optim sgd needs --bias-lr: plain gradient descent on b wants a rate of \
                 order 1, far from the head's Adam rate (--lr)"
            );
        }
        Ok(HeadChoice {
            kind,
            rank,
            zero_output: self.init == InitArg::ZeroOutput,
            bias_lr: self.bias_lr,
            bias_optimizer: match self.bias_optim {
                BiasOptimArg::Adam => BiasOptimizer::Adam,
                BiasOptimArg::Sgd => BiasOptimizer::Sgd,
            },
            bias_gate: match self.bias_gate {
                BiasGateArg::None => None,
                BiasGateArg::Sigmoid => Some(BiasGate::Sigmoid),
                BiasGateArg::Linear => Some(BiasGate::Linear),
            },
            gate_lr: self.gate_lr,
            cond_encoding: self.cond_encoding.map(|e| match e {
                CondEncodingArg::Last => CondEncoding::Last,
                CondEncodingArg::MeanHidden => CondEncoding::MeanHidden,
                CondEncodingArg::MeanEmbedding => CondEncoding::MeanEmbedding,
            }),
        })
    }
}

/// A twist head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadArg {
    /// One linear layer from the hidden state to the vocabulary.
    Linear,
    /// Three linear layers with ReLU between them.
    Mlp,
    /// Through the base model's frozen output embedding, A of full rank.
    Embedding,
    /// Through the base model's frozen output embedding, A of this rank.
    LowRank(usize),
}

impl std::str::FromStr for HeadArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "linear, mlp, embedding or low-rank:R (R a rank of at least 1)";
        match s {
            "linear" => Ok(Self::Linear),
            "mlp" => Ok(Self::Mlp),
            "embedding" => Ok(Self::Embedding),
            _ => match s.strip_prefix("low-rank:").map(str::parse::<usize>) {
                Some(Ok(r)) if r >= 1 => Ok(Self::LowRank(r)),
                _ => Err(format!("expected {expected}, found {s:?}")),
            },
        }
    }
}

/// A head initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// Every layer N(0, 2/(fan_in + fan_out)) (the spec's).
    Xavier,
    /// The output layer at zero: q starts at p0.
    ZeroOutput,
}
