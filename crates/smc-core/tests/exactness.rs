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

// ---------------------------------------------------------------------------------------------
// Prefix constraints (spec §8): exact properties against enumeration.

use common::{ConstrainedProblem, LooseDfa, constrained_problems, count_twos_dfa, parity_dfa};
use smc_core::constraint::{ConstraintSession, accepts_all};
use smc_core::tabular::decode_index;

/// Every sequence of `len` tokens, by index.
fn all_sequences(vocab: usize, len: usize) -> Vec<Vec<u32>> {
    (0..vocab.pow(len as u32))
        .map(|i| decode_index(i, vocab, len))
        .collect()
}

/// Brute force: can `prefix` followed by `v` be completed to T tokens that `accepts`?
fn completable(
    accepts: &dyn Fn(&[u32]) -> bool,
    vocab: usize,
    horizon: usize,
    prefix: &[u32],
    v: u32,
) -> bool {
    let rest = horizon - prefix.len() - 1;
    all_sequences(vocab, rest).iter().any(|tail| {
        let mut s = prefix.to_vec();
        s.push(v);
        s.extend_from_slice(tail);
        accepts(&s)
    })
}

/// A session with every prefix of length t - 1 pushed, one particle per prefix.
fn session_at<'a>(
    constraint: &'a dyn Constraint,
    vocab: usize,
    horizon: usize,
    prefixes: &[Vec<u32>],
) -> Box<dyn ConstraintSession + 'a> {
    let mut session = constraint
        .start(&[], prefixes.len(), horizon, vocab)
        .unwrap();
    let len = prefixes.first().map_or(0, Vec::len);
    for pos in 0..len {
        let col: Vec<u32> = prefixes.iter().map(|s| s[pos]).collect();
        session.push(&col).unwrap();
    }
    session
}

#[test]
fn token_set_and_dfa_masks_match_brute_force_enumeration_of_completable_prefixes() {
    let parity = parity_dfa();
    let two_twos = count_twos_dfa(3, 2);
    let impossible = count_twos_dfa(3, 3);
    let no_one = TokenSetConstraint::forbidding("no 1", 4, [1]).unwrap();
    let nothing = TokenSetConstraint::forbidding("nothing allowed", 3, [0, 1, 2]).unwrap();
    let everything = TokenSetConstraint::forbidding("everything allowed", 3, []).unwrap();
    type Case<'a> = (
        &'a dyn Constraint,
        Box<dyn Fn(&[u32]) -> bool + 'a>,
        usize,
        usize,
    );
    let cases: Vec<Case> = vec![
        (&parity, Box::new(|s| parity.accepts_sequence(s)), 3, 4),
        (&two_twos, Box::new(|s| two_twos.accepts_sequence(s)), 3, 4),
        (&two_twos, Box::new(|s| two_twos.accepts_sequence(s)), 3, 2),
        (
            &impossible,
            Box::new(|s| impossible.accepts_sequence(s)),
            3,
            2,
        ),
        (&no_one, Box::new(|s| no_one.accepts_sequence(s)), 4, 3),
        (&nothing, Box::new(|s| nothing.accepts_sequence(s)), 3, 2),
        (
            &everything,
            Box::new(|s| everything.accepts_sequence(s)),
            3,
            3,
        ),
    ];
    for (constraint, accepts, vocab, horizon) in cases {
        let name = constraint.name().to_string();
        for t in 1..=horizon {
            let prefixes = all_sequences(vocab, t - 1);
            let mut session = session_at(constraint, vocab, horizon, &prefixes);
            let mut mask = TokenMask::none(vocab);
            for (p, prefix) in prefixes.iter().enumerate() {
                session.allowed(p, &mut mask).unwrap();
                assert_eq!(mask.len(), vocab);
                for v in 0..vocab as u32 {
                    assert_eq!(
                        mask.contains(v),
                        completable(&*accepts, vocab, horizon, prefix, v),
                        "{name} T={horizon}: prefix {prefix:?}, token {v}"
                    );
                }
            }
        }
        // Final acceptance through a session equals the direct check on every output.
        let outputs = all_sequences(vocab, horizon);
        let buffer = smc_core::batch::TokenBuffer::from_rows(&outputs);
        let accepted = accepts_all(constraint, &[], &buffer, vocab).unwrap();
        for (s, a) in outputs.iter().zip(accepted) {
            assert_eq!(a, accepts(s), "{name}: {s:?}");
        }
    }
    // The loose automaton's masks are a superset of the completable tokens.
    let loose = LooseDfa(count_twos_dfa(3, 2));
    let exact = count_twos_dfa(3, 2);
    for t in 1..=4 {
        let prefixes = all_sequences(3, t - 1);
        let mut session = session_at(&loose, 3, 4, &prefixes);
        let mut mask = TokenMask::none(3);
        for (p, prefix) in prefixes.iter().enumerate() {
            session.allowed(p, &mut mask).unwrap();
            for v in 0..3 {
                if completable(&|s| exact.accepts_sequence(s), 3, 4, prefix, v) {
                    assert!(mask.contains(v), "loose: {prefix:?} {v}");
                }
            }
        }
    }
}

