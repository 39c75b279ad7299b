//! Variable-length outputs (end-of-sequence) and boundary resampling against enumeration.
//!
//! On a tabular model whose last token is the end token, every output (finished before the
//! maximum, truncated at it, or ended by a forced end token) is enumerated with its p0, phi and
//! acceptance, giving Z and sigma exactly. Checked:
//! - with the optimal twist (the expected future phi, including the end step), log Zhat equals
//!   log Z for every seed, in both modes, with and without a constraint;
//! - without a twist, Zhat is unbiased for Z: over N independent runs, |mean - Z| / SE < 4
//!   (SE the sample standard deviation over sqrt(N)); a false alarm has probability about
//!   6e-5 per check under normality of the mean;
//! - the same with boundary (partial) resampling and with every-n resampling;
//! - the weighted outputs of those runs estimate Z sigma(s) for each output s: the same z
//!   bound, 4.5 over the few outputs checked (those with sigma(s) >= 0.02).

mod common;

use common::count_twos_dfa;
use smc_core::prelude::*;

const V: usize = 4;
const EOS: u32 = 3;

/// One enumerated output: tokens (without the end token), finished, and its log target mass
/// log p0(s, end) + log phi(s) (-inf when not accepted).
struct Output {
    tokens: Vec<u32>,
    finished: bool,
    log_target: f64,
}

fn phi() -> Box<dyn Potential> {
    // Depends on the length too, so that where an output ends matters.
    Box::new(FnPotential::new(
        "smooth, length-aware",
        |_: &[u32], s: &[u32]| {
            0.7 * s.iter().filter(|&&x| x == 0).count() as f64 - 0.4 * s.len() as f64
                + 0.5 * f64::from(u8::from(s.last() == Some(&1)))
        },
    ))
}

/// A problem: model, prompt, maximum length, rule at the maximum, potential, constraint.
struct Problem {
    lm: TabularLm,
    prompt: Vec<u32>,
    max: usize,
    at_max: AtMaxTokens,
    potential: Box<dyn Potential>,
    constraint: Option<DfaConstraint>,
}

impl Problem {
    fn new(seed: u64, at_max: AtMaxTokens, constrained: bool) -> Self {
        Self {
            lm: TabularLm::random(V, 1, 1.0, seed),
            prompt: vec![1],
            max: 4,
            at_max,
            potential: phi(),
            // At least one 2 (the end token is handled by the driver, not the automaton).
            constraint: constrained.then(|| count_twos_dfa(V, 1)),
        }
    }

    fn end(&self) -> EndOfSequence {
        EndOfSequence::new(vec![EOS], self.at_max).unwrap()
    }

    /// log phi(s) 1[accepted].
    fn log_target_phi(&self, s: &[u32]) -> f64 {
        if self
            .constraint
            .as_ref()
            .is_some_and(|c| !c.accepts_sequence(s))
        {
            return f64::NEG_INFINITY;
        }
        self.potential
            .log_phi(&self.prompt, &TokenBuffer::from_rows(&[s.to_vec()]))
            .unwrap()[0]
    }

    /// Every output extending `start`, with its log target mass given `start`.
    fn enumerate_from(&self, start: &[u32]) -> Vec<Output> {
        let mut out = Vec::new();
        let mut stack = vec![(start.to_vec(), 0.0f64)];
        while let Some((s, lp)) = stack.pop() {
            let ctx: Vec<u32> = self.prompt.iter().chain(&s).copied().collect();
            let row = self.lm.next_log_probs(&ctx).unwrap().to_vec();
            let end_mass = lp + row[EOS as usize];
            if s.len() == self.max {
                let (mass, finished) = match self.at_max {
                    AtMaxTokens::Truncate => (lp, false),
                    AtMaxTokens::ForceEnd => (end_mass, true),
                };
                out.push(Output {
                    log_target: mass + self.log_target_phi(&s),
                    tokens: s,
                    finished,
                });
                continue;
            }
            out.push(Output {
                log_target: end_mass + self.log_target_phi(&s),
                tokens: s.clone(),
                finished: true,
            });
            for v in (0..V as u32).filter(|&v| v != EOS) {
                let mut next = s.clone();
                next.push(v);
                stack.push((next, lp + row[v as usize]));
            }
        }
        out
    }

