//! # twist-learn
//!
//! Twist losses (CTL, soft-Q RL, SIXO, FUDGE, DPG) and the training loop. A placeholder until
//! the training code lands (see docs/architecture.md).
