//! CPU fast paths for the flex backend, reached through burn's backend-extension API
//! (`Tensor::try_into_primitive::<Flex>`): the same arithmetic as the burn operations they
//! replace, laid out for a decode step's small batches. Each returns `None` for a tensor that
//! is not a plain f32 flex tensor (autodiff, GPU, other dtypes), and the caller then uses the
//! burn operation.
//!
//! Why: the profile of a decode step (docs/benchmarks.md) showed the matrix products of a
//! batch of K = 1..64 rows running on about one core. flex hands each product to `gemm` with
//! its own threads only above 192^3 multiply-adds, and `gemm` splits small-row products poorly;
//! splitting the output columns into one block per thread, each a single-threaded `gemm`,
//! keeps both cores busy (and reads the weights at twice the bandwidth at K = 1).

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod attention;
mod bf16;
mod dot;
mod int8;
mod quant;

pub use attention::decode_attention;
pub use quant::QuantMatrix;

/// Runs `f` on a thread of the CPU kernels' pool (rayon's), so that the products and
/// element-wise kernels it starts split their work inside the pool, where an idle thread
/// steals it at once, instead of each injecting its work from outside and sleeping until it
/// is done (two thread hand-offs per product, a few hundred per decoding step). Already on a
/// pool thread, `f` runs where it is.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    if rayon::current_thread_index().is_some() {
        return f();
    }
    match POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().build().ok()) {
        Some(pool) => {
            // The profile is kept per thread: bring the pool thread's back.
            let (out, ops) = pool.install(|| {
                let out = f();
                (out, crate::profile::take())
            });
            crate::profile::merge(ops);
            out
        }
        None => f(),
    }
}

/// The most rows (particles) a product runs with quantised weights: the dot-product tiles'
/// range (beyond it `gemm` reads the f32 weights).
pub const QUANT_MAX_ROWS: usize = dot::MAX_ROWS;

/// The most rows a product runs with quantised weights and bf16 products: their tiles do
/// twice the multiply-adds of `gemm`'s f32 ones, so they stay ahead past [`QUANT_MAX_ROWS`]
/// (docs/benchmarks.md).
pub const BF16_MAX_ROWS: usize = 512;

/// Whether bf16 products can run on this CPU (AVX-512F and BF16).
pub fn bf16_products_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Why quantised products cannot run for this device and input size, if they cannot: they
/// need the flex CPU backend, AVX-512 and an input size that is a multiple of
/// [`quant::BLOCK`].
pub fn quant_unsupported(device: &burn::tensor::Device, k: usize) -> Option<String> {
    if *device != burn::tensor::Device::flex() {
        return Some(format!(
            "they run on the CPU backend only (the model is on {device:?})"
        ));
    }
    if !k.is_multiple_of(quant::BLOCK) {
        return Some(format!(
            "the input size {k} is not a multiple of the block size {}",
            quant::BLOCK
        ));
    }
    if !dot::available(k) {
        return Some("this CPU lacks AVX-512".into());
    }
    None
}

/// Output columns per block of a wide product (the output head): small enough for each
/// block's panel of weights to stay in cache, many enough blocks to balance two threads.
const MAX_BLOCK: usize = 4096;

/// Below this many multiply-adds a product runs on the calling thread: splitting costs more
/// than it saves.
const SPLIT_MIN_WORK: usize = 32 * 1024;

