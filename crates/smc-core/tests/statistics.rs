//! Statistical properties, with fixed seeds and tolerances derived from the estimators' own
//! variances (never tuned): a test fails when an estimate is more than Z_MAX standard errors
//! from its target. With Z_MAX = 4.5 a correct implementation fails a single comparison with
//! probability below 7e-6, so even the tests below that make dozens of comparisons would
//! fail by chance less than once in a thousand seeds.

mod common;

use common::problems;
use rand::SeedableRng;
use smc_core::prelude::*;
use smc_core::resampling::offspring_counts;

const Z_MAX: f64 = 4.5;

fn mean_and_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn zhat_over_z_has_mean_one_for_bootstrap_sis_and_imperfect_twisted_smc() {
    for problem in problems().into_iter().take(3) {
        let exact = problem.exact();
        let psi = exact.optimal_twist().perturbed(0.7, 21);
        let configs = [
            ("bootstrap", None, SmcConfig::bootstrap(8, problem.horizon)),
            (
                "SIS",
                None,
                SmcConfig::sis(8, problem.horizon, Proposal::Base),
            ),
            (
                "twisted, imperfect twists",
                Some(&psi),
                SmcConfig::twisted(8, problem.horizon),
            ),
            (
                "twisted, systematic, ESS<0.5",
                Some(&psi),
                SmcConfig::twisted(8, problem.horizon)
                    .with_scheme(Scheme::Systematic)
                    .with_criterion(Criterion::EssBelow(0.5)),
            ),
            (
                "bootstrap with twisted targets, residual",
                Some(&psi),
                SmcConfig::bootstrap(8, problem.horizon).with_scheme(Scheme::Residual),
            ),
        ];
        for (name, twist, cfg) in configs {
            let ratios: Vec<f64> = (0..2000)
                .map(|seed| {
                    let twist = twist.map(|t| t as &dyn Twist);
                    let out = run_smc(
                        &problem.lm,
                        twist,
                        problem.potential.as_ref(),
                        &problem.prompt,
                        &cfg.with_seed(seed),
                    )
                    .unwrap();
                    (out.log_z_hat - exact.log_z()).exp()
                })
                .collect();
            let (mean, se) = mean_and_se(&ratios);
            assert!(
                (mean - 1.0).abs() < Z_MAX * se,
                "{} / {name}: mean Zhat/Z = {mean} ± {se}",
                problem.name
            );
            // log Zhat is biased low (Jensen): its mean must not exceed log Z significantly.
            let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
            let (lmean, lse) = mean_and_se(&logs);
            assert!(
                lmean < Z_MAX * lse,
                "{} / {name}: E[log Zhat - log Z] = {lmean} ± {lse}",
                problem.name
            );
        }
    }
}

fn random_weights(k: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let raw: Vec<f64> = (0..k)
        .map(|_| {
            let u: f64 = rand::RngExt::random(&mut rng);
            (3.0 * u).exp()
        })
        .collect();
    let s: f64 = raw.iter().sum();
    raw.iter().map(|x| x / s).collect()
}

/// Offspring counts of `reps` resamplings: per-particle sample means, variances and the
/// standard error of each variance estimate.
fn count_moments(
    scheme: Scheme,
    w: &[f64],
    m: usize,
    reps: usize,
    seed: u64,
) -> Vec<(f64, f64, f64, f64)> {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let k = w.len();
    let mut counts = vec![Vec::with_capacity(reps); k];
    for _ in 0..reps {
        let c = offspring_counts(&scheme.resample(w, m, &mut rng), k);
        for i in 0..k {
            counts[i].push(c[i] as f64);
        }
    }
    counts
        .iter()
        .map(|c| {
            let (mean, se_mean) = mean_and_se(c);
            let n = c.len() as f64;
            let var = c.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let m4 = c.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
            // Standard error of the sample variance: sqrt((mu4 - var^2 (n-3)/(n-1)) / n).
            let se_var = ((m4 - var * var * (n - 3.0) / (n - 1.0)).max(0.0) / n).sqrt();
            (mean, se_mean, var, se_var)
        })
        .collect()
}

