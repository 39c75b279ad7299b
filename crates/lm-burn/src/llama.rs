//! The Llama family: Llama 2/3, SmolLM2, TinyLlama, Qwen2 (q/k/v biases). Grouped-query and
//! multi-query attention, RMSNorm, SwiGLU, rotary embeddings (Hugging Face half-split layout),
//! tied or untied output head.

use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::arch::{CausalLm, Dims, WeightFormat};
use crate::cache::{LayerKv, ParticleCache, PromptCache};
use crate::config::JsonConfig;
use crate::cpu::{BF16_MAX_ROWS, QUANT_MAX_ROWS, QuantMatrix, quant_matmul};
use crate::error::{LmError, Result};
use crate::ops::{
    AttentionWindow, apply_rope, causal_attention, decode_attention, rms_norm, rope_tables,
};
use crate::profile::time;
use crate::weights::Loader;

/// Hyper-parameters of a Llama-family model, from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size d.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (equal to `num_heads` without grouped-query attention).
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Output head tied to the embeddings.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub attention_bias: bool,
    /// Maximum positions.
    pub max_position_embeddings: usize,
    /// The sliding attention window where the config turns one on (Mistral's `sliding_window`
    /// unless null; Qwen2's only with `use_sliding_window`). Windowed attention is not
    /// implemented: within the window it equals the global attention computed here, so the
    /// context is capped at the window and a longer sequence is an error, not another model.
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    /// Reads and validates the config; `qwen2` implies q/k/v biases. Sizes are positive, the
    /// key/value heads divide the query heads, the head dimension is even (rotary embeddings
    /// rotate pairs of dimensions) and, when the config does not give it, `hidden_size` is a
    /// multiple of `num_attention_heads` (the head dimension is then their quotient).
    pub fn from_json(cfg: &JsonConfig) -> Result<Self> {
        let model_type = cfg.model_type().unwrap_or_default().to_ascii_lowercase();
        let hidden_size = cfg.usize("hidden_size")?;
        let num_heads = cfg.usize("num_attention_heads")?;
        let num_kv_heads = cfg.usize_or("num_key_value_heads", num_heads)?;
        if !num_heads.is_multiple_of(num_kv_heads) {
            return Err(cfg.invalid(
                "num_key_value_heads",
                format!("a divisor of num_attention_heads = {num_heads}"),
                num_kv_heads,
            ));
        }
        let head_dim = if cfg.value("head_dim").is_some() {
            cfg.usize("head_dim")?
        } else if hidden_size.is_multiple_of(num_heads) {
            hidden_size / num_heads
        } else {
            return Err(cfg.invalid(
                "num_attention_heads",
                format!(
                    "a divisor of hidden_size = {hidden_size} (there is no head_dim, so the \
                     head dimension is hidden_size / num_attention_heads)"
                ),
                num_heads,
            ));
        };
        if !head_dim.is_multiple_of(2) {
            return Err(cfg.invalid(
                "head_dim",
                "an even head dimension (rotary embeddings rotate pairs of dimensions)",
                head_dim,
            ));
        }
        cfg.product(
            "num_attention_heads",
            "product with head_dim",
            num_heads,
            head_dim,
        )?;
        Ok(Self {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_layers: cfg.layers("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: cfg.positive_f64_any(&["rms_norm_eps"], 1e-6)?,
            rope_theta: cfg
                .positive_f64_any(&["rope_theta", "rope_parameters.rope_theta"], 10_000.0)?,
            tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            attention_bias: cfg.bool_or("attention_bias", model_type.contains("qwen2"))?,
            max_position_embeddings: cfg.usize_or("max_position_embeddings", 4096)?,
            sliding_window: sliding_window(cfg, &model_type)?,
        })
    }

    /// The longest sequence this model computes as its config means it: the position table,
    /// capped at the sliding window if there is one.
    pub fn context_length(&self) -> usize {
        self.sliding_window
            .map_or(self.max_position_embeddings, |w| {
                w.min(self.max_position_embeddings)
            })
    }
}

