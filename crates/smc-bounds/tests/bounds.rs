//! Bounds and KL estimates against exact values on enumerable tabular models. Tolerances are
//! Z_MAX standard errors of the estimates themselves (see smc-core's statistics tests).

use smc_bounds::*;
use smc_core::feynman_kac::Resampling;
use smc_core::prelude::*;

const Z_MAX: f64 = 4.5;

fn classifier() -> FnPotential<impl Fn(&[u32], &[u32]) -> f64> {
    FnPotential::new("classifier", |_: &[u32], s: &[u32]| {
        let score: f64 = s.iter().map(|&x| [1.4, -0.9, 0.2][x as usize]).sum();
        smc_core::logspace::log_sigmoid(score - 2.5)
    })
}

fn exact_samples(e: &Enumeration, n: usize, seed: u64) -> Vec<Vec<u32>> {
    e.sample_sigma(n, &mut rng_from_seed(seed))
}

#[test]
fn lower_bounds_below_and_upper_bounds_above_log_z_with_gaps_shrinking_in_k() {
    let lm = TabularLm::random(3, 2, 1.5, 31);
    let phi = classifier();
    let horizon = 5;
    let exact = Enumeration::new(&lm, &[], horizon, &phi).unwrap();
    let log_z = exact.log_z();
    let twist = exact.optimal_twist().perturbed(1.0, 5);
    let samples = exact_samples(&exact, 400, 1);
    for (name, twist, proposal) in [
        ("bootstrap", None, Proposal::Base),
        (
            "twisted, imperfect",
            Some(&twist as &dyn Twist),
            Proposal::Twisted,
        ),
    ] {
        let sampler = Sampler {
            lm: &lm,
            prompt: &[],
            horizon,
            potential: &phi,
            twist,
            proposal,
            resampling: Resampling::default(),
        };
        let rows = sampler
            .bounds_over_k(&[2, 8, 32, 128], 400, &samples, 100)
            .unwrap();
        for r in &rows {
            for (which, lower) in [("SIS", r.sis_lower), ("SMC", r.smc_lower)] {
                assert!(
                    lower.mean - log_z < Z_MAX * lower.se,
                    "{name} {which} lower K={}: {lower} vs {log_z}",
                    r.k
                );
            }
            for (which, upper) in [("SIS", r.sis_upper), ("SMC", r.smc_upper.unwrap())] {
                assert!(
                    log_z - upper.mean < Z_MAX * upper.se,
                    "{name} {which} upper K={}: {upper} vs {log_z}",
                    r.k
                );
            }
        }
        let gap = |r: &BoundsAtK, m: Method| match m {
            Method::Sis => (
                r.sis_upper.mean - r.sis_lower.mean,
                r.sis_upper.se.hypot(r.sis_lower.se),
            ),
            Method::Smc => {
                let upper = r.smc_upper.unwrap();
                (
                    upper.mean - r.smc_lower.mean,
                    upper.se.hypot(r.smc_lower.se),
                )
            }
        };
        for m in [Method::Sis, Method::Smc] {
            let gaps: Vec<(f64, f64)> = rows.iter().map(|r| gap(r, m)).collect();
            for w in gaps.windows(2) {
                // Non-increasing up to noise ...
                assert!(
                    w[1].0 - w[0].0 < Z_MAX * w[0].1.hypot(w[1].1),
                    "{name} {m:?}: gaps {gaps:?}"
                );
            }
            // ... and clearly smaller at K = 128 than at K = 2.
            let (first, last) = (gaps[0], gaps[gaps.len() - 1]);
            assert!(
                first.0 - last.0 > Z_MAX * first.1.hypot(last.1),
                "{name} {m:?}: gaps {gaps:?}"
            );
        }
    }
}

