//! Exact properties that must hold for every seed.

mod common;

use common::{indicator_potential, problems, smooth_potential};
use smc_core::prelude::*;

const CRITERIA: [Criterion; 3] = [
    Criterion::Always,
    Criterion::EssBelow(0.5),
    Criterion::Never,
];

#[test]
fn optimal_twists_with_twisted_proposal_give_exact_log_z_for_every_seed_and_scheme() {
    for problem in problems() {
        let exact = problem.exact();
        let psi = exact.optimal_twist();
        for scheme in Scheme::ALL {
            for criterion in CRITERIA {
                for k in [1, 2, 7, 32] {
                    for seed in 0..20 {
                        let cfg = SmcConfig::twisted(k, problem.horizon)
                            .with_scheme(scheme)
                            .with_criterion(criterion)
                            .with_seed(seed);
                        let out = run_smc(
                            &problem.lm,
                            Some(&psi),
                            problem.potential.as_ref(),
                            &problem.prompt,
                            &cfg,
                        )
                        .unwrap();
                        assert!(
                            (out.log_z_hat - exact.log_z()).abs() < 1e-9,
                            "{}: {scheme} {criterion} K={k} seed={seed}: log Zhat {} vs log Z {}",
                            problem.name,
                            out.log_z_hat,
                            exact.log_z()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn optimal_twists_make_conditional_smc_exact_too() {
    let problem = &problems()[0];
    let exact = problem.exact();
    let psi = exact.optimal_twist();
    let mut rng = rng_from_seed(3);
    for (i, reference) in exact.sample_sigma(20, &mut rng).iter().enumerate() {
        let cfg = SmcConfig::twisted(8, problem.horizon).with_seed(i as u64);
        let out = run_csmc(
            &problem.lm,
            Some(&psi),
            problem.potential.as_ref(),
            &problem.prompt,
            &cfg,
            reference,
        )
        .unwrap();
        assert!((out.log_z_hat - exact.log_z()).abs() < 1e-9);
    }
}

#[test]
fn conditional_smc_refuses_schemes_without_a_conditional_form_unless_it_never_resamples() {
    // K - 1 plain draws are the conditional form of multinomial resampling only: with any other
    // scheme that resamples, E[log Zhat_CSMC] >= log Z is not guaranteed, so it is an error.
    let problem = &problems()[0];
    let exact = problem.exact();
    let psi = exact.optimal_twist().perturbed(0.5, 1);
    let reference = exact.sample_sigma(1, &mut rng_from_seed(2)).remove(0);
    let run = |cfg: &SmcConfig| {
        run_csmc(
            &problem.lm,
            Some(&psi),
            problem.potential.as_ref(),
            &problem.prompt,
            cfg,
            &reference,
        )
    };
    for scheme in Scheme::ALL {
        for criterion in CRITERIA {
            let cfg = SmcConfig::twisted(8, problem.horizon)
                .with_scheme(scheme)
                .with_criterion(criterion)
                .with_seed(3);
            let result = run(&cfg);
            if scheme == Scheme::Multinomial || criterion == Criterion::Never {
                let out = result.unwrap();
                assert_eq!(out.tokens[0], reference, "{scheme} {criterion}");
            } else {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, SmcError::InvalidConfig { .. })
                        && err.to_string().contains(&scheme.to_string())
                        && err.to_string().contains("multinomial"),
                    "{scheme} {criterion}: {err}"
                );
            }
        }
    }
    // The one rule, as a predicate.
    for scheme in Scheme::ALL {
        let r = Resampling {
            scheme,
            criterion: Criterion::Always,
        };
        assert_eq!(r.supports_conditional(), scheme == Scheme::Multinomial);
        assert!(
            Resampling {
                criterion: Criterion::Never,
                ..r
            }
            .supports_conditional()
        );
    }
}

#[test]
fn optimal_twisted_proposal_has_zero_kl_to_sigma_and_base_proposal_does_not() {
    for problem in problems() {
        let exact = problem.exact();
        let psi = exact.optimal_twist();
        let log_q = exact
            .proposal_log_q(&problem.lm, &problem.prompt, Some(&psi), Proposal::Twisted)
            .unwrap();
        assert!(exact.kl_q_sigma(&log_q).abs() < 1e-9, "{}", problem.name);
        assert!(exact.kl_sigma_q(&log_q).abs() < 1e-9, "{}", problem.name);
        let log_p0 = exact
            .proposal_log_q(&problem.lm, &problem.prompt, None, Proposal::Base)
            .unwrap();
        for (a, b) in log_p0.iter().zip(exact.log_p0()) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(exact.kl_q_sigma(&log_p0) > 1e-3, "{}", problem.name);
        assert!(exact.kl_sigma_q(&log_p0) > 1e-3, "{}", problem.name);
    }
}

#[test]
fn sis_log_weights_are_log_sigma_tilde_minus_log_q_of_each_particle() {
    let problem = &problems()[2];
    let exact = problem.exact();
    let psi = exact.optimal_twist().perturbed(0.5, 1);
    let log_q_all = exact
        .proposal_log_q(&problem.lm, &problem.prompt, Some(&psi), Proposal::Twisted)
        .unwrap();
    let cfg = SmcConfig::sis(50, problem.horizon, Proposal::Twisted).with_seed(9);
    let out = run_smc(
        &problem.lm,
        Some(&psi),
        problem.potential.as_ref(),
        &problem.prompt,
        &cfg,
    )
    .unwrap();
    for k in 0..50 {
        let i = exact.index_of(&out.tokens[k]);
        let expected = exact.log_p0()[i] + exact.log_phi()[i] - log_q_all[i];
        assert!((out.log_w[k] - expected).abs() < 1e-9);
        assert!((out.log_q[k] - log_q_all[i]).abs() < 1e-9);
        assert!((out.log_p0[k] - exact.log_p0()[i]).abs() < 1e-9);
    }
    // SIS log Zhat is the IWAE formula.
    let iwae = log_sum_exp(&out.log_w) - (50f64).ln();
    assert!((out.log_z_hat - iwae).abs() < 1e-12);
}

#[test]
fn teacher_forced_log_weights_equal_one_particle_clamped_sis_for_both_proposals() {
    for problem in problems() {
        let exact = problem.exact();
        let psi = exact.optimal_twist().perturbed(0.7, 4);
        let seqs: Vec<Vec<u32>> = (0..exact.len())
            .step_by(3)
            .map(|i| exact.sequence(i))
            .collect();
        for (twist, proposal) in [
            (None, Proposal::Base),
            (Some(&psi as &dyn Twist), Proposal::Base),
            (Some(&psi as &dyn Twist), Proposal::Twisted),
        ] {
            let got = log_weights_of(
                &problem.lm,
                twist,
                problem.potential.as_ref(),
                &problem.prompt,
                proposal,
                &seqs,
            )
            .unwrap();
            for (s, &w) in seqs.iter().zip(&got) {
                let cfg = SmcConfig::sis(1, problem.horizon, proposal);
                let out = run_csmc(
                    &problem.lm,
                    twist,
                    problem.potential.as_ref(),
                    &problem.prompt,
                    &cfg,
                    s,
                )
                .unwrap();
                let want = out.log_w[0];
                assert!(
                    w == want || (w - want).abs() < 1e-9,
                    "{}: {proposal:?} {s:?}: {w} vs {want}",
                    problem.name
                );
            }
        }
    }
}

#[test]
fn same_seed_gives_same_result_and_different_seeds_differ() {
    let problem = &problems()[0];
    let psi = problem.exact().optimal_twist().perturbed(0.3, 2);
    let run = |seed| {
        run_smc(
            &problem.lm,
            Some(&psi),
            problem.potential.as_ref(),
            &problem.prompt,
            &SmcConfig::twisted(16, problem.horizon).with_seed(seed),
        )
        .unwrap()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).tokens, run(6).tokens);
}

#[test]
fn conditional_smc_keeps_particle_zero_on_the_reference() {
    let problem = &problems()[2];
    let exact = problem.exact();
    let psi = exact.optimal_twist().perturbed(0.8, 4);
    let mut rng = rng_from_seed(1);
    for (i, reference) in exact.sample_sigma(10, &mut rng).iter().enumerate() {
        for proposal in [Proposal::Base, Proposal::Twisted] {
            let cfg = SmcConfig::twisted(6, problem.horizon).with_seed(i as u64);
            let cfg = SmcConfig { proposal, ..cfg };
            let out = run_csmc(
                &problem.lm,
                Some(&psi),
                problem.potential.as_ref(),
                &problem.prompt,
                &cfg,
                reference,
            )
            .unwrap();
            assert_eq!(&out.tokens[0], reference);
            assert!(out.ancestors.iter().all(|a| a[0] == 0));
        }
    }
}

#[test]
fn genealogy_has_one_row_per_resampling_opportunity_and_identity_without_resampling() {
    let problem = &problems()[0];
    let cfg = SmcConfig::sis(5, problem.horizon, Proposal::Base);
    let out = run_smc(
        &problem.lm,
        None,
        problem.potential.as_ref(),
        &problem.prompt,
        &cfg,
    )
    .unwrap();
    assert_eq!(out.ancestors.len(), problem.horizon - 1);
    assert!(out.ancestors.iter().all(|a| a == &[0, 1, 2, 3, 4]));
    assert_eq!(out.num_resamplings(), 0);
    let out = run_smc(
        &problem.lm,
        None,
        problem.potential.as_ref(),
        &problem.prompt,
        &SmcConfig::bootstrap(5, problem.horizon),
    )
    .unwrap();
    assert_eq!(out.num_resamplings(), problem.horizon - 1);
    assert!(!out.steps.last().unwrap().resampled);
}

#[test]
fn ess_criterion_resamples_only_when_ess_falls_below_the_threshold() {
    let problem = &problems()[1];
    let cfg = SmcConfig::bootstrap(64, problem.horizon)
        .with_criterion(Criterion::EssBelow(0.5))
        .with_seed(3);
    let psi = problem.exact().optimal_twist().perturbed(1.0, 3);
    let out = run_smc(
        &problem.lm,
        Some(&psi),
        problem.potential.as_ref(),
        &problem.prompt,
        &cfg,
    )
    .unwrap();
    for s in &out.steps[..problem.horizon - 1] {
        assert_eq!(s.resampled, s.ess < 32.0, "step {}: ess {}", s.step, s.ess);
    }
}

#[test]
fn single_particle_and_single_step_edge_cases_run() {
    // K = 1: log Zhat is the single particle's log weight.
    let lm = TabularLm::random(3, 1, 1.0, 1);
    let phi = smooth_potential();
    let out = run_smc(&lm, None, phi.as_ref(), &[], &SmcConfig::bootstrap(1, 4)).unwrap();
    assert_eq!(out.tokens.len(), 1);
    assert!((out.log_z_hat - out.log_phi[0]).abs() < 1e-12);
    // T = 1 with the optimal twist is exact.
    let exact = Enumeration::new(&lm, &[2], 1, phi.as_ref()).unwrap();
    let psi = exact.optimal_twist();
    let out = run_smc(
        &lm,
        Some(&psi),
        phi.as_ref(),
        &[2],
        &SmcConfig::twisted(3, 1),
    )
    .unwrap();
    assert!((out.log_z_hat - exact.log_z()).abs() < 1e-12);
    assert!(out.ancestors.is_empty());
}

#[test]
fn potential_that_is_zero_everywhere_is_a_clear_error_not_nan() {
    let lm = TabularLm::random(3, 1, 1.0, 1);
    let zero = FnPotential::new("zero", |_: &[u32], _: &[u32]| f64::NEG_INFINITY);
    for cfg in [
        SmcConfig::bootstrap(8, 3),
        SmcConfig::sis(8, 3, Proposal::Base),
    ] {
        let err = run_smc(&lm, None, &zero, &[], &cfg).unwrap_err();
        assert!(
            matches!(err, SmcError::NoPositiveWeight { step: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("no particle has positive weight at step 3"),
            "{err}"
        );
    }
    // The indicator floor keeps a hard constraint finite: never an error, never NaN.
    let out = run_smc(
        &lm,
        None,
        indicator_potential().as_ref(),
        &[],
        &SmcConfig::bootstrap(4, 2),
    )
    .unwrap();
    assert!(out.log_z_hat.is_finite());
}

#[test]
fn potential_or_twist_returning_nan_is_an_error_naming_it() {
    let lm = TabularLm::random(3, 1, 1.0, 1);
    let nan = FnPotential::new(
        "broken classifier",
        |_: &[u32], s: &[u32]| {
            if s[0] == 1 { f64::NAN } else { 0.0 }
        },
    );
    let err = run_smc(&lm, None, &nan, &[], &SmcConfig::bootstrap(32, 2)).unwrap_err();
    assert!(
        err.to_string().contains("broken classifier returned NaN"),
        "{err}"
    );

    let bad_twist = TabularTwist::from_fn(3, 2, |p| {
        if p.len() == 1 && p[0] == 2 {
            f64::NAN
        } else {
            0.0
        }
    });
    let err = run_smc(
        &lm,
        Some(&bad_twist),
        &UnitPotential,
        &[],
        &SmcConfig::twisted(8, 2),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("tabular twist returned NaN"),
        "{err}"
    );
}

#[test]
fn zero_particles_or_steps_and_wrong_reference_length_are_config_errors() {
    let lm = TabularLm::random(3, 1, 1.0, 1);
    let e = run_smc(&lm, None, &UnitPotential, &[], &SmcConfig::bootstrap(0, 3)).unwrap_err();
    assert!(
        e.to_string()
            .contains("number of particles K must be >= 1, found 0"),
        "{e}"
    );
    let e = run_smc(&lm, None, &UnitPotential, &[], &SmcConfig::bootstrap(4, 0)).unwrap_err();
    assert!(
        e.to_string().contains("number of steps T must be >= 1"),
        "{e}"
    );
    let e = run_csmc(
        &lm,
        None,
        &UnitPotential,
        &[],
        &SmcConfig::bootstrap(4, 3),
        &[0, 1],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("has 2 tokens, expected T = 3"),
        "{e}"
    );
    let e = run_csmc(
        &lm,
        None,
        &UnitPotential,
        &[],
        &SmcConfig::bootstrap(4, 2),
        &[0, 7],
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = run_smc(
        &lm,
        None,
        &UnitPotential,
        &[],
        &SmcConfig::bootstrap(4, 2).with_criterion(Criterion::EssBelow(0.0)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("ess fraction"), "{e}");
}

/// Sizes that overflow are refused, not wrapped: V^T for T = 64 does not fit in a u128.
#[test]
fn enumeration_and_table_sizes_that_overflow_are_errors() {
    let lm = TabularLm::random(4, 1, 1.0, 0);
    let phi = UnitPotential;
    assert!(Enumeration::new(&lm, &[], 64, &phi).is_err());
    assert!(Enumeration::new(&lm, &[], 200, &phi).is_err());
    assert_eq!(TabularLm::table_len(4, 2), Some(100));
    assert_eq!(TabularLm::table_len(usize::MAX, 2), None);
    assert_eq!(
        TabularLm::table_len(100_000, 2),
        Some(100_001 * 100_001 * 100_000)
    );
}
