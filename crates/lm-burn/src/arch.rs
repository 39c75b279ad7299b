//! The interface every architecture implements, so that loading, scoring and particle decoding
//! are written once for all of them (in the style of candle-transformers' models and
//! mistral.rs's `NormalModel`). Which `config.json` names build which architecture is decided
//! in one table, [`crate::registry`].

use burn::tensor::Tensor;

use crate::cache::{LayerKv, ParticleCache, PromptCache};
use crate::error::{LmError, Result};

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
    /// Context length: positions 0..context are valid (learned position embeddings, or a
    /// rotary model's `max_position_embeddings`).
    pub context: usize,
}

impl Dims {
    /// The one context-length rule of every architecture: a sequence covering positions
    /// 0..`len` fits when `len` <= [`Dims::context`]. `what` names the sequence in the error.
    /// O(1), so that it can run on every decoding step.
    pub fn check_context(&self, len: usize, what: impl FnOnce() -> String) -> Result<()> {
        if len <= self.context {
            Ok(())
        } else {
            Err(LmError::PositionOutOfRange {
                what: what(),
                position: self.context,
                max: self.context,
            })
        }
    }
}

/// How a model holds its matrices for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32 only (the default): every pass reads the weights as loaded.
    #[default]
    F32,
    /// An 8-bit copy ([`crate::cpu::QuantMatrix`]: blocks of 32 with a minimum and a step)
    /// beside the f32 weights, read by decoding steps of at most
    /// [`crate::cpu::QUANT_MAX_ROWS`] particles (and a session's prompt of at most that many
    /// tokens) on a CPU with AVX-512; f32 everywhere else (larger batches, scoring, training). Up to f32 rounding the same weights for a GGUF
    /// file's Q4_0, Q4_1 and Q8_0 blocks; otherwise within half a step per weight. Costs up to
    /// 1.25 bytes per weight of memory (0.75 where blocks have at most 16 levels).
    Q8,
    /// [`WeightFormat::Q8`]'s weights, with the activations of each product rounded to 8 bits
    /// per block of 32 (scale max |x| / 127, as llama.cpp's Q8_0 activations) and multiplied
    /// as integers (AVX-512 VNNI) where the CPU has it: faster at small K, and no longer the
    /// f32 model's values (tolerance tested in `tests/smollm2.rs`, documented in
    /// docs/benchmarks.md).
    Int8,
    /// [`WeightFormat::Q8`]'s weights, with the products of more than four rows (decode steps
    /// of 5 to [`crate::cpu::BF16_MAX_ROWS`] particles, prompts of 5 to that many tokens)
    /// rounding the weights and the activations to bf16 and multiplying them with AVX-512
    /// BF16 (f32 sums) where the CPU has it: twice the multiply-adds per instruction, and no
    /// longer the f32 model's values (tolerance tested in `tests/smollm2.rs`, documented in
    /// docs/benchmarks.md). Steps of at most four particles keep the exact q8 products.
    Bf16,
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Q8 => "q8",
            WeightFormat::Int8 => "int8",
            WeightFormat::Bf16 => "bf16",
        })
    }
}

/// A decoder-only language model with weights on a device: the three passes that
/// [`crate::BurnLm`] builds everything else from.
///
/// Hidden states are the final-norm states (after the last layer's norm, before the output
/// head), so that twist heads and the output head read the same vector.
pub trait CausalLm: Send + Sync + std::fmt::Debug {
    /// Sizes (the particle cache is allocated from them).
    fn dims(&self) -> Dims;

    /// Full forward over `batch` sequences of `seq` tokens each (row-major in `tokens`) from
    /// position 0 (an error if `seq` exceeds the context length): the hidden states [B, S, d] and every layer's keys and values
    /// [B, Hkv, S, hd] (which become the shared prompt cache).
    fn forward_seq(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor<3>, Vec<LayerKv>)>;

    /// The prompt's forward pass for a decoding session: [`CausalLm::forward_seq`] over one
    /// sequence, except that a quantised [`WeightFormat`] may serve its products (the prompt is
    /// decoding's start, not a score).
    fn prefill(&self, tokens: &[u32]) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        self.forward_seq(tokens, 1, tokens.len())
    }

    /// One decoding step for K particles whose new tokens (one each) sit at absolute position
    /// `pos` (an error at or beyond the context length): attends over `prompt` (if any) and the particles' own keys/values in `cache`,
    /// writes the new keys/values there, advances it, and returns the hidden states [K, d].
    fn decode(
        &self,
        tokens: &[u32],
        pos: usize,
        prompt: Option<&PromptCache>,
        cache: &mut ParticleCache,
    ) -> Result<Tensor<2>>;

    /// The output head: hidden states [B, S, d] to logits [B, S, V]. Three dimensions only, so
    /// that the trait stays object-safe; a [K, d] batch is passed as [K, 1, d] (the head folds
    /// the leading dimensions into rows, so the result is the same).
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// The output head for a decoding step's hidden states [K, d]: logits [K, V]. The same
    /// values as [`CausalLm::logits`] unless a quantised [`WeightFormat`] is set, which only
    /// decoding steps read.
    fn decode_logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let [k, _] = hidden.dims();
        let logits = self.logits(hidden.unsqueeze_dim(1));
        let v = logits.dims()[2];
        logits.reshape([k, v])
    }

    /// The output head's matrix W [d, V] with logits = h W (the token embeddings transposed
    /// when they are tied): column v is token v's output embedding e_v. Twist heads through the
    /// output embedding read it as a frozen constant.
    fn output_head(&self) -> Tensor<2>;

    /// Switches how the matrices are held for decoding ([`WeightFormat`]); an error when this
    /// architecture or device cannot hold them so (the model is then unchanged).
    fn set_weight_format(&mut self, format: WeightFormat) -> Result<()> {
        match format {
            WeightFormat::F32 => Ok(()),
            other => Err(LmError::WeightFormat {
                format: other.to_string(),
                reason: "only the Llama family (llama.rs) has quantised decoding so far".into(),
            }),
        }
    }
}
