//! Attention of one decoding step, read straight from the key and value caches.
//!
//! A step's attention is small arithmetic (K particles x Hq heads x (P + L) positions x hd)
//! but, as burn operations, about ten tensor operations per layer (reshape, matmul against the
//! prompt's and the particle's keys, concatenation, softmax, two more products, slices), each
//! with its own allocation and dispatch: 3.6 ms per step at K = 16 and 11 ms at K = 64 in the
//! profile of docs/benchmarks.md. Here each particle's heads are done in one pass over the
//! caches, particles spread over the threads, reading the caches through their strides (the
//! particle cache is a view of its first L positions).

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{exp_f32, from_vec};

/// A strided read-only view of an f32 flex tensor with unit inner stride.
struct View<'a, const D: usize> {
    data: &'a [f32],
    start: usize,
    strides: [usize; D],
    dims: [usize; D],
}

impl<const D: usize> View<'_, D> {
    /// The `n` contiguous values starting at `index` (whose last coordinate is 0).
    fn row(&self, index: [usize; D]) -> &[f32] {
        let at: usize = self.start
            + index
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        &self.data[at..at + self.dims[D - 1]]
    }
}

/// The tensor as a strided f32 view: non-negative strides, unit inner stride, every element
/// inside the storage; `None` otherwise.
fn view<const D: usize>(p: &FlexTensor) -> Option<View<'_, D>> {
    if p.dtype() != DType::F32 {
        return None;
    }
    let layout = p.layout();
    let dims: [usize; D] = layout.shape().as_slice().try_into().ok()?;
    let strides: [usize; D] = layout
        .strides()
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect::<Option<Vec<_>>>()?
        .try_into()
        .ok()?;
    if dims.contains(&0) || (strides[D - 1] != 1 && dims[D - 1] > 1) {
        return None;
    }
    let data = p.storage::<f32>();
    let last = dims
        .iter()
        .zip(&strides)
        .try_fold(layout.start_offset(), |acc, (&d, &s)| {
            acc.checked_add((d - 1).checked_mul(s)?)
        })?;
    (last < data.len()).then_some(View {
        data,
        start: layout.start_offset(),
        strides,
        dims,
    })
}

fn primitive<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    t.clone().try_into_primitive::<Flex>().ok()
}

/// softmax(q k^T * scale) v for queries `q` [K, Hq, hd] over the prompt's keys and values
/// ([1, Hkv, P, hd] each, shared by all particles) followed by each particle's own ([K, Hkv,
/// L, hd]); query head h reads key-value head h / (Hq / Hkv). Returns [K, Hq * hd], or `None`
/// when a tensor is not an f32 flex tensor or the shapes disagree (the caller then uses burn).
pub fn decode_attention(
    q: &Tensor<3>,
    prompt: Option<(&Tensor<4>, &Tensor<4>)>,
    own_k: &Tensor<4>,
    own_v: &Tensor<4>,
    scale: f64,
) -> Option<Tensor<2>> {
    let [k, hq, hd] = q.dims();
    let (qp, okp, ovp) = (primitive(q)?, primitive(own_k)?, primitive(own_v)?);
    let (qv, ok, ov) = (view::<3>(&qp)?, view::<4>(&okp)?, view::<4>(&ovp)?);
    let [kk, hkv, l, hd_k] = ok.dims;
    if kk != k || hd_k != hd || ov.dims != ok.dims || hkv == 0 || hq % hkv != 0 {
        return None;
    }
    let prompt_p = match prompt {
        Some((pk, pv)) => Some((primitive(pk)?, primitive(pv)?)),
        None => None,
    };
    let prompt_v = match &prompt_p {
        Some((pk, pv)) => {
            let (pk, pv) = (view::<4>(pk)?, view::<4>(pv)?);
            if pk.dims[0] != 1 || pk.dims[1] != hkv || pk.dims[3] != hd || pv.dims != pk.dims {
                return None;
            }
            Some((pk, pv))
        }
        None => None,
    };
    let p = prompt_v.as_ref().map_or(0, |(pk, _)| pk.dims[2]);
    let heads = Heads {
        q: &qv,
        prompt: prompt_v.as_ref(),
        own: (&ok, &ov),
        group: hq / hkv,
        scale: scale as f32,
    };
    let mut out = vec![0.0f32; k * hq * hd];
    out.par_chunks_mut(hq * hd).enumerate().for_each_init(
        || vec![0.0f32; p + l],
        |scores, (particle, dst)| heads.particle(particle, dst, scores),
    );
    Some(from_vec(out, [k, hq * hd], &q.device()))
}

struct Heads<'a> {
    q: &'a View<'a, 3>,
    prompt: Option<&'a (View<'a, 4>, View<'a, 4>)>,
    own: (&'a View<'a, 4>, &'a View<'a, 4>),
    group: usize,
    scale: f32,
}

impl Heads<'_> {
    fn particle(&self, particle: usize, dst: &mut [f32], scores: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.particle_avx512(particle, dst, scores) };
        }
        self.particle_portable(particle, dst, scores)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn particle_avx512(&self, particle: usize, dst: &mut [f32], scores: &mut [f32]) {
        self.particle_portable(particle, dst, scores)
    }

    #[inline(always)]
    fn particle_portable(&self, particle: usize, dst: &mut [f32], scores: &mut [f32]) {
        let hd = self.q.dims[2];
        let (ok, ov) = self.own;
        let p = self.prompt.map_or(0, |(pk, _)| pk.dims[2]);
        let l = ok.dims[2];
        for (h, out) in dst.chunks_exact_mut(hd).enumerate() {
            let j = h / self.group;
            let q = self.q.row([particle, h, 0]);
            if let Some((pk, _)) = self.prompt {
                for (t, s) in scores[..p].iter_mut().enumerate() {
                    *s = dot(q, pk.row([0, j, t, 0])) * self.scale;
                }
            }
            for (t, s) in scores[p..p + l].iter_mut().enumerate() {
                *s = dot(q, ok.row([particle, j, t, 0])) * self.scale;
            }
            // A NaN or infinite score makes the head's output NaN, as burn's softmax does
            // (the exponential below clamps and would hide it).
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if !max.is_finite() || scores.iter().any(|s| s.is_nan()) {
                out.fill(f32::NAN);
                continue;
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = exp_f32(*s - max);
                sum += *s;
            }
            out.fill(0.0);
            if let Some((_, pv)) = self.prompt {
                for (t, &w) in scores[..p].iter().enumerate() {
                    axpy(w, pv.row([0, j, t, 0]), out);
                }
            }
            for (t, &w) in scores[p..p + l].iter().enumerate() {
                axpy(w, ov.row([particle, j, t, 0]), out);
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// out += w * v.
#[inline(always)]
fn axpy(w: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += w * x;
    }
}

/// q . k in sixteen independent lanes (so that it vectorises), then summed.
#[inline(always)]
fn dot(q: &[f32], k: &[f32]) -> f32 {
    const W: usize = 16;
    let mut acc = [0.0f32; W];
    let (qc, qr) = q.as_chunks::<W>();
    let (kc, kr) = k.as_chunks::<W>();
    for (a, b) in qc.iter().zip(kc) {
        for i in 0..W {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}
