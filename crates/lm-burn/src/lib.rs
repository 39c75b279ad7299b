//! # lm-burn
//!
//! Transformer language models on burn 0.22 for twisted SMC: the particles are the batch.
//! - architectures, one file each, configured from Hugging Face `config.json`: [`llama`]
//!   (Llama 2/3, SmolLM2, TinyLlama, Qwen2), [`gpt2`], [`gpt_neo`] (alternating global/local
//!   attention), the latter two on the shared body of [`gpt_block`]; each implements
//!   [`arch::CausalLm`], and [`registry`] maps a config's `model_type` to its constructor;
//! - weights from Hugging Face safetensors directories ([`weights`]) and GGUF files;
//! - [`model::BurnLm`] implements [`smc_core::model::LanguageModel`]: the prompt is prefilled
//!   once and its keys/values shared by all K particles, each step is one forward pass for the
//!   K new tokens, and resampling reorders the per-particle cache rows in place ([`cache`]);
//! - [`ModelTokenizer`]: a model's tokenizer, vocabulary size and end tokens without its
//!   weights, for models served elsewhere;
//! - backends by feature ([`device`]): CPU (flex) by default, `wgpu`, `cuda`;
//! - files written whole or not at all ([`temporaries`]): temporaries renamed into place, a
//!   registry of them that a SIGINT/SIGTERM handler removes, stale ones of killed runs cleared.

pub mod arch;
pub mod cache;
pub mod config;
pub mod cpu;
pub mod default_model;
pub mod device;
pub mod error;
pub mod gguf;
pub mod gpt2;
pub mod gpt_block;
pub mod gpt_neo;
pub mod heads;
pub mod infilling;
pub mod llama;
pub mod model;
pub mod model_tokenizer;
pub mod ops;
pub mod profile;
pub mod registry;
pub mod temporaries;
pub mod tokenizer;
pub mod weights;

pub use arch::{CausalLm, Dims, WeightFormat};
pub use burn::tensor::Device;
pub use device::{Backend, default_device};
pub use error::{LmError, Result};
pub use model::{BurnLm, BurnSession};
pub use model_tokenizer::ModelTokenizer;
pub use tokenizer::Tokenizer;
