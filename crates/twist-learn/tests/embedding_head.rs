//! Heads through the base model's frozen output embedding, raw(v) = e_v · (A x) + b_v (full or
//! low-rank A), on the tiny random Llama with tied embeddings (V = 320, T = 2: every output
//! enumerated, so sigma and the KLs are exact): they start exactly at p0, their parameter
//! gradients match finite differences for every loss (as do the linear and MLP heads'), every
//! method trains them to cut both exact KLs, and checkpoints load back only onto their model.
//! The same for heads whose bias is gated by the input, raw(v) = e_v · (A x) + g(x) b_v.

use lm_burn::heads::{
    BiasGate, CondEncoding, HeadConfig, HeadKind, TwistHead, encode_conditioning,
};
use lm_burn::{BurnLm, LmError, default_device};
use smc_core::prelude::*;
use twist_learn::*;

mod common;
use common::{randomise, tiny};

type Phi = FnPotential<fn(&[u32], &[u32]) -> f64>;

/// phi = p(c | s) in (0, 1): c is likely when the second token is one of the 40 smallest ids.
fn potential() -> Phi {
    FnPotential::new("p(s2 < 40)", |_: &[u32], s: &[u32]| {
        smc_core::logspace::log_sigmoid(if s[1] < 40 { 3.0 } else { -3.0 })
    })
}

const PROMPT: [u32; 3] = [5, 17, 250];
const T: usize = 2;

fn head(lm: &BurnLm, kind: HeadKind, rank: Option<usize>, seed: u64) -> TwistHead {
    gated_head(lm, kind, rank, None, seed)
}

fn gated_head(
    lm: &BurnLm,
    kind: HeadKind,
    rank: Option<usize>,
    gate: Option<BiasGate>,
    seed: u64,
) -> TwistHead {
    let mut config = HeadConfig::for_model(lm, kind, None);
    config.rank = rank;
    config.bias_gate = gate;
    TwistHead::new(lm, config, seed, &default_device().autodiff()).unwrap()
}

const GATES: [BiasGate; 2] = [BiasGate::Sigmoid, BiasGate::Linear];

fn exact_kls(lm: &BurnLm, exact: &Enumeration, twist: Option<&dyn Twist>) -> (f64, f64) {
    let proposal = if twist.is_some() {
        Proposal::Twisted
    } else {
        Proposal::Base
    };
    let log_q = exact.proposal_log_q(lm, &PROMPT, twist, proposal).unwrap();
    (exact.kl_q_sigma(&log_q), exact.kl_sigma_q(&log_q))
}

#[test]
fn embedding_heads_are_small_and_start_exactly_at_p0() {
    let lm = tiny("llama-tied");
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, T, &phi).unwrap();
    let base = exact_kls(&lm, &exact, None);
    for rank in [None, Some(4)] {
        let h = head(&lm, HeadKind::Embedding, rank, 1);
        // d x d + V, or (d + d) r + V, against d V + V for the linear head.
        let want = match rank {
            None => 64 * 64 + 320,
            Some(r) => 64 * r + r * 64 + 320,
        };
        assert_eq!(h.config.num_parameters(), want);
        let (qs, sq) = exact_kls(&lm, &exact, Some(&h));
        assert!(
            (qs - base.0).abs() < 1e-9 && (sq - base.1).abs() < 1e-9,
            "{rank:?}: {qs} {sq} vs p0 {base:?}"
        );
        // A gate adds w [d_in] and c, and starts at g = 1: still p0.
        for gate in GATES {
            let g = gated_head(&lm, HeadKind::Embedding, rank, Some(gate), 1);
            assert_eq!(g.config.num_parameters(), want + 64 + 1);
            let (qs, sq) = exact_kls(&lm, &exact, Some(&g));
            assert!(
                (qs - base.0).abs() < 1e-9 && (sq - base.1).abs() < 1e-9,
                "{rank:?} {gate:?}: {qs} {sq} vs p0 {base:?}"
            );
        }
    }
}

