//! Sums of exponentials over a vocabulary row, and draws from the normalised row.
//!
//! Every step of a twisted or constrained SMC computes, for each particle, the proposal's
//! log normaliser `log Σ_v exp(a_v + b_v)` over the allowed tokens and then draws a token in
//! proportion to the same terms: tens of thousands of exponentials per particle, the largest
//! cost of a step outside the model once the model is fast. Here the exponential is a
//! polynomial evaluated in eight lanes (AVX-512 when the CPU has it, chosen at run time;
//! portable scalar code otherwise), and the sums are kept per block of 64 tokens (one word of a
//! token mask) so that a draw rescans one block instead of the whole row.
//!
//! The arithmetic is fixed (the same lane order and the same operations on every path, no
//! fused multiply-add), so a result does not depend on the CPU, and a row without a mask gives
//! the same bits as the same row under a mask that allows everything.

/// Tokens per block: one 64-bit word of a token mask.
pub const BLOCK: usize = 64;
const LANES: usize = 8;
const GROUPS: usize = BLOCK / LANES;

// Adding 1.5 * 2^52 rounds to an integer held in the low bits of the mantissa.
const SHIFT: f64 = 6_755_399_441_055_744.0;
// ln 2 split as in fdlibm: the high part has 32 trailing zero bits, so k * LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
/// Below this `exp` is flushed to 0 (its value would be subnormal).
const EXP_FLOOR: f64 = -708.0;
/// Taylor coefficients 1 / n! of `exp`, n = 0..=13.
const TAYLOR: [f64; 14] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// The terms of one row: `a[i] + b[i]` (or `a[i]` without `b`), over the tokens whose bit is
/// set in `mask` (bit `i % 64` of word `i / 64`; every token without a mask).
///
/// `b` shorter than `a` cuts the row to `b`'s length; a missing mask word allows nothing.
#[derive(Debug, Clone, Copy)]
pub struct RowTerms<'a> {
    /// The first term, e.g. a row of log p0.
    pub a: &'a [f64],
    /// The second term, e.g. a row of log psi.
    pub b: Option<&'a [f64]>,
    /// The allowed tokens, as the words of a [`crate::constraint::TokenMask`].
    pub mask: Option<&'a [u64]>,
}

/// One block of a row's terms before the mask.
enum Block<'a> {
    /// A whole block of `a` alone.
    A(&'a [f64; BLOCK]),
    /// A whole block of `a` and `b`.
    Ab(&'a [f64; BLOCK], &'a [f64; BLOCK]),
    /// The row's last, partial block: the sums, `-inf` past the row's end.
    Tail(Box<[f64; BLOCK]>),
}

impl Block<'_> {
    /// The terms of group `g` (eight lanes), before the mask.
    #[inline(always)]
    fn group(&self, g: usize) -> [f64; LANES] {
        let mut x = [0.0; LANES];
        let r = g * LANES..(g + 1) * LANES;
        match self {
            Block::A(a) => x.copy_from_slice(&a[r]),
            Block::Ab(a, b) => {
                for (l, xl) in x.iter_mut().enumerate() {
                    *xl = a[r.start + l] + b[r.start + l];
                }
            }
            Block::Tail(t) => x.copy_from_slice(&t[r]),
        }
        x
    }
}

impl<'a> RowTerms<'a> {
    /// Every entry of `a`.
    pub fn new(a: &'a [f64]) -> Self {
        Self {
            a,
            b: None,
            mask: None,
        }
    }

    /// Adds a second term.
    pub fn plus(self, b: Option<&'a [f64]>) -> Self {
        Self { b, ..self }
    }

    /// Restricts the row to a mask's words.
    pub fn masked(self, mask: Option<&'a [u64]>) -> Self {
        Self { mask, ..self }
    }

    fn len(&self) -> usize {
        self.b.map_or(self.a.len(), |b| b.len().min(self.a.len()))
    }

    fn blocks(&self) -> usize {
        self.len().div_ceil(BLOCK)
    }

    fn word(&self, block: usize) -> u64 {
        match self.mask {
            None => u64::MAX,
            Some(words) => words.get(block).copied().unwrap_or(0),
        }
    }

