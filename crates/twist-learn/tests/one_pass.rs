//! A training batch built from what the sampling run recorded (one base-model pass per update)
//! equals the batch of a second, teacher-forced pass: exactly on the tabular model (whose
//! teacher-forced pass replays a decoding session), to float rounding on a burn model (a
//! cached decoding step and a full forward pass round differently). Conditional SMC, which
//! resamples at every step, checks that the rows follow each final particle's lineage.

use std::path::PathBuf;

use lm_burn::heads::{HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, default_device};
use smc_core::prelude::*;
use twist_learn::*;

fn cfg(method: Method, batch: BatchSource, horizon: usize, k: usize) -> TrainConfig {
    TrainConfig {
        method,
        steps: 4,
        batch_size: k,
        horizon,
        learning_rate: 1e-2,
        seed: 11,
        start_step: 0,
        batch,
    }
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

/// Compares two batches: same sequences and log phi, tables within `tol` (0: bit for bit).
fn assert_same_batch(a: &Batch, b: &Batch, tol: f64, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: sequences");
    assert_eq!(a.log_phi, b.log_phi, "{what}: log phi");
    assert_eq!(a.horizon(), b.horizon());
    for t in 0..a.horizon() {
        let d = max_diff(a.log_p0[t].as_slice(), b.log_p0[t].as_slice());
        assert!(d <= tol, "{what}: log p0 at step {} differs by {d}", t + 1);
        let d = max_diff(a.raw[t].as_slice(), b.raw[t].as_slice());
        assert!(
            d <= tol,
            "{what}: raw twist at step {} differs by {d}",
            t + 1
        );
        match (&a.hidden[t], &b.hidden[t]) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                let x: Vec<f64> = x.data.iter().map(|&v| v.into()).collect();
                let y: Vec<f64> = y.data.iter().map(|&v| v.into()).collect();
                let d = max_diff(&x, &y);
                assert!(
                    d <= tol,
                    "{what}: hidden states at step {} differ by {d}",
                    t + 1
                );
            }
            _ => panic!("{what}: hidden states in one batch only"),
        }
    }
}

#[allow(clippy::type_complexity)]
fn tabular() -> (TabularLm, FnPotential<impl Fn(&[u32], &[u32]) -> f64>) {
    let lm = TabularLm::random(3, 1, 1.2, 7);
    let phi = FnPotential::new("classifier", |_: &[u32], s: &[u32]| {
        let score: f64 = s.iter().map(|&x| [1.3, -0.9, 0.4][x as usize]).sum();
        smc_core::logspace::log_sigmoid(score - 1.5)
    });
    (lm, phi)
}

#[test]
fn tabular_batches_from_the_sampling_run_equal_teacher_forced_ones_bit_for_bit() {
    let (lm, phi) = tabular();
    let horizon = 3;
    for method in Method::ALL {
        let twist = TabularTrainable::new(
            3,
            horizon,
            Parameterization::for_method(method),
            0.7,
            3,
            AdamConfig::default(),
        );
        for seed in 0..4 {
            let (a, ra) = draw_batch(
                &lm,
                &twist,
                &phi,
                &[],
                &cfg(method, BatchSource::Sampled, horizon, 8),
                seed,
            )
            .unwrap();
            let (b, rb) = draw_batch(
                &lm,
                &twist,
                &phi,
                &[],
                &cfg(method, BatchSource::TeacherForced, horizon, 8),
                seed,
            )
            .unwrap();
            assert_eq!(ra, rb);
            assert_same_batch(&a, &b, 0.0, &format!("{method:?} seed {seed}"));
            let (la, ga) = loss_and_grads(method, &a, &targets(&a, ra));
            let (lb, gb) = loss_and_grads(method, &b, &targets(&b, rb));
            assert_eq!(la, lb, "{method:?}");
            assert_eq!(ga, gb, "{method:?}");
        }
    }
}

