//! Weights held as 8-bit affine blocks, for the products of a decode step: each run of
//! [`BLOCK`] weights of a row keeps its minimum `lo` and step `(hi - lo) / 255`, each weight a
//! byte q with value `q * step + lo`. A few-row product reads about 1.25 bytes per weight
//! instead of 4, and a decode step at small K is bound by reading the weights.
//!
//! Exactness: a block whose values lie on an evenly spaced grid of at most 256 levels (a GGUF
//! file's Q4_0, Q4_1 and Q8_0 blocks, dequantised) keeps that grid's step, so its weights come
//! back up to f32 rounding; any other block (float weights) takes the step (hi - lo) / 255 and
//! each weight moves by at most half of it. The tolerances the logits keep are tested in
//! `tests/tiny_models.rs` (float weights) and `tests/smollm2.rs` (the default model's Q4_1 and
//! Q8_0 weights) and documented in docs/benchmarks.md.

use std::fmt;

/// Weights per block (one scale and one minimum each); the input size must be a multiple.
pub const BLOCK: usize = 32;

/// Output columns dequantised at a time into a scratch panel (8 x k f32: 18 KiB at k = 576,
/// 48 KiB at k = 1536), which the f32 dot-product tiles then read from cache for every row.
const GROUP: usize = 8;

/// The step of the evenly spaced grid (at most 256 levels from `lo` to `hi`) that every value
/// of `block` lies on, up to f32 rounding; `None` when there is none (or all values are equal).
/// The smallest gap between two values is a whole number j of steps: every j that keeps the
/// levels within 256 is tried.
fn grid_step(block: &[f32], lo: f32, hi: f32) -> Option<f64> {
    let range = f64::from(hi) - f64::from(lo);
    if range <= 0.0 {
        return None;
    }
    let mut sorted: Vec<f64> = block.iter().map(|&x| f64::from(x)).collect();
    sorted.sort_by(f64::total_cmp);
    let gap = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&g| g > range * 1e-4)
        .fold(f64::INFINITY, f64::min);
    // The smallest gap is j steps for some j <= 255; the levels grow with j, so the search
    // ends once they pass 255 (at once for float weights, whose gaps are small).
    (1..=255u32)
        .map_while(|j| {
            let levels = (range / (gap / f64::from(j))).round();
            (levels <= 255.0).then_some(levels)
        })
        .find_map(|levels| {
            if levels < 1.0 {
                return None;
            }
            // The step as the range over a whole number of steps: no error accumulates along
            // the grid.
            let step = range / levels;
            block
                .iter()
                .all(|&x| {
                    let r = (f64::from(x) - f64::from(lo)) / step;
                    (r - r.round()).abs() < 1e-3
                })
                .then_some(step)
        })
}

/// Up to this many rows, weights are dequantised in registers and used at once (no panel):
/// the dequantisation is then paid once per row of x at most four times over.
pub(super) const FUSED_MAX_ROWS: usize = 4;

/// A row-major [rows, cols] matrix of 8-bit affine blocks along each row.
///
/// When every block needs at most 16 levels (a GGUF file's Q4_0 and Q4_1 weights), the levels
/// are packed two to a byte, as ggml packs them: byte i of a block holds level i in its low
/// and level i + 16 in its high nibble. The values are the same; half the bytes are read.
#[derive(Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    /// Bytes per block: 32 (a level per byte) or 16 (two per byte).
    block_bytes: usize,
    /// Products round the activations to 8 bits and multiply as integers
    /// ([`super::int8`]).
    int8: bool,
    /// Products of more than [`FUSED_MAX_ROWS`] rows round the weights and activations to
    /// bf16 ([`super::bf16`]).
    bf16: bool,
    q: Vec<u8>,
    step: Vec<f32>,
    lo: Vec<f32>,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuantMatrix[{}, {}]", self.rows, self.cols)
    }
}

