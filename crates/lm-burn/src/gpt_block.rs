//! The transformer body shared by GPT-2 and GPT-Neo: learned absolute positions, pre-LayerNorm
//! blocks (attention, then a gelu_new MLP), biases, a head tied to the token embeddings.
//! `gpt2.rs` and `gpt_neo.rs` read their configs and map their weight names onto it.

use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::arch::{CausalLm, Dims};
use crate::cache::{LayerKv, ParticleCache, PromptCache};
use crate::error::{LmError, Result};
use crate::ops::{AttentionWindow, causal_attention, decode_attention, layer_norm};

/// One block's weights (linear weights in burn's [in, out] layout).
#[derive(Debug, Clone)]
pub struct Block {
    /// First LayerNorm weight and bias.
    pub ln1: (Tensor<1>, Tensor<1>),
    /// Query, key, value projections with optional biases.
    pub q: (Tensor<2>, Option<Tensor<1>>),
    /// Key projection.
    pub k: (Tensor<2>, Option<Tensor<1>>),
    /// Value projection.
    pub v: (Tensor<2>, Option<Tensor<1>>),
    /// Output projection.
    pub out: (Tensor<2>, Option<Tensor<1>>),
    /// Second LayerNorm.
    pub ln2: (Tensor<1>, Tensor<1>),
    /// MLP input projection.
    pub fc: (Tensor<2>, Option<Tensor<1>>),
    /// MLP output projection.
    pub proj: (Tensor<2>, Option<Tensor<1>>),
    /// Which keys the block's attention sees.
    pub window: AttentionWindow,
    /// Attention score scale.
    pub scale: f64,
}

/// A GPT-style decoder.
#[derive(Debug, Clone)]
pub struct GptBody {
    /// Token embeddings [V, d] (also the output head).
    pub wte: Tensor<2>,
    /// Position embeddings [max positions, d].
    pub wpe: Tensor<2>,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: (Tensor<1>, Tensor<1>),
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Number of heads.
    pub num_heads: usize,
    /// Device.
    pub device: Device,
}

fn linear<const D: usize>(x: Tensor<D>, w: &(Tensor<2>, Option<Tensor<1>>)) -> Tensor<D> {
    crate::ops::linear(x, &w.0, w.1.as_ref())
}

impl GptBody {
    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.wte.dims()[0]
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.wte.dims()[1]
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden() / self.num_heads
    }

    /// Learned positions: the context length.
    pub fn max_positions(&self) -> usize {
        self.wpe.dims()[0]
    }

    fn ids(&self, values: Vec<i64>, shape: [usize; 2]) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    fn embed(&self, tokens: &[u32], positions: &[usize], shape: [usize; 2]) -> Result<Tensor<3>> {
        let v = self.vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(LmError::TokenOutOfRange {
                token: bad,
                vocab: v,
            });
        }
        let tok = self.ids(tokens.iter().map(|&t| t as i64).collect(), shape);
        let pos = self.ids(positions.iter().map(|&p| p as i64).collect(), shape);
        Ok(burn::tensor::module::embedding(self.wte.clone(), tok)
            + burn::tensor::module::embedding(self.wpe.clone(), pos))
    }

    fn mlp<const D: usize>(&self, b: &Block, x: Tensor<D>) -> Tensor<D> {
        linear(gelu_approximate(linear(x, &b.fc)), &b.proj)
    }
}

/// GPT-2 and GPT-Neo differ only in how their weights are named and which blocks attend
/// locally, both settled at load time, so the body implements the architecture interface
/// once for both.
impl CausalLm for GptBody {
    fn dims(&self) -> Dims {
        Dims {
            vocab: self.vocab(),
            hidden: self.hidden(),
            layers: self.blocks.len(),
            kv_heads: self.num_heads,
            head_dim: self.head_dim(),
            context: self.max_positions(),
        }
    }

    fn forward_seq(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        self.dims()
            .check_context(seq, || format!("a forward pass over {seq} tokens"))?;
        let (h_n, hd) = (self.num_heads, self.head_dim());
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq).collect();
        let mut h = self.embed(tokens, &positions, [batch, seq])?;
        let mut kvs = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let x = layer_norm(h.clone(), &b.ln1.0, &b.ln1.1, self.eps);
            let heads = |w| {
                linear(x.clone(), w)
                    .reshape([batch, seq, h_n, hd])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (heads(&b.q), heads(&b.k), heads(&b.v));
            let att = causal_attention(q, k.clone(), v.clone(), b.scale, b.window);
            h = h + linear(att.swap_dims(1, 2).reshape([batch, seq, h_n * hd]), &b.out);
            let x = layer_norm(h.clone(), &b.ln2.0, &b.ln2.1, self.eps);
            h = h.clone() + self.mlp(b, x);
            kvs.push(LayerKv { k, v });
        }
        Ok((layer_norm(h, &self.ln_f.0, &self.ln_f.1, self.eps), kvs))
    }

    fn decode(
        &self,
        tokens: &[u32],
        pos: usize,
        prompt: Option<&PromptCache>,
        cache: &mut ParticleCache,
    ) -> Result<Tensor<2>> {
        self.dims()
            .check_context(pos + 1, || format!("a decoding step at position {pos}"))?;
        let k = tokens.len();
        let (h_n, hd, d) = (self.num_heads, self.head_dim(), self.hidden());
        let mut h = self.embed(tokens, &vec![pos; k], [k, 1])?.reshape([k, d]);
        let prompt_len = prompt.map_or(0, |p| p.len);
        cache.reserve_one();
        for (i, b) in self.blocks.iter().enumerate() {
            let x = layer_norm(h.clone(), &b.ln1.0, &b.ln1.1, self.eps);
            let q = linear(x.clone(), &b.q).reshape([k, h_n, hd]);
            let kk = linear(x.clone(), &b.k).reshape([k, h_n, 1, hd]);
            let vv = linear(x, &b.v).reshape([k, h_n, 1, hd]);
            let (own_k, own_v) = cache.write(i, kk, vv);
            // Local attention sees absolute positions > pos - window.
            let first_visible = match b.window {
                AttentionWindow::Global => 0,
                AttentionWindow::Local(n) => (pos + 1).saturating_sub(n),
            };
            let prompt_kv = prompt.map(|p| (&p.layers[i].k, &p.layers[i].v));
            let att = decode_attention(
                q,
                prompt_kv,
                own_k,
                own_v,
                b.scale,
                first_visible.min(prompt_len),
                first_visible.saturating_sub(prompt_len),
            );
            h = h + linear(att, &b.out);
            let x = layer_norm(h.clone(), &b.ln2.0, &b.ln2.1, self.eps);
            h = h.clone() + self.mlp(b, x);
        }
        cache.advance();
        Ok(layer_norm(h, &self.ln_f.0, &self.ln_f.1, self.eps))
    }

    // The head is tied to the token embeddings (a transposed view, never copied).
    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        crate::ops::output_head(hidden, &self.wte.clone().transpose())
    }

    fn output_head(&self) -> Tensor<2> {
        self.wte.clone().transpose()
    }
}