/// The window of `sliding_window`, where the config turns it on: Qwen2 configs carry the field
/// with `use_sliding_window: false`, Mistral's mean it unless it is null (v0.2 on).
fn sliding_window(cfg: &JsonConfig, model_type: &str) -> Result<Option<usize>> {
    let on = if model_type.contains("qwen2") {
        cfg.bool_or("use_sliding_window", false)?
    } else {
        true
    };
    if on && cfg.value("sliding_window").is_some() {
        cfg.usize("sliding_window").map(Some)
    } else {
        Ok(None)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor<1>,
    wq: Tensor<2>,
    wk: Tensor<2>,
    wv: Tensor<2>,
    bq: Option<Tensor<1>>,
    bk: Option<Tensor<1>>,
    bv: Option<Tensor<1>>,
    wo: Tensor<2>,
    post_norm: Tensor<1>,
    w_gate: Tensor<2>,
    w_up: Tensor<2>,
    w_down: Tensor<2>,
}

/// A layer's matrices quantised for decoding ([`WeightFormat::Q8`]), each [out, in]: Q, K and
/// V stacked into one, gate and up into another, so that each runs as one product over the
/// threads.
#[derive(Debug, Clone)]
struct LayerQuant {
    qkv: QuantMatrix,
    o: QuantMatrix,
    gate_up: QuantMatrix,
    down: QuantMatrix,
}

/// Every quantised matrix, the output head's [V, d] included.
#[derive(Debug, Clone)]
struct QuantWeights {
    layers: Vec<LayerQuant>,
    head: QuantMatrix,
}

impl QuantWeights {
    fn with_int8_activations(self) -> Self {
        self.map(|m| m.with_int8_activations(true))
    }

    fn with_bf16_products(self) -> Self {
        self.map(|m| m.with_bf16_products(true))
    }

    /// The most rows (particles or prompt tokens) that read these weights.
    fn max_rows(&self) -> usize {
        if self.head.bf16_products() && crate::cpu::bf16_products_available() {
            BF16_MAX_ROWS
        } else {
            QUANT_MAX_ROWS
        }
    }

    fn map(self, on: impl Fn(QuantMatrix) -> QuantMatrix) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerQuant {
                    qkv: on(l.qkv),
                    o: on(l.o),
                    gate_up: on(l.gate_up),
                    down: on(l.down),
                })
                .collect(),
            head: on(self.head),
        }
    }
}

/// A Llama-family model with weights on a device.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor<2>,
    layers: Vec<Layer>,
    norm: Tensor<1>,
    /// [d, V] (the transposed embeddings when tied).
    lm_head: Tensor<2>,
    device: Device,
    /// Present with [`WeightFormat::Q8`].
    quant: Option<std::sync::Arc<QuantWeights>>,
}

/// The rows of [in, out] weights (the transposed [out, in] matrices of the file), stacked
/// into one [sum of outs, in] quantised matrix.
fn quantise_stacked(ws: &[&Tensor<2>]) -> Result<QuantMatrix> {
    let cols = ws[0].dims()[0];
    let mut rows = 0;
    let mut data = Vec::new();
    for w in ws {
        let [_, out] = w.dims();
        rows += out;
        let values = (*w)
            .clone()
            .transpose()
            .try_into_vec_as::<f32>()
            .map_err(LmError::read_back("a weight matrix"))?;
        data.extend_from_slice(&values);
    }
    QuantMatrix::from_rows(&data, rows, cols).ok_or_else(|| LmError::WeightFormat {
        format: WeightFormat::Q8.to_string(),
        reason: format!("a [{rows}, {cols}] matrix cannot be quantised in blocks of 32"),
    })
}

