//! Building blocks shared by the architectures: norms, rotary embeddings, attention over a
//! shared prompt cache plus per-particle caches, and causal masks.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

/// `x @ w + b` over the last dimension of x, for a weight `w` of shape [in, out] (usually a
/// transposed view of a row-major [out, in] matrix, the layout the CPU GEMM reads fastest).
/// Leading dimensions are folded into rows first so that `w` is never reshaped, which would
/// copy a strided view on every call.
pub fn linear<const D: usize>(x: Tensor<D>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Tensor<D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let d_out = w.dims()[1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, d_in]);
    let mut y = crate::cpu::matmul(&x, w).unwrap_or_else(|| x.matmul(w.clone()));
    if let Some(b) = b {
        y = y + b.clone().unsqueeze::<2>();
    }
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}

/// Output columns per product of the output head: one matmul over all V columns (49,152 for
/// SmolLM2) runs at about half the speed of the same product split into column blocks of this
/// size on the flex backend (measured: docs/benchmarks.md).
const HEAD_BLOCK: usize = 4096;

/// The output head x @ w for a wide w ([d, V]): on the CPU [`crate::cpu::matmul`] (column
/// blocks written in place, spread over the threads), elsewhere column blocks of [`HEAD_BLOCK`]
/// concatenated: the same values as [`linear`], faster for a large vocabulary.
pub fn output_head<const D: usize>(x: Tensor<D>, w: &Tensor<2>) -> Tensor<D> {
    let [d_in, d_out] = w.dims();
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, d_in]);
    let mut out = dims;
    out[D - 1] = d_out;
    if let Some(y) = crate::cpu::matmul(&x, w) {
        return y.reshape(out);
    }
    if d_out <= 2 * HEAD_BLOCK {
        return linear(x, w, None).reshape(out);
    }
    let blocks: Vec<Tensor<2>> = (0..d_out)
        .step_by(HEAD_BLOCK)
        .map(|a| {
            let b = (a + HEAD_BLOCK).min(d_out);
            x.clone().matmul(w.clone().slice([0..d_in, a..b]))
        })
        .collect();
    Tensor::cat(blocks, 1).reshape(out)
}

/// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last dimension.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    if let Some(out) = crate::cpu::rms_norm(&x, weight, eps) {
        return out;
    }
    let var = x.clone().square().mean_dim(D - 1);
    let normed = x / (var + eps).sqrt();
    normed * weight.clone().unsqueeze()
}

/// LayerNorm over the last dimension with weight and bias.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(D - 1);
    centered / (var + eps).sqrt() * weight.clone().unsqueeze() + bias.clone().unsqueeze()
}

/// Rotary embedding tables (Hugging Face half-split convention) for the given positions:
/// cos and sin of shape [positions, head_dim].
pub fn rope_tables(
    positions: impl Iterator<Item = usize>,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    let mut n = 0;
    for p in positions {
        n += 1;
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [n, head_dim]), device),
    )
}

/// Applies rotary embeddings to x of shape [B, H, S, hd] with tables [S, hd].
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    if let Some(out) = crate::cpu::rope(&x, cos, sin) {
        return out;
    }
    let [b, h, s, hd] = x.dims();
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos: Tensor<4> = cos.clone().unsqueeze();
    let sin: Tensor<4> = sin.clone().unsqueeze();
    x * cos + rotated * sin
}

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionWindow {
    /// All earlier positions.
    Global,
    /// Only the last `n` positions (the query's own included).
    Local(usize),
}

impl AttentionWindow {
    fn allows(self, query_pos: usize, key_pos: usize) -> bool {
        key_pos <= query_pos
            && match self {
                AttentionWindow::Global => true,
                AttentionWindow::Local(n) => query_pos - key_pos < n,
            }
    }
}

/// Causal self-attention over a whole sequence, grouped-query by reshape.
/// q: [B, Hq, S, hd], k and v: [B, Hkv, S, hd] (positions 0..S). Returns [B, Hq, S, hd].
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    window: AttentionWindow,
) -> Tensor<4> {
    let [b, hq, s, hd] = q.dims();
    let hkv = k.dims()[1];
    let g = hq / hkv;
    let device = q.device();
    // Rows of a kv-head group are (query head j, position i) -> row j * S + i.
    let q = q.reshape([b, hkv, g * s, hd]);
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let mut mask = Vec::with_capacity(g * s * s);
    for _ in 0..g {
        for i in 0..s {
            for j in 0..s {
                mask.push(!window.allows(i, j));
            }
        }
    }
    let mask: Tensor<4, Bool> =
        Tensor::<2, Bool>::from_data(TensorData::new(mask, [g * s, s]), &device).unsqueeze();
    let scores = scores.mask_fill(mask.expand([b, hkv, g * s, s]), f32::NEG_INFINITY);
    let probs = softmax(scores, 3);
    probs.matmul(v).reshape([b, hq, s, hd])
}

