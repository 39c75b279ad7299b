//! Products of quantised weights in bf16 (AVX-512 BF16 `vdpbf16ps`: 32 multiply-adds of bf16
//! pairs per instruction, accumulated in f32, against 16 for an f32 FMA; measured at the same
//! instruction rate as an FMA on this machine's Zen 4 cores, so twice the multiply-adds).
//!
//! Each group of weight rows is dequantised to f32 as for the f32 products, then rounded to
//! bf16 into a scratch panel; the activations are rounded to bf16 once per product. Both
//! roundings are to nearest even (8 bits of mantissa: a relative error of at most 2^-9 per
//! value); the products of two bf16 values are exact in f32 and summed in f32. The rounding is
//! the only approximation ([`crate::WeightFormat::Bf16`] documents the tolerance its logits
//! keep). Used for products of more than [`super::quant::FUSED_MAX_ROWS`] rows, where the
//! multiply-adds, not the trip of the weights from memory, bound a decode step.

use super::quant::{BLOCK, QuantMatrix};

/// Rows of x rounded to bf16 (the bit patterns, row-major, k per row).
pub(super) struct Bf16Rows {
    m: usize,
    k: usize,
    v: Vec<u16>,
}

impl Bf16Rows {
    /// Rounds m rows of k values (row r at `x + r * stride`) to bf16.
    ///
    /// # Safety
    /// [`available`] returned true for a weight with k columns; x is valid for reading m rows
    /// of k values at `stride`.
    pub(super) unsafe fn of(x: *const f32, stride: usize, m: usize, k: usize) -> Self {
        let mut v = vec![0u16; m * k];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded (k is a multiple of BLOCK, `v` holds m x k values).
        unsafe {
            avx512::round_rows(x, stride, m, k, &mut v)
        };
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, stride);
            unreachable!("bf16::available is false off x86_64")
        }
        Self { m, k, v }
    }
}

