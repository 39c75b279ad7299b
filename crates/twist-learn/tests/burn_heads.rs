//! All five methods train a twist head on a burn language model (the tiny random Llama of
//! testdata/reference, V = 320, T = 2: 102,400 outputs, so sigma and the KLs are exact), and a
//! trained head saved to disk loads back and drives twisted SMC identically.

use std::path::PathBuf;

use lm_burn::heads::{HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, default_device};
use smc_core::prelude::*;
use twist_learn::*;

fn tiny_llama() -> BurnLm {
    BurnLm::from_hf_dir(
        &manifest_dir().join("../../testdata/reference/tiny-models/llama"),
        &default_device(),
    )
    .unwrap()
}

/// A classifier-like phi = p(c | s) in (0, 1): c is likely when the second token is one of the
/// 40 smallest ids (about an eighth of the vocabulary).
type Phi = FnPotential<fn(&[u32], &[u32]) -> f64>;

fn potential() -> Phi {
    FnPotential::new("p(s2 < 40)", |_: &[u32], s: &[u32]| {
        smc_core::logspace::log_sigmoid(if s[1] < 40 { 3.0 } else { -3.0 })
    })
}

const PROMPT: [u32; 3] = [5, 17, 250];
const T: usize = 2;

fn exact_kls(
    lm: &BurnLm,
    exact: &Enumeration,
    twist: Option<&dyn Twist>,
    proposal: Proposal,
) -> (f64, f64) {
    let log_q = exact.proposal_log_q(lm, &PROMPT, twist, proposal).unwrap();
    (exact.kl_q_sigma(&log_q), exact.kl_sigma_q(&log_q))
}

fn head(lm: &BurnLm, kind: HeadKind, seed: u64) -> TwistHead {
    TwistHead::new(
        lm,
        HeadConfig::for_model(lm, kind, None),
        seed,
        &default_device().autodiff(),
    )
    .unwrap()
}

#[test]
fn every_method_trains_a_head_on_a_burn_lm_and_cuts_both_exact_kls() {
    let lm = tiny_llama();
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, T, &phi).unwrap();
    let (base_qs, base_sq) = exact_kls(&lm, &exact, None, Proposal::Base);
    // One learning rate for every method (SIXO diverges at 5e-3 on this head; 1e-3 suits all).
    for method in Method::ALL {
        let param = Parameterization::for_method(method);
        let mut twist =
            HeadTrainable::new(head(&lm, HeadKind::Linear, 1), param, AdamConfig::default());
        let cfg = TrainConfig {
            method,
            steps: 600,
            batch_size: 32,
            horizon: T,
            learning_rate: 1e-3,
            seed: 3,
            start_step: 0,
            batch: BatchSource::Sampled,
        };
        train(&lm, &mut twist, &phi, &PROMPT, &cfg, |_, _, _| {
            Ok::<(), TrainError>(())
        })
        .unwrap();
        let (qs, sq) = exact_kls(&lm, &exact, Some(&twist), Proposal::Twisted);
        println!(
            "{method:?}: KL(q||sigma) {qs:.4} (p0 {base_qs:.4}), KL(sigma||q) {sq:.4} (p0 {base_sq:.4})"
        );
        // The bound is not statistical: it says that training cuts both KLs by 40%. Measured
        // over master seeds 0..8 (derived update seeds): SIXO's KL(q||sigma) ratio is
        // 0.51-0.53 (slowest at this learning rate), every other ratio <= 0.49. An earlier bound
        // of 0.5 held for SIXO only on one lucky seed (0.496) of the old `seed + i` scheme.
        assert!(
            qs < 0.6 * base_qs && sq < 0.6 * base_sq,
            "{method:?}: {qs}, {sq} vs {base_qs}, {base_sq}"
        );
    }
}