#[test]
fn sessions_follow_ancestors_at_reorder_and_share_duplicate_states() {
    let dfa = count_twos_dfa(3, 2);
    let mut session = dfa.start(&[], 3, 4, 3).unwrap();
    session.push(&[2, 0, 1]).unwrap();
    session.push(&[2, 0, 0]).unwrap();
    // Particle 0 has two 2s: everything allowed; particles 1, 2 need 2 2s in the last 2 steps.
    session.reorder(&[1, 0, 0]).unwrap();
    let mut mask = TokenMask::none(3);
    session.allowed(0, &mut mask).unwrap();
    assert_eq!(mask.iter().collect::<Vec<_>>(), vec![2]);
    for p in [1, 2] {
        session.allowed(p, &mut mask).unwrap();
        assert_eq!(mask.count(), 3, "particle {p}");
    }
    session.push(&[2, 1, 2]).unwrap();
    session.push(&[2, 0, 0]).unwrap();
    assert!((0..3).all(|p| session.accepts(p).unwrap()));
}

fn run_constrained(
    problem: &ConstrainedProblem,
    twist: Option<&dyn Twist>,
    cfg: &SmcConfig,
) -> smc_core::Result<SmcOutput> {
    run_smc_constrained(
        &problem.lm,
        twist,
        problem.phi(),
        problem.constraint.as_ref(),
        &problem.prompt,
        cfg,
    )
}

#[test]
fn optimal_twist_under_the_constraint_gives_exact_log_z_for_every_seed_scheme_and_criterion() {
    for problem in constrained_problems() {
        let exact = problem.exact();
        assert!(
            exact.log_z().is_finite(),
            "{}: the constraint is satisfiable",
            problem.name
        );
        let psi = exact.optimal_twist();
        for scheme in Scheme::ALL {
            for criterion in CRITERIA {
                for k in [1, 4, 16] {
                    for seed in 0..10 {
                        let cfg = SmcConfig::twisted(k, problem.horizon)
                            .with_scheme(scheme)
                            .with_criterion(criterion)
                            .with_seed(seed);
                        let out = run_constrained(&problem, Some(&psi), &cfg).unwrap();
                        assert!(
                            (out.log_z_hat - exact.log_z()).abs() < 1e-9,
                            "{}: {scheme} {criterion} K={k} seed={seed}: {} vs {}",
                            problem.name,
                            out.log_z_hat,
                            exact.log_z()
                        );
                        let accepted = accepts_all(
                            problem.constraint.as_ref(),
                            &problem.prompt,
                            &smc_core::batch::TokenBuffer::from_rows(&out.tokens),
                            problem.lm.vocab(),
                        )
                        .unwrap();
                        assert!(accepted.iter().all(|&a| a), "{}", problem.name);
                    }
                }
            }
        }
        // Conditional SMC around exact samples is exact too.
        let mut rng = rng_from_seed(5);
        for (i, reference) in exact.sample_sigma(10, &mut rng).iter().enumerate() {
            let cfg = SmcConfig::twisted(6, problem.horizon).with_seed(i as u64);
            let out = run_csmc_constrained(
                &problem.lm,
                Some(&psi),
                problem.phi(),
                problem.constraint.as_ref(),
                &problem.prompt,
                &cfg,
                reference,
            )
            .unwrap();
            assert_eq!(&out.tokens[0], reference);
            assert!(
                (out.log_z_hat - exact.log_z()).abs() < 1e-9,
                "{}",
                problem.name
            );
        }
    }
}

