//! GPT-Neo (the paper's TinyStories-33M): learned positions, LayerNorm, alternating global and
//! local (windowed) attention, no 1/sqrt(d) score scaling, head tied to the embeddings.

use crate::arch::CausalLm;
use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::gpt_block::{Block, GptBody};
use crate::ops::AttentionWindow;
use crate::weights::Loader;

/// Hyper-parameters of GPT-Neo, from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct GptNeoConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Layers.
    pub num_layers: usize,
    /// Heads.
    pub num_heads: usize,
    /// MLP inner size (default 4 hidden).
    pub intermediate_size: usize,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Local attention window.
    pub window_size: usize,
    /// Per layer: global or local.
    pub attention_layers: Vec<AttentionWindow>,
}

impl GptNeoConfig {
    /// Reads and validates the config (`attention_layers`, or all global): sizes are positive
    /// and `num_heads` divides `hidden_size`.
    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        let hidden_size = cfg.usize("hidden_size")?;
        let num_heads = cfg.usize("num_heads")?;
        if !hidden_size.is_multiple_of(num_heads) {
            return Err(cfg.invalid(
                "num_heads",
                format!("a divisor of hidden_size = {hidden_size}"),
                num_heads,
            ));
        }
        let default_inner = cfg.product(
            "hidden_size",
            "quadruple (the default intermediate_size)",
            4,
            hidden_size,
        )?;
        // At most MAX_LAYERS, so that the per-layer list below stays small.
        let num_layers = cfg.layers("num_layers")?;
        let window_size = cfg.usize_or("window_size", 256)?;
        let bad = |found: String| {
            cfg.invalid(
                "attention_layers",
                format!("{num_layers} entries, each \"global\" or \"local\""),
                found,
            )
        };
        let names: Vec<String> = match cfg.value("attention_layers").and_then(|v| v.as_array()) {
            Some(a) => a
                .iter()
                .map(|x| x.as_str().unwrap_or("?").to_string())
                .collect(),
            None => vec!["global".into(); num_layers],
        };
        if names.len() != num_layers {
            return Err(bad(format!("{} entries", names.len())));
        }
        let attention_layers = names
            .iter()
            .map(|n| match n.as_str() {
                "global" => Ok(AttentionWindow::Global),
                "local" => Ok(AttentionWindow::Local(window_size)),
                other => Err(bad(format!("{other:?}"))),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size: cfg.usize_or("intermediate_size", default_inner)?,
            max_position_embeddings: cfg.usize_or("max_position_embeddings", 2048)?,
            layer_norm_epsilon: cfg.positive_f64_any(&["layer_norm_epsilon"], 1e-5)?,
            window_size,
            attention_layers,
        })
    }
}

/// The [`crate::registry`] constructor.
pub fn build(cfg: &JsonConfig, loader: &mut Loader<'_>) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(load(&GptNeoConfig::from_json(cfg)?, loader)?))
}

/// Loads GPT-Neo weights, after checking that they hold the config's number of layers.
pub fn load(config: &GptNeoConfig, loader: &mut Loader<'_>) -> Result<GptBody> {
    let c = config;
    let d = c.hidden_size;
    if c.num_heads == 0 || !d.is_multiple_of(c.num_heads) {
        return Err(LmError::format(
            loader.path(),
            format!(
                "num_heads = {} does not divide hidden_size = {d}",
                c.num_heads
            ),
        ));
    }
    if c.attention_layers.len() != c.num_layers {
        return Err(LmError::format(
            loader.path(),
            format!(
                "{} attention_layers entries for num_layers = {}",
                c.attention_layers.len(),
                c.num_layers
            ),
        ));
    }
    loader.expect_layers("transformer.h.", c.num_layers, "num_layers")?;
    let wte = loader.tensor("transformer.wte.weight", [c.vocab_size, d])?;
    let wpe = loader.tensor("transformer.wpe.weight", [c.max_position_embeddings, d])?;
    let mut blocks = Vec::with_capacity(c.num_layers);
    for (i, window) in c.attention_layers.iter().enumerate() {
        let p = format!("transformer.h.{i}");
        let ln = |l: &mut Loader<'_>, n: &str| -> Result<_> {
            Ok((
                l.tensor(&format!("{p}.{n}.weight"), [d])?,
                l.tensor(&format!("{p}.{n}.bias"), [d])?,
            ))
        };
        let lin = |l: &mut Loader<'_>, n: &str, o: usize, i: usize, bias: bool| -> Result<_> {
            let w = l.linear(&format!("{p}.{n}.weight"), o, i)?;
            let b = if bias {
                Some(l.tensor(&format!("{p}.{n}.bias"), [o])?)
            } else {
                None
            };
            Ok((w, b))
        };
        blocks.push(Block {
            ln1: ln(loader, "ln_1")?,
            q: lin(loader, "attn.attention.q_proj", d, d, false)?,
            k: lin(loader, "attn.attention.k_proj", d, d, false)?,
            v: lin(loader, "attn.attention.v_proj", d, d, false)?,
            out: lin(loader, "attn.attention.out_proj", d, d, true)?,
            ln2: ln(loader, "ln_2")?,
            fc: lin(loader, "mlp.c_fc", c.intermediate_size, d, true)?,
            proj: lin(loader, "mlp.c_proj", d, c.intermediate_size, true)?,
            window: *window,
            // GPT-Neo does not scale attention scores.
            scale: 1.0,
        });
    }
    let ln_f = (
        loader.tensor("transformer.ln_f.weight", [d])?,
        loader.tensor("transformer.ln_f.bias", [d])?,
    );
    loader.ignore(|n| {
        n.ends_with(".attn.attention.bias")
            || n.ends_with(".attn.attention.masked_bias")
            || n == "lm_head.weight"
    });
    Ok(GptBody {
        wte,
        wpe,
        blocks,
        ln_f,
        eps: c.layer_norm_epsilon,
        num_heads: c.num_heads,
        device: loader.device().clone(),
    })
}