/// Attention of one new query per particle over the shared prompt keys and the particle's own
/// keys. q: [K, Hq, hd]; prompt k/v: [1, Hkv, P, hd]; own k/v: [K, Hkv, L, hd] (L >= 1, the new
/// token's included). Prompt positions before `prompt_from` and own positions before `own_from`
/// are invisible (local attention). Returns [K, Hq * hd].
pub fn decode_attention(
    q: Tensor<3>,
    prompt: Option<(&Tensor<4>, &Tensor<4>)>,
    own_k: Tensor<4>,
    own_v: Tensor<4>,
    scale: f64,
    prompt_from: usize,
    own_from: usize,
) -> Tensor<2> {
    let [k, _, hd] = q.dims();
    let [_, hkv, own_len, _] = own_k.dims();
    let (own_k, own_v) = if own_from > 0 {
        (
            own_k.slice([0..k, 0..hkv, own_from..own_len, 0..hd]),
            own_v.slice([0..k, 0..hkv, own_from..own_len, 0..hd]),
        )
    } else {
        (own_k, own_v)
    };
    let prompt_part = prompt
        .filter(|(pk, _)| prompt_from < pk.dims()[2])
        .map(|(pk, pv)| {
            let p = pk.dims()[2];
            (
                pk.clone().slice([0..1, 0..hkv, prompt_from..p, 0..hd]),
                pv.clone().slice([0..1, 0..hkv, prompt_from..p, 0..hd]),
            )
        });
    crate::cpu::decode_attention(
        &q,
        prompt_part.as_ref().map(|(pk, pv)| (pk, pv)),
        &own_k,
        &own_v,
        scale,
    )
    .unwrap_or_else(|| attention_ops(q, prompt_part, own_k, own_v, scale))
}

/// [`decode_attention`] as burn operations, for tensors the CPU kernel does not read.
fn attention_ops(
    q: Tensor<3>,
    prompt: Option<(Tensor<4>, Tensor<4>)>,
    own_k: Tensor<4>,
    own_v: Tensor<4>,
    scale: f64,
) -> Tensor<2> {
    let [k, hq, hd] = q.dims();
    let hkv = own_k.dims()[1];
    let g = hq / hkv;
    let q = q.reshape([k, hkv, g, hd]);
    let own_scores = q.clone().matmul(own_k.swap_dims(2, 3)) * scale;
    let out = match prompt {
        Some((pk, pv)) => {
            let np = pk.dims()[2];
            let prompt_scores = q.matmul(pk.swap_dims(2, 3)) * scale;
            let l = own_scores.dims()[3];
            let probs = softmax(Tensor::cat(vec![prompt_scores, own_scores], 3), 3);
            let pp = probs.clone().slice([0..k, 0..hkv, 0..g, 0..np]);
            let po = probs.slice([0..k, 0..hkv, 0..g, np..np + l]);
            pp.matmul(pv) + po.matmul(own_v)
        }
        None => softmax(own_scores, 3).matmul(own_v),
    };
    out.reshape([k, hq * hd])
}

#[cfg(test)]
mod attention_tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    #[test]
    fn the_cpu_kernel_matches_burn_operations_on_cache_views() {
        let dev = Device::flex();
        let n = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        // hd = 20 leaves a tail after the 16-lane dot products; the particle cache is a view
        // of its first positions, the prompt a view from `prompt_from`.
        for (k, hq, hkv, hd, p, cap, l, prompt_from, own_from) in [
            (3, 6, 2, 20, 5, 8, 4, 0, 0),
            (1, 9, 3, 64, 8, 24, 1, 0, 0),
            (4, 4, 4, 16, 7, 6, 6, 3, 2),
            (2, 2, 1, 8, 0, 4, 3, 0, 0),
        ] {
            let q = Tensor::<3>::random([k, hq, hd], Distribution::Normal(0.0, 1.0), &dev);
            let (pk, pv) = (n([1, hkv, p.max(1), hd]), n([1, hkv, p.max(1), hd]));
            let (ck, cv) = (n([k, hkv, cap, hd]), n([k, hkv, cap, hd]));
            let own_k = ck.slice([0..k, 0..hkv, 0..l, 0..hd]);
            let own_v = cv.slice([0..k, 0..hkv, 0..l, 0..hd]);
            let prompt = (p > 0).then_some((&pk, &pv));
            let scale = 1.0 / (hd as f64).sqrt();
            let fast = decode_attention(
                q.clone(),
                prompt,
                own_k.clone(),
                own_v.clone(),
                scale,
                prompt_from,
                own_from,
            );
            let own_k = own_k.slice([0..k, 0..hkv, own_from..l, 0..hd]);
            let own_v = own_v.slice([0..k, 0..hkv, own_from..l, 0..hd]);
            let prompt = prompt.filter(|_| prompt_from < p).map(|(a, b)| {
                (
                    a.clone().slice([0..1, 0..hkv, prompt_from..p, 0..hd]),
                    b.clone().slice([0..1, 0..hkv, prompt_from..p, 0..hd]),
                )
            });
            let slow = attention_ops(q, prompt, own_k, own_v, scale);
            let d = crate::cpu::tests::close(&fast, &slow);
            assert!(d < 1e-5, "k {k} hq {hq} hkv {hkv} hd {hd} p {p}: {d}");
        }
    }

    #[test]
    fn a_nan_score_gives_nan_outputs_as_burn_does() {
        let dev = Device::flex();
        let mut q = vec![0.5f32; 2 * 4];
        q[1] = f32::NAN;
        let q = Tensor::<3>::from_data(burn::tensor::TensorData::new(q, [1, 2, 4]), &dev);
        let own = Tensor::<4>::ones([1, 1, 2, 4], &dev);
        let out = decode_attention(q, None, own.clone(), own, 0.5, 0, 0);
        let out = out.to_data().try_to_vec::<f32>().expect("f32");
        assert!(out[..4].iter().all(|x| x.is_nan()));
        assert!(out[4..].iter().all(|x| x.is_finite()));
    }
}