#[test]
fn a_gated_head_with_its_gate_at_zero_is_the_ungated_head_and_scales_the_bias_as_its_gate() {
    let lm = tiny("llama-tied");
    let hidden = lm
        .teacher_forced(&PROMPT, &[vec![3, 4], vec![300, 1]])
        .unwrap()[1]
        .hidden
        .clone()
        .unwrap();
    for rank in [None, Some(4)] {
        let mut plain = head(&lm, HeadKind::Embedding, rank, 1);
        randomise(&mut plain, 0.4, 11);
        let raw_plain = plain.raw(&hidden).unwrap();
        let b = plain.parameter_values().unwrap().pop().unwrap().1;
        for gate in GATES {
            let mut gated = gated_head(&lm, HeadKind::Embedding, rank, Some(gate), 1);
            for (name, values) in plain.parameter_values().unwrap() {
                gated.set_parameter(&name, &values).unwrap();
            }
            let raw = gated.raw(&hidden).unwrap();
            let d = max_diff(raw.as_slice(), raw_plain.as_slice());
            assert!(d < 1e-6, "{rank:?} {gate:?}: {d}");
            // c alone sets g: raw = e_v · (A x) + g b_v, g = 2 sigmoid(c) or 1 + c.
            let c = 0.7f32;
            gated.set_parameter("gate.bias", &[c]).unwrap();
            let g = match gate {
                BiasGate::Sigmoid => 2.0 / (1.0 + (-c as f64).exp()),
                BiasGate::Linear => 1.0 + c as f64,
            };
            let raw = gated.raw(&hidden).unwrap();
            let v = b.len();
            let want: Vec<f64> = raw_plain
                .as_slice()
                .iter()
                .enumerate()
                .map(|(i, x)| x + (g - 1.0) * b[i % v] as f64)
                .collect();
            let d = max_diff(raw.as_slice(), &want);
            assert!(d < 1e-5, "{rank:?} {gate:?}: {d}");
        }
    }
    // A gate is for embedding heads only.
    let mut config = HeadConfig::for_model(&lm, HeadKind::Linear, None);
    config.bias_gate = Some(BiasGate::Sigmoid);
    let e = TwistHead::new(&lm, config, 1, &default_device())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias_gate"), "{e}");
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The sequences and roles of a batch for `method` (SIXO: 4 positives, 4 negatives).
fn roles(method: Method) -> Roles {
    match method {
        Method::Ctl | Method::Dpg => Roles::Proposal(Proposal::Twisted),
        Method::Rl | Method::Fudge => Roles::Uniform,
        Method::Sixo => Roles::Contrast {
            proposal: Proposal::Twisted,
            positives: 4,
        },
    }
}

/// The loss with the head's raw outputs recomputed on the batch's hidden states and the
/// targets held fixed (stop-gradient), as a function of the head's parameters.
fn loss_of(head: &TwistHead, batch: &Batch, method: Method, tg: &Targets) -> f64 {
    let mut b = batch.clone();
    for t in 0..b.horizon() {
        b.raw[t] = head.raw(b.hidden[t].as_ref().unwrap()).unwrap();
    }
    loss_and_grads(method, &b, tg).0
}

#[test]
fn parameter_gradients_of_every_head_match_finite_differences_for_every_loss() {
    let lm = tiny("llama-tied");
    let phi = potential();
    let seqs = sample_base(&lm, &PROMPT, T, 8, &mut rng_from_seed(1))
        .unwrap()
        .0;
    // Measured relative errors are 1e-7 to 3e-5 for the smooth heads. The MLP's finite
    // differences take a smaller step, so that few ReLUs switch within it, and a looser
    // tolerance for those that do (1.6% at one coordinate).
    for (kind, rank, gate, scale, step, rel) in [
        (HeadKind::Embedding, None, None, 0.2, 1e-2f32, 5e-3),
        (HeadKind::Embedding, Some(3), None, 0.4, 1e-2, 5e-3),
        (
            HeadKind::Embedding,
            None,
            Some(BiasGate::Sigmoid),
            0.2,
            1e-2,
            5e-3,
        ),
        (
            HeadKind::Embedding,
            Some(3),
            Some(BiasGate::Linear),
            0.4,
            1e-2,
            5e-3,
        ),
        (HeadKind::Linear, None, None, 0.05, 1e-2, 5e-3),
        (HeadKind::Mlp, None, None, 0.1, 1e-3, 3e-2),
    ] {
        for method in Method::ALL {
            let mut h = gated_head(&lm, kind, rank, gate, 2);
            randomise(&mut h, scale, 7);
            let twist = HeadTrainable::new(
                h,
                Parameterization::for_method(method),
                AdamConfig::default(),
            );
            let batch = Batch::teacher_forced(&lm, &twist, &phi, &PROMPT, &seqs).unwrap();
            let tg = targets(&batch, roles(method));
            let (_, grads) = loss_and_grads(method, &batch, &tg);
            let analytic = twist.parameter_gradients(&batch, &grads).unwrap();
            let loss = |h: &TwistHead| loss_of(h, &batch, method, &tg);
            let label = format!("{kind:?} {rank:?} {gate:?} {method:?}");
            common::check_gradients(twist.head(), &analytic, step, rel, loss, &label);
        }
    }
}

/// 1000 updates of `method` (K = 32, lr 1e-2, seed 3), the exact training tests' run; returns
/// its configuration.
fn train_to_convergence(
    lm: &BurnLm,
    twist: &mut HeadTrainable,
    phi: &Phi,
    method: Method,
) -> TrainConfig {
    let cfg = TrainConfig {
        method,
        steps: 1000,
        batch_size: 32,
        horizon: T,
        learning_rate: 1e-2,
        seed: 3,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(lm, twist, phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    cfg
}

#[test]
fn every_method_trains_embedding_heads_to_cut_both_exact_kls() {
    let lm = tiny("llama-tied");
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, T, &phi).unwrap();
    let (base_qs, base_sq) = exact_kls(&lm, &exact, None);
    for rank in [None, Some(8)] {
        for method in Method::ALL {
            let mut twist = HeadTrainable::new(
                head(&lm, HeadKind::Embedding, rank, 1),
                Parameterization::for_method(method),
                AdamConfig::default(),
            );
            train_to_convergence(&lm, &mut twist, &phi, method);
            let (qs, sq) = exact_kls(&lm, &exact, Some(&twist));
            println!(
                "{rank:?} {method:?}: KL(q||sigma) {qs:.4} (p0 {base_qs:.4}), KL(sigma||q) {sq:.4} (p0 {base_sq:.4})"
            );
            // Not statistical: one seed, against bounds read off seeds 1..=8 (run with the
            // seed looped, December 2026). Every method but full-rank SIXO cuts both KLs by
            // 15% or more on every seed: CTL 0.36-0.41 / 0.33-0.37 at full rank and
            // 0.29-0.33 / 0.26-0.28 at rank 8 against p0's 0.82 / 1.01, the slowest of them
            // (FUDGE at full rank) 0.54-0.59 / 0.48-0.52. SIXO at full rank, the slowest
            // learner here, spans 0.57-0.76 / 0.57-0.72 over the seeds (its trajectory moves
            // with the last bits of the matrix products): it is held to a 5% cut. Full-rank A
            // moves every one of its d^2 entries by about the learning rate per Adam step: at
            // 3e-2 CTL, SIXO and DPG diverge, rank 8 does not.
            let cut = if rank.is_none() && method == Method::Sixo {
                0.95
            } else {
                0.85
            };
            assert!(
                qs < cut * base_qs && sq < cut * base_sq,
                "{rank:?} {method:?}: {qs}, {sq} vs {base_qs}, {base_sq}"
            );
        }
    }
}

#[test]
fn an_embedding_head_checkpoint_loads_back_only_onto_its_base_model() {
    let lm = tiny("llama-tied");
    let phi = potential();
    let mut twist = HeadTrainable::new(
        head(&lm, HeadKind::Embedding, Some(4), 5),
        Parameterization::Identity,
        AdamConfig::default(),
    );
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 5,
        batch_size: 16,
        horizon: T,
        learning_rate: 1e-2,
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
        .save_checkpoint(&path, &serde_json::json!({ "step": 5 }))
        .unwrap();
    // The file holds A's factors and b, not the 320 x 64 output embedding.
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 20_000, "{size} bytes");
    let (mut loaded, _) = TwistHead::load(&path, &default_device()).unwrap();
    assert!(!loaded.is_ready());
    let run = |tw: &dyn Twist| {
        run_smc(
            &lm,
            Some(tw),
            &phi,
            &PROMPT,
            &SmcConfig::twisted(16, T).with_seed(9),
        )
    };
    let e = run(&loaded).unwrap_err().to_string();
    assert!(e.contains("attach it to its base model"), "{e}");
    // Another model of the same sizes: refused by the fingerprint.
    let other = tiny("llama");
    let e = loaded.attach_base_model(&other).unwrap_err();
    assert!(matches!(e, LmError::BaseModelMismatch { .. }), "{e}");
    loaded.attach_base_model(&lm).unwrap();
    let (a, b) = (run(&twist).unwrap(), run(&loaded).unwrap());
    assert_eq!(a.tokens, b.tokens);
    assert!((a.log_z_hat - b.log_z_hat).abs() < 1e-9);
    // Training resumes with Adam's state.
    let (mut resumed, meta) = HeadTrainable::resume(
        &path,
        &default_device().autodiff(),
        Parameterization::Identity,
        AdamConfig::default(),
    )
    .unwrap();
    assert_eq!(meta["step"], 5);
    resumed.head_mut().attach_base_model(&lm).unwrap();
    train(
        &lm,
        &mut resumed,
        &phi,
        &PROMPT,
        &TrainConfig {
            start_step: 5,
            steps: 1,
            ..cfg
        },
        |_, _, _| Ok::<(), TrainError>(()),
    )
    .unwrap();
}

#[test]
fn a_conditional_embedding_head_reads_its_conditioning_tokens_by_every_encoding() {
    let lm = tiny("llama-tied");
    for encoding in [
        CondEncoding::Last,
        CondEncoding::MeanHidden,
        CondEncoding::MeanEmbedding,
    ] {
        let mut config = HeadConfig::for_model(&lm, HeadKind::Embedding, Some(vec![7, 9]));
        config.cond_encoding = encoding;
        let h = TwistHead::new(&lm, config, 1, &default_device().autodiff()).unwrap();
        assert_eq!(h.config.input_size(), 128);
        let expected = encode_conditioning(&lm, encoding, &[7, 9]).unwrap();
        assert_eq!(
            h.cond_hidden.as_deref(),
            Some(&expected[..]),
            "{encoding:?}"
        );
        let mut twist = HeadTrainable::new(h, Parameterization::Identity, AdamConfig::default());
        let cfg = InfillingConfig {
            horizon: T,
            cond_len: 1,
            batch_size: 8,
            steps: 6,
            learning_rate: 1e-2,
            seed: 0,
            start_step: 0,
            batch: BatchSource::Sampled,
        };
        train_infilling_ctl(&lm, &mut twist, &PROMPT, &cfg, |_, _, _| {
            Ok::<(), TrainError>(())
        })
        .unwrap();
        // After training, A's columns for h_c are not zero: two conditioning sequences give two
        // different twists on the same prefix.
        let raw = |c: &[u32], twist: &mut HeadTrainable| {
            twist.head_mut().set_conditioning(&lm, c).unwrap();
            let out = lm.teacher_forced(&PROMPT, &[vec![3, 4]]).unwrap();
            twist.head().raw(out[1].hidden.as_ref().unwrap()).unwrap()
        };
        let (a, b) = (raw(&[11], &mut twist), raw(&[200], &mut twist));
        let d = max_diff(a.as_slice(), b.as_slice());
        assert!(d > 1e-4, "{encoding:?}: conditioning changes nothing ({d})");
        // Re-targeting encodes the new tokens the head's way.
        let expected = encode_conditioning(&lm, encoding, &[200]).unwrap();
        assert_eq!(twist.head().cond_hidden.as_deref(), Some(&expected[..]));
        // A checkpoint keeps the encoding and gives the same twist.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        twist
            .save_checkpoint(&path, &serde_json::json!({ "step": 6 }))
            .unwrap();
        let (mut loaded, _) = TwistHead::load(&path, &default_device()).unwrap();
        assert_eq!(loaded.config.cond_encoding, encoding);
        loaded.attach_base_model(&lm).unwrap();
        loaded.set_conditioning(&lm, &[11]).unwrap();
        let out = lm.teacher_forced(&PROMPT, &[vec![3, 4]]).unwrap();
        let c = loaded.raw(out[1].hidden.as_ref().unwrap()).unwrap();
        let a = raw(&[11], &mut twist);
        let d = max_diff(a.as_slice(), c.as_slice());
        assert!(d < 1e-9, "{encoding:?}: the loaded head differs by {d}");
    }
}

#[test]
fn gated_embedding_heads_train_to_cut_both_exact_kls_and_come_back_from_checkpoints() {
    let lm = tiny("llama-tied");
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, T, &phi).unwrap();
    let (base_qs, base_sq) = exact_kls(&lm, &exact, None);
    for gate in GATES {
        let mut twist = HeadTrainable::new(
            gated_head(&lm, HeadKind::Embedding, Some(8), Some(gate), 1),
            Parameterization::Identity,
            AdamConfig::default(),
        );
        let cfg = train_to_convergence(&lm, &mut twist, &phi, Method::Ctl);
        let (qs, sq) = exact_kls(&lm, &exact, Some(&twist));
        println!(
            "{gate:?}: KL(q||sigma) {qs:.4} (p0 {base_qs:.4}), KL(sigma||q) {sq:.4} (p0 {base_sq:.4})"
        );
        // Not statistical: one seed, held to the ungated heads' 15% cut.
        assert!(
            qs < 0.85 * base_qs && sq < 0.85 * base_sq,
            "{gate:?}: {qs}, {sq} vs {base_qs}, {base_sq}"
        );
        // The gate moved away from g = 1.
        let values = twist.head().parameter_values().unwrap();
        let w = &values.iter().find(|(n, _)| n == "gate.weight").unwrap().1;
        assert!(
            w.iter().any(|x| x.abs() > 1e-4),
            "{gate:?}: the gate did not train"
        );
        // A checkpoint keeps the gate: same raw outputs, same form, and training resumes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gated.safetensors");
        twist
            .save_checkpoint(&path, &serde_json::json!({ "step": 1000 }))
            .unwrap();
        let (mut loaded, _) = TwistHead::load(&path, &default_device()).unwrap();
        loaded.attach_base_model(&lm).unwrap();
        assert_eq!(loaded.config.bias_gate, Some(gate));
        let hidden = lm.teacher_forced(&PROMPT, &[vec![3, 4]]).unwrap()[1]
            .hidden
            .clone()
            .unwrap();
        let d = max_diff(
            loaded.raw(&hidden).unwrap().as_slice(),
            twist.head().raw(&hidden).unwrap().as_slice(),
        );
        assert!(d < 1e-6, "{gate:?}: {d}");
        let (mut resumed, _) = HeadTrainable::resume(
            &path,
            &default_device().autodiff(),
            Parameterization::Identity,
            AdamConfig::default(),
        )
        .unwrap();
        resumed.head_mut().attach_base_model(&lm).unwrap();
        train(
            &lm,
            &mut resumed,
            &phi,
            &PROMPT,
            &TrainConfig {
                start_step: 1000,
                steps: 1,
                ..cfg
            },
            |_, _, _| Ok::<(), TrainError>(()),
        )
        .unwrap();
    }
}