    fn log_z(&self) -> f64 {
        log_z(&self.enumerate_from(&[]))
    }

    /// The optimal twist: log psi_t(s_{1:t}) = log of the expected future target mass after
    /// the prefix; a prefix ending in the end token is a complete output, worth phi.
    fn optimal_twist(&self) -> TabularTwist {
        TabularTwist::from_fn(V, self.max, |prefix| {
            match prefix.iter().position(|&x| x == EOS) {
                Some(i) if i + 1 == prefix.len() => self.log_target_phi(&prefix[..i]),
                Some(_) => 0.0, // after the end: never read
                None => log_z(&self.enumerate_from(prefix)),
            }
        })
    }

    fn options<'a>(
        &'a self,
        end: &'a EndOfSequence,
        twist: Option<&'a dyn Twist>,
    ) -> RunOptions<'a> {
        let mut o = RunOptions::twist(twist).with_end(end);
        if let Some(c) = &self.constraint {
            o = o.with_constraint(c);
        }
        o
    }
}

fn log_z(outputs: &[Output]) -> f64 {
    log_sum_exp(&outputs.iter().map(|o| o.log_target).collect::<Vec<_>>())
}

fn problems() -> Vec<(String, Problem)> {
    let mut v = Vec::new();
    for (seed, at_max) in [(5, AtMaxTokens::Truncate), (6, AtMaxTokens::ForceEnd)] {
        for constrained in [false, true] {
            v.push((
                format!("{at_max:?}, constraint {constrained}"),
                Problem::new(seed, at_max, constrained),
            ));
        }
    }
    v
}

#[test]
fn enumeration_is_a_distribution_of_outputs() {
    // With phi = 1 and no constraint, p0 of all outputs sums to 1 in truncate mode.
    let mut p = Problem::new(5, AtMaxTokens::Truncate, false);
    p.potential = Box::new(UnitPotential);
    assert!(p.log_z().abs() < 1e-12, "{}", p.log_z());
    let outputs = p.enumerate_from(&[]);
    // 1 + 3 + 9 + 27 finished outputs (lengths 0..3) + 81 truncated ones.
    assert_eq!(outputs.len(), 1 + 3 + 9 + 27 + 81);
    assert_eq!(outputs.iter().filter(|o| o.finished).count(), 40);
}

#[test]
fn optimal_twist_gives_exact_log_z_for_every_seed() {
    for (name, p) in problems() {
        let exact = p.log_z();
        let psi = p.optimal_twist();
        let end = p.end();
        for seed in 0..20 {
            for criterion in [Criterion::Always, Criterion::Never] {
                let config = SmcConfig::twisted(4, p.max)
                    .with_seed(seed)
                    .with_criterion(criterion);
                let out = run_smc_with(
                    &p.lm,
                    p.potential.as_ref(),
                    &p.options(&end, Some(&psi)),
                    &p.prompt,
                    &config,
                )
                .unwrap();
                assert!(
                    (out.log_z_hat - exact).abs() < 1e-9,
                    "{name}, seed {seed}, {criterion}: log Zhat {} vs log Z {exact}",
                    out.log_z_hat
                );
                for (k, tokens) in out.tokens.iter().enumerate() {
                    assert_eq!(tokens.len(), out.lengths[k]);
                    assert!(!tokens.contains(&EOS), "{name}: {tokens:?}");
                    if p.at_max == AtMaxTokens::ForceEnd {
                        assert!(out.finished[k]);
                    }
                    if !out.finished[k] {
                        assert_eq!(tokens.len(), p.max);
                    }
                }
            }
        }
    }
}