#[test]
fn f_q_g_q_and_kl_estimates_agree_with_exact_values_within_standard_errors() {
    let lm = TabularLm::random(3, 1, 1.2, 41);
    let phi = classifier();
    let horizon = 4;
    let exact = Enumeration::new(&lm, &[0], horizon, &phi).unwrap();
    let log_z = exact.log_z();
    let twist = exact.optimal_twist().perturbed(0.6, 9);
    for (name, twist, proposal) in [
        ("base", None, Proposal::Base),
        ("twisted", Some(&twist as &dyn Twist), Proposal::Twisted),
    ] {
        let log_q = exact.proposal_log_q(&lm, &[0], twist, proposal).unwrap();
        let (kl_qs, kl_sq) = (exact.kl_q_sigma(&log_q), exact.kl_sigma_q(&log_q));
        let sampler = Sampler {
            lm: &lm,
            prompt: &[0],
            horizon,
            potential: &phi,
            twist,
            proposal,
            resampling: Resampling::default(),
        };
        let samples = exact_samples(&exact, 4000, 2);
        let f_q = sampler.f_q(20_000, 3).unwrap();
        let g_q = sampler.g_q(&samples).unwrap();
        assert!(
            (f_q.mean - (log_z - kl_qs)).abs() < Z_MAX * f_q.se,
            "{name}: F_q {f_q} vs {}",
            log_z - kl_qs
        );
        assert!(
            (g_q.mean - (log_z + kl_sq)).abs() < Z_MAX * g_q.se,
            "{name}: G_q {g_q} vs {}",
            log_z + kl_sq
        );

        let seeds: Vec<u64> = (0..300).collect();
        let lower = sampler.lower_bound(Method::Smc, 64, &seeds).unwrap();
        let upper = sampler
            .upper_bound(Method::Smc, 64, &samples[..300], 7)
            .unwrap();
        let kl = kl_estimates(f_q, g_q, lower, upper);
        // The midpoint is off by at most half the gap between the mean bounds, plus noise.
        let slack = kl.log_z_half_gap.max(0.0);
        assert!(
            (kl.kl_q_sigma.mean - kl_qs).abs() < Z_MAX * kl.kl_q_sigma.se + slack,
            "{name}: KL(q||sigma) {} vs exact {kl_qs}",
            kl.kl_q_sigma
        );
        assert!(
            (kl.kl_sigma_q.mean - kl_sq).abs() < Z_MAX * kl.kl_sigma_q.se + slack,
            "{name}: KL(sigma||q) {} vs exact {kl_sq}",
            kl.kl_sigma_q
        );
    }
}

#[test]
fn optimal_twists_make_every_bound_equal_log_z_exactly() {
    let lm = TabularLm::random(3, 1, 1.2, 42);
    let phi = classifier();
    let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
    let psi = exact.optimal_twist();
    let sampler = Sampler {
        lm: &lm,
        prompt: &[],
        horizon: 3,
        potential: &phi,
        twist: Some(&psi),
        proposal: Proposal::Twisted,
        resampling: Resampling::default(),
    };
    let samples = exact_samples(&exact, 20, 4);
    for r in sampler.bounds_over_k(&[1, 4, 16], 20, &samples, 0).unwrap() {
        for e in [r.sis_lower, r.sis_upper, r.smc_lower, r.smc_upper.unwrap()] {
            assert!(
                (e.mean - exact.log_z()).abs() < 1e-9 && e.se < 1e-9,
                "K={}: {e}",
                r.k
            );
        }
    }
    let kl = kl_estimates(
        sampler.f_q(100, 1).unwrap(),
        sampler.g_q(&samples).unwrap(),
        sampler.lower_bound(Method::Smc, 4, &[0, 1]).unwrap(),
        sampler.upper_bound(Method::Smc, 4, &samples, 0).unwrap(),
    );
    assert!(kl.kl_q_sigma.mean.abs() < 1e-9 && kl.kl_sigma_q.mean.abs() < 1e-9);
}

/// Pearson's chi-square statistic of observed counts against expected probabilities, over
/// cells with expected count >= 5; returns (statistic, degrees of freedom).
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, f64) {
    let n: usize = counts.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0;
    let (mut rest_obs, mut rest_exp) = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if e >= 5.0 {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            rest_obs += c as f64;
            rest_exp += e;
        }
    }
    if rest_exp > 0.0 {
        stat += (rest_obs - rest_exp).powi(2) / rest_exp;
        cells += 1;
    }
    (stat, (cells - 1) as f64)
}

/// The chi-square statistic with d degrees of freedom has mean d and sd sqrt(2d).
fn assert_fits(counts: &[usize], probs: &[f64], what: &str) {
    let (stat, df) = chi_square(counts, probs);
    assert!(
        stat < df + Z_MAX * (2.0 * df).sqrt(),
        "{what}: chi2 {stat} with {df} dof"
    );
}