/// Whether the bf16 products can run for this weight: AVX-512F and BF16 detected, and the
/// input size a multiple of [`BLOCK`].
pub(super) fn available(w: &QuantMatrix) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        w.cols().is_multiple_of(BLOCK)
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
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
    x: &Bf16Rows,
    w: &QuantMatrix,
    out: *mut f32,
    cols: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        avx512::columns(x, w, out, cols)
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, out, cols);
        unreachable!("bf16::available is false off x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Bf16Rows, QuantMatrix};

    /// Weight rows dequantised and rounded at a time into the scratch panel (8 x k bf16: 9 KiB
    /// at k = 576), then read from cache by every row of x.
    const GROUP: usize = 8;

    /// 32 f32 values at `src` rounded to bf16 and stored in order at `dst`.
    #[inline(always)]
    unsafe fn round32(lo: __m512, hi: __m512, dst: *mut u16) {
        unsafe {
            // The second operand fills the low half: memory order.
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(dst.cast(), std::mem::transmute::<__m512bh, __m512i>(v));
        }
    }

    /// # Safety
    /// AVX-512F and BF16 are present; k is a multiple of 32; x holds m rows of k values at
    /// `stride`; `v` holds m x k values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_rows(
        x: *const f32,
        stride: usize,
        m: usize,
        k: usize,
        v: &mut [u16],
    ) {
        assert!(v.len() >= m * k && k.is_multiple_of(32));
        for r in 0..m {
            for kk in (0..k).step_by(32) {
                // SAFETY: within row r's k values and `v` (asserted above).
                unsafe {
                    let src = x.add(r * stride + kk);
                    round32(
                        _mm512_loadu_ps(src),
                        _mm512_loadu_ps(src.add(16)),
                        v.as_mut_ptr().add(r * k + kk),
                    );
                }
            }
        }
    }

    /// Rows j0..j0 + count of w dequantised (the f32 values of
    /// [`QuantMatrix::dequantize_row`]) and rounded to bf16 into `panel` (count x k).
    #[inline(always)]
    unsafe fn panel_of<const PACKED: bool>(
        w: &QuantMatrix,
        j0: usize,
        count: usize,
        panel: &mut [u16],
    ) {
        let k = w.cols();
        let bpr = k / BLOCK;
        let bb = w.block_bytes();
        let (q, step, lo) = (w.levels(), w.steps(), w.minima());
        assert!(j0 + count <= w.rows() && panel.len() >= count * k);
        assert!(q.len() >= w.rows() * bpr * bb && step.len() >= w.rows() * bpr);
        // The next group's rows, one contiguous run, fetched a line per block: the rows are
        // too short for the hardware prefetcher to follow each.
        let ahead = (j0 + count) * bpr;
        for i in 0..count {
            for b in 0..bpr {
                let at = (j0 + i) * bpr + b;
                let idx = i * bpr + b;
                // SAFETY: AVX-512F and BF16 are present (the callers' contract); block `at`
                // lies within q (asserted above), and 32 values at row i, block b within
                // `panel`; prefetches never fault (addresses only computed, wrapping).
                unsafe {
                    if (idx * bb).is_multiple_of(64) {
                        let p = q.as_ptr().wrapping_add((ahead + idx) * bb);
                        _mm_prefetch::<_MM_HINT_T0>(p.cast());
                    }
                    if idx.is_multiple_of(16) {
                        let s = step.as_ptr().wrapping_add(ahead + idx);
                        let l = lo.as_ptr().wrapping_add(ahead + idx);
                        _mm_prefetch::<_MM_HINT_T0>(s.cast());
                        _mm_prefetch::<_MM_HINT_T0>(l.cast());
                    }
                    let s = _mm512_set1_ps(step[at]);
                    let l = _mm512_set1_ps(lo[at]);
                    let (v0, v1) =
                        super::super::quant::avx512::levels::<PACKED>(q.as_ptr().add(at * bb));
                    round32(
                        _mm512_fmadd_ps(v0, s, l),
                        _mm512_fmadd_ps(v1, s, l),
                        panel.as_mut_ptr().add(i * k + b * BLOCK),
                    );
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn columns(
        x: &Bf16Rows,
        w: &QuantMatrix,
        out: *mut f32,
        cols: std::ops::Range<usize>,
    ) {
        let (k, n) = (w.cols(), w.rows());
        assert!(x.k == k && x.v.len() >= x.m * k && cols.end <= n);
        let mut panel = vec![0u16; GROUP * k];
        let mut j = cols.start;
        while j < cols.end {
            let g = GROUP.min(cols.end - j);
            // SAFETY (all calls): the features are present; rows j..j + g exist; the panel
            // holds g rows of k values; outputs (r, j + c) for c < g are the caller's.
            unsafe {
                if w.block_bytes() == BLOCK {
                    panel_of::<false>(w, j, g, &mut panel);
                } else {
                    panel_of::<true>(w, j, g, &mut panel);
                }
                let p = panel.as_ptr();
                let o = out.add(j);
                let mut c = 0;
                while c + 4 <= g {
                    rows::<4>(x, p, k, o, n, c);
                    c += 4;
                }
                while c < g {
                    rows::<1>(x, p, k, o, n, c);
                    c += 1;
                }
            }
            j += g;
        }
    }

    /// Panel rows c..c + NC for every row of x, four rows per tile.
    #[inline(always)]
    unsafe fn rows<const NC: usize>(
        x: &Bf16Rows,
        panel: *const u16,
        k: usize,
        out: *mut f32,
        n: usize,
        c: usize,
    ) {
        let mut r = 0;
        unsafe {
            while r + 4 <= x.m {
                tile::<4, NC>(x, r, panel, k, out, n, c);
                r += 4;
            }
            match x.m - r {
                1 => tile::<1, NC>(x, r, panel, k, out, n, c),
                2 => tile::<2, NC>(x, r, panel, k, out, n, c),
                3 => tile::<3, NC>(x, r, panel, k, out, n, c),
                _ => {}
            }
        }
    }

    /// Rows r..r + NR of x by panel rows c..c + NC: NR x NC accumulators of 16 f32 lanes,
    /// each lane summing pairs of bf16 products over k.
    #[inline(always)]
    unsafe fn tile<const NR: usize, const NC: usize>(
        x: &Bf16Rows,
        r: usize,
        panel: *const u16,
        k: usize,
        out: *mut f32,
        n: usize,
        c: usize,
    ) {
        unsafe {
            let xs = x.v.as_ptr().add(r * k);
            let ws = panel.add(c * k);
            let mut acc = [[_mm512_setzero_ps(); NC]; NR];
            let mut kk = 0;
            while kk < k {
                let mut wv = [_mm512_setzero_si512(); NC];
                for (cc, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(ws.add(cc * k + kk).cast());
                }
                for (rr, row) in acc.iter_mut().enumerate() {
                    let xv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        xs.add(rr * k + kk).cast(),
                    ));
                    for (a, &wc) in row.iter_mut().zip(&wv) {
                        *a = _mm512_dpbf16_ps(*a, xv, std::mem::transmute::<__m512i, __m512bh>(wc));
                    }
                }
                kk += 32;
            }
            for (rr, row) in acc.iter().enumerate() {
                super::super::dot::avx512::store_sums(row, out.add((r + rr) * n + c));
            }
        }
    }
}