/// Runs `n` independent SMC runs and checks the unbiasedness of Zhat and of the weighted
/// outputs (see the module docs for the bounds).
fn check_unbiased(name: &str, p: &Problem, options: &RunOptions<'_>, config: SmcConfig, n: u64) {
    let outputs = p.enumerate_from(&[]);
    let log_z = log_z(&outputs);
    let z = log_z.exp();
    let mut zs = Vec::with_capacity(n as usize);
    // Per output (tokens, finished): the per-run estimates of Z sigma(s).
    let key = |t: &[u32], f: bool| (t.to_vec(), f);
    let mut mass: std::collections::HashMap<(Vec<u32>, bool), Vec<f64>> = outputs
        .iter()
        .filter(|o| (o.log_target - log_z).exp() >= 0.02)
        .map(|o| (key(&o.tokens, o.finished), Vec::new()))
        .collect();
    for seed in 0..n {
        let out = run_smc_with(
            &p.lm,
            p.potential.as_ref(),
            options,
            &p.prompt,
            &config.with_seed(seed),
        )
        .unwrap();
        let zhat = out.log_z_hat.exp();
        zs.push(zhat);
        let w = out.weights();
        for (est, _) in mass.values_mut().zip(0..) {
            est.push(0.0);
        }
        for (k, tokens) in out.tokens.iter().enumerate() {
            if let Some(est) = mass.get_mut(&key(tokens, out.finished[k])) {
                *est.last_mut().unwrap() += zhat * w[k];
            }
        }
    }
    let z_score = |xs: &[f64], target: f64| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
        (m - target) / (var / xs.len() as f64).sqrt()
    };
    let zz = z_score(&zs, z);
    assert!(
        zz.abs() < 4.0,
        "{name}: Zhat mean off by {zz:.2} SE (Z = {z})"
    );
    assert!(!mass.is_empty());
    for ((tokens, finished), est) in &mass {
        let target = outputs
            .iter()
            .find(|o| &o.tokens == tokens && o.finished == *finished)
            .map(|o| o.log_target.exp())
            .unwrap();
        let zz = z_score(est, target);
        assert!(
            zz.abs() < 4.5,
            "{name}: output {tokens:?} (finished {finished}) off by {zz:.2} SE"
        );
    }
}

#[test]
fn zhat_and_outputs_are_unbiased_without_a_twist() {
    for (name, p) in problems() {
        let end = p.end();
        for proposal in [Proposal::Base, Proposal::Twisted] {
            let config = SmcConfig::bootstrap(4, p.max).with_criterion(Criterion::Always);
            let config = SmcConfig { proposal, ..config };
            check_unbiased(
                &format!("{name}, {proposal:?}"),
                &p,
                &p.options(&end, None),
                config,
                4000,
            );
        }
    }
}

#[test]
fn boundary_and_periodic_resampling_keep_zhat_unbiased() {
    // Boundaries: after token 1 (and finished particles); partial resampling among them.
    let boundaries = TokenMask::from_ids(V, [1]).unwrap();
    for (name, p) in problems() {
        let end = p.end();
        let psi = p.optimal_twist().perturbed(0.5, 3);
        for (label, twist) in [
            ("no twist", None),
            ("perturbed twist", Some(&psi as &dyn Twist)),
        ] {
            let options = p.options(&end, twist).with_boundaries(&boundaries);
            for criterion in [Criterion::Always, Criterion::EssBelow(0.7)] {
                let config = SmcConfig::twisted(6, p.max).with_criterion(criterion);
                check_unbiased(
                    &format!("{name}, {label}, boundaries, {criterion}"),
                    &p,
                    &options,
                    config,
                    3000,
                );
            }
            let config = SmcConfig::twisted(6, p.max).with_criterion(Criterion::Every(2));
            check_unbiased(
                &format!("{name}, {label}, every:2"),
                &p,
                &p.options(&end, twist),
                config,
                3000,
            );
        }
    }
}

#[test]
fn boundaries_resample_only_particles_at_a_boundary() {
    let p = Problem::new(5, AtMaxTokens::Truncate, false);
    let end = p.end();
    let none = TokenMask::none(V);
    let options = p.options(&end, None).with_boundaries(&none);
    for seed in 0..20 {
        let out = run_smc_with(
            &p.lm,
            p.potential.as_ref(),
            &options,
            &p.prompt,
            &SmcConfig::bootstrap(8, p.max).with_seed(seed),
        )
        .unwrap();
        // Only finished particles may be resampled: every unfinished one keeps its lineage.
        for (t, a) in out.ancestors.iter().enumerate() {
            for (k, &parent) in a.iter().enumerate() {
                if parent != k {
                    assert!(out.steps[t].resampled, "seed {seed}");
                }
            }
        }
    }
    // Conditional SMC refuses boundaries.
    let e = run_csmc_with(
        &p.lm,
        p.potential.as_ref(),
        &options,
        &p.prompt,
        &SmcConfig::bootstrap(4, p.max),
        &[EOS],
    )
    .unwrap_err();
    assert!(e.to_string().contains("boundaries"), "{e}");
}