#[test]
fn masked_unigram_proposal_has_constant_weight_the_allowed_mass() {
    // Order 0: p0 does not depend on the prefix, so the allowed mass M is the same at every
    // step, the masked proposal is sigma itself and log Zhat = T log M = log Z for every seed.
    let lm = TabularLm::random(4, 0, 1.0, 5);
    let constraint = TokenSetConstraint::forbidding("no 1 or 2", 4, [1, 2]).unwrap();
    let p = lm.next_log_probs(&[]).unwrap();
    let log_m = (p[0].exp() + p[3].exp()).ln();
    let horizon = 5;
    let exact = Enumeration::new(
        &lm,
        &[],
        horizon,
        &ConstrainedPotential::new(&constraint, None, 4),
    )
    .unwrap();
    assert!((exact.log_z() - horizon as f64 * log_m).abs() < 1e-12);
    for cfg in [
        SmcConfig::bootstrap(5, horizon),
        SmcConfig::twisted(3, horizon),
        SmcConfig::sis(1, horizon, Proposal::Base),
    ] {
        for seed in 0..10 {
            let out = run_smc_constrained(
                &lm,
                None,
                &UnitPotential,
                &constraint,
                &[],
                &cfg.with_seed(seed),
            )
            .unwrap();
            assert!((out.log_z_hat - exact.log_z()).abs() < 1e-12);
            assert!(out.tokens.iter().flatten().all(|&t| t == 0 || t == 3));
        }
    }
}