/// The product of x [K, in] with a quantised matrix, split into output parts, plus biases;
/// `None` when the quantised kernel declines (the caller uses the f32 weights).
fn quant_linear(
    x: &Tensor<2>,
    w: &QuantMatrix,
    parts: &[usize],
    biases: &[&Option<Tensor<1>>],
) -> Option<Vec<Tensor<2>>> {
    let outs = quant_matmul(x, w, parts)?;
    Some(
        outs.into_iter()
            .enumerate()
            .map(|(i, y)| match biases.get(i).and_then(|b| b.as_ref()) {
                Some(b) => y + b.clone().unsqueeze::<2>(),
                None => y,
            })
            .collect(),
    )
}

fn linear<const D: usize>(x: Tensor<D>, w: &Tensor<2>, b: &Option<Tensor<1>>) -> Tensor<D> {
    crate::ops::linear(x, w, b.as_ref())
}

impl Llama {
    /// Loads the weights by their Hugging Face names (after checking that they hold the
    /// config's number of layers).
    pub fn load(config: LlamaConfig, loader: &mut Loader<'_>) -> Result<Self> {
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (Some(q_out), Some(kv_out)) =
            (c.num_heads.checked_mul(hd), c.num_kv_heads.checked_mul(hd))
        else {
            return Err(LmError::format(loader.path(), "heads x head_dim overflows"));
        };
        loader.expect_layers("model.layers.", c.num_layers, "num_hidden_layers")?;
        let embed = loader.tensor("model.embed_tokens.weight", [c.vocab_size, d])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let bias =
                |loader: &mut Loader<'_>, name: &str, n: usize| -> Result<Option<Tensor<1>>> {
                    if c.attention_bias {
                        loader
                            .tensor(&format!("{p}.self_attn.{name}.bias"), [n])
                            .map(Some)
                    } else {
                        Ok(None)
                    }
                };
            layers.push(Layer {
                input_norm: loader.tensor(&format!("{p}.input_layernorm.weight"), [d])?,
                wq: loader.linear(&format!("{p}.self_attn.q_proj.weight"), q_out, d)?,
                wk: loader.linear(&format!("{p}.self_attn.k_proj.weight"), kv_out, d)?,
                wv: loader.linear(&format!("{p}.self_attn.v_proj.weight"), kv_out, d)?,
                bq: bias(loader, "q_proj", q_out)?,
                bk: bias(loader, "k_proj", kv_out)?,
                bv: bias(loader, "v_proj", kv_out)?,
                wo: loader.linear(&format!("{p}.self_attn.o_proj.weight"), d, q_out)?,
                post_norm: loader.tensor(&format!("{p}.post_attention_layernorm.weight"), [d])?,
                w_gate: loader.linear(
                    &format!("{p}.mlp.gate_proj.weight"),
                    c.intermediate_size,
                    d,
                )?,
                w_up: loader.linear(&format!("{p}.mlp.up_proj.weight"), c.intermediate_size, d)?,
                w_down: loader.linear(
                    &format!("{p}.mlp.down_proj.weight"),
                    d,
                    c.intermediate_size,
                )?,
            });
        }
        let norm = loader.tensor("model.norm.weight", [d])?;
        let lm_head = if c.tie_word_embeddings && !loader.has("lm_head.weight") {
            embed.clone().transpose()
        } else {
            loader.linear("lm_head.weight", c.vocab_size, d)?
        };
        loader.ignore(|n| n.ends_with("rotary_emb.inv_freq"));
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            device: loader.device().clone(),
            quant: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn embed(&self, tokens: &[u32], shape: [usize; 2]) -> Result<Tensor<3>> {
        let v = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(LmError::TokenOutOfRange {
                token: bad,
                vocab: v,
            });
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, shape), &self.device);
        Ok(burn::tensor::module::embedding(self.embed.clone(), ids))
    }

    /// The forward pass of [`CausalLm::forward_seq`], with the products served by the
    /// quantised weights when `quant` is given (the prompt of a decoding session).
    fn forward(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        quant: Option<&QuantWeights>,
    ) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        let c = &self.config;
        let (h, kvs) = self.forward_layers(tokens, batch, seq, quant, c.num_layers)?;
        Ok((rms_norm(h, &self.norm, c.rms_norm_eps), kvs))
    }

    /// The residual stream [batch, S, d] of `batch` sequences of equal length S (`tokens` holds
    /// them one after another) after their first `layers` layers, before any norm: the input of
    /// layer `layers`, for heads that retrain the top layers on a frozen base (`layers` is
    /// clamped to the model's depth).
    pub fn residual_stream(
        &self,
        tokens: &[u32],
        batch: usize,
        layers: usize,
    ) -> Result<Tensor<3>> {
        if tokens.is_empty() {
            return Err(LmError::EmptySequence {
                what: "residual_stream: the sequences".into(),
            });
        }
        if batch == 0 || !tokens.len().is_multiple_of(batch) {
            return Err(LmError::LengthMismatch {
                what: format!(
                    "residual_stream: {batch} sequences of equal length need a multiple of \
                     {batch} tokens (the nearest at most as many as given)"
                ),
                expected: batch.max(1) * (tokens.len() / batch.max(1)),
                found: tokens.len(),
            });
        }
        let layers = layers.min(self.config.num_layers);
        let seq = tokens.len() / batch;
        Ok(self.forward_layers(tokens, batch, seq, None, layers)?.0)
    }

    /// The first `layers` layers of [`Llama::forward`], without the final norm.
    fn forward_layers(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        quant: Option<&QuantWeights>,
        layers: usize,
    ) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        let c = &self.config;
        self.dims()
            .check_context(seq, || format!("a forward pass over {seq} tokens"))?;
        let (hq, hkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut h = self.embed(tokens, [batch, seq])?;
        let (cos, sin) = rope_tables(0..seq, hd, c.rope_theta, &self.device);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kvs = Vec::with_capacity(c.num_layers);
        let rows = batch * seq;
        let d = c.hidden_size;
        for (i, layer) in self.layers.iter().enumerate().take(layers) {
            let lq = quant.map(|q| &q.layers[i]);
            let x = rms_norm(h.clone(), &layer.input_norm, c.rms_norm_eps);
            let as_heads = |t: Tensor<2>, n| t.reshape([batch, seq, n, hd]).swap_dims(1, 2);
            let heads = |w, b, n| {
                linear(x.clone(), w, b)
                    .reshape([batch, seq, n, hd])
                    .swap_dims(1, 2)
            };
            let parts = [hq * hd, hkv * hd, hkv * hd];
            let biases = [&layer.bq, &layer.bk, &layer.bv];
            let x2 = x.clone().reshape([rows, d]);
            let (q, k, v) = match lq.and_then(|lq| quant_linear(&x2, &lq.qkv, &parts, &biases)) {
                Some(mut t) => {
                    let v = as_heads(t.pop().expect("three parts"), hkv);
                    let k = as_heads(t.pop().expect("three parts"), hkv);
                    (as_heads(t.pop().expect("three parts"), hq), k, v)
                }
                None => (
                    heads(&layer.wq, &layer.bq, hq),
                    heads(&layer.wk, &layer.bk, hkv),
                    heads(&layer.wv, &layer.bv, hkv),
                ),
            };
            let q = apply_rope(q, &cos, &sin);
            let k = apply_rope(k, &cos, &sin);
            let att = causal_attention(q, k.clone(), v.clone(), scale, AttentionWindow::Global);
            let att = att.swap_dims(1, 2).reshape([batch, seq, hq * hd]);
            let att2 = att.clone().reshape([rows, hq * hd]);
            h = h + match lq.and_then(|lq| quant_linear(&att2, &lq.o, &[d], &[])) {
                Some(mut t) => t.pop().expect("one part").reshape([batch, seq, d]),
                None => linear(att, &layer.wo, &None),
            };
            let x = rms_norm(h.clone(), &layer.post_norm, c.rms_norm_eps);
            let mlp = match lq {
                Some(lq) => self.quant_mlp(lq, x.clone().reshape([rows, d])),
                None => None,
            };
            h = h.clone()
                + match mlp {
                    Some(m) => m.reshape([batch, seq, d]),
                    None => self.mlp(layer, x),
                };
            kvs.push(LayerKv { k, v });
        }
        Ok((h, kvs))
    }

    /// The MLP of x [rows, d] with quantised weights; `None` when a kernel declines.
    fn quant_mlp(&self, lq: &LayerQuant, x: Tensor<2>) -> Option<Tensor<2>> {
        let inner = self.config.intermediate_size;
        let mut t = quant_linear(&x, &lq.gate_up, &[inner, inner], &[])?;
        let up = t.pop()?;
        let gate = t.pop()?;
        // burn's activation, as in the f32 pass (`mlp`), so that the prompt's states stay bit
        // for bit those of the f32 weights when the quantised ones are exact.
        let act = silu(gate) * up;
        quant_linear(&act, &lq.down, &[self.config.hidden_size], &[])?.pop()
    }

    fn mlp<const D: usize>(&self, layer: &Layer, x: Tensor<D>) -> Tensor<D> {
        let gate = silu(linear(x.clone(), &layer.w_gate, &None));
        let up = linear(x, &layer.w_up, &None);
        linear(gate * up, &layer.w_down, &None)
    }
}

