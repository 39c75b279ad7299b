//! # twist-learn
//!
//! Learning twists for twisted SMC (spec §5): contrastive twist learning (CTL, the paper's
//! method), soft Q-learning (RL), SIXO, FUDGE and DPG, written once as functions of a batch's
//! raw twist outputs ([`losses`]) so that every method trains any [`twist::TrainableTwist`]:
//! the tabular twist of the enumerable model (exact checks) and twist heads on a transformer.

pub mod adam;
pub mod batch;
pub mod error;
pub mod exact_fit;
pub mod gibbs;
pub mod head;
pub mod infilling;
pub mod losses;
pub mod method;
pub mod record;
pub mod replay;
pub mod train;
pub mod twist;

pub use adam::AdamConfig;
pub use batch::{Batch, Parameterization, RecordedStep};
pub use error::TrainError;
pub use gibbs::{CsmcUpdate, ctl_csmc_update, train_ctl_particle_gibbs};
pub use head::{BiasOptimizer, HeadTrainable, MAX_SGD_BIAS_STEP};
pub use infilling::{
    InfillingConfig, InfillingEval, evaluate_infilling, evaluate_infilling_with,
    infilling_eval_plan, train_infilling_ctl,
};
pub use losses::{Method, Roles, Targets, loss_and_grads, targets, targets_for};
pub use replay::{ReplayForm, ctl_replay_update, train_ctl_replay};
pub use train::{BatchSource, TrainConfig, TrainRecord, draw_batch, train};
pub use twist::{TabularTrainable, TrainableTwist};
