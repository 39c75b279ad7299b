//! # lm-burn
//!
//! Transformer language models and twist heads on burn, implementing
//! [`smc_core::model::LanguageModel`]. This crate is a placeholder until the model code lands
//! (see docs/architecture.md); it compiles so the workspace layout is final.
