//! Numerics in log space.

mod rows;

pub use rows::{BLOCK, ExpSums, RowTerms, exp_nonpositive, row_log_sum_exp};

/// `log(sum(exp(xs)))`, stable; `-inf` for an empty slice or all `-inf`, `+inf` if an entry
/// is, NaN if an entry is NaN. Vectorised ([`row_log_sum_exp`]).
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    row_log_sum_exp(RowTerms::new(xs))
}

/// `log(sum(exp(a + b)))` over paired entries without allocating (the shorter slice's length).
pub fn log_sum_exp_sum(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    row_log_sum_exp(RowTerms::new(a).plus(Some(b)))
}

/// Normalised weights `exp(log_w - logsumexp(log_w))`. All `-inf` gives all zeros.
pub fn normalized_weights(log_w: &[f64]) -> Vec<f64> {
    let lse = log_sum_exp(log_w);
    if !lse.is_finite() {
        return vec![0.0; log_w.len()];
    }
    log_w.iter().map(|&x| (x - lse).exp()).collect()
}

/// Effective sample size `1 / sum_k Wbar_k^2` of unnormalised log weights, computed in log space:
/// `exp(2 lse(log_w) - lse(2 log_w))`.
pub fn ess(log_w: &[f64]) -> f64 {
    let lse = log_sum_exp(log_w);
    if !lse.is_finite() {
        return 0.0;
    }
    let sq: f64 = log_w.iter().map(|&x| (2.0 * (x - lse)).exp()).sum();
    1.0 / sq
}

/// `log(1 - exp(x))` for `x <= 0`, accurate near both ends (Mächler's `log1mexp`).
pub fn log1m_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// `log(sigmoid(x))`, stable for large `|x|`.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// Floor added to hard constraints: `log(1[.] + 1e-16)`, never `-inf` (spec §1).
pub const LOG_INDICATOR_FLOOR: f64 = -36.841_361_487_904_734;

/// `log(1[on] + 1e-16)`.
pub fn log_indicator(on: bool) -> f64 {
    if on {
        (1.0f64 + 1e-16).ln()
    } else {
        LOG_INDICATOR_FLOOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_handles_infinities_and_large_values() {
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(
            log_sum_exp(&[f64::NEG_INFINITY, f64::NEG_INFINITY]),
            f64::NEG_INFINITY
        );
        let v = log_sum_exp(&[1000.0, 1000.0]);
        assert!((v - (1000.0 + 2f64.ln())).abs() < 1e-12);
        assert!(log_sum_exp(&[0.0, f64::NAN]).is_nan());
    }

    #[test]
    fn ess_of_uniform_weights_is_k_and_of_one_hot_is_one() {
        assert!((ess(&[3.0; 10]) - 10.0).abs() < 1e-12);
        assert!((ess(&[0.0, f64::NEG_INFINITY, f64::NEG_INFINITY]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log1m_exp_and_log_sigmoid_match_naive_forms_where_those_are_accurate() {
        for &x in &[-1e-3f64, -0.5, -1.0, -5.0, -30.0] {
            assert!((log1m_exp(x) - (1.0 - x.exp()).ln()).abs() < 1e-9);
        }
        for &x in &[-20.0f64, -1.0, 0.0, 2.0, 20.0] {
            let naive = (1.0 / (1.0 + (-x).exp())).ln();
            assert!((log_sigmoid(x) - naive).abs() < 1e-12);
        }
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
    }

    #[test]
    fn indicator_floor_is_log_1e_minus_16() {
        assert!((LOG_INDICATOR_FLOOR - 1e-16f64.ln()).abs() < 1e-12);
    }
}