#[test]
fn every_scheme_has_offspring_counts_with_expectation_m_times_w() {
    let w = random_weights(10, 5);
    for scheme in Scheme::ALL {
        for m in [10, 7] {
            for (i, (mean, se, _, _)) in count_moments(scheme, &w, m, 20_000, 99)
                .into_iter()
                .enumerate()
            {
                let expected = m as f64 * w[i];
                // A deterministic count (variance 0) must equal its expectation to rounding.
                let tol = (Z_MAX * se).max(1e-9);
                assert!(
                    (mean - expected).abs() < tol,
                    "{scheme} M={m} particle {i}: mean count {mean} vs M W = {expected} (se {se})"
                );
            }
        }
    }
}

#[test]
fn systematic_stratified_and_residual_count_variance_is_not_above_multinomial() {
    let w = random_weights(10, 6);
    let m = 10;
    let multinomial = count_moments(Scheme::Multinomial, &w, m, 20_000, 7);
    for (i, (_, _, var, se_var)) in multinomial.iter().enumerate() {
        // The multinomial estimate itself matches the exact variance M W (1 - W).
        let exact = m as f64 * w[i] * (1.0 - w[i]);
        assert!(
            (var - exact).abs() < Z_MAX * se_var,
            "multinomial particle {i}: {var} vs {exact}"
        );
    }
    for scheme in [Scheme::Systematic, Scheme::Stratified, Scheme::Residual] {
        let moments = count_moments(scheme, &w, m, 20_000, 8);
        let mut total = 0.0;
        for (i, (_, _, var, se_var)) in moments.iter().enumerate() {
            let exact = m as f64 * w[i] * (1.0 - w[i]);
            total += var;
            assert!(
                var - exact < Z_MAX * se_var.max(1e-12),
                "{scheme} particle {i}: variance {var} > multinomial {exact}"
            );
        }
        let multinomial_total: f64 = w.iter().map(|wi| m as f64 * wi * (1.0 - wi)).sum();
        assert!(
            total < multinomial_total,
            "{scheme}: total variance {total} vs {multinomial_total}"
        );
    }
}

/// Total variation between the weighted final particles and sigma.
fn tv_to_sigma(exact: &Enumeration, out: &SmcOutput) -> f64 {
    let mut p = vec![0.0; exact.len()];
    for (tokens, w) in out.tokens.iter().zip(out.weights()) {
        p[exact.index_of(tokens)] += w;
    }
    0.5 * p
        .iter()
        .zip(exact.sigma())
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
}

#[test]
fn smc_output_converges_to_sigma_in_total_variation() {
    // Bootstrap SMC on the 81-sequence problem. With n i.i.d. draws from sigma the expected
    // TV is about 0.5 sum_i sqrt(2 sigma_i (1 - sigma_i) / (pi n)); SMC's asymptotic variance
    // exceeds i.i.d. by the resampling steps' factor, bounded here by T = 4. So at K = 20000 we
    // require TV < 4 * (i.i.d. expectation at n = K / T) and a decrease from K = 200.
    let problem = &problems()[0];
    let exact = problem.exact();
    let tv_at = |k: usize| -> f64 {
        (0..4)
            .map(|seed| {
                let cfg = SmcConfig::bootstrap(k, problem.horizon).with_seed(seed);
                tv_to_sigma(
                    &exact,
                    &run_smc(
                        &problem.lm,
                        None,
                        problem.potential.as_ref(),
                        &problem.prompt,
                        &cfg,
                    )
                    .unwrap(),
                )
            })
            .sum::<f64>()
            / 4.0
    };
    let (small, large) = (tv_at(200), tv_at(20_000));
    let n = 20_000.0 / problem.horizon as f64;
    let iid: f64 = exact
        .sigma()
        .iter()
        .map(|s| (2.0 * s * (1.0 - s) / (std::f64::consts::PI * n)).sqrt())
        .sum::<f64>()
        * 0.5;
    assert!(
        large < 4.0 * iid,
        "TV at K=20000: {large}, bound {}",
        4.0 * iid
    );
    assert!(
        large < small / 3.0,
        "TV {small} at K=200 vs {large} at K=20000"
    );
}