/// The [`crate::registry`] constructor.
pub fn build(cfg: &JsonConfig, loader: &mut Loader<'_>) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(Llama::load(LlamaConfig::from_json(cfg)?, loader)?))
}

impl CausalLm for Llama {
    fn dims(&self) -> Dims {
        let c = &self.config;
        Dims {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            layers: c.num_layers,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            context: c.context_length(),
        }
    }

    fn forward_seq(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        self.forward(tokens, batch, seq, None)
    }

    fn prefill(&self, tokens: &[u32]) -> Result<(Tensor<3>, Vec<LayerKv>)> {
        // Not int8: its rounded activations would move the prompt's keys and values by more
        // than bf16's rounding does (tests/smollm2.rs).
        let quant = self
            .quant
            .as_deref()
            .filter(|q| tokens.len() <= q.max_rows() && !q.head.int8_activations());
        self.forward(tokens, 1, tokens.len(), quant)
    }

    fn decode(
        &self,
        tokens: &[u32],
        pos: usize,
        prompt: Option<&PromptCache>,
        cache: &mut ParticleCache,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        self.dims()
            .check_context(pos + 1, || format!("a decoding step at position {pos}"))?;
        let k = tokens.len();
        let (hq, hkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut h = time("embed", || self.embed(tokens, [k, 1]))?.reshape([k, c.hidden_size]);
        let (cos, sin) = rope_tables(pos..pos + 1, hd, c.rope_theta, &self.device);
        let scale = 1.0 / (hd as f64).sqrt();
        cache.reserve_one();
        let quant = self.quant.as_deref().filter(|q| k <= q.max_rows());
        for (i, layer) in self.layers.iter().enumerate() {
            let lq = quant.map(|q| &q.layers[i]);
            let x = time("norm", || {
                rms_norm(h.clone(), &layer.input_norm, c.rms_norm_eps)
            });
            // [K, n*hd] -> [K, n, 1, hd] so that rotary tables [1, hd] broadcast.
            let heads = |w, b, n| linear(x.clone(), w, b).reshape([k, n, 1, hd]);
            let (q, kk, vv) = time("qkv", || {
                let parts = [hq * hd, hkv * hd, hkv * hd];
                let biases = [&layer.bq, &layer.bk, &layer.bv];
                match lq.and_then(|lq| quant_linear(&x, &lq.qkv, &parts, &biases)) {
                    Some(mut t) => {
                        let v = t.pop().expect("three parts").reshape([k, hkv, 1, hd]);
                        let kk = t.pop().expect("three parts").reshape([k, hkv, 1, hd]);
                        let q = t.pop().expect("three parts").reshape([k, hq, 1, hd]);
                        (q, kk, v)
                    }
                    None => (
                        heads(&layer.wq, &layer.bq, hq),
                        heads(&layer.wk, &layer.bk, hkv),
                        heads(&layer.wv, &layer.bv, hkv),
                    ),
                }
            });
            let (q, kk) = time("rope", || {
                (
                    apply_rope(q, &cos, &sin).reshape([k, hq, hd]),
                    apply_rope(kk, &cos, &sin),
                )
            });
            let (own_k, own_v) = time("kv_write", || cache.write(i, kk, vv));
            let prompt_kv = prompt.map(|p| (&p.layers[i].k, &p.layers[i].v));
            let att = time("attention", || {
                decode_attention(q, prompt_kv, own_k, own_v, scale, 0, 0)
            });
            let o = time("o_proj", || {
                match lq.and_then(|lq| quant_linear(&att, &lq.o, &[c.hidden_size], &[])) {
                    Some(mut t) => t.pop().expect("one part"),
                    None => linear(att, &layer.wo, &None),
                }
            });
            h = time("residual", || h + o);
            let x = time("norm", || {
                rms_norm(h.clone(), &layer.post_norm, c.rms_norm_eps)
            });
            let (gate, up) = time("gate_up", || {
                let inner = c.intermediate_size;
                match lq.and_then(|lq| quant_linear(&x, &lq.gate_up, &[inner, inner], &[])) {
                    Some(mut t) => {
                        let up = t.pop().expect("two parts");
                        (t.pop().expect("two parts"), up)
                    }
                    None => (
                        linear(x.clone(), &layer.w_gate, &None),
                        linear(x, &layer.w_up, &None),
                    ),
                }
            });
            let act = time("silu_mul", || {
                crate::cpu::silu_mul(&gate, &up).unwrap_or_else(|| silu(gate) * up)
            });
            let m = time("down", || {
                match lq.and_then(|lq| quant_linear(&act, &lq.down, &[c.hidden_size], &[])) {
                    Some(mut t) => t.pop().expect("one part"),
                    None => linear(act, &layer.w_down, &None),
                }
            });
            h = time("residual", || h + m);
        }
        cache.advance();
        Ok(time("norm", || rms_norm(h, &self.norm, c.rms_norm_eps)))
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        crate::ops::output_head(hidden, &self.lm_head)
    }

    fn decode_logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let k = hidden.dims()[0];
        if let Some(q) = self.quant.as_deref().filter(|q| k <= q.max_rows())
            && let Some(mut y) = quant_matmul(&hidden, &q.head, &[q.head.rows()])
        {
            return y.pop().expect("one part");
        }
        crate::ops::output_head(hidden, &self.lm_head)
    }