#[test]
fn rejection_collectors_draw_exactly_from_sigma_and_accept_at_rate_z() {
    let lm = TabularLm::random(3, 1, 1.0, 51);
    let horizon = 3;
    let indicator = FnPotential::new("contains 2 2", |_: &[u32], s: &[u32]| {
        log_indicator(s.windows(2).any(|w| w == [2, 2]))
    });
    let classifier = classifier();
    let cases: [(&str, &dyn Potential, bool); 2] = [
        ("indicator", &indicator, true),
        ("class", &classifier, false),
    ];
    for (name, phi, is_indicator) in cases {
        let exact = Enumeration::new(&lm, &[1], horizon, phi).unwrap();
        let mut rng = rng_from_seed(8);
        let collected = if is_indicator {
            rejection_indicator(&lm, &[1], horizon, phi, 4000, 512, 1_000_000, &mut rng).unwrap()
        } else {
            rejection_class(&lm, &[1], horizon, phi, 4000, 512, 1_000_000, &mut rng).unwrap()
        };
        assert_eq!(collected.samples.len(), 4000);
        let mut counts = vec![0; exact.len()];
        for s in &collected.samples {
            counts[exact.index_of(&s.tokens)] += 1;
        }
        assert_fits(&counts, &exact.sigma(), name);
        // The acceptance rate estimates Z (binomial standard error).
        let z = exact.log_z().exp();
        let se = (z * (1.0 - z) / collected.draws as f64).sqrt();
        assert!(
            (collected.acceptance_rate() - z).abs() < Z_MAX * se,
            "{name}: rate {} vs Z {z}",
            collected.acceptance_rate()
        );
    }
}

#[test]
fn joint_ancestral_draws_are_exact_infilling_samples_for_their_continuation() {
    // sigma_c(s) ∝ p0(s) p0(c | s): the pair (s, c) drawn jointly from p0 has the right
    // conditional. Check the joint frequencies against p0 over T + m tokens, and that the
    // infilling potential's sigma_c equals p0's conditional of s given c.
    let lm = TabularLm::random(3, 2, 1.3, 61);
    let (horizon, m) = (2, 2);
    let mut rng = rng_from_seed(5);
    let samples = joint_ancestral(&lm, &[0], horizon, m, 20_000, &mut rng).unwrap();
    let joint = Enumeration::new(&lm, &[0], horizon + m, &UnitPotential).unwrap();
    let mut counts = vec![0; joint.len()];
    for s in &samples {
        let mut full = s.tokens.clone();
        full.extend(s.conditioning.as_ref().unwrap());
        counts[joint.index_of(&full)] += 1;
    }
    assert_fits(&counts, &joint.sigma(), "joint ancestral");

    let c = vec![2u32, 1];
    let infill_lm = lm.clone();
    let c2 = c.clone();
    let infill = FnPotential::new("infilling", move |prompt: &[u32], s: &[u32]| {
        let mut ctx: Vec<u32> = prompt.iter().chain(s).copied().collect();
        let mut lp = 0.0;
        for &tok in &c2 {
            lp += infill_lm.next_log_probs(&ctx).unwrap()[tok as usize];
            ctx.push(tok);
        }
        lp
    });
    let conditional = Enumeration::new(&lm, &[0], horizon, &infill).unwrap();
    let p_joint = joint.sigma();
    let p_c: f64 = (0..conditional.len())
        .map(|i| {
            let mut full = conditional.sequence(i);
            full.extend(&c);
            p_joint[joint.index_of(&full)]
        })
        .sum();
    for (i, sig) in conditional.sigma().iter().enumerate() {
        let mut full = conditional.sequence(i);
        full.extend(&c);
        assert!((sig - p_joint[joint.index_of(&full)] / p_c).abs() < 1e-12);
    }
}