// ---------------------------------------------------------------------------------------------
// Prefix constraints (spec §8): statistical properties against enumeration, same Z_MAX.

use common::{ConstrainedProblem, constrained_problems};

/// One constrained run's Zhat / Z. The typed error "no particle is accepted at T" (possible
/// only under loose masks) is the event Zhat = 0, which the expectation counts as 0.
fn constrained_ratio(
    problem: &ConstrainedProblem,
    twist: Option<&dyn Twist>,
    cfg: &SmcConfig,
    log_z: f64,
) -> f64 {
    match run_smc_constrained(
        &problem.lm,
        twist,
        problem.phi(),
        problem.constraint.as_ref(),
        &problem.prompt,
        cfg,
    ) {
        Ok(out) => (out.log_z_hat - log_z).exp(),
        Err(SmcError::Constraint { .. }) => 0.0,
        Err(e) => panic!("{}: {e}", problem.name),
    }
}

#[test]
fn constrained_zhat_is_unbiased_for_z_with_masked_p0_and_learned_twists() {
    // 2000 seeds per configuration; |mean(Zhat / Z) - 1| < Z_MAX (4.5) standard errors, and
    // E[log Zhat - log Z] < Z_MAX standard errors (the lower bound), for 4 problems x 5
    // configurations (40 comparisons: a correct implementation fails by chance < 3e-4).
    for problem in constrained_problems() {
        let exact = problem.exact();
        // A learned-looking twist with no zeros (perturbed psi* of phi without the
        // constraint): every zero of the twisted target comes from the constraint.
        let psi = problem
            .exact_unconstrained()
            .optimal_twist()
            .perturbed(0.7, 31);
        let t = problem.horizon;
        let configs: [(&str, Option<&dyn Twist>, SmcConfig); 5] = [
            (
                "masked p0, resampling every step",
                None,
                SmcConfig::bootstrap(8, t),
            ),
            ("masked p0, SIS", None, SmcConfig::sis(8, t, Proposal::Base)),
            (
                "twisted, learned twist",
                Some(&psi),
                SmcConfig::twisted(8, t),
            ),
            (
                "twisted, systematic, ESS<0.5",
                Some(&psi),
                SmcConfig::twisted(8, t)
                    .with_scheme(Scheme::Systematic)
                    .with_criterion(Criterion::EssBelow(0.5)),
            ),
            (
                "masked p0 with twisted targets, residual",
                Some(&psi),
                SmcConfig::bootstrap(8, t).with_scheme(Scheme::Residual),
            ),
        ];
        for (name, twist, cfg) in configs {
            let ratios: Vec<f64> = (0..2000)
                .map(|seed| constrained_ratio(&problem, twist, &cfg.with_seed(seed), exact.log_z()))
                .collect();
            let (mean, se) = mean_and_se(&ratios);
            assert!(
                (mean - 1.0).abs() < Z_MAX * se,
                "{} / {name}: mean Zhat/Z = {mean} ± {se}",
                problem.name
            );
            if ratios.iter().all(|&r| r > 0.0) {
                let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
                let (lmean, lse) = mean_and_se(&logs);
                assert!(
                    lmean < Z_MAX * lse,
                    "{} / {name}: E[log Zhat - log Z] = {lmean} ± {lse}",
                    problem.name
                );
            }
        }
    }
}

/// Chi-square statistic of counts against probabilities, cells with expected count < 5 pooled
/// into one; returns (statistic, degrees of freedom).
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let (mut stat, mut cells) = (0.0, 0);
    let (mut pooled_obs, mut pooled_exp) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p == 0.0 {
            assert_eq!(c, 0, "a draw outside the support of sigma");
        } else if e < 5.0 {
            pooled_obs += c as f64;
            pooled_exp += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_exp > 0.0 {
        stat += (pooled_obs - pooled_exp).powi(2) / pooled_exp;
        cells += 1;
    }
    (stat, cells - 1)
}

