//! Products of a few rows (a decode step of K <= [`MAX_ROWS`] particles) against a row-major
//! [n, k] weight, as dot products on AVX-512: each tile of weight rows is read from memory
//! once and used for up to four rows of x, with no packing. `gemm` packs its operands on every
//! call, which costs as much as the product itself when the rows are few (docs/benchmarks.md).

/// The most rows of x this kernel takes. Measured in whole decode steps (`decode_profile`),
/// since the four-column lane sums ([`avx512::sum4`]): faster than the column-split `gemm` at
/// K = 64 (SMC 286-317 -> 391 particle-tokens/s) and 128 (gate/up 99 -> 77, down 68 -> 40 ms
/// per step), about equal at 256, where `gemm`'s cache blocking pays for its packing.
pub const MAX_ROWS: usize = 128;

/// Whether [`dot_rows`] may run here: AVX-512F detected at run time and k a multiple of 16.
pub fn available(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// Where the operands lie: x row r at `x + r * x_stride` (k contiguous values), weight row j
/// at `w + j * w_stride` (k contiguous values), output element (r, j) at `out + r * n + j`.
#[derive(Clone, Copy)]
pub struct Operands {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub x: *const f32,
    pub x_stride: usize,
    pub w: *const f32,
    pub w_stride: usize,
    pub out: *mut f32,
}

/// out[r][j] = x[r] . w[j] for every row r < m and the columns j in `cols`.
///
/// # Safety
/// [`available`] returned true for `ops.k`; the operands are valid for the reads and writes
/// described on [`Operands`] for r < m and j in `cols`; no other thread writes those outputs.
#[cfg(target_arch = "x86_64")]
pub unsafe fn dot_rows(ops: Operands, cols: std::ops::Range<usize>) {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::dot_rows(ops, cols) }
}

/// Never called off x86_64 ([`available`] is false there).
///
/// # Safety
/// None needed: it only panics.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn dot_rows(_ops: Operands, _cols: std::ops::Range<usize>) {
    unreachable!("dot::available is false off x86_64")
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::Operands;

    /// The lane sums of four accumulators, in order: two interleaving rounds within each
    /// 128-bit lane, then the four lanes added (13 operations for four sums where four
    /// `_mm512_reduce_add_ps` take about 32). Each sum's tree depends only on its own
    /// accumulator, so the result for a column does not depend on which columns share the
    /// call (the quantised and f32 kernels stay bit for bit equal).
    #[inline(always)]
    pub(in crate::cpu) unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        unsafe {
            let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
            let abcd = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
            );
            let half = _mm256_add_ps(
                _mm512_castps512_ps256(abcd),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd))),
            );
            _mm_add_ps(
                _mm256_castps256_ps128(half),
                _mm256_extractf128_ps::<1>(half),
            )
        }
    }

    /// Writes the lane sums of `accs` to `out[0..accs.len()]`, four at a time through [`sum4`]
    /// (the same tree for a lone accumulator, padded with zeros).
    #[inline(always)]
    pub(in crate::cpu) unsafe fn store_sums(accs: &[__m512], out: *mut f32) {
        unsafe {
            let mut c = 0;
            while c + 4 <= accs.len() {
                let s = sum4(accs[c], accs[c + 1], accs[c + 2], accs[c + 3]);
                _mm_storeu_ps(out.add(c), s);
                c += 4;
            }
            let z = _mm512_setzero_ps();
            while c < accs.len() {
                *out.add(c) = _mm_cvtss_f32(sum4(accs[c], z, z, z));
                c += 1;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows(ops: Operands, cols: std::ops::Range<usize>) {
        let mut j = cols.start;
        // One or two rows: eight weight rows per tile keep eight independent FMA chains.
        if ops.m <= 2 {
            while j + 8 <= cols.end {
                // SAFETY (all calls): within the caller's rows and columns.
                unsafe { rows::<8>(ops, j) };
                j += 8;
            }
        } else {
            while j + 4 <= cols.end {
                unsafe { rows::<4>(ops, j) };
                j += 4;
            }
        }
        while j < cols.end {
            unsafe { rows::<1>(ops, j) };
            j += 1;
        }
    }

    /// Columns j..j + NC for every row, four rows per tile.
    #[inline(always)]
    unsafe fn rows<const NC: usize>(ops: Operands, j: usize) {
        let mut r = 0;
        unsafe {
            while r + 4 <= ops.m {
                tile::<4, NC>(ops, r, j);
                r += 4;
            }
            match ops.m - r {
                1 => tile::<1, NC>(ops, r, j),
                2 => tile::<2, NC>(ops, r, j),
                3 => tile::<3, NC>(ops, r, j),
                _ => {}
            }
        }
    }

    /// Rows r..r + NR by columns j..j + NC: NR x NC accumulators of 16 lanes over k.
    #[inline(always)]
    unsafe fn tile<const NR: usize, const NC: usize>(ops: Operands, r: usize, j: usize) {
        unsafe {
            let x = ops.x.add(r * ops.x_stride);
            let w = ops.w.add(j * ops.w_stride);
            let mut acc = [[_mm512_setzero_ps(); NC]; NR];
            let mut kk = 0;
            while kk < ops.k {
                let mut wv = [_mm512_setzero_ps(); NC];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(w.add(c * ops.w_stride + kk));
                }
                for (rr, row) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(x.add(rr * ops.x_stride + kk));
                    for (a, &wc) in row.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, wc, *a);
                    }
                }
                kk += 16;
            }
            let out = ops.out.add(r * ops.n + j);
            for (rr, row) in acc.iter().enumerate() {
                store_sums(row, out.add(rr * ops.n));
            }
        }
    }
}