#[test]
fn tabular_training_is_the_same_run_from_either_batch_source() {
    let (lm, phi) = tabular();
    let horizon = 3;
    let train_both = |method: Method, gibbs: bool| {
        let run = |batch| {
            let mut twist = TabularTrainable::new(
                3,
                horizon,
                Parameterization::for_method(method),
                0.3,
                1,
                AdamConfig::default(),
            );
            let c = cfg(method, batch, horizon, 6);
            let noop = |_: usize, _: &TabularTrainable, _: f64| Ok::<(), TrainError>(());
            let records = if gibbs {
                train_ctl_particle_gibbs(&lm, &mut twist, &phi, &[], &c, None, noop)
            } else {
                train(&lm, &mut twist, &phi, &[], &c, noop)
            }
            .unwrap();
            (records, twist.log_psi_tables())
        };
        let (a, b) = (run(BatchSource::Sampled), run(BatchSource::TeacherForced));
        assert_eq!(a.0, b.0, "{method:?} (gibbs {gibbs}): losses");
        assert_eq!(a.1, b.1, "{method:?} (gibbs {gibbs}): trained twist");
    };
    for method in Method::ALL {
        train_both(method, false);
    }
    // Conditional SMC positives: resampling at every step, rows gathered along lineages.
    train_both(Method::Ctl, true);
}

#[test]
fn tabular_replay_training_is_the_same_run_from_either_batch_source() {
    // Replayed positives are teacher-forced either way (in the conditional-SMC form they are
    // that run's particles, recorded or teacher-forced like any draw); the negatives' rows
    // come from their sampling run or from a teacher-forced pass.
    let (lm, phi) = tabular();
    let horizon = 3;
    let pool = vec![vec![0, 1, 2], vec![2, 2, 0], vec![1, 0, 1], vec![2, 1, 1]];
    let run = |batch, form| {
        let mut twist = TabularTrainable::new(
            3,
            horizon,
            Parameterization::Identity,
            0.3,
            1,
            AdamConfig::default(),
        );
        let noop = |_: usize, _: &TabularTrainable, _: f64| Ok::<(), TrainError>(());
        let c = cfg(Method::Ctl, batch, horizon, 6);
        let records = train_ctl_replay(&lm, &mut twist, &phi, &[], &c, &pool, form, noop).unwrap();
        (records, twist.log_psi_tables())
    };
    for form in [ReplayForm::Direct, ReplayForm::Csmc] {
        let (a, b) = (
            run(BatchSource::Sampled, form),
            run(BatchSource::TeacherForced, form),
        );
        assert_eq!(a.0, b.0, "{form:?}: losses");
        assert_eq!(a.1, b.1, "{form:?}: trained twist");
    }
}

fn tiny_llama(dir: &str) -> BurnLm {
    BurnLm::from_hf_dir(
        &manifest_dir()
            .join("../../testdata/reference/tiny-models")
            .join(dir),
        &default_device(),
    )
    .unwrap()
}

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

const PROMPT: [u32; 3] = [5, 17, 250];

type Phi = FnPotential<fn(&[u32], &[u32]) -> f64>;

fn potential() -> Phi {
    FnPotential::new("p(s2 < 40)", |_: &[u32], s: &[u32]| {
        smc_core::logspace::log_sigmoid(if s[1] < 40 { 3.0 } else { -3.0 })
    })
}

/// A head with every parameter away from zero (so that no gradient vanishes by symmetry).
fn random_head(lm: &BurnLm, kind: HeadKind, rank: Option<usize>, seed: u64) -> TwistHead {
    random_gated_head(lm, kind, rank, None, seed)
}

fn random_gated_head(
    lm: &BurnLm,
    kind: HeadKind,
    rank: Option<usize>,
    gate: Option<lm_burn::heads::BiasGate>,
    seed: u64,
) -> TwistHead {
    let mut config = HeadConfig::for_model(lm, kind, None);
    config.rank = rank;
    config.bias_gate = gate;
    let mut head = TwistHead::new(lm, config, seed, &default_device().autodiff()).unwrap();
    let mut rng = rng_from_seed(seed);
    for (name, values) in head.parameter_values().unwrap() {
        use rand::RngExt;
        let scale = if kind == HeadKind::Embedding {
            0.2
        } else {
            0.05
        };
        let v: Vec<f32> = values
            .iter()
            .map(|_| (scale * (rng.random::<f64>() - 0.5)) as f32)
            .collect();
        head.set_parameter(&name, &v).unwrap();
    }
    head
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1e-12) as f64;
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y).abs() as f64) / scale)
        .fold(0.0, f64::max)
}