impl QuantMatrix {
    /// Quantises a row-major [rows, cols] matrix; `None` when `cols` is not a positive multiple
    /// of [`BLOCK`], `w` does not hold rows x cols values, a value is not finite, or a block's
    /// range is too wide for a finite f32 step.
    pub fn from_rows(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || rows.checked_mul(cols)? != w.len() {
            return None;
        }
        if w.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let blocks = w.len() / BLOCK;
        let mut q = vec![0u8; w.len()];
        let mut step = Vec::with_capacity(blocks);
        let mut lo = Vec::with_capacity(blocks);
        for (src, dst) in w.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
            let (a, b) = src
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let s = grid_step(src, a, b).unwrap_or((f64::from(b) - f64::from(a)) / 255.0);
            if s > 0.0 {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = ((f64::from(x) - f64::from(a)) / s)
                        .round()
                        .clamp(0.0, 255.0) as u8;
                }
            }
            // A range near f32::MAX would give an infinite step or values: refused (weights that
            // large are not a model's).
            let top = dst.iter().fold(0u8, |m, &q| m.max(q));
            if !(s as f32).is_finite() || !f32::from(top).mul_add(s as f32, a).is_finite() {
                return None;
            }
            step.push(s as f32);
            lo.push(a);
        }
        let (q, block_bytes) = if q.iter().all(|&x| x < 16) {
            let packed = q
                .chunks_exact(BLOCK)
                .flat_map(|b| (0..BLOCK / 2).map(move |i| b[i] | (b[i + BLOCK / 2] << 4)))
                .collect();
            (packed, BLOCK / 2)
        } else {
            (q, BLOCK)
        };
        Some(Self {
            rows,
            cols,
            block_bytes,
            int8: false,
            bf16: false,
            q,
            step,
            lo,
        })
    }

    /// The same matrix, whose products round the activations to 8 bits per block of 32 and
    /// multiply as integers where the CPU has AVX-512 VNNI (`on`), or keep them in f32.
    pub fn with_int8_activations(mut self, on: bool) -> Self {
        self.int8 = on;
        self
    }

    /// Whether products round the activations to 8 bits.
    pub fn int8_activations(&self) -> bool {
        self.int8
    }

    /// The same matrix, whose products of more than four rows round the weights and the
    /// activations to bf16 and multiply them with AVX-512 BF16 where the CPU has it (`on`), or
    /// keep them in f32.
    pub fn with_bf16_products(mut self, on: bool) -> Self {
        self.bf16 = on;
        self
    }

    /// Whether products of more than four rows round to bf16.
    pub fn bf16_products(&self) -> bool {
        self.bf16
    }

    /// Whether every product gives the f32 values of the dequantised weights (no rounding of
    /// the activations or weights beyond f32).
    pub fn exact_products(&self) -> bool {
        !self.int8 && !self.bf16
    }

    pub(super) fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    pub(super) fn levels(&self) -> &[u8] {
        &self.q
    }

    pub(super) fn steps(&self) -> &[f32] {
        &self.step
    }

    pub(super) fn minima(&self) -> &[f32] {
        &self.lo
    }

    /// Bits per weight level: 4 (two to a byte) or 8.
    pub fn bits(&self) -> usize {
        self.block_bytes * 8 / BLOCK
    }

    /// Level i of block `b` of row `j`.
    fn level(&self, j: usize, b: usize, i: usize) -> u8 {
        let bpr = self.cols / BLOCK;
        let at = (j * bpr + b) * self.block_bytes;
        if self.block_bytes == BLOCK {
            self.q[at + i]
        } else if i < BLOCK / 2 {
            self.q[at + i] & 0x0f
        } else {
            self.q[at + i - BLOCK / 2] >> 4
        }
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * (self.step.len() + self.lo.len())
    }

    /// Row `j` as f32 values (the values the products use).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let k = self.cols;
        let bpr = k / BLOCK;
        for (b, dst) in out[..k].chunks_exact_mut(BLOCK).enumerate() {
            let (s, l) = (self.step[j * bpr + b], self.lo[j * bpr + b]);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = f32::from(self.level(j, b, i)).mul_add(s, l);
            }
        }
    }

    /// Rows `j0..j0 + count` dequantised into `panel` (count x cols), vectorised where the CPU
    /// allows; the same values as [`QuantMatrix::dequantize_row`].
    fn dequantize_panel(&self, j0: usize, count: usize, panel: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature is present; rows j0..j0 + count exist (callers stay below
            // `rows`) and `panel` holds count x cols values.
            unsafe { avx512::dequantize_panel(self, j0, count, panel) };
            return;
        }
        for (i, dst) in panel.chunks_exact_mut(self.cols).take(count).enumerate() {
            self.dequantize_row(j0 + i, dst);
        }
    }
}

