//! Products of quantised weights with activations rounded to 8 bits, as integer dot products
//! (AVX-512 VNNI `vpdpbusd`: 64 multiply-adds of a weight level and an activation per
//! instruction, against 16 for an f32 FMA). Each block of 32 activations of a row keeps a scale
//! `max |x| / 127` and levels in -127..=127, as llama.cpp's Q8_0 activations do; the product is
//! then exact for the rounded activations and the weights' own levels:
//!
//! sum_i x_i w_i = sum_b xs_b (step_b sum_i xq_i q_i + lo_b sum_i xq_i).
//!
//! Rounding the activations is the only approximation ([`crate::WeightFormat::Int8`] documents
//! the tolerance its logits keep).

use super::quant::{BLOCK, QuantMatrix};

/// Rows of x rounded to 8 bits per block of 32.
pub(super) struct QuantRows {
    m: usize,
    k: usize,
    q: Vec<i8>,
    /// Per row and block: max |x| / 127.
    scale: Vec<f32>,
    /// Per row and block: scale x the sum of the block's levels.
    sum: Vec<f32>,
}

impl QuantRows {
    /// Rounds m rows of k values (row r at `x + r * stride`); k a multiple of [`BLOCK`].
    ///
    /// # Safety
    /// x is valid for reading m rows of k values at `stride`.
    pub(super) unsafe fn of(x: *const f32, stride: usize, m: usize, k: usize) -> Self {
        let bpr = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut scale = Vec::with_capacity(m * bpr);
        let mut sum = Vec::with_capacity(m * bpr);
        for r in 0..m {
            // SAFETY: row r holds k values (the caller's contract).
            let row = unsafe { std::slice::from_raw_parts(x.add(r * stride), k) };
            for (b, src) in row.chunks_exact(BLOCK).enumerate() {
                let amax = src.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                // A NaN or infinite activation makes its outputs NaN, as in f32 (where
                // log-softmax then refuses the row), instead of rounding to a level.
                if src.iter().any(|v| !v.is_finite()) {
                    scale.push(f32::NAN);
                    sum.push(f32::NAN);
                    continue;
                }
                let s = amax / 127.0;
                let dst = &mut q[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                let mut total = 0i32;
                if amax > 0.0 {
                    // In f64, so that a tiny block (127 / amax beyond f32) still rounds right.
                    let inv = 127.0 / f64::from(amax);
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let level = (f64::from(v) * inv).round().clamp(-127.0, 127.0) as i8;
                        *d = level;
                        total += i32::from(level);
                    }
                }
                scale.push(s);
                sum.push(s * total as f32);
            }
        }
        Self {
            m,
            k,
            q,
            scale,
            sum,
        }
    }
}

/// Whether the integer products can run for this weight: AVX-512 VNNI and BW detected, and
/// an even number of blocks per row (they go two at a time).
pub(super) fn available(w: &QuantMatrix) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (w.cols() / BLOCK).is_multiple_of(2)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = w;
        false
    }
}

