//! A loaded language model of any supported architecture, and its batched particle decoding
//! session implementing [`smc_core::model::LanguageModel`].

use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::{DecodeSession, LanguageModel, StepOutput};

use crate::cache::{ParticleCache, PromptCache};
use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::gpt_block::GptBody;
use crate::gpt_neo::GptNeoConfig;
use crate::gpt2::Gpt2Config;
use crate::llama::{Llama, LlamaConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::{Loader, SafetensorsDir, WeightSource};

/// The supported architectures.
#[derive(Debug, Clone)]
pub enum Architecture {
    /// Llama, SmolLM2, TinyLlama, Qwen2.
    Llama(Llama),
    /// GPT-2.
    Gpt2(GptBody),
    /// GPT-Neo.
    GptNeo(GptBody),
}

/// Sizes every architecture shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl Architecture {
    /// Sizes.
    pub fn dims(&self) -> Dims {
        match self {
            Architecture::Llama(m) => {
                let c = m.config();
                Dims {
                    vocab: c.vocab_size,
                    hidden: c.hidden_size,
                    layers: c.num_layers,
                    kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                }
            }
            Architecture::Gpt2(m) | Architecture::GptNeo(m) => Dims {
                vocab: m.vocab(),
                hidden: m.hidden(),
                layers: m.blocks.len(),
                kv_heads: m.num_heads,
                head_dim: m.head_dim(),
            },
        }
    }

    fn forward_seq(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor<3>, PromptCache)> {
        let (h, layers) = match self {
            Architecture::Llama(m) => m.forward_seq(tokens, batch, seq)?,
            Architecture::Gpt2(m) | Architecture::GptNeo(m) => m.forward_seq(tokens, batch, seq)?,
        };
        Ok((h, PromptCache { layers, len: seq }))
    }

    fn decode(
        &self,
        tokens: &[u32],
        pos: usize,
        prompt: Option<&PromptCache>,
        cache: &mut ParticleCache,
    ) -> Result<Tensor<2>> {
        match self {
            Architecture::Llama(m) => m.decode(tokens, pos, prompt, cache),
            Architecture::Gpt2(m) | Architecture::GptNeo(m) => m.decode(tokens, pos, prompt, cache),
        }
    }

    fn logits<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match self {
            Architecture::Llama(m) => m.logits(hidden),
            Architecture::Gpt2(m) | Architecture::GptNeo(m) => m.logits(hidden),
        }
    }

    /// Builds the architecture a config names and loads its weights.
    pub fn load(cfg: &JsonConfig, source: &dyn WeightSource, device: &Device) -> Result<Self> {
        let model_type = cfg.model_type().unwrap_or_default();
        let mut loader = Loader::new(source, device);
        let arch = match model_type.to_ascii_lowercase().as_str() {
            "llama" | "qwen2" | "mistral" | "llamaforcausallm" | "qwen2forcausallm" => {
                Architecture::Llama(Llama::load(LlamaConfig::from_json(cfg)?, &mut loader)?)
            }
            "gpt2" | "gpt2lmheadmodel" => Architecture::Gpt2(crate::gpt2::load(
                &Gpt2Config::from_json(cfg)?,
                &mut loader,
            )?),
            "gpt_neo" | "gptneoforcausallm" => Architecture::GptNeo(crate::gpt_neo::load(
                &GptNeoConfig::from_json(cfg)?,
                &mut loader,
            )?),
            _ => {
                return Err(LmError::UnsupportedArchitecture {
                    path: cfg.path().to_path_buf(),
                    found: model_type,
                    supported: "llama, qwen2, gpt2, gpt_neo",
                });
            }
        };
        loader.finish()?;
        Ok(arch)
    }
}

/// A transformer language model on burn, with its tokenizer when one was found.
#[derive(Debug, Clone)]
pub struct BurnLm {
    arch: Architecture,
    tokenizer: Option<Tokenizer>,
    device: Device,
    name: String,
}

impl BurnLm {
    /// Loads a Hugging Face model directory: `config.json`, `model.safetensors` (or a sharded
    /// index) and, if present, `tokenizer.json`.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = JsonConfig::read(&dir.join("config.json"))?;
        let source = SafetensorsDir::open(dir)?;
        let arch = Architecture::load(&cfg, &source, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        Ok(Self {
            arch,
            tokenizer,
            device: device.clone(),
            name: dir.display().to_string(),
        })
    }