#[test]
fn burn_batches_from_the_sampling_run_match_teacher_forced_ones_to_float_rounding() {
    let lm = tiny_llama("llama-tied");
    let phi = potential();
    let horizon = 3;
    for (kind, rank, gate) in [
        (HeadKind::Linear, None, None),
        (HeadKind::Embedding, None, None),
        (HeadKind::Embedding, Some(4), None),
        (
            HeadKind::Embedding,
            Some(4),
            Some(lm_burn::heads::BiasGate::Sigmoid),
        ),
    ] {
        for method in Method::ALL {
            let param = Parameterization::for_method(method);
            let twist = HeadTrainable::new(
                random_gated_head(&lm, kind, rank, gate, 2),
                param,
                AdamConfig::default(),
            );
            let what = format!("{kind:?} {rank:?} {gate:?} {method:?}");
            let (a, ra) = draw_batch(
                &lm,
                &twist,
                &phi,
                &PROMPT,
                &cfg(method, BatchSource::Sampled, horizon, 8),
                5,
            )
            .unwrap();
            let (b, rb) = draw_batch(
                &lm,
                &twist,
                &phi,
                &PROMPT,
                &cfg(method, BatchSource::TeacherForced, horizon, 8),
                5,
            )
            .unwrap();
            assert_eq!(ra, rb);
            assert_same_batch(&a, &b, 1e-4, &what);
            let (la, ga) = loss_and_grads(method, &a, &targets(&a, ra));
            let (lb, gb) = loss_and_grads(method, &b, &targets(&b, rb));
            assert!(
                (la - lb).abs() <= 1e-5 * (1.0 + la.abs()),
                "{what}: {la} vs {lb}"
            );
            for (x, y) in ga.iter().zip(&gb) {
                let d = max_diff(x.as_slice(), y.as_slice());
                assert!(
                    d <= 1e-5,
                    "{what}: gradients w.r.t. raw outputs differ by {d}"
                );
            }
            let pa = twist.parameter_gradients(&a, &ga).unwrap();
            let pb = twist.parameter_gradients(&b, &gb).unwrap();
            for ((name, x), (_, y)) in pa.iter().zip(&pb) {
                let d = max_rel(x, y);
                assert!(
                    d <= 1e-3,
                    "{what}: gradient of {name} differs by {d} (relative)"
                );
            }
        }
    }
}

#[test]
fn burn_conditional_smc_updates_match_across_batch_sources() {
    let lm = tiny_llama("llama-tied");
    let phi = potential();
    let horizon = 3;
    let run = |batch| {
        let mut twist = HeadTrainable::new(
            random_head(&lm, HeadKind::Embedding, Some(4), 3),
            Parameterization::Identity,
            AdamConfig::default(),
        );
        let c = cfg(Method::Ctl, batch, horizon, 6);
        let records =
            train_ctl_particle_gibbs(&lm, &mut twist, &phi, &PROMPT, &c, None, |_, _, _| {
                Ok::<(), TrainError>(())
            })
            .unwrap();
        (records, twist.head().parameter_values().unwrap())
    };
    let (a, b) = (run(BatchSource::Sampled), run(BatchSource::TeacherForced));
    for (x, y) in a.0.iter().zip(&b.0) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-5 * (1.0 + x.loss.abs()),
            "{x:?} vs {y:?}"
        );
    }
    for ((name, x), (_, y)) in a.1.iter().zip(&b.1) {
        // Adam moves each weight by about the learning rate whatever the gradient's size, so
        // rounding differences in tiny gradients show at that scale.
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d <= 1e-3,
            "{name}: parameters differ by {d} after 4 updates"
        );
    }
}
