//! Finding and loading a model: `default`, a Hugging Face directory or a `.gguf` file. The
//! architecture is chosen by [`crate::registry`]; this module only gathers its config,
//! weights and tokenizer.

use std::path::Path;

use burn::tensor::Device;

use super::BurnLm;
use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::SafetensorsDir;

impl BurnLm {
    /// Loads a Hugging Face model directory: `config.json`, `model.safetensors` (or a sharded
    /// index) and, if present, `tokenizer.json`.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = JsonConfig::read(&dir.join("config.json"))?;
        let source = SafetensorsDir::open(dir)?;
        let model = crate::registry::load(&cfg, &source, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        let eos = crate::model_tokenizer::config_eos(&cfg);
        Ok(Self::new(model, tokenizer, device, dir.display().to_string())?.with_eos_tokens(eos))
    }

    /// Loads a GGUF model file (weights dequantised to f32 at load; tokenizer from the metadata).
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let gguf = crate::gguf::GgufModel::open(path)?;
        let cfg = gguf.config()?;
        let model = crate::registry::load(&cfg, &gguf, device)?;
        let tokenizer = gguf.tokenizer()?;
        let eos = crate::model_tokenizer::gguf_eos(gguf.file());
        Ok(
            Self::new(model, Some(tokenizer), device, path.display().to_string())?
                .with_eos_tokens(eos),
        )
    }

    /// Loads a model by name: `default` (SmolLM2-135M-Instruct, fetched once into the cache),
    /// a Hugging Face model directory, or a `.gguf` file.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        if spec == "default" {
            let path = crate::default_model::ensure_default_model()?;
            return Self::from_gguf(&path, device);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            Self::from_hf_dir(path, device)
        } else if path.is_file() {
            Self::from_gguf(path, device)
        } else {
            Err(LmError::ModelNotFound { spec: spec.into() })
        }
    }
}