    /// Loads a GGUF model file (weights dequantised to f32 at load; tokenizer from the metadata).
    pub fn from_gguf(path: &Path, device: &Device) -> Result<Self> {
        let model = crate::gguf::GgufModel::open(path)?;
        let cfg = model.config()?;
        let arch = Architecture::load(&cfg, &model, device)?;
        let tokenizer = model.tokenizer()?;
        Ok(Self {
            arch,
            tokenizer: Some(tokenizer),
            device: device.clone(),
            name: path.display().to_string(),
        })
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
            Err(LmError::Input(format!(
                "model {spec:?} is neither `default`, a model directory nor a .gguf file"
            )))
        }
    }

    /// Wraps a loaded architecture.
    pub fn new(
        arch: Architecture,
        tokenizer: Option<Tokenizer>,
        device: &Device,
        name: impl Into<String>,
    ) -> Self {
        Self {
            arch,
            tokenizer,
            device: device.clone(),
            name: name.into(),
        }
    }

    /// The model's name (its path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Sizes.
    pub fn dims(&self) -> Dims {
        self.arch.dims()
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tokenizer, or an error if the model came without one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| LmError::Tokenizer {
            source_name: self.name.clone(),
            detail: "this model has no tokenizer (no tokenizer.json in the directory)".into(),
        })
    }

    /// Logits at every position of one sequence, [S x V] row-major (a full forward, no cache).
    pub fn forward_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(LmError::Input(
                "cannot run the model on an empty sequence".into(),
            ));
        }
        let (h, _) = self.arch.forward_seq(tokens, 1, tokens.len())?;
        to_vec(self.arch.logits(h))
    }

    /// The final-norm hidden state at the last position of `tokens` encoded alone ([d]): the
    /// conditioning vector of conditional twist heads.
    pub fn encode_last_hidden(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(LmError::Input(
                "cannot encode an empty conditioning sequence".into(),
            ));
        }
        let (h, _) = self.arch.forward_seq(tokens, 1, tokens.len())?;
        let d = h.dims()[2];
        let n = tokens.len();
        to_vec(h.slice([0..1, n - 1..n, 0..d]))
    }

    /// log p0(continuation | prefix) for each (prefix, continuation) pair, in one batched pass
    /// per distinct shape (the infilling potential's scoring pass).
    pub fn score(&self, prefixes: &[Vec<u32>], continuations: &[Vec<u32>]) -> Result<Vec<f64>> {
        if prefixes.len() != continuations.len() {
            return Err(LmError::Input(format!(
                "score: {} prefixes but {} continuations",
                prefixes.len(),
                continuations.len()
            )));
        }
        let mut out = vec![0.0; prefixes.len()];
        // Batch the pairs whose total lengths agree (all of them, in SMC use).
        let mut groups: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
        for (i, (p, c)) in prefixes.iter().zip(continuations).enumerate() {
            if p.is_empty() {
                return Err(LmError::Input(format!("score: prefix {i} is empty")));
            }
            groups.entry((p.len(), c.len())).or_default().push(i);
        }
        let v = self.dims().vocab;
        for ((pl, cl), idx) in groups {
            if cl == 0 {
                continue;
            }
            let seq = pl + cl;
            let mut tokens = Vec::with_capacity(idx.len() * seq);
            for &i in &idx {
                tokens.extend(&prefixes[i]);
                tokens.extend(&continuations[i]);
            }
            let (h, _) = self.arch.forward_seq(&tokens, idx.len(), seq)?;
            let d = h.dims()[2];
            let h = h.slice([0..idx.len(), pl - 1..seq - 1, 0..d]);
            let logp = to_vec(log_softmax(self.arch.logits(h), 2))?;
            for (b, &i) in idx.iter().enumerate() {
                out[i] = continuations[i]
                    .iter()
                    .enumerate()
                    .map(|(j, &tok)| logp[(b * cl + j) * v + tok as usize] as f64)
                    .sum();
            }
        }
        Ok(out)
    }
}

/// Appends the log-softmax of one row of logits, in f64 (one pass for the max, one for the
/// sum, one to write).
fn push_log_softmax(row: &[f32], out: &mut Vec<f64>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    out.extend(row.iter().map(|&x| x as f64 - lse));
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| LmError::Input(format!("cannot read a tensor back from the device: {e:?}")))
}

/// Batched decoding of K particles after a shared prompt.
pub struct BurnSession<'a> {
    lm: &'a BurnLm,
    prompt: PromptCache,
    cache: ParticleCache,
    particles: usize,
    /// Absolute position of the next token to be pushed.
    pos: usize,
    /// Final-norm hidden states [K, d] at the position that predicts the next token.
    hidden: Tensor<2>,
}

impl BurnSession<'_> {
    /// Number of generated tokens so far.
    pub fn generated(&self) -> usize {
        self.cache.len()
    }
}

impl LanguageModel for BurnLm {
    type Session<'a> = BurnSession<'a>;