    /// Block `block` of the terms, and its mask word.
    #[inline(always)]
    fn block(&self, block: usize) -> (Block<'a>, u64) {
        let start = block * BLOCK;
        let whole = |row: &'a [f64]| {
            row.get(start..start + BLOCK)
                .and_then(|r| <&[f64; BLOCK]>::try_from(r).ok())
        };
        let view = match (whole(self.a), self.b.map(whole)) {
            (Some(a), None) => Block::A(a),
            (Some(a), Some(Some(b))) => Block::Ab(a, b),
            _ => {
                let n = self.len().saturating_sub(start).min(BLOCK);
                let mut t = Box::new([f64::NEG_INFINITY; BLOCK]);
                for (i, ti) in t.iter_mut().enumerate().take(n) {
                    *ti = self.a[start + i] + self.b.map_or(0.0, |b| b[start + i]);
                }
                Block::Tail(t)
            }
        };
        (view, self.word(block))
    }
}

/// The mask bits of group `g` of a block.
#[inline(always)]
fn group_bits(word: u64, g: usize) -> u8 {
    (word >> (g * LANES)) as u8
}

/// `x[l]` where bit `l` of `bits` is set, `-inf` elsewhere.
#[inline(always)]
fn select(bits: u8, x: [f64; LANES]) -> [f64; LANES] {
    let mut out = [f64::NEG_INFINITY; LANES];
    for l in 0..LANES {
        if (bits >> l) & 1 == 1 {
            out[l] = x[l];
        }
    }
    out
}

/// `exp(x)` for `x <= 0`, within about 2 ulp; 0 below -708 (where the result would be
/// subnormal) and for `-inf`; NaN for NaN.
///
/// Cody and Waite's reduction `x = k ln 2 + r`, `|r| <= ln 2 / 2`, then the Taylor series of
/// `exp(r)` to degree 13 (truncation below 1e-17 relative) and `2^k` built from its bits. The
/// vector path performs the same operations in the same order.
#[inline(always)]
pub fn exp_nonpositive(x: f64) -> f64 {
    let shifted = x * std::f64::consts::LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = TAYLOR[13];
    for &c in TAYLOR[..13].iter().rev() {
        p = p * r + c;
    }
    let k_int = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let scale = f64::from_bits(k_int.wrapping_add(1023) << 52);
    let y = p * scale;
    if x < EXP_FLOOR { 0.0 } else { y }
}

