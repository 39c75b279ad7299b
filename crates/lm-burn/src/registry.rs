//! The one table from the names a `config.json` (or a GGUF file's config view) gives its model
//! to the constructor of the architecture that runs it. Adding an architecture is one file
//! implementing [`CausalLm`] plus one entry in [`ARCHITECTURES`].

use burn::tensor::Device;

use crate::arch::CausalLm;
use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::weights::{Loader, WeightSource};

/// Reads an architecture's hyper-parameters from the config and its weights from the loader.
pub type Constructor = fn(&JsonConfig, &mut Loader<'_>) -> Result<Box<dyn CausalLm>>;

/// One architecture: the names that select it and its constructor.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// `model_type` values (compared case-insensitively); listed in errors as the supported ones.
    pub model_types: &'static [&'static str],
    /// Class names in `architectures[0]`, used when a config has no `model_type`
    /// (compared case-insensitively).
    pub classes: &'static [&'static str],
    /// Builds the model.
    pub build: Constructor,
}

/// Every supported architecture.
pub const ARCHITECTURES: &[Registration] = &[
    Registration {
        model_types: &["llama", "qwen2", "mistral"],
        classes: &["LlamaForCausalLM", "Qwen2ForCausalLM"],
        build: crate::llama::build,
    },
    Registration {
        model_types: &["gpt2"],
        classes: &["GPT2LMHeadModel"],
        build: crate::gpt2::build,
    },
    Registration {
        model_types: &["gpt_neo"],
        classes: &["GPTNeoForCausalLM"],
        build: crate::gpt_neo::build,
    },
];

/// The registration whose names include `name` (case-insensitively).
pub fn find(name: &str) -> Option<&'static Registration> {
    ARCHITECTURES.iter().find(|r| {
        r.model_types
            .iter()
            .chain(r.classes)
            .any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// The supported `model_type` values, comma-separated (for error messages).
pub fn supported() -> String {
    ARCHITECTURES
        .iter()
        .flat_map(|r| r.model_types.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the architecture the config names and loads its weights, failing if any tensor in
/// `source` was left unused (a sign that the config does not describe these weights).
pub fn load(
    cfg: &JsonConfig,
    source: &dyn WeightSource,
    device: &Device,
) -> Result<Box<dyn CausalLm>> {
    let name = cfg.model_type().unwrap_or_default();
    let registration = find(&name).ok_or_else(|| LmError::UnsupportedArchitecture {
        path: cfg.path().to_path_buf(),
        found: name.clone(),
        supported: supported(),
    })?;
    let mut loader = Loader::new(source, device);
    let model = (registration.build)(cfg, &mut loader)?;
    loader.finish()?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_selects_exactly_one_architecture() {
        let names: Vec<&str> = ARCHITECTURES
            .iter()
            .flat_map(|r| r.model_types.iter().chain(r.classes).copied())
            .collect();
        for n in &names {
            let hits = ARCHITECTURES
                .iter()
                .filter(|r| {
                    r.model_types
                        .iter()
                        .chain(r.classes)
                        .any(|m| m.eq_ignore_ascii_case(n))
                })
                .count();
            assert_eq!(hits, 1, "{n}");
        }
        assert!(find("LLAMA").is_some() && find("qwen2forcausallm").is_some());
        assert!(find("mamba").is_none());
    }
}