    fn vocab_size(&self) -> usize {
        self.dims().vocab
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<BurnSession<'_>> {
        if prompt.is_empty() {
            return Err(LmError::Input(
                "the prompt is empty: the model needs at least one token to condition on".into(),
            )
            .into());
        }
        let (h, prompt_cache) = self.arch.forward_seq(prompt, 1, prompt.len())?;
        let d = h.dims()[2];
        let p = prompt.len();
        let last = h.slice([0..1, p - 1..p, 0..d]).reshape([1, d]);
        let dims = self.dims();
        Ok(BurnSession {
            lm: self,
            prompt: prompt_cache,
            cache: ParticleCache::new(
                dims.layers,
                num_particles,
                dims.kv_heads,
                dims.head_dim,
                32,
                &self.device,
            ),
            particles: num_particles,
            pos: p,
            hidden: last.repeat_dim(0, num_particles),
        })
    }

    fn teacher_forced(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> smc_core::Result<Vec<StepOutput>> {
        Ok(self.teacher_forced_batched(prompt, sequences)?)
    }
}

impl BurnLm {
    /// Teacher forcing in full forward passes over prompt + s_{1:T-1} (chunks of sequences
    /// sized so that one chunk's logits stay near 256 MiB).
    fn teacher_forced_batched(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> Result<Vec<StepOutput>> {
        if prompt.is_empty() {
            return Err(LmError::Input(
                "the prompt is empty: the model needs at least one token to condition on".into(),
            ));
        }
        let horizon = sequences.first().map_or(0, Vec::len);
        if let Some(i) = sequences.iter().position(|s| s.len() != horizon) {
            return Err(LmError::Input(format!(
                "teacher forcing: sequence {i} has {} tokens, the first has {horizon}",
                sequences[i].len()
            )));
        }
        let k = sequences.len();
        if horizon == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let Dims {
            vocab: v,
            hidden: d,
            ..
        } = self.dims();
        let p = prompt.len();
        let seq = p + horizon - 1;
        let mut log_probs: Vec<Vec<f64>> =
            (0..horizon).map(|_| Vec::with_capacity(k * v)).collect();
        let mut hidden: Vec<Vec<f32>> = (0..horizon).map(|_| Vec::with_capacity(k * d)).collect();
        let chunk = ((64usize << 20) / (horizon * v)).max(1);
        for group in sequences.chunks(chunk) {
            let b = group.len();
            let mut tokens = Vec::with_capacity(b * seq);
            for s in group {
                tokens.extend_from_slice(prompt);
                tokens.extend_from_slice(&s[..horizon - 1]);
            }
            let (h, _) = self.arch.forward_seq(&tokens, b, seq)?;
            let h = h.slice([0..b, p - 1..seq, 0..d]);
            let hv = to_vec(h.clone())?;
            let logits = to_vec(self.arch.logits(h))?;
            for bi in 0..b {
                for t in 0..horizon {
                    let r = bi * horizon + t;
                    push_log_softmax(&logits[r * v..(r + 1) * v], &mut log_probs[t]);
                    hidden[t].extend_from_slice(&hv[r * d..(r + 1) * d]);
                }
            }
        }
        Ok(log_probs
            .into_iter()
            .zip(hidden)
            .map(|(lp, h)| StepOutput {
                log_probs: LogTable::from_vec(k, v, lp).expect("shape"),
                hidden: Some(HiddenStates {
                    rows: k,
                    dim: d,
                    data: h,
                }),
            })
            .collect())
    }
}

impl DecodeSession for BurnSession<'_> {
    fn num_particles(&self) -> usize {
        self.particles
    }

    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        let v = self.lm.dims().vocab;
        let logits = to_vec(self.lm.arch.logits(self.hidden.clone()))?;
        let mut data = Vec::with_capacity(logits.len());
        for row in logits.chunks_exact(v) {
            push_log_softmax(row, &mut data);
        }
        let hidden = to_vec(self.hidden.clone())?;
        let dim = self.hidden.dims()[1];
        Ok(StepOutput {
            log_probs: LogTable::from_vec(self.particles, v, data).expect("shape"),
            hidden: Some(HiddenStates {
                rows: self.particles,
                dim,
                data: hidden,
            }),
        })
    }

    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        if tokens.len() != self.particles {
            return Err(LmError::Input(format!(
                "push: {} tokens for {} particles",
                tokens.len(),
                self.particles
            ))
            .into());
        }
        self.hidden = self
            .lm
            .arch
            .decode(tokens, self.pos, Some(&self.prompt), &mut self.cache)?;
        self.pos += 1;
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        if ancestors.len() != self.particles || ancestors.iter().any(|&a| a >= self.particles) {
            return Err(LmError::Input(format!(
                "reorder: invalid ancestors for {} particles",
                self.particles
            ))
            .into());
        }
        if ancestors.iter().enumerate().all(|(k, &a)| a == k) {
            return Ok(());
        }
        self.cache.reorder(ancestors);
        let idx: Vec<i64> = ancestors.iter().map(|&a| a as i64).collect();
        let idx =
            Tensor::<1, Int>::from_data(TensorData::new(idx, [self.particles]), &self.lm.device);
        self.hidden = self.hidden.clone().select(0, idx);
        Ok(())
    }
}
