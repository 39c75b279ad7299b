//! Distribution functions for confidence intervals: Student's t (its CDF through the
//! regularised incomplete beta function, its quantile by bisection on that CDF) and the standard
//! normal. Written here rather than taken from a statistics crate because two functions are
//! needed and both are short; they are tested against closed forms and tabulated values.

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom, t_{0.975, df}:
/// 12.706 for df = 1, 4.303 for 2, 1.962 for 1000, 1.960 in the limit. `df` may be any
/// positive real (Welch–Satterthwaite gives fractional ones); NaN for `df <= 0` or NaN.
pub fn t95(df: f64) -> f64 {
    student_t_quantile(0.975, df)
}

/// Above this many degrees of freedom the quantile comes from the normal expansion.
const LARGE_DF: f64 = 1e4;

/// The quantile q of Student's t with `df` degrees of freedom: P(T <= q) = p. NaN for p outside
/// (0, 1) or `df <= 0`; +-infinity at p = 1 or 0; the normal quantile for `df = +inf`.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || df.is_nan() || df <= 0.0 || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p == 0.0 || p == 1.0 {
        return if p == 1.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
    }
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    if df.is_finite() && df > LARGE_DF {
        // The incomplete beta's continued fraction loses accuracy for huge df; the
        // Cornish-Fisher expansion around the normal quantile (Abramowitz and Stegun 26.7.5)
        // is exact to a relative 1e-15 here (checked against 40-digit values).
        let z = normal_quantile(p);
        let z2 = z * z;
        let g1 = (z2 + 1.0) * z / 4.0;
        let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
        let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
        let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
        return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df;
    }
    // The two-sided tail P(|T| > q) = 2 (1 - p), decreasing in q: bracket it, then bisect.
    let tail = 2.0 * (1.0 - p);
    let tail_of = |q: f64| {
        if df.is_infinite() {
            2.0 * normal_sf(q)
        } else {
            student_t_two_sided_tail(q, df)
        }
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while tail_of(hi) > tail {
        lo = hi;
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if tail_of(mid) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// P(T <= q) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(q: f64, df: f64) -> f64 {
    if q.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let half_tail = if df.is_infinite() {
        normal_sf(q.abs())
    } else {
        0.5 * student_t_two_sided_tail(q.abs(), df)
    };
    if q >= 0.0 { 1.0 - half_tail } else { half_tail }
}

/// P(|T| > q) = I_{df / (df + q^2)}(df / 2, 1 / 2), with both x and 1 - x formed without
/// cancellation.
fn student_t_two_sided_tail(q: f64, df: f64) -> f64 {
    if q == 0.0 {
        return 1.0;
    }
    if q.is_infinite() {
        return 0.0;
    }
    let q2 = q * q;
    let x = df / (df + q2);
    let y = q2 / (df + q2);
    regularized_beta(x, y, 0.5 * df, 0.5)
}

/// The standard normal survival function P(Z > z) = erfc(z / sqrt 2) / 2.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile.
pub fn normal_quantile(p: f64) -> f64 {
    student_t_quantile(p, f64::INFINITY)
}

/// The complementary error function, through the regularised upper incomplete gamma function:
/// erfc(x) = Q(1/2, x^2) for x >= 0.
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        2.0 - erfc(-x)
    } else {
        gamma_q(0.5, x * x)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients; relative error about 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b), given x and y = 1 - x separately (so
/// that either may be tiny without cancellation). Continued fraction (modified Lentz) on the
/// side where it converges fast, the symmetry I_x(a, b) = 1 - I_y(b, a) on the other.
pub fn regularized_beta(x: f64, y: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    let ln_front = a * x.ln() + b * y.ln() + ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b);
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(y, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function (Numerical Recipes' betacf).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The regularised upper incomplete gamma function Q(a, x) (series below a + 1, continued
/// fraction above; Numerical Recipes' gser and gcf).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_front = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..100_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * ln_front.exp()
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..100_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        ln_front.exp() * h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t95_matches_tabulated_values() {
        // Two-sided 95% points of Student's t (any table; three decimals).
        for (df, want) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (4.0, 2.776),
            (5.0, 2.571),
            (9.0, 2.262),
            (10.0, 2.228),
            (30.0, 2.042),
            (120.0, 1.980),
            (1000.0, 1.962),
        ] {
            let got = t95(df);
            assert!((got - want).abs() < 5e-4, "df {df}: {got} vs {want}");
        }
    }

    #[test]
    fn quantiles_match_closed_forms_to_full_precision() {
        let pi = std::f64::consts::PI;
        for p in [0.6, 0.9, 0.975, 0.995, 0.9999] {
            // df = 1 (Cauchy): tan(π (p - 1/2)).
            let cauchy = (pi * (p - 0.5)).tan();
            let got = student_t_quantile(p, 1.0);
            assert!(
                (got - cauchy).abs() < 1e-10 * cauchy,
                "{p}: {got} vs {cauchy}"
            );
            // df = 2: (2p - 1) / sqrt(2 p (1 - p)).
            let two = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
            let got = student_t_quantile(p, 2.0);
            assert!((got - two).abs() < 1e-10 * two, "{p}: {got} vs {two}");
            // Symmetry.
            let (low, high) = (student_t_quantile(1.0 - p, 2.0), student_t_quantile(p, 2.0));
            assert!((low + high).abs() < 1e-12 * high, "{p}: {low} vs {high}");
        }
        // The normal limit: z_{0.975} = 1.959963984540054; and t_df -> z as df grows.
        let z = 1.959_963_984_540_054;
        assert!((normal_quantile(0.975) - z).abs() < 1e-12);
        assert!((t95(1e9) - z).abs() < 1e-8);
        assert!(t95(1e6) > z && t95(1e6) - z < 1e-5);
        // Both sides of the switch to the expansion agree.
        let (below, above) = (t95(LARGE_DF), t95(LARGE_DF * (1.0 + 1e-12)));
        assert!((below - above).abs() < 1e-11, "{below} vs {above}");
        // Fractional degrees of freedom lie between their neighbours.
        assert!(t95(2.5) < t95(2.0) && t95(2.5) > t95(3.0));
        assert!(t95(0.0).is_nan() && t95(f64::NAN).is_nan());
    }

    #[test]
    fn quantiles_match_forty_digit_reference_values() {
        // (df, p, t_p) from mpmath (betainc at 40 digits, bisection), shortest f64 form.
        let reference = [
            (1.0, 0.975, 12.706204736174705),
            (1.0, 0.995, 63.65674116287158),
            (2.0, 0.975, 4.302652729749464),
            (2.0, 0.995, 9.924843200918293),
            (3.0, 0.975, 3.1824463052837095),
            (3.0, 0.995, 5.840909309733357),
            (4.0, 0.975, 2.7764451051977943),
            (4.0, 0.995, 4.604094871349993),
            (9.0, 0.975, 2.2621571627982053),
            (9.0, 0.995, 3.2498355415921263),
            (30.0, 0.975, 2.042272456301238),
            (30.0, 0.995, 2.7499956535672254),
            (100.0, 0.975, 1.9839715185235522),
            (100.0, 0.995, 2.6258905214380177),
            (1000.0, 0.975, 1.9623390808264085),
            (1000.0, 0.995, 2.580754698065951),
            (10000.0, 0.975, 1.9602012398906263),
            (10000.0, 0.995, 2.5763210466685287),
            (1e6, 0.975, 1.959966356814107),
            (1e6, 0.995, 2.5758342201053344),
            (2.5, 0.975, 3.574654842003683),
            (2.5, 0.995, 7.163728138948786),
            (0.5, 0.975, 164.55767348048852),
            (0.5, 0.995, 4113.964588804181),
        ];
        for (df, p, want) in reference {
            let got = student_t_quantile(p, df);
            assert!(
                (got - want).abs() < 1e-10 * want,
                "df {df} p {p}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn quantile_inverts_the_cdf() {
        // Up to the switch to the normal expansion (the CDF has no such branch).
        for df in [0.5, 1.0, 2.0, 3.7, 10.0, 57.0, 9.9e3] {
            for p in [0.01, 0.2, 0.5, 0.8, 0.975, 0.999] {
                let q = student_t_quantile(p, df);
                let back = student_t_cdf(q, df);
                assert!((back - p).abs() < 1e-11, "df {df} p {p}: cdf(q) = {back}");
            }
        }
    }

    #[test]
    fn gamma_and_beta_functions_match_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        // I_x(1, 1) = x; I_x(a, b) = 1 - I_{1-x}(b, a).
        assert!((regularized_beta(0.3, 0.7, 1.0, 1.0) - 0.3).abs() < 1e-14);
        let (a, b) = (2.5, 7.0);
        let s = regularized_beta(0.4, 0.6, a, b) + regularized_beta(0.6, 0.4, b, a);
        assert!((s - 1.0).abs() < 1e-14);
        // erfc(1) = 0.157299207050285.
        assert!((erfc(1.0) - 0.157_299_207_050_285_1).abs() < 1e-14);
    }
}