/// The eight lane sums in a fixed tree.
#[inline(always)]
fn lane_sum(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Maximum over a row's allowed terms, and whether one of them is NaN.
fn max_portable(row: &RowTerms) -> (f64, bool) {
    let mut max = [f64::NEG_INFINITY; LANES];
    let mut nan = false;
    for block in 0..row.blocks() {
        let (view, word) = row.block(block);
        for g in 0..GROUPS {
            let x = select(group_bits(word, g), view.group(g));
            for l in 0..LANES {
                nan |= x[l].is_nan();
                max[l] = if x[l] > max[l] { x[l] } else { max[l] };
            }
        }
    }
    (max.iter().copied().fold(f64::NEG_INFINITY, f64::max), nan)
}

/// `Σ exp(x - max)` over one block, in eight lanes summed by a fixed tree.
#[inline(always)]
fn block_sum_portable(view: &Block, word: u64, max: f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    for g in 0..GROUPS {
        let x = select(group_bits(word, g), view.group(g));
        for l in 0..LANES {
            acc[l] += exp_nonpositive(x[l] - max);
        }
    }
    lane_sum(acc)
}

/// The sum over the row, added block by block in order; each block's sum also stored in
/// `blocks` when given (one entry per block).
fn sums_portable(row: &RowTerms, max: f64, mut blocks: Option<&mut [f64]>) -> f64 {
    let mut total = 0.0;
    for block in 0..row.blocks() {
        let (view, word) = row.block(block);
        let sum = block_sum_portable(&view, word, max);
        if let Some(out) = blocks.as_deref_mut().and_then(|b| b.get_mut(block)) {
            *out = sum;
        }
        total += sum;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The same arithmetic as the portable functions, eight lanes per instruction.

    use std::arch::x86_64::*;

    use super::{
        Block, EXP_FLOOR, GROUPS, LANES, LN2_HI, LN2_LO, RowTerms, SHIFT, TAYLOR, group_bits,
        lane_sum,
    };

    /// Whether this CPU runs these functions.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(x: &[f64]) -> __m512d {
        assert!(x.len() >= LANES);
        // SAFETY: eight f64 are readable at x (checked above); the load is unaligned.
        unsafe { _mm512_loadu_pd(x.as_ptr()) }
    }

    /// Group `g` of a block with the mask applied (`-inf` where not allowed).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn group(view: &Block, word: u64, g: usize) -> __m512d {
        let r = g * LANES..(g + 1) * LANES;
        let x = match view {
            Block::A(a) => load(&a[r]),
            Block::Ab(a, b) => _mm512_add_pd(load(&a[r.clone()]), load(&b[r])),
            Block::Tail(t) => load(&t[r]),
        };
        _mm512_mask_mov_pd(_mm512_set1_pd(f64::NEG_INFINITY), group_bits(word, g), x)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512d) -> __m512d {
        let shifted = _mm512_add_pd(
            _mm512_mul_pd(x, _mm512_set1_pd(std::f64::consts::LOG2_E)),
            _mm512_set1_pd(SHIFT),
        );
        let k = _mm512_sub_pd(shifted, _mm512_set1_pd(SHIFT));
        let r = _mm512_sub_pd(
            _mm512_sub_pd(x, _mm512_mul_pd(k, _mm512_set1_pd(LN2_HI))),
            _mm512_mul_pd(k, _mm512_set1_pd(LN2_LO)),
        );
        let mut p = _mm512_set1_pd(TAYLOR[13]);
        for &c in TAYLOR[..13].iter().rev() {
            p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(c));
        }
        let k_int = _mm512_sub_epi64(
            _mm512_castpd_si512(shifted),
            _mm512_set1_epi64(SHIFT.to_bits() as i64),
        );
        let scale = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(
            k_int,
            _mm512_set1_epi64(1023),
        )));
        let y = _mm512_mul_pd(p, scale);
        let under = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, _mm512_set1_pd(EXP_FLOOR));
        _mm512_mask_mov_pd(y, under, _mm512_setzero_pd())
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes(v: __m512d) -> [f64; LANES] {
        let mut out = [0.0; LANES];
        // SAFETY: out holds eight f64; the store is unaligned.
        unsafe { _mm512_storeu_pd(out.as_mut_ptr(), v) };
        out
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn max(row: &RowTerms) -> (f64, bool) {
        let mut max = _mm512_set1_pd(f64::NEG_INFINITY);
        let mut nan: __mmask8 = 0;
        for block in 0..row.blocks() {
            let (view, word) = row.block(block);
            for g in 0..GROUPS {
                let x = group(&view, word, g);
                nan |= _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(x, x);
                max = _mm512_max_pd(max, x);
            }
        }
        let m = lanes(max).iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (m, nan != 0)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn sums(row: &RowTerms, max: f64, mut blocks: Option<&mut [f64]>) -> f64 {
        let m = _mm512_set1_pd(max);
        let mut total = 0.0;
        for block in 0..row.blocks() {
            let (view, word) = row.block(block);
            let mut acc = _mm512_setzero_pd();
            for g in 0..GROUPS {
                acc = _mm512_add_pd(acc, exp(_mm512_sub_pd(group(&view, word, g), m)));
            }
            let sum = lane_sum(lanes(acc));
            if let Some(out) = blocks.as_deref_mut().and_then(|b| b.get_mut(block)) {
                *out = sum;
            }
            total += sum;
        }
        total
    }
}

fn row_max(row: &RowTerms) -> (f64, bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { avx512::max(row) };
    }
    max_portable(row)
}

fn row_sums(row: &RowTerms, max: f64, blocks: Option<&mut [f64]>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { avx512::sums(row, max, blocks) };
    }
    sums_portable(row, max, blocks)
}

/// The block sums of `exp(term - max)` over one row, kept so that a draw from the normalised
/// row rescans a single block. Reusable across rows (one allocation).
#[derive(Debug, Clone, Default)]
pub struct ExpSums {
    max: f64,
    total: f64,
    blocks: Vec<f64>,
}

impl ExpSums {
    /// Empty sums; [`ExpSums::log_sum_exp`] fills them.
    pub fn new() -> Self {
        Self::default()
    }

    /// `log Σ exp(term)` over the row's allowed terms: `-inf` when nothing is allowed (or
    /// every allowed term is `-inf`), `+inf` when a term is, NaN when one is NaN. Keeps the
    /// block sums for [`ExpSums::draw`] on the same row.
    pub fn log_sum_exp(&mut self, row: RowTerms) -> f64 {
        self.blocks.clear();
        self.total = 0.0;
        let (max, nan) = row_max(&row);
        self.max = max;
        if nan {
            return f64::NAN;
        }
        if !max.is_finite() {
            return max;
        }
        self.blocks.resize(row.blocks(), 0.0);
        self.total = row_sums(&row, max, Some(&mut self.blocks));
        max + self.total.ln()
    }