/// An f32 matrix in flex storage: pointer to element (0, 0) and its strides, in elements.
struct Matrix {
    tensor: FlexTensor,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl Matrix {
    fn of(t: &Tensor<2>) -> Option<Self> {
        let tensor = t.clone().try_into_primitive::<Flex>().ok()?;
        if tensor.dtype() != DType::F32 {
            return None;
        }
        let layout = tensor.layout();
        let (rows, cols, row_stride, col_stride) = layout.as_2d_strides()?;
        if row_stride < 0 || col_stride < 0 {
            return None;
        }
        // The furthest element read must lie inside the storage (checked arithmetic: a
        // layout whose offsets overflow is declined, not wrapped).
        let last = (rows.saturating_sub(1))
            .checked_mul(row_stride as usize)?
            .checked_add((cols.saturating_sub(1)).checked_mul(col_stride as usize)?)?
            .checked_add(layout.start_offset())?;
        if rows > 0 && cols > 0 && last >= tensor.storage::<f32>().len() {
            return None;
        }
        Some(Self {
            tensor,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    fn ptr(&self) -> *const f32 {
        let data = self.tensor.storage::<f32>();
        // In bounds: checked in `of` (an empty matrix is never read).
        data.as_ptr()
            .wrapping_add(self.tensor.layout().start_offset())
    }
}

/// A pointer that may cross threads: each thread writes a disjoint block of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the blocks written through it never overlap (see `matmul`), and the buffer outlives
// the parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, so that closures capture the whole (Send) wrapper, not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
struct InPtr(*const f32);
// SAFETY: only read, while the tensors that own the memory are alive (held by `Matrix`).
unsafe impl Send for InPtr {}
unsafe impl Sync for InPtr {}

impl InPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}

/// `x @ w` for x [m, k] and w [k, n] on flex (any strides, e.g. w the transposed view of a
/// row-major [n, k] weight), as a contiguous [m, n] tensor; `None` when either is not a plain
/// f32 flex tensor or the shapes do not chain.
pub fn matmul(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    let a = Matrix::of(x)?;
    let b = Matrix::of(w)?;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return None;
    }
    let len = m.checked_mul(n)?;
    let mut out = vec![0.0f32; len];
    if len > 0 && k > 0 {
        let threads = rayon::current_num_threads().max(1);
        let work = m.saturating_mul(n).saturating_mul(k);
        let blocks = if work < SPLIT_MIN_WORK {
            1
        } else {
            threads.max(n.div_ceil(MAX_BLOCK)).min(n.div_ceil(16))
        };
        // Multiples of 16 columns (one AVX-512 register) per block.
        let width = n.div_ceil(blocks).div_ceil(16) * 16;
        let (pa, pb, po) = (InPtr(a.ptr()), InPtr(b.ptr()), OutPtr(out.as_mut_ptr()));
        // Few rows against a weight whose rows (w's columns) are contiguous: dot products.
        let dots = m <= dot::MAX_ROWS
            && a.col_stride == 1
            && b.row_stride == 1
            && b.col_stride >= k as isize
            && a.row_stride >= k as isize
            && dot::available(k);
        let run = |j0: usize| {
            let cols = width.min(n - j0);
            if dots {
                let ops = dot::Operands {
                    m,
                    k,
                    n,
                    x: pa.get(),
                    x_stride: a.row_stride as usize,
                    w: pb.get(),
                    w_stride: b.col_stride as usize,
                    out: po.get(),
                };
                // SAFETY: `available` checked; x rows r < m hold k contiguous values at
                // r * row_stride, w's column j (a weight row) k contiguous values at
                // j * col_stride (strides checked above and in `Matrix::of`); this block
                // alone writes columns j0..j0 + cols.
                unsafe { dot::dot_rows(ops, j0..j0 + cols) };
                return;
            }
            // SAFETY: a is m x k and b is k x n with the strides checked in `Matrix::of`;
            // this block writes columns j0..j0 + cols of every row of the m x n output,
            // which no other block writes; `out` and both tensors outlive the call.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    po.get().add(j0),
                    1,
                    n as isize,
                    false,
                    pa.get(),
                    a.col_stride,
                    a.row_stride,
                    pb.get().offset(j0 as isize * b.col_stride),
                    b.col_stride,
                    b.row_stride,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        let starts: Vec<usize> = (0..n).step_by(width).collect();
        if starts.len() == 1 {
            run(0);
        } else {
            starts.into_par_iter().for_each(run);
        }
    }
    // from_primitive places it on the default flex device; `from_vec` keeps the caller's.
    Some(from_vec(out, [m, n], &x.device()))
}

/// `x @ w^T` for x [m, k] and a quantised [n, k] weight ([`QuantMatrix`]), split by output
/// columns into `parts` (their sum must be n; one part for the whole product): a fused
/// projection (Q, K and V, or gate and up) runs as one product spread over the threads.
/// `None` when x is not a plain f32 flex tensor with contiguous rows, k is not w's input size,
/// the parts do not add up to n, or the CPU lacks AVX-512 (the caller then uses the f32
/// weights).
pub fn quant_matmul(x: &Tensor<2>, w: &QuantMatrix, parts: &[usize]) -> Option<Vec<Tensor<2>>> {
    let a = Matrix::of(x)?;
    let (m, k, n) = (a.rows, a.cols, w.rows());
    let whole = parts.iter().try_fold(0usize, |s, &p| s.checked_add(p))?;
    if k != w.cols() || whole != n || a.col_stride != 1 || (m > 1 && a.row_stride < k as isize) {
        return None;
    }
    if !dot::available(k) {
        return None;
    }
    if n == 0 {
        let device = x.device();
        return Some(
            parts
                .iter()
                .map(|_| from_vec(Vec::new(), [m, 0], &device))
                .collect(),
        );
    }
    let mut out = vec![0.0f32; m.checked_mul(n)?];
    if m > 0 {
        let threads = rayon::current_num_threads().max(1);
        let blocks = threads
            .max(n.div_ceil(MAX_BLOCK))
            .min(n.div_ceil(16))
            .max(1);
        let width = n.div_ceil(blocks).div_ceil(16) * 16;
        let (pa, po) = (InPtr(a.ptr()), OutPtr(out.as_mut_ptr()));
        let stride = a.row_stride.max(k as isize) as usize;
        // SAFETY: x holds m rows of k contiguous values at `stride` (checked above and in
        // `Matrix::of`).
        let rounded = (w.int8_activations() && int8::available(w))
            .then(|| unsafe { int8::QuantRows::of(pa.get(), stride, m, k) });
        // SAFETY: as above; `bf16::available` checked first.
        let halves = (rounded.is_none()
            && w.bf16_products()
            && m > quant::FUSED_MAX_ROWS
            && bf16::available(w))
        .then(|| unsafe { bf16::Bf16Rows::of(pa.get(), stride, m, k) });
        let run = |j0: usize| {
            let cols = j0..(j0 + width).min(n);
            // SAFETY: `dot::available(k)` checked (and `int8::available` for the integer
            // products); x holds m rows of k contiguous values at `stride`; this block alone
            // writes columns j0..j0 + width of the m x n output, which outlives the call.
            unsafe {
                match (&rounded, &halves) {
                    (Some(xq), _) => int8::product_columns(xq, w, po.get(), cols),
                    (None, Some(xb)) => bf16::product_columns(xb, w, po.get(), cols),
                    (None, None) => quant::product_columns(pa.get(), stride, m, w, po.get(), cols),
                }
            };
        };
        let starts: Vec<usize> = (0..n).step_by(width).collect();
        if starts.len() == 1 {
            run(0);
        } else {
            starts.into_par_iter().for_each(run);
        }
    }
    let device = x.device();
    if parts.len() == 1 {
        return Some(vec![from_vec(out, [m, n], &device)]);
    }
    let mut offset = 0;
    let tensors = parts
        .iter()
        .map(|&p| {
            let mut part = Vec::with_capacity(m * p);
            for row in out.chunks_exact(n) {
                part.extend_from_slice(&row[offset..offset + p]);
            }
            offset += p;
            from_vec(part, [m, p], &device)
        })
        .collect();
    Some(tensors)
}

/// The SwiGLU activation silu(gate) * up, elementwise, for two tensors of the same shape, in
/// one pass spread over the threads; `None` unless both are contiguous f32 flex tensors of
/// the same shape.
pub fn silu_mul<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let shape = gate.dims();
    if up.dims() != shape {
        return None;
    }
    let g = contiguous_f32(gate)?;
    let u = contiguous_f32(up)?;
    let (gs, us) = (slice_of(&g), slice_of(&u));
    let mut out = vec![0.0f32; gs.len()];
    const CHUNK: usize = 16 * 1024;
    out.par_chunks_mut(CHUNK)
        .zip(gs.par_chunks(CHUNK).zip(us.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| silu_mul_chunk(g, u, o));
    Some(from_vec(out, shape, &gate.device()))
}

fn silu_mul_chunk(g: &[f32], u: &[f32], o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { silu_mul_avx512(g, u, o) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { silu_mul_avx2(g, u, o) };
        }
    }
    silu_mul_portable(g, u, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn silu_mul_avx512(g: &[f32], u: &[f32], o: &mut [f32]) {
    silu_mul_portable(g, u, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(g: &[f32], u: &[f32], o: &mut [f32]) {
    silu_mul_portable(g, u, o)
}

#[inline(always)]
fn silu_mul_portable(g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        // sigmoid(g) from e^-|g| <= 1, so that the exponential never overflows.
        let e = exp_f32(-g.abs());
        let s = if g >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        *o = g * s * u;
    }
}

/// RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`, the operations of
/// `ops::rms_norm` in one pass per row (the sum of squares in sixteen f32 lanes, so it may
/// differ from burn's in the last bits); `None` unless `x` and `weight` are contiguous f32
/// flex tensors with `weight` as long as the last dimension.
pub fn rms_norm<const D: usize>(x: &Tensor<D>, weight: &Tensor<1>, eps: f64) -> Option<Tensor<D>> {
    let dims = x.dims();
    let d = *dims.last()?;
    if d == 0 || weight.dims() != [d] {
        return None;
    }
    let (xp, wp) = (contiguous_f32(x)?, contiguous_f32(weight)?);
    let (xs, ws) = (slice_of(&xp), slice_of(&wp));
    let mut out = vec![0.0f32; xs.len()];
    let eps = eps as f32;
    let norm_rows = |o: &mut [f32], x: &[f32]| {
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            rms_norm_row(x, ws, eps, o);
        }
    };
    // Rows over the threads only where there is enough work to pay for the hand-off.
    const ROWS_WORK: usize = 1 << 16;
    if xs.len() >= 2 * ROWS_WORK {
        let rows = (ROWS_WORK / d).max(1) * d;
        out.par_chunks_mut(rows)
            .zip(xs.par_chunks(rows))
            .for_each(|(o, x)| norm_rows(o, x));
    } else {
        norm_rows(&mut out, xs);
    }
    Some(from_vec(out, dims, &x.device()))
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { rms_norm_row_avx512(x, w, eps, out) };
    }
    rms_norm_row_portable(x, w, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rms_norm_row_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_row_portable(x, w, eps, out)
}

#[inline(always)]
fn rms_norm_row_portable(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    const W: usize = 16;
    let mut acc = [0.0f32; W];
    let (chunks, tail) = x.as_chunks::<W>();
    for c in chunks {
        for i in 0..W {
            acc[i] += c[i] * c[i];
        }
    }
    let ss = acc.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
    let denom = (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = v / denom * wi;
    }
}

/// Rotary position embedding `x * cos + rotate_half(x) * sin` (rotate_half(x) = [-x2, x1]
/// over the two halves of the last dimension) for x [b, h, s, hd] and tables [s, hd], as
/// burn's operations compute it (the same products and sums, so the same bits) in one pass;
/// `None` unless all three are contiguous f32 flex tensors of those shapes.
pub fn rope(x: &Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Option<Tensor<4>> {
    let [b, h, s, hd] = x.dims();
    if cos.dims() != [s, hd] || sin.dims() != [s, hd] || hd % 2 != 0 || s == 0 {
        return None;
    }
    let (xp, cp, sp) = (
        contiguous_f32(x)?,
        contiguous_f32(cos)?,
        contiguous_f32(sin)?,
    );
    let (xs, cs, ss) = (slice_of(&xp), slice_of(&cp), slice_of(&sp));
    let half = hd / 2;
    let mut out = vec![0.0f32; xs.len()];
    for (r, (o, xr)) in out
        .chunks_exact_mut(hd)
        .zip(xs.chunks_exact(hd))
        .enumerate()
    {
        let at = (r % s) * hd;
        let (c, sn) = (&cs[at..at + hd], &ss[at..at + hd]);
        let (x1, x2) = xr.split_at(half);
        let (o1, o2) = o.split_at_mut(half);
        for i in 0..half {
            o1[i] = x1[i] * c[i] + -x2[i] * sn[i];
            o2[i] = x2[i] * c[half + i] + x1[i] * sn[half + i];
        }
    }
    Some(from_vec(out, [b, h, s, hd], &x.device()))
}

/// Copies, in place, positions `0..prefix` of rows `src` into rows `dst` (pairs `(dst, src)`,
/// all reads before any write) of a contiguous [rows, heads, capacity, head_dim] f32 flex
/// tensor: a KV cache reordered after resampling, without touching the unused capacity.
/// Returns false, with the tensor unchanged, when it is not such a tensor or its storage is
/// shared.
pub fn reorder_cache_rows(t: &mut Tensor<4>, moves: &[(usize, usize)], prefix: usize) -> bool {
    let [rows, heads, cap, hd] = t.dims();
    let applicable = prefix <= cap
        && moves.iter().all(|&(d, s)| d < rows && s < rows)
        && contiguous_f32(t).is_some_and(|p| p.layout().start_offset() == 0);
    if !applicable {
        return false;
    }
    let device = t.device();
    // Taken out so that the storage has one owner and can be written in place.
    let taken = std::mem::replace(t, Tensor::empty([0, 0, 0, 0], &device));
    let Ok(mut p) = taken.try_into_primitive::<Flex>() else {
        unreachable!("checked by contiguous_f32")
    };
    let Some(data) = p.try_storage_mut::<f32>() else {
        *t = from_primitive(p, &device);
        return false;
    };
    let (row, seg) = (heads * cap * hd, prefix * hd);
    let mut scratch = Vec::with_capacity(moves.len() * heads * seg);
    for &(_, src) in moves {
        for h in 0..heads {
            let a = src * row + h * cap * hd;
            scratch.extend_from_slice(&data[a..a + seg]);
        }
    }
    for (i, &(dst, _)) in moves.iter().enumerate() {
        for h in 0..heads {
            let a = dst * row + h * cap * hd;
            let b = (i * heads + h) * seg;
            data[a..a + seg].copy_from_slice(&scratch[b..b + seg]);
        }
    }
    *t = from_primitive(p, &device);
    true
}

fn from_primitive<const D: usize>(p: FlexTensor, device: &burn::tensor::Device) -> Tensor<D> {
    let out = Tensor::<D>::from_primitive::<Flex>(p);
    if out.device() == *device {
        out
    } else {
        out.to_device(device)
    }
}

/// A contiguous f32 flex tensor (its storage from offset 0, in row-major order).
fn contiguous_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    let layout = p.layout();
    let n = layout.num_elements();
    let ok = p.dtype() == DType::F32
        && layout.is_contiguous()
        && p.storage::<f32>().len() >= layout.start_offset() + n;
    ok.then_some(p)
}

fn slice_of(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

fn from_vec<const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &burn::tensor::Device,
) -> Tensor<D> {
    from_primitive(FlexTensor::from_data(TensorData::new(data, shape)), device)
}

/// Row-wise log-softmax of a [rows, v] table of logits, in f64, rows spread over the threads:
/// row r of the result is `logits[r] - log Σ exp(logits[r])`. The sum of exponentials uses a
/// vectorised f32 exponential (relative error below 2e-7 per term) accumulated in f64; the
/// result differs from an all-f64 computation by less than 1e-6 per entry.
///
/// A row holding a NaN or infinite logit is refused: `Err((row, value))` with its first such
/// value.
pub fn log_softmax_rows(logits: &[f32], v: usize) -> Result<Vec<f64>, (usize, f64)> {
    let mut out = vec![0.0f64; logits.len()];
    if v == 0 || logits.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .enumerate()
        .try_for_each(|(r, (dst, row))| log_softmax_row(row, dst).map_err(|x| (r, x)))?;
    Ok(out)
}

fn log_softmax_row(row: &[f32], dst: &mut [f64]) -> Result<(), f64> {
    let (lo, hi) = row
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    // min/max skip NaN, and so does the clamped exponential: look for NaN separately. An
    // infinite logit makes lo or hi infinite.
    let nan = row.iter().any(|x| x.is_nan());
    let sum = exp_sum(row, hi);
    let lse = hi as f64 + sum.ln();
    if nan || !(lo.is_finite() && hi.is_finite() && lse.is_finite()) {
        let bad = row.iter().find(|x| !x.is_finite()).map(|&x| f64::from(x));
        return Err(bad.unwrap_or(lse));
    }
    for (d, &x) in dst.iter_mut().zip(row) {
        *d = x as f64 - lse;
    }
    Ok(())
}

/// Σ exp(x - max) over the row, through the widest vector instructions the CPU has.
fn exp_sum(row: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { exp_sum_avx512(row, max) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { exp_sum_avx2(row, max) };
        }
    }
    exp_sum_portable(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_sum_avx512(row: &[f32], max: f32) -> f64 {
    exp_sum_portable(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_sum_avx2(row: &[f32], max: f32) -> f64 {
    exp_sum_portable(row, max)
}

/// Sixteen independent partial sums, so that the compiler vectorises the loop without
/// reassociating a single sum.
#[inline(always)]
fn exp_sum_portable(row: &[f32], max: f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0.0f64; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp_f32(c[i] - max) as f64;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for &x in tail {
        sum += exp_f32(x - max) as f64;
    }
    sum
}

/// e^x for x <= 0 (Cephes-style: x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6 polynomial
/// for e^r, 2^n from the exponent bits); 0 below -87 (where e^x is under 1.7e-38). Written
/// without branches so that it vectorises.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.max(-87.0);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6 (Horner).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_334e-3 + r * 1.388_889e-3)))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x < -87.0 { 0.0 } else { y }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    /// The largest absolute difference between two f32 tensors of the same size.
    pub(crate) fn close(a: &Tensor<2>, b: &Tensor<2>) -> f32 {
        let a = a.to_data().try_to_vec::<f32>().unwrap();
        let b = b.to_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn rms_norm_matches_burn_operations() {
        let dev = Device::flex();
        for (rows, d) in [(1, 576), (16, 576), (300, 576), (3, 7)] {
            let x = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 2.0), &dev);
            let w = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.1), &dev);
            let eps = 1e-5;
            let var = x.clone().square().mean_dim(1);
            let want = (x.clone() / (var + eps).sqrt()) * w.clone().unsqueeze();
            let got = super::rms_norm(&x, &w, eps).expect("flex f32");
            let (got, want) = (
                got.to_data().try_to_vec::<f32>().unwrap(),
                want.to_data().try_to_vec::<f32>().unwrap(),
            );
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{rows}x{d}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn rope_gives_the_bits_of_burn_operations() {
        let dev = Device::flex();
        for (b, h, s, hd) in [(3, 9, 1, 64), (1, 3, 7, 10)] {
            let x = Tensor::<4>::random([b, h, s, hd], Distribution::Normal(0.0, 1.0), &dev);
            let cos = Tensor::<2>::random([s, hd], Distribution::Normal(0.0, 1.0), &dev);
            let sin = Tensor::<2>::random([s, hd], Distribution::Normal(0.0, 1.0), &dev);
            let half = hd / 2;
            let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
            let x2 = x.clone().slice([0..b, 0..h, 0..s, half..hd]);
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            let c: Tensor<4> = cos.clone().unsqueeze();
            let sn: Tensor<4> = sin.clone().unsqueeze();
            let want = (x.clone() * c + rotated * sn).to_data();
            let got = super::rope(&x, &cos, &sin).expect("flex f32").to_data();
            assert_eq!(
                got.try_to_vec::<f32>().unwrap(),
                want.try_to_vec::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn matches_burn_matmul_for_plain_transposed_and_sliced_operands() {
        let dev = Device::flex();
        for (m, k, n) in [
            (1, 7, 5),
            (3, 64, 40),
            (16, 96, 200),
            (5, 33, 9000),
            (0, 4, 3),
        ] {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
            let wt = w.clone().transpose();
            let want = x.clone().matmul(wt.clone());
            let got = super::matmul(&x, &wt).expect("flex f32");
            assert!(close(&got, &want) < 1e-3, "{m}x{k}x{n}");
            let contiguous = Tensor::<2>::from_data(wt.to_data(), &dev);
            let got = super::matmul(&x, &contiguous).expect("flex f32");
            assert!(close(&got, &want) < 1e-3);
            if n > 3 {
                let part = wt.clone().slice([0..k, 2..n - 1]);
                let want = x.clone().matmul(part.clone());
                let got = super::matmul(&x, &part).expect("flex f32");
                assert!(close(&got, &want) < 1e-3);
            }
        }
    }

    #[test]
    fn fast_exponential_is_within_3e7_relative_error_on_the_negative_axis() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = super::exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(super::exp_f32(-200.0), 0.0);
        assert_eq!(super::exp_f32(0.0), 1.0);
    }

    #[test]
    fn log_softmax_matches_f64_and_refuses_non_finite_rows() {
        let v = 1003;
        let logits: Vec<f32> = (0..3 * v)
            .map(|i| ((i * 7919) % 2000) as f32 * 0.013 - 9.0)
            .collect();
        let got = super::log_softmax_rows(&logits, v).expect("finite");
        for (r, row) in logits.chunks(v).enumerate() {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            for (j, &x) in row.iter().enumerate() {
                assert!((got[r * v + j] - (x as f64 - lse)).abs() < 1e-6);
            }
        }
        let mut bad = logits.clone();
        bad[v + 5] = f32::NAN;
        let Err((row, value)) = super::log_softmax_rows(&bad, v) else {
            panic!("a NaN logit passed");
        };
        assert_eq!(row, 1);
        assert!(value.is_nan());
        bad[v + 5] = f32::INFINITY;
        assert!(matches!(
            super::log_softmax_rows(&bad, v),
            Err((1, x)) if x == f64::INFINITY
        ));
    }

    #[test]
    fn few_row_dot_products_match_burn_for_every_tile_remainder() {
        let dev = Device::flex();
        for m in [1, 2, 3, 4, 5, 7, 17, 64, 65, 127, 128, 129] {
            for (k, n) in [(32, 13), (48, 40), (16, 1), (160, 4100)] {
                // x as a slice of wider rows (row stride > k), w as the transposed view of a
                // row-major [n, k] weight: the layout of every decode-step product.
                let wide = Tensor::<2>::random([m, k + 16], Distribution::Normal(0.0, 1.0), &dev);
                let x = wide.slice([0..m, 8..8 + k]);
                let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
                let wt = w.transpose();
                let want = Tensor::<2>::from_data(x.to_data(), &dev).matmul(wt.clone());
                let got = super::matmul(&x, &wt).expect("flex f32");
                assert!(close(&got, &want) < 1e-3, "m {m} k {k} n {n}");
            }
        }
    }

    #[test]
    fn quantised_blocks_keep_q4_grids_and_half_a_step_otherwise() {
        // Q4_1-, Q4_0- and Q8_0-like blocks (grids of 16 and 255 levels, not all used) come
        // back up to f32 rounding.
        let (d, m) = (0.0123f32, -0.07f32);
        let mut back = vec![0.0; 32];
        let blocks: [Vec<f32>; 5] = [
            (0..32).map(|i| (i % 16) as f32 * d + m).collect(),
            (0..32)
                .map(|i| [2.0f32, 5.0, 9.0, 14.0][i % 4] * d + m)
                .collect(),
            (0..32).map(|i| ((i * 7 % 16) as f32 - 8.0) * d).collect(),
            (0..32)
                .map(|i| ((i * 37 % 255) as f32 - 127.0) * d)
                .collect(),
            // A sparse Q8_0 block: the smallest gap is 50 steps.
            (0..32)
                .map(|i| match i {
                    0 => -50.0 * d,
                    1 => 127.0 * d,
                    _ => 0.0,
                })
                .collect(),
        ];
        for grid in &blocks {
            let q = super::QuantMatrix::from_rows(grid, 1, 32).unwrap();
            q.dequantize_row(0, &mut back);
            for (a, b) in grid.iter().zip(&back) {
                assert!((a - b).abs() <= 4e-7 * a.abs().max(1.0), "{a} {b}");
            }
        }
        // Arbitrary values: within half a step of their block's range / 255.
        let dev = Device::flex();
        let w = Tensor::<2>::random([3, 64], Distribution::Normal(0.0, 1.0), &dev)
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        let q = super::QuantMatrix::from_rows(&w, 3, 64).unwrap();
        let mut back = vec![0.0; 64];
        for r in 0..3 {
            q.dequantize_row(r, &mut back);
            for (blk, (a, b)) in w[r * 64..(r + 1) * 64]
                .chunks(32)
                .zip(back.chunks(32))
                .enumerate()
            {
                let (lo, hi) = a
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let half_step = (hi - lo) / 510.0 * 1.0001;
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= half_step, "row {r} block {blk}: {x} {y}");
                }
            }
        }
        assert!(super::QuantMatrix::from_rows(&w, 3, 48).is_none());
        assert!(super::QuantMatrix::from_rows(&[f32::NAN; 32], 1, 32).is_none());
        // A range too wide for a finite step is refused, not turned into infinities.
        let mut wide = [3e38f32; 32];
        wide[0] = -3e38;
        assert!(super::QuantMatrix::from_rows(&wide, 1, 32).is_none());
        // A constant block is exact.
        let q = super::QuantMatrix::from_rows(&[0.5; 32], 1, 32).unwrap();
        q.dequantize_row(0, &mut back);
        assert!(back[..32].iter().all(|&x| x == 0.5));
    }

    #[test]
    fn quantised_products_match_burn_on_the_dequantised_weights() {
        if !super::dot::available(32) {
            return;
        }
        let dev = Device::flex();
        let shapes = [
            (1, 32, 5),
            (2, 64, 19),
            (3, 64, 40),
            (4, 96, 203),
            (5, 96, 203),
        ];
        let more = [(16, 576, 960), (33, 64, 17)];
        for ((m, k, n), bits) in shapes
            .into_iter()
            .chain(more)
            .flat_map(|s| [(s, 8), (s, 4)])
        {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
            let mut values = w.to_data().try_to_vec::<f32>().unwrap();
            if bits == 4 {
                // Q4_1-like blocks: 16 levels each.
                for (i, x) in values.iter_mut().enumerate() {
                    let (d, lo) = (0.01 * (1 + i / 32 % 7) as f32, -0.05 * (i / 32 % 3) as f32);
                    *x = ((x.abs() * 9.0) as u32).min(15) as f32 * d + lo;
                }
            }
            let q = super::QuantMatrix::from_rows(&values, n, k).unwrap();
            assert_eq!(q.bits(), bits, "{m}x{k}x{n}");
            let mut deq = vec![0.0; n * k];
            for (j, row) in deq.chunks_exact_mut(k).enumerate() {
                q.dequantize_row(j, row);
            }
            let wd = Tensor::<2>::from_data(TensorData::new(deq, [n, k]), &dev);
            let want = x.clone().matmul(wd.transpose());
            let got = super::quant_matmul(&x, &q, &[n]).expect("flex f32, avx512");
            assert!(close(&got[0], &want) < 1e-3, "{m}x{k}x{n}");
            // Split into parts: the same columns.
            let parts = [n / 3, n - n / 3 - 1, 1];
            let got = super::quant_matmul(&x, &q, &parts).unwrap();
            let mut at = 0;
            for (t, &p) in got.iter().zip(&parts) {
                let part = want.clone().slice([0..m, at..at + p]);
                assert!(close(t, &part) < 1e-3, "part at {at}");
                at += p;
            }
            assert!(super::quant_matmul(&x, &q, &[n + 1]).is_none());
        }
        let x = Tensor::<2>::zeros([2, 48], &dev);
        let q = super::QuantMatrix::from_rows(&[0.0; 64], 1, 64).unwrap();
        assert!(super::quant_matmul(&x, &q, &[1]).is_none());
        // No output columns: empty parts, no panic.
        let none = super::QuantMatrix::from_rows(&[], 0, 32).unwrap();
        let x = Tensor::<2>::zeros([2, 32], &dev);
        let got = super::quant_matmul(&x, &none, &[0, 0]).unwrap();
        assert!(got.iter().all(|t| t.dims() == [2, 0]));
    }

    /// Integer products round each block of 32 activations to levels of max |x| / 127: each
    /// output is within sum_b (scale_b / 2) sum_{i in b} |w_i| (plus f32 rounding) of the
    /// product with the f32 activations and the dequantised weights.
    #[test]
    fn int8_products_stay_within_the_activation_rounding_bound() {
        if !super::dot::available(32) || !std::arch::is_x86_feature_detected!("avx512vnni") {
            return;
        }
        let dev = Device::flex();
        for ((m, k, n), bits) in [
            (1, 64, 9),
            (3, 128, 40),
            (4, 64, 33),
            (7, 192, 21),
            (16, 576, 67),
        ]
        .into_iter()
        .flat_map(|s| [(s, 8), (s, 4)])
        {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let mut values = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev)
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            if bits == 4 {
                for x in values.iter_mut() {
                    *x = ((x.abs() * 9.0) as u32).min(15) as f32 * 0.02 - 0.1;
                }
            }
            let q = super::QuantMatrix::from_rows(&values, n, k)
                .unwrap()
                .with_int8_activations(true);
            assert_eq!(q.bits(), bits);
            let mut deq = vec![0.0; n * k];
            for (j, row) in deq.chunks_exact_mut(k).enumerate() {
                q.dequantize_row(j, row);
            }
            let xs = x.to_data().try_to_vec::<f32>().unwrap();
            let got = super::quant_matmul(&x, &q, &[n]).unwrap()[0]
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            for r in 0..m {
                for j in 0..n {
                    let (xr, wj) = (&xs[r * k..(r + 1) * k], &deq[j * k..(j + 1) * k]);
                    let exact: f64 = xr.iter().zip(wj).map(|(&a, &b)| f64::from(a * b)).sum();
                    let bound: f64 = xr
                        .chunks(32)
                        .zip(wj.chunks(32))
                        .map(|(xb, wb)| {
                            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                            f64::from(amax / 127.0 / 2.0)
                                * wb.iter().map(|v| f64::from(v.abs())).sum::<f64>()
                        })
                        .sum();
                    let err = (f64::from(got[r * n + j]) - exact).abs();
                    assert!(
                        err <= bound + 1e-4,
                        "{m}x{k}x{n} ({bits} bits) [{r},{j}]: {err} > {bound}"
                    );
                }
            }
        }
    }

    /// A NaN activation gives NaN outputs with integer products too (as in f32, where
    /// log-softmax then refuses the row), never a silent zero.
    #[test]
    fn int8_products_propagate_non_finite_activations() {
        if !super::dot::available(32) || !std::arch::is_x86_feature_detected!("avx512vnni") {
            return;
        }
        let dev = Device::flex();
        let q = super::QuantMatrix::from_rows(&[0.5; 64 * 3], 3, 64)
            .unwrap()
            .with_int8_activations(true);
        let mut xs = vec![1.0f32; 64];
        xs[40] = f32::NAN;
        let x = Tensor::<2>::from_data(TensorData::new(xs, [1, 64]), &dev);
        let got = super::quant_matmul(&x, &q, &[3]).unwrap()[0]
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
    }

    /// bf16 products round each weight and activation to 8 bits of mantissa (relative error
    /// at most 2^-9 each), multiply exactly and sum in f32: each output is within
    /// sum_i |x_i w_i| (2^-8 + k 2^-23) of the product with the f32 activations and the
    /// dequantised weights. Row counts past the fused kernel's four, remainders of the 4 x 4
    /// tiles, 8-bit and 4-bit levels; four rows or fewer keep the exact products.
    #[test]
    fn bf16_products_stay_within_the_rounding_bound() {
        if !super::dot::available(32) || !std::arch::is_x86_feature_detected!("avx512bf16") {
            return;
        }
        let dev = Device::flex();
        for ((m, k, n), bits) in [(5, 32, 3), (7, 192, 21), (16, 576, 67), (33, 64, 9)]
            .into_iter()
            .flat_map(|s| [(s, 8), (s, 4)])
        {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let mut values = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev)
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            if bits == 4 {
                for x in values.iter_mut() {
                    *x = ((x.abs() * 9.0) as u32).min(15) as f32 * 0.02 - 0.1;
                }
            }
            let q = super::QuantMatrix::from_rows(&values, n, k)
                .unwrap()
                .with_bf16_products(true);
            assert_eq!(q.bits(), bits);
            let mut deq = vec![0.0; n * k];
            for (j, row) in deq.chunks_exact_mut(k).enumerate() {
                q.dequantize_row(j, row);
            }
            let xs = x.to_data().try_to_vec::<f32>().unwrap();
            let got = super::quant_matmul(&x, &q, &[n]).unwrap()[0]
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            let mut moved = false;
            for r in 0..m {
                for j in 0..n {
                    let (xr, wj) = (&xs[r * k..(r + 1) * k], &deq[j * k..(j + 1) * k]);
                    let exact: f64 = xr.iter().zip(wj).map(|(&a, &b)| f64::from(a * b)).sum();
                    let size: f64 = xr
                        .iter()
                        .zip(wj)
                        .map(|(&a, &b)| f64::from((a * b).abs()))
                        .sum();
                    let bound = size * (2f64.powi(-8) + k as f64 * 2f64.powi(-23)) + 1e-6;
                    let err = (f64::from(got[r * n + j]) - exact).abs();
                    moved |= err > size * 1e-6;
                    assert!(
                        err <= bound,
                        "{m}x{k}x{n} ({bits} bits) [{r},{j}]: {err} > {bound}"
                    );
                }
            }
            // The bf16 kernel ran (an f32 product would be within f32 rounding).
            assert!(moved, "{m}x{k}x{n} ({bits} bits): no output moved");
        }
        // Four rows or fewer: the fused f32 kernel, the same values as q8.
        let values: Vec<f32> = (0..64 * 5).map(|i| (i % 7) as f32 * 0.013 - 0.04).collect();
        let exact = super::QuantMatrix::from_rows(&values, 5, 64).unwrap();
        let halves = exact.clone().with_bf16_products(true);
        let x = Tensor::<2>::random([4, 64], Distribution::Normal(0.0, 1.0), &dev);
        let a = super::quant_matmul(&x, &exact, &[5]).unwrap();
        let b = super::quant_matmul(&x, &halves, &[5]).unwrap();
        assert_eq!(
            a[0].to_data().try_to_vec::<f32>().unwrap(),
            b[0].to_data().try_to_vec::<f32>().unwrap()
        );
    }

    /// A NaN activation gives NaN outputs with bf16 products too, never a silent number.
    #[test]
    fn bf16_products_propagate_non_finite_activations() {
        if !super::dot::available(32) || !std::arch::is_x86_feature_detected!("avx512bf16") {
            return;
        }
        let dev = Device::flex();
        let q = super::QuantMatrix::from_rows(&[0.5; 64 * 3], 3, 64)
            .unwrap()
            .with_bf16_products(true);
        let mut xs = vec![1.0f32; 64 * 6];
        xs[64 * 5 + 40] = f32::NAN;
        let x = Tensor::<2>::from_data(TensorData::new(xs, [6, 64]), &dev);
        let got = super::quant_matmul(&x, &q, &[3]).unwrap()[0]
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(got[..15].iter().all(|v| *v == 32.0), "{got:?}");
        assert!(got[15..].iter().all(|v| v.is_nan()), "{got:?}");
    }

    #[test]
    fn silu_mul_matches_burn() {
        let dev = Device::flex();
        let g = Tensor::<2>::random([7, 4099], Distribution::Normal(0.0, 6.0), &dev);
        let u = Tensor::<2>::random([7, 4099], Distribution::Normal(0.0, 1.0), &dev);
        let want = burn::tensor::activation::silu(g.clone()) * u.clone();
        let got = super::silu_mul(&g, &u).expect("flex f32");
        assert!(close(&got, &want) < 1e-5);
        let sliced = g.clone().slice([0..7, 1..4099]);
        assert!(super::silu_mul(&sliced, &u.slice([0..7, 1..4099])).is_none());
    }

    #[test]
    fn cache_rows_reorder_in_place_over_the_prefix_only() {
        let dev = Device::flex();
        let (k, h, cap, hd) = (5, 2, 6, 3);
        let data: Vec<f32> = (0..k * h * cap * hd).map(|i| i as f32).collect();
        let t = Tensor::<4>::from_data(TensorData::new(data.clone(), [k, h, cap, hd]), &dev);
        // Row 0 <- 3, row 3 <- 0 (a swap: every read happens before any write), row 4 <- 3.
        let moves = [(0, 3), (3, 0), (4, 3)];
        let mut got = t;
        assert!(super::reorder_cache_rows(&mut got, &moves, 4), "flex f32");
        let got = got.to_data().try_to_vec::<f32>().unwrap();
        let at = |r: usize, hh: usize, p: usize, d: usize| ((r * h + hh) * cap + p) * hd + d;
        for r in 0..k {
            let from = moves.iter().find(|m| m.0 == r).map_or(r, |m| m.1);
            for hh in 0..h {
                for p in 0..cap {
                    for d in 0..hd {
                        let src = if p < 4 { from } else { r };
                        assert_eq!(got[at(r, hh, p, d)], data[at(src, hh, p, d)]);
                    }
                }
            }
        }
    }

    #[test]
    fn declines_autodiff_tensors_and_mismatched_shapes() {
        let dev = Device::flex();
        let x = Tensor::<2>::ones([2, 3], &dev);
        assert!(super::matmul(&x, &Tensor::<2>::ones([4, 5], &dev)).is_none());
        let ad = dev.clone().autodiff();
        let xa = Tensor::<2>::ones([2, 3], &ad).require_grad();
        assert!(super::matmul(&xa, &Tensor::<2>::ones([3, 5], &ad)).is_none());
    }
}