#[test]
fn collectors_reject_potentials_outside_their_range_with_a_clear_error() {
    let lm = TabularLm::random(3, 1, 1.0, 1);
    let soft = FnPotential::new("soft score", |_: &[u32], s: &[u32]| -0.5 * s[0] as f64);
    let mut rng = rng_from_seed(0);
    let e = rejection_indicator(&lm, &[], 2, &soft, 10, 8, 100, &mut rng).unwrap_err();
    assert!(
        e.to_string().contains("soft score") && e.to_string().contains("indicator"),
        "{e}"
    );
    let big = FnPotential::new("unnormalised", |_: &[u32], _: &[u32]| 0.7);
    let e = rejection_class(&lm, &[], 2, &big, 10, 8, 100, &mut rng).unwrap_err();
    assert!(
        e.to_string().contains("unnormalised") && e.to_string().contains("<= 0"),
        "{e}"
    );
    // A budget too small returns what was collected, never an error or lost samples.
    let rare = FnPotential::new("never", |_: &[u32], _: &[u32]| log_indicator(false));
    let c = rejection_indicator(&lm, &[], 2, &rare, 10, 8, 50, &mut rng).unwrap();
    assert_eq!((c.samples.len(), c.draws), (0, 50));
    let sampler = Sampler {
        lm: &lm,
        prompt: &[],
        horizon: 2,
        potential: &rare,
        twist: None,
        proposal: Proposal::Base,
        resampling: Resampling::default(),
    };
    let e = sampler.bounds_over_k(&[4], 2, &[], 0).unwrap_err();
    assert!(e.to_string().contains("exact samples"), "{e}");
}

#[test]
fn particle_gibbs_started_at_exact_samples_stays_exact() {
    // One sweep of the kernel from s* ~ sigma must again give sigma (invariance), with and
    // without a twist; two sweeps of many chains, each from its own exact start, fit sigma.
    let lm = TabularLm::random(3, 2, 1.5, 71);
    let phi = classifier();
    let horizon = 3;
    let exact = Enumeration::new(&lm, &[1], horizon, &phi).unwrap();
    let starts = exact_samples(&exact, 3000, 4);
    let twist = exact.optimal_twist().perturbed(1.0, 9);
    let cases: [(&str, Option<&dyn Twist>, Proposal); 2] = [
        ("bootstrap", None, Proposal::Base),
        ("twisted", Some(&twist), Proposal::Twisted),
    ];
    for (name, tw, proposal) in cases {
        let mut config = SmcConfig::twisted(3, horizon);
        config.proposal = proposal;
        let mut counts = vec![0; exact.len()];
        let mut moves = 0;
        for (i, s) in starts.iter().enumerate() {
            let chain =
                particle_gibbs(&lm, tw, &phi, &[1], &config, s, 2, 1000 * i as u64).unwrap();
            assert_eq!(chain.states.len(), 2);
            counts[exact.index_of(&chain.states[1])] += 1;
            moves += chain.moves;
        }
        assert_fits(&counts, &exact.sigma(), name);
        // The kernel is not the identity (which would pass the fit trivially).
        assert!(moves > 0, "{name}: the chains never moved");
    }
}

#[test]
fn the_smc_upper_bound_is_unavailable_for_schemes_without_a_conditional_form() {
    let lm = TabularLm::random(3, 1, 1.2, 42);
    let phi = classifier();
    let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
    let samples = exact_samples(&exact, 5, 4);
    for scheme in Scheme::ALL {
        let sampler = Sampler {
            lm: &lm,
            prompt: &[],
            horizon: 3,
            potential: &phi,
            twist: None,
            proposal: Proposal::Base,
            resampling: Resampling {
                scheme,
                criterion: Criterion::Always,
            },
        };
        let multinomial = scheme == Scheme::Multinomial;
        assert_eq!(sampler.has_upper_bound(Method::Smc), multinomial);
        // The SIS upper bound never resamples: valid with every scheme.
        assert!(sampler.has_upper_bound(Method::Sis));
        sampler.upper_bound(Method::Sis, 4, &samples, 0).unwrap();
        let rows = sampler.bounds_over_k(&[4], 3, &samples, 0).unwrap();
        assert_eq!(rows[0].smc_upper.is_some(), multinomial, "{scheme}");
        let upper = sampler.upper_bound(Method::Smc, 4, &samples, 0);
        if multinomial {
            upper.unwrap();
        } else {
            let err = upper.unwrap_err();
            assert!(
                err.to_string().contains(&scheme.to_string())
                    && err.to_string().contains("multinomial"),
                "{err}"
            );
        }
    }
}

#[test]
fn particle_gibbs_rejects_schemes_without_a_conditional_form() {
    let lm = TabularLm::random(3, 2, 1.5, 71);
    let phi = classifier();
    let mut config = SmcConfig::twisted(4, 2);
    config.resampling.scheme = Scheme::Systematic;
    let err = particle_gibbs(&lm, None, &phi, &[1], &config, &[0, 1], 1, 0).unwrap_err();
    assert!(err.to_string().contains("multinomial"), "{err}");
}