/// out[r][j] for every row of `x` and the columns in `cols`.
///
/// # Safety
/// [`available`] returned true for w; x.k == w.cols(); `out` is valid for writing the
/// x.m x w.rows() outputs of the columns in `cols`, which no other thread writes; `cols` lies
/// within 0..w.rows().
pub(super) unsafe fn product_columns(
    x: &QuantRows,
    w: &QuantMatrix,
    out: *mut f32,
    cols: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        vnni::columns(x, w, out, cols)
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, out, cols);
        unreachable!("int8::available is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, QuantMatrix, QuantRows};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn columns(
        x: &QuantRows,
        w: &QuantMatrix,
        out: *mut f32,
        cols: std::ops::Range<usize>,
    ) {
        assert!(x.k == w.cols() && cols.end <= w.rows());
        assert!(w.levels().len() >= w.rows() * (w.cols() / BLOCK) * w.block_bytes());
        let packed = w.block_bytes() != BLOCK;
        let mut j = cols.start;
        while j < cols.end {
            let nc = if cols.end - j >= 4 { 4 } else { 1 };
            let mut r = 0;
            while r < x.m {
                let nr = (x.m - r).min(4);
                // SAFETY: rows r..r + nr and columns j..j + nc lie within the operands.
                unsafe {
                    match (nr, nc, packed) {
                        (4, 4, true) => tile::<4, 4, true>(x, w, out, r, j),
                        (3, 4, true) => tile::<3, 4, true>(x, w, out, r, j),
                        (2, 4, true) => tile::<2, 4, true>(x, w, out, r, j),
                        (1, 4, true) => tile::<1, 4, true>(x, w, out, r, j),
                        (4, _, true) => tile::<4, 1, true>(x, w, out, r, j),
                        (3, _, true) => tile::<3, 1, true>(x, w, out, r, j),
                        (2, _, true) => tile::<2, 1, true>(x, w, out, r, j),
                        (_, _, true) => tile::<1, 1, true>(x, w, out, r, j),
                        (4, 4, false) => tile::<4, 4, false>(x, w, out, r, j),
                        (3, 4, false) => tile::<3, 4, false>(x, w, out, r, j),
                        (2, 4, false) => tile::<2, 4, false>(x, w, out, r, j),
                        (1, 4, false) => tile::<1, 4, false>(x, w, out, r, j),
                        (4, _, false) => tile::<4, 1, false>(x, w, out, r, j),
                        (3, _, false) => tile::<3, 1, false>(x, w, out, r, j),
                        (2, _, false) => tile::<2, 1, false>(x, w, out, r, j),
                        (_, _, false) => tile::<1, 1, false>(x, w, out, r, j),
                    }
                }
                r += nr;
            }
            j += nc;
        }
    }

    /// The levels of blocks b and b + 1 of a weight row as 64 bytes in order (block b's 32,
    /// then block b + 1's), unpacked from nibbles when `PACKED`.
    #[inline(always)]
    unsafe fn pair<const PACKED: bool>(p: *const u8) -> __m512i {
        unsafe {
            if PACKED {
                let v = _mm256_loadu_si256(p.cast());
                let m = _mm256_set1_epi8(0x0f);
                let lo = _mm256_and_si256(v, m);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
                // 128-bit lanes [lo b, lo b+1, hi b, hi b+1] -> [lo b, hi b, lo b+1, hi b+1].
                let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
            } else {
                _mm512_loadu_si512(p.cast())
            }
        }
    }

    #[inline(always)]
    unsafe fn tile<const NR: usize, const NC: usize, const PACKED: bool>(
        x: &QuantRows,
        w: &QuantMatrix,
        out: *mut f32,
        r0: usize,
        j: usize,
    ) {
        let (k, n) = (w.cols(), w.rows());
        let bpr = k / BLOCK;
        let bb = w.block_bytes();
        let (q, step, lo) = (w.levels().as_ptr(), w.steps().as_ptr(), w.minima().as_ptr());
        // SAFETY (the whole body): AVX-512 F/BW/VNNI are present (the caller's target
        // features); weight rows j..j + NC hold bpr blocks, steps and minima each; x rows
        // r0..r0 + NR hold k levels and bpr scales and sums; the outputs lie in the m x n
        // output.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NC]; NR];
            // Lanes 0..8 take the first value of a pair, lanes 8..16 the second.
            let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
            // As in the f32 kernel (quant.rs): fetch a share of the tile two ahead with each
            // pair of blocks.
            let ahead = (j + 2 * NC) * bpr;
            let lines = (2 * NC * bb).div_ceil(64);
            for b in (0..bpr).step_by(2) {
                if r0 == 0 {
                    for l in 0..lines {
                        let at = q.wrapping_add(ahead * bb + (b / 2 * lines + l) * 64);
                        _mm_prefetch::<_MM_HINT_T0>(at.cast());
                    }
                    if b * 32 < NC * bpr * 4 {
                        let s = step.wrapping_add(ahead).cast::<i8>().wrapping_add(b * 32);
                        let l = lo.wrapping_add(ahead).cast::<i8>().wrapping_add(b * 32);
                        _mm_prefetch::<_MM_HINT_T0>(s);
                        _mm_prefetch::<_MM_HINT_T0>(l);
                    }
                }
                for c in 0..NC {
                    let at = (j + c) * bpr + b;
                    let wv = pair::<PACKED>(q.add(at * bb));
                    // Two f32 (8 bytes, 4-byte aligned): an unaligned 64-bit load.
                    let sp = _mm_castsi128_ps(_mm_loadl_epi64(step.add(at).cast()));
                    for (rr, row_acc) in acc.iter_mut().enumerate() {
                        let r = r0 + rr;
                        let xv = _mm512_loadu_si512(x.q.as_ptr().add(r * k + b * BLOCK).cast());
                        let dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
                        let xs = _mm_castsi128_ps(_mm_loadl_epi64(
                            x.scale.as_ptr().add(r * bpr + b).cast(),
                        ));
                        let sc = _mm512_permutexvar_ps(
                            spread,
                            _mm512_castps128_ps512(_mm_mul_ps(sp, xs)),
                        );
                        row_acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), sc, row_acc[c]);
                    }
                }
            }
            for (rr, row_acc) in acc.iter().enumerate() {
                let r = r0 + rr;
                let dst = out.add(r * n + j);
                super::super::dot::avx512::store_sums(row_acc, dst);
                for c in 0..NC {
                    let row = j + c;
                    let mut l = 0.0f32;
                    for b in 0..bpr {
                        l += *lo.add(row * bpr + b) * x.sum[r * bpr + b];
                    }
                    *dst.add(c) += l;
                }
            }
        }
    }
}