    /// A token drawn in proportion to `exp(term)` with `u` uniform on [0, 1), from the row last
    /// given to [`ExpSums::log_sum_exp`]; `None` if that row had no finite positive mass.
    /// Rounding that leaves `u` past the last cumulative sum draws the last token of positive
    /// mass.
    pub fn draw(&self, row: RowTerms, u: f64) -> Option<usize> {
        if self.total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || self.blocks.len() != row.blocks()
        {
            return None;
        }
        let target = u * self.total;
        let mut cum = 0.0;
        let mut last = None;
        for (block, &sum) in self.blocks.iter().enumerate() {
            if sum > 0.0 {
                last = Some(block);
                if target < cum + sum {
                    return self.scan(&row, block, target - cum);
                }
            }
            cum += sum;
        }
        last.and_then(|block| self.scan(&row, block, f64::INFINITY))
    }

    /// The first token of `block` whose cumulative sum passes `target` (the last of positive
    /// mass if none does).
    fn scan(&self, row: &RowTerms, block: usize, target: f64) -> Option<usize> {
        let (view, word) = row.block(block);
        let mut cum = 0.0;
        let mut last = None;
        for g in 0..GROUPS {
            let x = select(group_bits(word, g), view.group(g));
            for (l, &xl) in x.iter().enumerate() {
                let e = exp_nonpositive(xl - self.max);
                if e > 0.0 {
                    cum += e;
                    last = Some(block * BLOCK + g * LANES + l);
                    if target < cum {
                        return last;
                    }
                }
            }
        }
        last
    }
}