fn sampler_of<'a>(
    lm: &'a TabularLm,
    prompt: &'a [u32],
    horizon: usize,
    phi: &'a dyn Potential,
    twist: Option<&'a dyn Twist>,
) -> Sampler<'a, TabularLm> {
    Sampler {
        lm,
        prompt,
        horizon,
        potential: phi,
        twist,
        proposal: if twist.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: Resampling::default(),
    }
}

#[test]
fn evaluation_with_optimal_twists_is_exact() {
    let lm = TabularLm::random(3, 1, 1.2, 42);
    let phi = classifier();
    let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
    let psi = exact.optimal_twist();
    let samples = exact_samples(&exact, 12, 4);
    let e = sampler_of(&lm, &[], 3, &phi, Some(&psi))
        .evaluate(&samples, &EvalPlan::new(8, 3))
        .unwrap();
    let log_z = exact.log_z();
    for est in [
        e.f_q,
        e.g_q,
        e.log_z.lower,
        e.log_z.upper,
        e.kl.log_z,
        e.lower_bound(Method::Smc).unwrap(),
        e.upper_bound(Method::Sis).unwrap(),
    ] {
        assert!((est.mean - log_z).abs() < 1e-9 && est.se < 1e-9, "{est}");
    }
    for kl in [e.kl.kl_q_sigma, e.kl.kl_sigma_q, e.kl_sum] {
        assert!(kl.mean.abs() < 1e-9 && kl.ci95() < 1e-8, "{kl}");
    }
}

#[test]
fn evaluation_bounds_sandwich_log_z_and_its_kl_estimates_match_the_exact_kls() {
    // Tolerances: Z_MAX standard errors, plus half the bound gap for the midpoint's bias.
    let lm = TabularLm::random(3, 1, 1.2, 41);
    let phi = classifier();
    let horizon = 4;
    let exact = Enumeration::new(&lm, &[0], horizon, &phi).unwrap();
    let log_z = exact.log_z();
    let twist = exact.optimal_twist().perturbed(0.6, 9);
    let samples = exact_samples(&exact, 3000, 2);
    let plan = EvalPlan {
        fq_draws: 20_000,
        lower_runs: 300,
        upper_refs: 300,
        ..EvalPlan::new(32, 11)
    };
    let mut pairs = Vec::new();
    for (name, tw) in [("base", None), ("twisted", Some(&twist as &dyn Twist))] {
        let sampler = sampler_of(&lm, &[0], horizon, &phi, tw);
        let e = sampler.evaluate(&samples, &plan).unwrap();
        let log_q = exact
            .proposal_log_q(&lm, &[0], tw, sampler.proposal)
            .unwrap();
        let (kl_qs, kl_sq) = (exact.kl_q_sigma(&log_q), exact.kl_sigma_q(&log_q));
        assert_eq!(e.f_q.n, 20_000);
        assert_eq!(
            (e.g_q.n, e.log_z.upper.n, e.log_z.lower.n),
            (3000, 300, 300)
        );
        assert!(
            e.log_z.lower.mean - log_z < Z_MAX * e.log_z.lower.se,
            "{name}: lower {} vs {log_z}",
            e.log_z.lower
        );
        assert!(
            log_z - e.log_z.upper.mean < Z_MAX * e.log_z.upper.se,
            "{name}: upper {} vs {log_z}",
            e.log_z.upper
        );
        let slack = e.log_z.half_gap().max(0.0);
        assert!(
            (e.kl.kl_q_sigma.mean - kl_qs).abs() < Z_MAX * e.kl.kl_q_sigma.se + slack,
            "{name}: KL(q||sigma) {} vs {kl_qs}",
            e.kl.kl_q_sigma
        );
        assert!(
            (e.kl.kl_sigma_q.mean - kl_sq).abs() < Z_MAX * e.kl.kl_sigma_q.se + slack,
            "{name}: KL(sigma||q) {} vs {kl_sq}",
            e.kl.kl_sigma_q
        );
        assert!(
            (e.kl_sum.mean - (kl_qs + kl_sq)).abs() < Z_MAX * e.kl_sum.se,
            "{name}: G_q - F_q {} vs {}",
            e.kl_sum,
            kl_qs + kl_sq
        );
        pairs.push(e);
    }
    // A fixed-weight average of both samplers' bounds is again a pair of bounds.
    let avg = LogZBounds::average(&[(0.5, &pairs[0].log_z), (0.5, &pairs[1].log_z)]).unwrap();
    assert!(
        avg.lower.mean - log_z < Z_MAX * avg.lower.se,
        "{}",
        avg.lower
    );
    assert!(
        log_z - avg.upper.mean < Z_MAX * avg.upper.se,
        "{}",
        avg.upper
    );
    let mid = 0.5 * (pairs[0].log_z.lower.mean + pairs[1].log_z.lower.mean);
    assert!((avg.lower.mean - mid).abs() < 1e-12);
    let kl = pairs[1].kl_with(&avg);
    assert_eq!(kl.log_z, avg.midpoint());
    // Weights must be fixed, non-negative and sum to one.
    for bad in [[0.7, 0.7], [1.5, -0.5], [f64::NAN, 1.0]] {
        let err = LogZBounds::average(&[(bad[0], &pairs[0].log_z), (bad[1], &pairs[1].log_z)])
            .unwrap_err();
        assert!(err.to_string().contains("weights"), "{err}");
    }
}

