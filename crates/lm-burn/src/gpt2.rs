//! GPT-2 (the paper's sentiment base model family): learned positions, LayerNorm, fused
//! `c_attn` Conv1D weights stored [in, out], gelu_new, head tied to the embeddings.

use crate::arch::CausalLm;
use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::gpt_block::{Block, GptBody};
use crate::ops::AttentionWindow;
use crate::weights::Loader;

/// Hyper-parameters of GPT-2, from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (n_embd).
    pub n_embd: usize,
    /// Layers.
    pub n_layer: usize,
    /// Heads.
    pub n_head: usize,
    /// MLP inner size (n_inner, default 4 n_embd).
    pub n_inner: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Scale scores by 1/sqrt(head dim).
    pub scale_attn_weights: bool,
    /// Also divide scores by the layer index + 1.
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Gpt2Config {
    /// Reads and validates the config: sizes are positive and `n_head` divides `n_embd`.
    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        let n_embd = cfg.usize("n_embd")?;
        let n_head = cfg.usize("n_head")?;
        if !n_embd.is_multiple_of(n_head) {
            return Err(cfg.invalid("n_head", format!("a divisor of n_embd = {n_embd}"), n_head));
        }
        // The fused q/k/v projection has 3 n_embd outputs.
        cfg.product("n_embd", "triple (the fused q/k/v projection)", 3, n_embd)?;
        let default_inner = cfg.product("n_embd", "quadruple (the default n_inner)", 4, n_embd)?;
        Ok(Self {
            vocab_size: cfg.usize("vocab_size")?,
            n_embd,
            n_layer: cfg.layers("n_layer")?,
            n_head,
            n_inner: cfg.usize_or("n_inner", default_inner)?,
            n_positions: cfg.usize_or("n_positions", 1024)?,
            layer_norm_epsilon: cfg.positive_f64_any(&["layer_norm_epsilon"], 1e-5)?,
            scale_attn_weights: cfg.bool_or("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: cfg
                .bool_or("scale_attn_by_inverse_layer_idx", false)?,
        })
    }
}

/// The [`crate::registry`] constructor.
pub fn build(cfg: &JsonConfig, loader: &mut Loader<'_>) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(load(&Gpt2Config::from_json(cfg)?, loader)?))
}

/// Loads GPT-2 weights (with or without the `transformer.` prefix), after checking that they
/// hold the config's number of layers.
pub fn load(config: &Gpt2Config, loader: &mut Loader<'_>) -> Result<GptBody> {
    let c = config;
    let d = c.n_embd;
    if c.n_head == 0 || !d.is_multiple_of(c.n_head) || d.checked_mul(3).is_none() {
        return Err(LmError::format(
            loader.path(),
            format!(
                "n_head = {} must divide n_embd = {d}, and 3 n_embd must not overflow",
                c.n_head
            ),
        ));
    }
    let pre = if loader.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    loader.expect_layers(&format!("{pre}h."), c.n_layer, "n_layer")?;
    let wte = loader.tensor(&format!("{pre}wte.weight"), [c.vocab_size, d])?;
    let wpe = loader.tensor(&format!("{pre}wpe.weight"), [c.n_positions, d])?;
    let hd = d / c.n_head;
    let mut blocks = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let p = format!("{pre}h.{i}");
        let ln = |l: &mut Loader<'_>, n: &str| -> Result<_> {
            Ok((
                l.tensor(&format!("{p}.{n}.weight"), [d])?,
                l.tensor(&format!("{p}.{n}.bias"), [d])?,
            ))
        };
        // Conv1D weights are already [in, out].
        let conv = |l: &mut Loader<'_>, n: &str, i: usize, o: usize| -> Result<_> {
            Ok((
                l.tensor(&format!("{p}.{n}.weight"), [i, o])?,
                Some(l.tensor(&format!("{p}.{n}.bias"), [o])?),
            ))
        };
        let w_attn = loader.tensor(&format!("{p}.attn.c_attn.weight"), [d, 3 * d])?;
        let b_attn = loader.tensor(&format!("{p}.attn.c_attn.bias"), [3 * d])?;
        let split = |j: usize| {
            (
                w_attn.clone().narrow(1, j * d, d),
                Some(b_attn.clone().narrow(0, j * d, d)),
            )
        };
        let mut scale = if c.scale_attn_weights {
            1.0 / (hd as f64).sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        blocks.push(Block {
            ln1: ln(loader, "ln_1")?,
            q: split(0),
            k: split(1),
            v: split(2),
            out: conv(loader, "attn.c_proj", d, d)?,
            ln2: ln(loader, "ln_2")?,
            fc: conv(loader, "mlp.c_fc", d, c.n_inner)?,
            proj: conv(loader, "mlp.c_proj", c.n_inner, d)?,
            window: AttentionWindow::Global,
            scale,
        });
    }
    let ln_f = (
        loader.tensor(&format!("{pre}ln_f.weight"), [d])?,
        loader.tensor(&format!("{pre}ln_f.bias"), [d])?,
    );
    // Causal-mask buffers of old checkpoints and a duplicate tied head carry no information.
    loader.ignore(|n| {
        n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias") || n == "lm_head.weight"
    });
    Ok(GptBody {
        wte,
        wpe,
        blocks,
        ln_f,
        eps: c.layer_norm_epsilon,
        num_heads: c.n_head,
        device: loader.device().clone(),
    })
}