/// The chi-square quantile at the standard normal quantile Z_MAX (Wilson–Hilferty).
fn chi_square_bound(df: usize) -> f64 {
    let d = df as f64;
    d * (1.0 - 2.0 / (9.0 * d) + Z_MAX * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

#[test]
fn constrained_smc_draws_are_exactly_sigma_by_chi_square() {
    // Two exact samplers, 20000 draws each per problem; chi-square against sigma over the
    // enumerated outputs (cells with expected count < 5 pooled), bound the Wilson–Hilferty
    // quantile at z = Z_MAX (4.5), a false alarm probability of about 3e-6 per test.
    // (1) Twisted SMC with the optimal twist under the constraint: every particle is an exact
    //     draw (equal weights); particle 0 of run `seed`, independent across seeds.
    // (2) One particle Gibbs sweep with the masked p0 proposal (no twist), K = 4: conditional
    //     SMC around an exact draw, the next state drawn by the final weights; sigma-invariant
    //     for any K, so exact only if the masked proposal's weights are.
    let n = 20_000;
    for problem in constrained_problems() {
        let exact = problem.exact();
        let sigma = exact.sigma();
        let psi = exact.optimal_twist();
        let mut optimal = vec![0usize; exact.len()];
        for seed in 0..n {
            let cfg = SmcConfig::twisted(4, problem.horizon).with_seed(seed as u64);
            let out = run_smc_constrained(
                &problem.lm,
                Some(&psi),
                problem.phi(),
                problem.constraint.as_ref(),
                &problem.prompt,
                &cfg,
            )
            .unwrap();
            optimal[exact.index_of(&out.tokens[0])] += 1;
        }
        let mut gibbs = vec![0usize; exact.len()];
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(77);
        let references = exact.sample_sigma(n, &mut rng);
        for (seed, reference) in references.iter().enumerate() {
            let cfg = SmcConfig::bootstrap(4, problem.horizon).with_seed(seed as u64);
            let out = run_csmc_constrained(
                &problem.lm,
                None,
                problem.phi(),
                problem.constraint.as_ref(),
                &problem.prompt,
                &cfg,
                reference,
            )
            .unwrap();
            let w = out.weights();
            let u: f64 = rand::RngExt::random(&mut rng);
            let mut cum = 0.0;
            let pick = w
                .iter()
                .position(|&x| {
                    cum += x;
                    u < cum
                })
                .unwrap_or_else(|| w.iter().rposition(|&x| x > 0.0).unwrap());
            gibbs[exact.index_of(&out.tokens[pick])] += 1;
        }
        for (name, counts) in [
            ("optimal twist", &optimal),
            ("particle Gibbs, masked p0", &gibbs),
        ] {
            let (stat, df) = chi_square(counts, &sigma);
            assert!(
                stat < chi_square_bound(df),
                "{} / {name}: chi-square {stat} with {df} df, bound {}",
                problem.name,
                chi_square_bound(df)
            );
        }
    }
}

#[test]
fn constrained_conditional_smc_bounds_log_z_from_above_in_expectation() {
    // 2000 exact references per configuration, K = 4: E[log Zhat_CSMC - log Z] > -Z_MAX
    // standard errors (the upper bound), for 4 problems x 2 configurations.
    for problem in constrained_problems() {
        let exact = problem.exact();
        let psi = problem
            .exact_unconstrained()
            .optimal_twist()
            .perturbed(0.7, 41);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(99);
        let references = exact.sample_sigma(2000, &mut rng);
        let t = problem.horizon;
        let configs: [(&str, Option<&dyn Twist>, SmcConfig); 2] = [
            ("masked p0", None, SmcConfig::bootstrap(4, t)),
            (
                "twisted, learned twist",
                Some(&psi),
                SmcConfig::twisted(4, t),
            ),
        ];
        for (name, twist, cfg) in configs {
            let gaps: Vec<f64> = references
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    run_csmc_constrained(
                        &problem.lm,
                        twist,
                        problem.phi(),
                        problem.constraint.as_ref(),
                        &problem.prompt,
                        &cfg.with_seed(i as u64),
                        r,
                    )
                    .unwrap()
                    .log_z_hat
                        - exact.log_z()
                })
                .collect();
            let (mean, se) = mean_and_se(&gaps);
            assert!(
                mean > -Z_MAX * se,
                "{} / {name}: E[log Zhat_CSMC - log Z] = {mean} ± {se}",
                problem.name
            );
        }
    }
}