#[test]
fn a_trained_mlp_head_saves_loads_and_drives_twisted_smc_identically() {
    let lm = tiny_llama();
    let phi = potential();
    let mut twist = HeadTrainable::new(
        head(&lm, HeadKind::Mlp, 2),
        Parameterization::Identity,
        AdamConfig::default(),
    );
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 20,
        batch_size: 16,
        horizon: T,
        learning_rate: 0.01,
        seed: 5,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(&lm, &mut twist, &phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    twist
        .head()
        .save(&path, &serde_json::json!({ "method": "ctl", "step": 20 }))
        .unwrap();
    let (loaded, meta) = TwistHead::load(&path, &default_device()).unwrap();
    assert_eq!(meta["step"], 20);
    let run = |tw: &dyn Twist| {
        run_smc(
            &lm,
            Some(tw),
            &phi,
            &PROMPT,
            &SmcConfig::twisted(16, T).with_seed(9),
        )
        .unwrap()
    };
    let (a, b) = (run(&twist), run(&loaded));
    assert_eq!(a.tokens, b.tokens);
    assert!((a.log_z_hat - b.log_z_hat).abs() < 1e-9);
    // Nothing but the two files was written.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn resuming_a_checkpoint_restores_adam_so_training_continues_identically() {
    let lm = tiny_llama();
    let phi = potential();
    let dev = default_device().autodiff();
    // The second call continues the run: updates 4 to 6 of master seed 0.
    let cfg = |steps, start_step| TrainConfig {
        method: Method::Ctl,
        steps,
        batch_size: 8,
        horizon: T,
        learning_rate: 1e-2,
        seed: 0,
        start_step,
        batch: BatchSource::Sampled,
    };
    // Straight through: 6 updates.
    let mut straight = HeadTrainable::new(
        head(&lm, HeadKind::Linear, 4),
        Parameterization::Identity,
        AdamConfig::default(),
    );
    train(&lm, &mut straight, &phi, &PROMPT, &cfg(3, 0), |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    train(&lm, &mut straight, &phi, &PROMPT, &cfg(3, 3), |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    // 3 updates, checkpoint, resume, 3 more.
    let mut first = HeadTrainable::new(
        head(&lm, HeadKind::Linear, 4),
        Parameterization::Identity,
        AdamConfig::default(),
    );
    train(&lm, &mut first, &phi, &PROMPT, &cfg(3, 0), |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    first
        .save_checkpoint(&path, &serde_json::json!({ "step": 3 }))
        .unwrap();
    let (mut resumed, meta) = HeadTrainable::resume(
        &path,
        &dev,
        Parameterization::Identity,
        AdamConfig::default(),
    )
    .unwrap();
    assert_eq!(meta["step"], 3);
    train(&lm, &mut resumed, &phi, &PROMPT, &cfg(3, 3), |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    let run = |tw: &dyn Twist| {
        run_smc(
            &lm,
            Some(tw),
            &phi,
            &PROMPT,
            &SmcConfig::twisted(16, T).with_seed(1),
        )
        .unwrap()
        .log_z_hat
    };
    assert!(
        (run(&straight) - run(&resumed)).abs() < 1e-4,
        "{} vs {}",
        run(&straight),
        run(&resumed)
    );
}

#[test]
fn a_saved_fudge_head_keeps_its_log_sigmoid_parameterisation() {
    let lm = tiny_llama();
    let phi = potential();
    let mut twist = HeadTrainable::new(
        head(&lm, HeadKind::Linear, 6),
        Parameterization::LogSigmoid,
        AdamConfig::default(),
    );
    let cfg = TrainConfig {
        method: Method::Fudge,
        steps: 5,
        batch_size: 8,
        horizon: T,
        learning_rate: 1e-2,
        seed: 2,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(&lm, &mut twist, &phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fudge.safetensors");
    twist
        .save_checkpoint(&path, &serde_json::json!({}))
        .unwrap();
    let (loaded, _) = TwistHead::load(&path, &default_device()).unwrap();
    let run = |tw: &dyn Twist| {
        run_smc(
            &lm,
            Some(tw),
            &phi,
            &PROMPT,
            &SmcConfig::twisted(8, T).with_seed(3),
        )
        .unwrap()
        .log_z_hat
    };
    assert!((run(&twist) - run(&loaded)).abs() < 1e-9);
}

#[test]
fn a_zero_output_head_starts_exactly_at_p0_and_ctl_moves_it_towards_sigma() {
    let lm = tiny_llama();
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, T, &phi).unwrap();
    let (base_qs, base_sq) = exact_kls(&lm, &exact, None, Proposal::Base);
    let mut config = HeadConfig::for_model(&lm, HeadKind::Mlp, None);
    config.zero_output = true;
    let head = TwistHead::new(&lm, config, 1, &default_device().autodiff()).unwrap();
    let mut twist = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
    let (qs, sq) = exact_kls(&lm, &exact, Some(&twist), Proposal::Twisted);
    assert!(
        (qs - base_qs).abs() < 1e-6 && (sq - base_sq).abs() < 1e-6,
        "{qs} {sq}"
    );
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 20,
        batch_size: 32,
        horizon: T,
        learning_rate: 1e-3,
        seed: 3,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(&lm, &mut twist, &phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    let (qs, sq) = exact_kls(&lm, &exact, Some(&twist), Proposal::Twisted);
    println!("20 CTL updates from zero: {qs:.4} / {sq:.4} (p0 {base_qs:.4} / {base_sq:.4})");
    assert!(
        qs < base_qs && sq < base_sq,
        "{qs} {sq} vs {base_qs} {base_sq}"
    );
}

/// This crate's directory, read when the test runs (cargo sets CARGO_MANIFEST_DIR for test
/// binaries): a binary reused from a shared target directory that another checkout built must
/// not read the test data of that other checkout.
#[test]
fn infilling_evaluation_is_the_evaluation_api_averaged_over_conditioning_sequences() {
    use smc_bounds::{EvalPlan, Sampler};
    use smc_core::feynman_kac::Resampling;
    use smc_core::seed::{derive, label};
    let lm = tiny_llama();
    let (tasks, cond_len) = (3, 1);
    let plan = infilling_eval_plan(8, 7);
    let got = evaluate_infilling_with(&lm, None, &PROMPT, T, cond_len, tasks, &plan).unwrap();
    // The same numbers by hand: pairs from EVAL_PAIRS, task i from EVAL_TASK i.
    let pairs = smc_bounds::joint_ancestral(
        &lm,
        &PROMPT,
        T,
        cond_len,
        tasks,
        &mut rng_from_seed(derive(7, label::EVAL_PAIRS, 0)),
    )
    .unwrap();
    let mut kl_q_sigma = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let phi =
            lm_burn::infilling::InfillingPotential::new(&lm, pair.conditioning.clone().unwrap());
        let sampler = Sampler {
            lm: &lm,
            prompt: &PROMPT,
            horizon: T,
            potential: &phi,
            twist: None,
            proposal: Proposal::Base,
            resampling: Resampling::default(),
        };
        let e = sampler
            .evaluate(
                std::slice::from_ref(&pair.tokens),
                &EvalPlan {
                    seed: derive(7, label::EVAL_TASK, i as u64),
                    ..plan.clone()
                },
            )
            .unwrap();
        kl_q_sigma.push(e.kl.kl_q_sigma.mean);
    }
    let want = smc_bounds::Estimate::from_values(&kl_q_sigma);
    assert_eq!(got.kl_q_sigma, want);
    assert_eq!((got.f_q.n, got.f_q.df), (tasks, (tasks - 1) as f64));
    for e in [
        got.kl_sigma_q,
        got.log_z_lower,
        got.log_z_upper,
        got.g_q,
        got.kl_sum,
    ] {
        assert!(e.mean.is_finite() && e.se.is_finite(), "{e}");
    }
    assert_eq!(
        got,
        evaluate_infilling(&lm, None, &PROMPT, T, cond_len, tasks, 8, 7).unwrap()
    );
}

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn an_embedding_heads_bias_takes_its_own_learning_rate() {
    // Adam's first step moves every parameter with a non-zero gradient by its learning rate
    // times g / (|g| + eps), i.e. by about the learning rate: so after one update b has moved
    // by about bias_lr and A by about lr.
    let lm = tiny_llama();
    let phi = potential();
    let (lr, bias_lr) = (1e-4, 1e-2);
    let max_moves = |bias_lr: Option<f64>| {
        let values = one_update(&lm, &phi, lr, bias_lr, BiasOptimizer::Adam);
        let max_abs = |name: &str| max_abs_of(&values, name);
        (max_abs("factors.0"), max_abs("out_bias"))
    };
    let (a, b) = max_moves(Some(bias_lr));
    assert!(a > 0.5 * lr && a <= 1.001 * lr, "A moved by {a}");
    assert!(b > 0.5 * bias_lr && b <= 1.001 * bias_lr, "b moved by {b}");
    let (a_common, b_common) = max_moves(None);
    assert!((a_common - a).abs() <= 1e-9, "{a_common} vs {a}");
    assert!(
        b_common > 0.5 * lr && b_common <= 1.001 * lr,
        "b moved by {b_common}"
    );
}

/// One CTL update of a fresh embedding head from zero; its parameters' values after it.
fn one_update(
    lm: &BurnLm,
    phi: &Phi,
    lr: f64,
    bias_lr: Option<f64>,
    optimizer: BiasOptimizer,
) -> Vec<(String, Vec<f32>)> {
    let mut twist = HeadTrainable::new(
        head(lm, HeadKind::Embedding, 1),
        Parameterization::Identity,
        AdamConfig::default(),
    )
    .with_bias_lr(bias_lr)
    .with_bias_optimizer(optimizer);
    ctl_update_once(lm, phi, &mut twist, lr);
    // Every parameter starts at zero, so the values are the moves.
    twist.head().parameter_values().unwrap()
}

/// The largest |value| of the parameter `name` among `values`.
fn max_abs_of(values: &[(String, Vec<f32>)], name: &str) -> f64 {
    values
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.iter().map(|x| f64::from(x.abs())))
        .fold(0.0, f64::max)
}

/// One CTL update (K = 16, seed 4) of `twist` at learning rate `lr`.
fn ctl_update_once(lm: &BurnLm, phi: &Phi, twist: &mut HeadTrainable, lr: f64) {
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 1,
        batch_size: 16,
        horizon: T,
        learning_rate: lr,
        seed: 4,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(lm, twist, phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
}

#[test]
fn an_sgd_bias_moves_by_its_gradient() {
    // CTL's gradient for b_v is the gap between v's weighted frequency among the negatives
    // and among the positives, averaged over t: both frequencies sum to one at every t, so
    // after one plain gradient step b sums to zero, no b_v moves by more than the rate, and
    // the move scales exactly with the rate (below the clip: a step of at most
    // MAX_SGD_BIAS_STEP, i.e. gradients up to 1 pass at rates up to that). Adam's step has
    // none of these properties.
    let lm = tiny_llama();
    let phi = potential();
    let bias = |bias_lr: f64, optimizer| {
        let values = one_update(&lm, &phi, 1e-4, Some(bias_lr), optimizer);
        values
            .into_iter()
            .find(|(n, _)| n == "out_bias")
            .map(|(_, v)| v)
            .unwrap()
    };
    let (r1, r2) = (MAX_SGD_BIAS_STEP / 2.0, MAX_SGD_BIAS_STEP);
    let (b1, b2) = (bias(r1, BiasOptimizer::Sgd), bias(r2, BiasOptimizer::Sgd));
    let sum: f64 = b1.iter().map(|&x| f64::from(x)).sum();
    let max = b1.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(sum.abs() < 1e-6, "b sums to {sum}");
    assert!(max > 0.0 && f64::from(max) <= r1, "b moved by up to {max}");
    for (x, y) in b1.iter().zip(&b2) {
        assert!((2.0 * x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
    }
    // At a rate a thousand times larger the clip holds every move to MAX_SGD_BIAS_STEP.
    let big = bias(1e3, BiasOptimizer::Sgd);
    let big_max = big.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(
        f64::from(big_max) <= MAX_SGD_BIAS_STEP * (1.0 + 1e-6) && big_max > 0.0,
        "b moved by up to {big_max}"
    );
    let adam = bias(0.5, BiasOptimizer::Adam);
    let adam_max = adam.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(adam_max > 0.25, "Adam moved b by up to {adam_max}");
}

#[test]
fn a_bias_gate_takes_its_own_learning_rate() {
    // As for b above: Adam's first step moves w and c by about their rate. b starts away from
    // zero, since the gate's gradient is proportional to it.
    let lm = tiny_llama();
    let phi = potential();
    let (lr, gate_lr) = (1e-4, 1e-2);
    let moves = |gate_lr: Option<f64>| {
        let mut config = HeadConfig::for_model(&lm, HeadKind::Embedding, None);
        config.bias_gate = Some(lm_burn::heads::BiasGate::Sigmoid);
        let mut h = TwistHead::new(&lm, config, 1, &default_device().autodiff()).unwrap();
        let b: Vec<f32> = (0..lm.dims().vocab)
            .map(|v| ((v * 37 % 101) as f32 / 101.0 - 0.5) * 0.5)
            .collect();
        h.set_parameter("out_bias", &b).unwrap();
        let mut twist = HeadTrainable::new(h, Parameterization::Identity, AdamConfig::default())
            .with_gate_lr(gate_lr);
        ctl_update_once(&lm, &phi, &mut twist, lr);
        let values = twist.head().parameter_values().unwrap();
        let max_abs = |name: &str| max_abs_of(&values, name);
        (
            max_abs("factors.0"),
            max_abs("gate.weight"),
            max_abs("gate.bias"),
        )
    };
    let (a, w, c) = moves(Some(gate_lr));
    assert!(a > 0.5 * lr && a <= 1.001 * lr, "A moved by {a}");
    assert!(w > 0.5 * gate_lr && w <= 1.001 * gate_lr, "w moved by {w}");
    assert!(c > 0.5 * gate_lr && c <= 1.001 * gate_lr, "c moved by {c}");
    let (a_common, w_common, _) = moves(None);
    assert!((a_common - a).abs() <= 1e-9, "{a_common} vs {a}");
    assert!(
        w_common > 0.5 * lr && w_common <= 1.001 * lr,
        "w moved by {w_common}"
    );
}