    fn output_head(&self) -> Tensor<2> {
        self.lm_head.clone()
    }

    fn set_weight_format(&mut self, format: WeightFormat) -> Result<()> {
        match format {
            WeightFormat::F32 => self.quant = None,
            WeightFormat::Q8 | WeightFormat::Int8 | WeightFormat::Bf16 => {
                let c = &self.config;
                let unsupported = [c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim]
                    .into_iter()
                    .find_map(|k| crate::cpu::quant_unsupported(&self.device, k));
                if let Some(reason) = unsupported {
                    return Err(LmError::WeightFormat {
                        format: format.to_string(),
                        reason,
                    });
                }
                let layers = self
                    .layers
                    .iter()
                    .map(|l| {
                        Ok(LayerQuant {
                            qkv: quantise_stacked(&[&l.wq, &l.wk, &l.wv])?,
                            o: quantise_stacked(&[&l.wo])?,
                            gate_up: quantise_stacked(&[&l.w_gate, &l.w_up])?,
                            down: quantise_stacked(&[&l.w_down])?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let head = quantise_stacked(&[&self.lm_head])?;
                let mut q = QuantWeights { layers, head };
                if format == WeightFormat::Int8 {
                    q = q.with_int8_activations();
                }
                if format == WeightFormat::Bf16 {
                    q = q.with_bf16_products();
                }
                self.quant = Some(std::sync::Arc::new(q));
            }
        }
        Ok(())
    }
}