#[test]
fn csmc_with_variable_length_references() {
    for (name, p) in problems() {
        let end = p.end();
        let options = p.options(&end, None);
        let config = SmcConfig::bootstrap(4, p.max).with_seed(3);
        // A finished reference of length 2 containing a 2 (accepted by the constraint).
        let out = run_csmc_with(
            &p.lm,
            p.potential.as_ref(),
            &options,
            &p.prompt,
            &config,
            &[2, 0, EOS],
        )
        .unwrap();
        assert!(out.log_z_hat.is_finite(), "{name}");
        // An end token in the middle is an error naming the position.
        let e = run_csmc_with(
            &p.lm,
            p.potential.as_ref(),
            &options,
            &p.prompt,
            &config,
            &[2, EOS, 0],
        )
        .unwrap_err();
        assert!(e.to_string().contains("ends at token 2"), "{name}: {e}");
        // A reference without an end token must have T tokens, and only when truncating.
        let r = run_csmc_with(
            &p.lm,
            p.potential.as_ref(),
            &options,
            &p.prompt,
            &config,
            &[2, 0, 0, 1],
        );
        assert_eq!(
            r.is_ok(),
            p.at_max == AtMaxTokens::Truncate,
            "{name}: {r:?}"
        );
    }
}

#[test]
fn a_prefix_twist_keeps_zhat_unbiased_and_zero_is_an_error() {
    // rho: a smooth positive score of the prefix, as a classifier on partial text would be.
    let rho = FnPotential::new("prefix score", |_: &[u32], s: &[u32]| {
        0.8 * s.iter().filter(|&&x| x == 0).count() as f64
            - 0.3 * s.iter().filter(|&&x| x == 2).count() as f64
    });
    for (name, p) in problems() {
        let end = p.end();
        for stride in [1, 2] {
            let options = p.options(&end, None).with_prefix_twist(&rho, stride);
            for proposal in [Proposal::Base, Proposal::Twisted] {
                let config = SmcConfig {
                    proposal,
                    ..SmcConfig::bootstrap(4, p.max)
                };
                check_unbiased(
                    &format!("{name}, prefix twist stride {stride}, {proposal:?}"),
                    &p,
                    &options,
                    config,
                    3000,
                );
            }
        }
    }
    // A fixed-length run (no end token) with a prefix twist is unbiased too.
    let mut p = Problem::new(7, AtMaxTokens::Truncate, false);
    p.constraint = None;
    let fixed = RunOptions::default().with_prefix_twist(&rho, 1);
    let exact = Enumeration::new(&p.lm, &p.prompt, p.max, p.potential.as_ref())
        .unwrap()
        .log_z();
    let n = 3000;
    let zs: Vec<f64> = (0..n)
        .map(|seed| {
            run_smc_with(
                &p.lm,
                p.potential.as_ref(),
                &fixed,
                &p.prompt,
                &SmcConfig::bootstrap(4, p.max).with_seed(seed),
            )
            .unwrap()
            .log_z_hat
            .exp()
        })
        .collect();
    let m = zs.iter().sum::<f64>() / n as f64;
    let sd = (zs.iter().map(|z| (z - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let z = (m - exact.exp()) / (sd / (n as f64).sqrt());
    assert!(
        z.abs() < 4.0,
        "fixed length with a prefix twist: off by {z:.2} SE"
    );
    // rho = 0 on a prefix is an error naming the prefix twist.
    let zero = FnPotential::new("zero on 0", |_: &[u32], s: &[u32]| {
        if s.contains(&0) {
            f64::NEG_INFINITY
        } else {
            0.0
        }
    });
    let e = run_smc_with(
        &p.lm,
        p.potential.as_ref(),
        &RunOptions::default().with_prefix_twist(&zero, 1),
        &p.prompt,
        &SmcConfig::bootstrap(16, p.max),
    )
    .unwrap_err();
    assert!(e.to_string().contains("prefix twist"), "{e}");
}