/// `log Σ exp(term)` over a row's allowed terms, without keeping block sums: the same bits
/// as [`ExpSums::log_sum_exp`].
pub fn row_log_sum_exp(row: RowTerms) -> f64 {
    let (max, nan) = row_max(&row);
    if nan {
        return f64::NAN;
    }
    if !max.is_finite() {
        return max;
    }
    max + row_sums(&row, max, None).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: Option<&[f64]>, allowed: impl Fn(usize) -> bool) -> f64 {
        let terms: Vec<f64> = (0..a.len())
            .filter(|&i| allowed(i))
            .map(|i| a[i] + b.map_or(0.0, |b| b[i]))
            .collect();
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return max;
        }
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }

    fn row(n: usize, seed: u64) -> Vec<f64> {
        // A deterministic spread of log-probabilities over about 40 nats, some -inf.
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if i % 37 == 5 {
                    f64::NEG_INFINITY
                } else {
                    -((s >> 11) as f64 / (1u64 << 53) as f64) * 40.0
                }
            })
            .collect()
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_std_on_the_whole_range() {
        let mut worst = 0.0f64;
        let mut x = -708.0;
        while x <= 0.0 {
            let (ours, std) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.001_37;
        }
        for x in [0.0, -1e-300, -1e-12, -0.5 * std::f64::consts::LN_2, -1.0] {
            let (ours, std) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        // 4 ulp of 1.0: the Taylor truncation is below 1e-17 and Horner's rounding a few ulp.
        assert!(worst < 4.0 * f64::EPSILON, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-709.0), 0.0);
        assert!(exp_nonpositive(f64::NAN).is_nan());
    }

    #[test]
    fn log_sum_exp_matches_the_naive_sum_with_and_without_masks() {
        for n in [0usize, 1, 7, 63, 64, 65, 1000, 49_152] {
            let a = row(n, n as u64 + 1);
            let b = row(n, n as u64 + 2);
            let words: Vec<u64> = (0..n.div_ceil(64))
                .map(|w| 0xA5A5_5A5A_F0F0_0F0Fu64.rotate_left(w as u32))
                .collect();
            let allowed = |i: usize| words[i / 64] >> (i % 64) & 1 == 1;
            let cases = [
                (RowTerms::new(&a), naive(&a, None, |_| true)),
                (
                    RowTerms::new(&a).plus(Some(&b)),
                    naive(&a, Some(&b), |_| true),
                ),
                (
                    RowTerms::new(&a).masked(Some(&words)),
                    naive(&a, None, allowed),
                ),
                (
                    RowTerms::new(&a).plus(Some(&b)).masked(Some(&words)),
                    naive(&a, Some(&b), allowed),
                ),
            ];
            for (terms, expected) in cases {
                let got = row_log_sum_exp(terms);
                if expected.is_finite() {
                    assert!((got - expected).abs() < 1e-13, "n {n}: {got} vs {expected}");
                } else {
                    assert_eq!(got, expected, "n {n}");
                }
            }
        }
    }

    #[test]
    fn a_mask_allowing_everything_gives_the_same_bits() {
        let (a, b) = (row(1000, 3), row(1000, 4));
        let all = vec![u64::MAX; 1000usize.div_ceil(64)];
        let mut plain = ExpSums::new();
        let mut masked = ExpSums::new();
        let x = plain.log_sum_exp(RowTerms::new(&a).plus(Some(&b)));
        let y = masked.log_sum_exp(RowTerms::new(&a).plus(Some(&b)).masked(Some(&all)));
        assert_eq!(x.to_bits(), y.to_bits());
        for u in [0.0, 0.25, 0.5, 0.999_999] {
            assert_eq!(
                plain.draw(RowTerms::new(&a).plus(Some(&b)), u),
                masked.draw(RowTerms::new(&a).plus(Some(&b)).masked(Some(&all)), u)
            );
        }
    }

    #[test]
    fn the_vector_path_gives_the_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            for n in [1usize, 64, 65, 3000] {
                let (a, b) = (row(n, 7), row(n, 8));
                let words: Vec<u64> = (0..n.div_ceil(64))
                    .map(|w| 0x0123_4567_89AB_CDEFu64.rotate_left(3 * w as u32))
                    .collect();
                for terms in [
                    RowTerms::new(&a),
                    RowTerms::new(&a).plus(Some(&b)).masked(Some(&words)),
                ] {
                    // SAFETY: AVX-512F checked above.
                    let (vm, vn) = unsafe { avx512::max(&terms) };
                    let (pm, pn) = max_portable(&terms);
                    assert_eq!((vm.to_bits(), vn), (pm.to_bits(), pn));
                    let mut vb = vec![0.0; terms.blocks()];
                    let mut pb = vec![0.0; terms.blocks()];
                    // SAFETY: as above.
                    let vs = unsafe { avx512::sums(&terms, vm, Some(&mut vb)) };
                    let ps = sums_portable(&terms, pm, Some(&mut pb));
                    assert_eq!(vs.to_bits(), ps.to_bits(), "n {n}");
                    assert_eq!(vb, pb);
                }
            }
        }
    }

    #[test]
    fn special_values_follow_the_documented_rules() {
        let mut sums = ExpSums::new();
        assert_eq!(sums.log_sum_exp(RowTerms::new(&[])), f64::NEG_INFINITY);
        assert_eq!(sums.draw(RowTerms::new(&[]), 0.5), None);
        let ninf = [f64::NEG_INFINITY; 3];
        assert_eq!(sums.log_sum_exp(RowTerms::new(&ninf)), f64::NEG_INFINITY);
        assert!(sums.log_sum_exp(RowTerms::new(&[0.0, f64::NAN])).is_nan());
        assert_eq!(
            sums.log_sum_exp(RowTerms::new(&[0.0, f64::INFINITY])),
            f64::INFINITY
        );
        // A NaN outside the mask is not seen; nothing allowed is -inf.
        let x = [0.0, f64::NAN];
        assert_eq!(sums.log_sum_exp(RowTerms::new(&x).masked(Some(&[1]))), 0.0);
        assert_eq!(
            sums.log_sum_exp(RowTerms::new(&x).masked(Some(&[0]))),
            f64::NEG_INFINITY
        );
        assert_eq!(
            sums.log_sum_exp(RowTerms::new(&[1000.0, 1000.0])),
            1000.0 + 2f64.ln()
        );
    }

    #[test]
    fn draws_follow_the_normalised_row_and_skip_what_is_not_allowed() {
        // Inverse CDF on a grid of u: token i is drawn for a fraction of u equal to its
        // probability, within the grid's resolution.
        let a: Vec<f64> = (0..200).map(|i| -((i % 13) as f64) * 0.7).collect();
        let words = [u64::MAX ^ 0b1010, u64::MAX, 0, u64::MAX];
        let terms = RowTerms::new(&a).masked(Some(&words));
        let mut sums = ExpSums::new();
        let lse = sums.log_sum_exp(terms);
        let n = 200_000;
        let mut counts = vec![0usize; a.len()];
        for j in 0..n {
            let u = (j as f64 + 0.5) / n as f64;
            counts[sums.draw(terms, u).unwrap()] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let allowed = words[i / 64] >> (i % 64) & 1 == 1;
            let p = if allowed { (a[i] - lse).exp() } else { 0.0 };
            assert!(
                (c as f64 / n as f64 - p).abs() <= 1.0 / n as f64 + 1e-12,
                "token {i}: {c} of {n} against p = {p}"
            );
        }
        // u at the top end still draws an allowed token.
        let last = sums.draw(terms, 1.0 - f64::EPSILON).unwrap();
        assert!(words[last / 64] >> (last % 64) & 1 == 1);
    }
}