#[test]
fn upper_bound_references_are_the_first_exact_samples_as_drawn() {
    let lm = TabularLm::random(3, 1, 1.2, 43);
    let phi = classifier();
    let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
    let twist = exact.optimal_twist().perturbed(0.8, 2);
    let sampler = sampler_of(&lm, &[], 3, &phi, Some(&twist));
    // Duplicates and an unsorted order stay as they are.
    let mut samples = exact_samples(&exact, 6, 7);
    samples.insert(1, samples[0].clone());
    let plan = EvalPlan {
        upper_refs: 4,
        ..EvalPlan::new(4, 5)
    };
    let e = sampler.evaluate(&samples, &plan).unwrap();
    for (method, seed_label) in [
        (Method::Sis, smc_core::seed::label::UPPER_SIS),
        (Method::Smc, smc_core::seed::label::UPPER_SMC),
    ] {
        let want = sampler
            .upper_bound_values(
                method,
                4,
                &samples[..4],
                smc_core::seed::derive(5, seed_label, 0),
            )
            .unwrap();
        let got = &e.upper.iter().find(|b| b.method == method).unwrap().values;
        assert_eq!(got, &want, "{method:?}");
    }
    // G_q uses every exact sample; a chain's samples get batch means.
    assert_eq!(e.g_q.n, 7);
    assert_eq!(e.g_q_values, sampler.g_q_values(&samples).unwrap());
    let chain = EvalPlan {
        exact_batches: Some(3),
        ..plan.clone()
    };
    let e = sampler.evaluate(&samples, &chain).unwrap();
    assert_eq!((e.g_q.n, e.g_q.df), (6, 2.0));
    // Two samplers with one plan share their random numbers: paired F_q differences.
    let base = sampler_of(&lm, &[], 3, &phi, None)
        .evaluate(&samples, &plan)
        .unwrap();
    let d = Estimate::paired_difference(&e.f_q_values, &base.f_q_values).unwrap();
    assert!((d.mean - (e.f_q.mean - base.f_q.mean)).abs() < 1e-12);
}

#[test]
fn evaluation_refuses_an_unguaranteed_upper_bound_and_empty_plans() {
    let lm = TabularLm::random(3, 1, 1.2, 44);
    let phi = classifier();
    let exact = Enumeration::new(&lm, &[], 3, &phi).unwrap();
    let samples = exact_samples(&exact, 4, 1);
    let mut sampler = sampler_of(&lm, &[], 3, &phi, None);
    sampler.resampling.scheme = Scheme::Systematic;
    let err = sampler
        .evaluate(&samples, &EvalPlan::new(4, 0))
        .unwrap_err();
    assert!(err.to_string().contains("systematic"), "{err}");
    // Without the conditional-SMC upper bound the systematic sampler is fine.
    let plan = EvalPlan {
        upper_methods: vec![Method::Sis],
        ..EvalPlan::new(4, 0)
    };
    let e = sampler.evaluate(&samples, &plan).unwrap();
    assert!(e.upper_bound(Method::Smc).is_none() && e.lower_bound(Method::Smc).is_some());
    for bad in [
        EvalPlan {
            lower_runs: 0,
            ..plan.clone()
        },
        EvalPlan {
            upper_methods: vec![],
            ..plan.clone()
        },
        EvalPlan {
            fq_draws: 0,
            ..plan.clone()
        },
    ] {
        assert!(sampler.evaluate(&samples, &bad).is_err());
    }
    assert!(sampler.evaluate(&[], &plan).is_err());
}