/// `x @ w^T` for x [m, k] (row r at `x + r * x_stride`, k contiguous values) and the
/// quantised [n, k] weight w, written to `out` ([m, n] row-major) for the output columns
/// `cols`: each group of [`GROUP`] weight rows is dequantised once into a scratch panel, then
/// multiplied by every row of x with the f32 dot-product tiles.
///
/// # Safety
/// [`super::dot::available`] returned true for k; x is valid for reading m rows of k values at
/// its stride, `out` for writing the m x n outputs of the columns in `cols`, which no other
/// thread writes; `cols` lies within 0..w.rows().
pub(super) unsafe fn product_columns(
    x: *const f32,
    x_stride: usize,
    m: usize,
    w: &QuantMatrix,
    out: *mut f32,
    cols: std::ops::Range<usize>,
) {
    let (k, n) = (w.cols, w.rows);
    #[cfg(target_arch = "x86_64")]
    if m <= FUSED_MAX_ROWS {
        // SAFETY: forwarded from the caller (`dot::available` implies AVX-512F).
        unsafe { avx512::fused_columns(x, x_stride, m, w, out, cols) };
        return;
    }
    let mut panel = vec![0.0f32; GROUP * k];
    let mut j = cols.start;
    while j < cols.end {
        let g = GROUP.min(cols.end - j);
        w.dequantize_panel(j, g, &mut panel);
        let ops = super::dot::Operands {
            m,
            k,
            n,
            x,
            x_stride,
            w: panel.as_ptr(),
            w_stride: k,
            // SAFETY: column j of row 0 lies within the output (j < n).
            out: unsafe { out.add(j) },
        };
        // SAFETY: the panel holds g rows of k values; the outputs are the caller's columns
        // j..j + g, offset above so that panel row c lands in column j + c.
        unsafe { super::dot::dot_rows(ops, 0..g) };
        j += g;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, QuantMatrix};

    /// [`super::product_columns`] for m <= [`super::FUSED_MAX_ROWS`]: tiles of m rows by NC
    /// weight rows, each block of 32 weights dequantised into two registers and multiplied by
    /// every row of x before the next is loaded.
    ///
    /// # Safety
    /// As [`super::product_columns`], with 1 <= m <= 4.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fused_columns(
        x: *const f32,
        x_stride: usize,
        m: usize,
        w: &QuantMatrix,
        out: *mut f32,
        cols: std::ops::Range<usize>,
    ) {
        assert!(cols.end <= w.rows && w.q.len() >= w.rows * (w.cols / BLOCK) * w.block_bytes);
        // SAFETY (every call): the caller's operands; m selects the tile height.
        unsafe {
            match (m, w.block_bytes == BLOCK) {
                (1, false) => columns::<1, 8, true>(x, x_stride, w, out, cols),
                (2, false) => columns::<2, 8, true>(x, x_stride, w, out, cols),
                (3, false) => columns::<3, 4, true>(x, x_stride, w, out, cols),
                (4, false) => columns::<4, 4, true>(x, x_stride, w, out, cols),
                (1, true) => columns::<1, 8, false>(x, x_stride, w, out, cols),
                (2, true) => columns::<2, 8, false>(x, x_stride, w, out, cols),
                (3, true) => columns::<3, 4, false>(x, x_stride, w, out, cols),
                (4, true) => columns::<4, 4, false>(x, x_stride, w, out, cols),
                _ => {}
            }
        }
    }

    /// The 32 levels of the block at `p` as two vectors of 16 (levels 0..16 and 16..32),
    /// unpacked from nibbles when `PACKED`.
    ///
    /// # Safety
    /// `p` is valid for reading the block's 16 (packed) or 32 bytes.
    #[inline(always)]
    pub(in crate::cpu) unsafe fn levels<const PACKED: bool>(p: *const u8) -> (__m512, __m512) {
        unsafe {
            if PACKED {
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
                (
                    _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0f))),
                    _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v)),
                )
            } else {
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16).cast()))),
                )
            }
        }
    }

    #[inline(always)]
    unsafe fn columns<const NR: usize, const NC: usize, const PACKED: bool>(
        x: *const f32,
        x_stride: usize,
        w: &QuantMatrix,
        out: *mut f32,
        cols: std::ops::Range<usize>,
    ) {
        let mut j = cols.start;
        unsafe {
            while j + NC <= cols.end {
                tile::<NR, NC, PACKED>(x, x_stride, w, out, j);
                j += NC;
            }
            while j < cols.end {
                tile::<NR, 1, PACKED>(x, x_stride, w, out, j);
                j += 1;
            }
        }
    }

    #[inline(always)]
    unsafe fn tile<const NR: usize, const NC: usize, const PACKED: bool>(
        x: *const f32,
        x_stride: usize,
        w: &QuantMatrix,
        out: *mut f32,
        j: usize,
    ) {
        let (k, n) = (w.cols, w.rows);
        let bpr = k / BLOCK;
        let q = w.q.as_ptr();
        let (step, lo) = (w.step.as_ptr(), w.lo.as_ptr());
        // SAFETY: AVX-512F is present (the callers' contract).
        let mut acc = unsafe { [[_mm512_setzero_ps(); NC]; NR] };
        let bb = w.block_bytes;
        // SAFETY: weight rows j..j + NC < n hold bpr blocks of bb bytes, steps and minima each;
        // x rows r < NR hold k values at x_stride; outputs (r, j + c) lie in the m x n output.
        // The tile's weight rows are short (576 bytes at k = 576): too short for the hardware
        // prefetcher to follow each. The tile two ahead is one contiguous run of NC rows:
        // fetch a share of it, and of its steps and minima, with each block.
        let ahead = (j + 2 * NC) * bpr;
        let lines = (NC * bb).div_ceil(64);
        unsafe {
            for b in 0..bpr {
                for l in 0..lines {
                    let at = q.wrapping_add(ahead * bb + (b * lines + l) * 64);
                    _mm_prefetch::<_MM_HINT_T0>(at.cast());
                }
                if b * 64 < NC * bpr * 4 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        step.wrapping_add(ahead).cast::<i8>().wrapping_add(b * 64),
                    );
                    _mm_prefetch::<_MM_HINT_T0>(
                        lo.wrapping_add(ahead).cast::<i8>().wrapping_add(b * 64),
                    );
                }
                for c in 0..NC {
                    let at = (j + c) * bpr + b;
                    let s = _mm512_set1_ps(*step.add(at));
                    let l = _mm512_set1_ps(*lo.add(at));
                    let (v0, v1) = levels::<PACKED>(q.add(at * bb));
                    let w0 = _mm512_fmadd_ps(v0, s, l);
                    let w1 = _mm512_fmadd_ps(v1, s, l);
                    for (r, row_acc) in acc.iter_mut().enumerate() {
                        let xr = x.add(r * x_stride + b * BLOCK);
                        row_acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(xr), w0, row_acc[c]);
                        row_acc[c] = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(16)), w1, row_acc[c]);
                    }
                }
            }
            for (r, row_acc) in acc.iter().enumerate() {
                super::super::dot::avx512::store_sums(row_acc, out.add(r * n + j));
            }
        }
    }

    /// # Safety
    /// AVX-512F is present; rows j0..j0 + count exist; `panel` holds count x cols values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dequantize_panel(
        w: &QuantMatrix,
        j0: usize,
        count: usize,
        panel: &mut [f32],
    ) {
        // SAFETY: forwarded; the flag selects the storage the matrix has.
        unsafe {
            if w.block_bytes == BLOCK {
                panel_of::<false>(w, j0, count, panel)
            } else {
                panel_of::<true>(w, j0, count, panel)
            }
        }
    }

    #[inline(always)]
    unsafe fn panel_of<const PACKED: bool>(
        w: &QuantMatrix,
        j0: usize,
        count: usize,
        panel: &mut [f32],
    ) {
        let k = w.cols;
        let bpr = k / BLOCK;
        assert!(j0 + count <= w.rows && panel.len() >= count * k);
        assert!(w.q.len() >= w.rows * bpr * w.block_bytes);
        // The next group's rows, one contiguous run: fetched a line per block (see `tile`).
        let ahead = (j0 + count) * bpr;
        for i in 0..count {
            for b in 0..bpr {
                let at = (j0 + i) * bpr + b;
                let idx = i * bpr + b;
                // SAFETY: prefetches never fault; the addresses are only computed (wrapping).
                unsafe {
                    if (idx * w.block_bytes).is_multiple_of(64) {
                        let at = (ahead + idx) * w.block_bytes;
                        _mm_prefetch::<_MM_HINT_T0>(w.q.as_ptr().wrapping_add(at).cast());
                    }
                    if idx.is_multiple_of(16) {
                        let s = w.step.as_ptr().wrapping_add(ahead + idx);
                        let l = w.lo.as_ptr().wrapping_add(ahead + idx);
                        _mm_prefetch::<_MM_HINT_T0>(s.cast());
                        _mm_prefetch::<_MM_HINT_T0>(l.cast());
                    }
                }
                let dst = i * k + b * BLOCK;
                // SAFETY: AVX-512F is present (the caller's contract); block `at` lies within q
                // (asserted above), and 32 f32 at `dst` within panel row i.
                unsafe {
                    let s = _mm512_set1_ps(w.step[at]);
                    let l = _mm512_set1_ps(w.lo[at]);
                    let (v0, v1) = levels::<PACKED>(w.q.as_ptr().add(at * w.block_bytes));
                    let out = panel.as_mut_ptr().add(dst);
                    _mm512_storeu_ps(out, _mm512_fmadd_ps(v0, s, l));
                    _mm512_storeu_ps(out.add(16), _mm512_fmadd_ps(v1, s, l));
                }
            }
        }
    }
}