#[test]
fn a_constraint_that_allows_everything_changes_nothing() {
    let problem = &problems()[0];
    let psi = problem.exact().optimal_twist().perturbed(0.5, 8);
    let everything = TokenSetConstraint::forbidding("everything", 3, []).unwrap();
    for (twist, cfg) in [
        (None, SmcConfig::twisted(8, problem.horizon)),
        (Some(&psi), SmcConfig::twisted(8, problem.horizon)),
        (Some(&psi), SmcConfig::bootstrap(8, problem.horizon)),
        (None, SmcConfig::bootstrap(8, problem.horizon)),
    ] {
        for seed in 0..10 {
            let cfg = cfg.with_seed(seed);
            let twist = twist.map(|t| t as &dyn Twist);
            let plain = run_smc(
                &problem.lm,
                twist,
                problem.potential.as_ref(),
                &problem.prompt,
                &cfg,
            )
            .unwrap();
            let masked = run_smc_constrained(
                &problem.lm,
                twist,
                problem.potential.as_ref(),
                &everything,
                &problem.prompt,
                &cfg,
            )
            .unwrap();
            assert_eq!(plain.tokens, masked.tokens);
            if cfg.proposal == Proposal::Twisted {
                // The same arithmetic, bit for bit.
                assert_eq!(plain.log_z_hat, masked.log_z_hat);
            } else {
                // The base proposal adds log of the allowed mass, 0 up to rounding.
                assert!((plain.log_z_hat - masked.log_z_hat).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn constrained_log_weights_normalise_the_masked_proposal_and_equal_clamped_sis() {
    // For exact masks and phi > 0, the masked proposal q has the support of sigma, so
    // sum over that support of sigma~(s) / w(s) = sum q(s) = 1 with w = log_weights_of.
    for problem in constrained_problems().into_iter().take(3) {
        let exact = problem.exact();
        let psi = problem
            .exact_unconstrained()
            .optimal_twist()
            .perturbed(0.6, 3);
        let support: Vec<usize> = (0..exact.len())
            .filter(|&i| exact.log_phi()[i] > f64::NEG_INFINITY)
            .collect();
        let sequences: Vec<Vec<u32>> = support.iter().map(|&i| exact.sequence(i)).collect();
        for (twist, proposal) in [
            (None, Proposal::Base),
            (Some(&psi as &dyn Twist), Proposal::Base),
            (Some(&psi as &dyn Twist), Proposal::Twisted),
        ] {
            let w = log_weights_of_constrained(
                &problem.lm,
                twist,
                problem.phi(),
                problem.constraint.as_ref(),
                &problem.prompt,
                proposal,
                &sequences,
            )
            .unwrap();
            let total_q: f64 = support
                .iter()
                .zip(&w)
                .map(|(&i, lw)| (exact.log_p0()[i] + exact.log_phi()[i] - lw).exp())
                .sum();
            assert!(
                (total_q - 1.0).abs() < 1e-12,
                "{} {proposal:?}: sum q = {total_q}",
                problem.name
            );
            for (s, lw) in sequences.iter().zip(&w).step_by(5) {
                let cfg = SmcConfig::sis(1, problem.horizon, proposal);
                let out = run_csmc_constrained(
                    &problem.lm,
                    twist,
                    problem.phi(),
                    problem.constraint.as_ref(),
                    &problem.prompt,
                    &cfg,
                    s,
                )
                .unwrap();
                assert!(
                    (out.log_z_hat - lw).abs() < 1e-12,
                    "{}: {s:?}",
                    problem.name
                );
            }
        }
    }
}

#[test]
fn constraint_errors_are_typed_and_name_the_constraint() {
    let lm = TabularLm::random(3, 1, 1.0, 9);
    let cfg = SmcConfig::twisted(4, 2);
    // Every token forbidden: every mask empty at step 1.
    let nothing = TokenSetConstraint::forbidding("nothing allowed", 3, [0, 1, 2]).unwrap();
    let err = run_smc_constrained(&lm, None, &UnitPotential, &nothing, &[], &cfg).unwrap_err();
    assert!(matches!(err, SmcError::Constraint { step: 1, .. }), "{err}");
    assert!(err.to_string().contains("nothing allowed"));
    // Three 2s in two tokens: the exact masks are empty at step 1.
    let three = count_twos_dfa(3, 3);
    let err = run_smc_constrained(&lm, None, &UnitPotential, &three, &[], &cfg).unwrap_err();
    assert!(matches!(err, SmcError::Constraint { step: 1, .. }), "{err}");
    // The loose masks let the particles through; no output is accepted at T.
    let loose = LooseDfa(count_twos_dfa(3, 3));
    let err = run_smc_constrained(&lm, None, &UnitPotential, &loose, &[], &cfg).unwrap_err();
    assert!(matches!(err, SmcError::Constraint { step: 2, .. }), "{err}");
    assert!(err.to_string().contains("loose DFA"));

    // Conditional SMC with a reference outside the constraint.
    let two = count_twos_dfa(3, 2);
    let cfg = SmcConfig::twisted(4, 3);
    let err =
        run_csmc_constrained(&lm, None, &UnitPotential, &two, &[], &cfg, &[0, 0, 2]).unwrap_err();
    assert!(
        matches!(err, SmcError::Reference(ref m) if m.contains("at least 2 2s") && m.contains("step 2")),
        "{err}"
    );
    let loose = LooseDfa(count_twos_dfa(3, 2));
    let err =
        run_csmc_constrained(&lm, None, &UnitPotential, &loose, &[], &cfg, &[0, 0, 2]).unwrap_err();
    assert!(
        matches!(err, SmcError::Reference(ref m) if m.contains("not accepted") && m.contains("loose DFA")),
        "{err}"
    );
    // Teacher-forced weights of a sequence the masked proposal cannot produce.
    let err = log_weights_of_constrained(
        &lm,
        None,
        &UnitPotential,
        &two,
        &[],
        Proposal::Base,
        &[vec![0, 0, 2]],
    )
    .unwrap_err();
    assert!(matches!(err, SmcError::Reference(_)), "{err}");
    // A constraint over another vocabulary.
    let other = TokenSetConstraint::forbidding("V=5", 5, [1]).unwrap();
    let err = run_smc_constrained(&lm, None, &UnitPotential, &other, &[], &cfg).unwrap_err();
    assert!(matches!(err, SmcError::InvalidConfig { .. }), "{err}");
}

#[test]
fn particles_that_die_under_a_loose_mask_keep_weight_zero_not_nan() {
    // Loose masks: particles can reach T unaccepted; their weight is exactly zero, the rest
    // carry the estimate, with no NaN anywhere.
    let lm = TabularLm::random(3, 1, 1.0, 4);
    let loose = LooseDfa(count_twos_dfa(3, 2));
    let mut saw_dead = false;
    for seed in 0..50 {
        let cfg = SmcConfig::sis(16, 3, Proposal::Base).with_seed(seed);
        match run_smc_constrained(&lm, None, &UnitPotential, &loose, &[], &cfg) {
            Ok(out) => {
                assert!(out.log_w.iter().all(|w| !w.is_nan()));
                assert!(!out.log_z_hat.is_nan());
                for (s, w) in out.tokens.iter().zip(&out.log_w) {
                    let ok = count_twos_dfa(3, 2).accepts_sequence(s);
                    assert_eq!(ok, *w > f64::NEG_INFINITY, "{s:?}");
                    saw_dead |= !ok;
                }
            }
            Err(e) => assert!(matches!(e, SmcError::Constraint { .. }), "{e}"),
        }
    }
    assert!(saw_dead);
}
