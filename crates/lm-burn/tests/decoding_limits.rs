//! What a loaded model refuses instead of computing garbage (the hostile-input issue's probe):
//! sequences beyond the context length, for every architecture alike; a tokenizer whose ids the
//! model cannot read, and ids the tokenizer cannot write; NaN or infinite logits.

mod common;

use std::error::Error;

use common::{copy_tiny_model, fill_tensor, reference_dir, write_word_tokenizer};
use lm_burn::{BurnLm, LmError, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

const ARCHS: &[&str] = &["llama", "llama-tied", "qwen2", "gpt2", "gpt-neo"];

fn tiny(name: &str) -> BurnLm {
    BurnLm::from_hf_dir(
        &reference_dir().join("tiny-models").join(name),
        &default_device(),
    )
    .unwrap()
}

/// The `LmError` inside an `SmcError` from the `LanguageModel` interface.
fn inner(e: &smc_core::SmcError) -> &LmError {
    e.source()
        .and_then(|s| s.downcast_ref::<LmError>())
        .unwrap_or_else(|| panic!("not an lm-burn error: {e}"))
}

/// A context-length error at position 128 of the 128-position tiny models, naming `what`.
fn assert_beyond_context(e: &LmError, what: &str) {
    assert!(
        matches!(e, LmError::PositionOutOfRange { position: 128, max: 128, what: w } if w.contains(what)),
        "expected a context error naming {what:?}: {e}"
    );
    assert!(e.to_string().contains("context length of 128"), "{e}");
}

#[test]
fn every_architecture_enforces_its_context_length_in_prefill_and_decoding() {
    for name in ARCHS {
        let lm = tiny(name);
        assert_eq!(lm.context_length(), 128, "{name}");
        // Prefill: a prompt longer than the context.
        let e = lm.start(&[1; 200], 2).err().unwrap();
        assert_beyond_context(inner(&e), "the prompt (200 tokens)");
        let e = lm.forward_logits(&[1; 129]).unwrap_err();
        assert_beyond_context(&e, "129 tokens");
        lm.forward_logits(&[1; 128]).unwrap();

        // Decoding: positions 120..127 fit, the push that would use position 128 does not.
        let mut s = lm.start(&[1; 120], 2).unwrap();
        for _ in 0..8 {
            s.next_log_probs().unwrap();
            s.push(&[3, 4]).unwrap();
        }
        let e = s.push(&[3, 4]).unwrap_err();
        assert_beyond_context(
            inner(&e),
            "push: generated token 9 after the 120-token prompt",
        );
        // The refused step changed nothing: the last position's distribution is still there.
        s.next_log_probs().unwrap();

        // The up-front check a sampler can make: prompt + T tokens.
        lm.check_horizon(120, 8).unwrap();
        assert_beyond_context(&lm.check_horizon(120, 9).unwrap_err(), "120 tokens");
        assert_beyond_context(&lm.check_horizon(usize::MAX, 9).unwrap_err(), "tokens");

        // Full-forward paths: scoring reads prefix + continuation, teacher forcing reads the
        // prompt and all but the last forced token.
        let e = lm.score(&[vec![1; 100]], &[vec![2; 29]]).unwrap_err();
        assert_beyond_context(
            &e,
            "score: prefix 0 (100 tokens) + continuation (29 tokens)",
        );
        lm.score(&[vec![1; 100]], &[vec![2; 28]]).unwrap();
        let e = lm.teacher_forced(&[1; 100], &[vec![2; 30]]).unwrap_err();
        assert_beyond_context(inner(&e), "teacher forcing");
        lm.teacher_forced(&[1; 100], &[vec![2; 29]]).unwrap();
        let e = lm.encode_last_hidden(&[1; 300]).unwrap_err();
        assert_beyond_context(&e, "300 tokens");
        let e = lm.encode_mean_hidden(&[1; 300]).unwrap_err();
        assert_beyond_context(&e, "300 tokens");
    }
}

#[test]
fn tokenizer_and_model_vocabularies_must_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |dir: &std::path::Path| BurnLm::from_hf_dir(dir, &default_device());
    // The tiny models have 320 embeddings: a tokenizer of 400 words has ids they cannot read.
    let dir = copy_tiny_model("gpt2", &tmp.path().join("large"));
    write_word_tokenizer(&dir, 400, &[]);
    let e = load(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::VocabMismatch {
                tokenizer_ids: 400,
                model_vocab: 320,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // Added tokens count: 310 words + 20 added tokens reach id 329.
    let dir = copy_tiny_model("llama", &tmp.path().join("added"));
    let added: Vec<(u32, String)> = (310..330).map(|i| (i, format!("<s{i}>"))).collect();
    let added: Vec<(u32, &str)> = added.iter().map(|(i, s)| (*i, s.as_str())).collect();
    write_word_tokenizer(&dir, 310, &added);
    let e = load(&dir).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::VocabMismatch {
                tokenizer_ids: 330,
                model_vocab: 320,
                ..
            }
        ),
        "{e}"
    );
    // A model vocabulary padded beyond the tokenizer's loads; its padding ids cannot be
    // decoded, and saying so beats dropping them from the text.
    let dir = copy_tiny_model("qwen2", &tmp.path().join("padded"));
    write_word_tokenizer(&dir, 300, &[(300, "<eos>")]);
    let lm = load(&dir).unwrap();
    let tok = lm.tokenizer().unwrap();
    assert_eq!(tok.id_bound(), 301);
    assert_eq!(tok.encode("w5 w7 <eos>").unwrap(), vec![5, 7, 300]);
    assert_eq!(tok.decode(&[5, 7, 300]).unwrap(), "w5 w7 <eos>");
    for bad in [301u32, 319, 320, u32::MAX] {
        let e = tok.decode(&[5, bad, 7]).unwrap_err();
        assert!(
            matches!(e, LmError::UnknownTokenId { token, tokenizer_ids: 301, .. } if token == bad),
            "{e}"
        );
    }
}

/// Whether `e` is a non-finite error whose description contains `what`.
fn is_non_finite(e: &LmError, what: &str) -> bool {
    matches!(e, LmError::NonFinite { what: w, value } if w.contains(what) && !value.is_finite())
}

#[test]
fn overflowing_activations_are_errors_not_nan_log_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    // Finite weights (the loader refuses others) whose activations overflow: a final norm
    // scaled by f32::MAX turns the hidden states, and so the logits, into infinities and NaN.
    for (name, norm) in [
        ("llama", "model.norm.weight"),
        ("gpt2", "transformer.ln_f.weight"),
    ] {
        let dir = copy_tiny_model(name, &tmp.path().join(name));
        fill_tensor(&dir, norm, f32::MAX);
        let lm = BurnLm::from_hf_dir(&dir, &default_device()).unwrap();
        let e = lm.forward_logits(&[1, 2, 3]).unwrap_err();
        assert!(is_non_finite(&e, "the logit of token"), "{name}: {e}");
        assert!(e.to_string().contains("overflowed"), "{e}");
        let e = lm.score(&[vec![1, 2]], &[vec![3, 4]]).unwrap_err();
        assert!(is_non_finite(&e, "score: log p0 of token 0"), "{name}: {e}");
        for e in [
            lm.encode_last_hidden(&[1, 2]).unwrap_err(),
            lm.encode_mean_hidden(&[1, 2]).unwrap_err(),
        ] {
            assert!(
                is_non_finite(&e, "conditioning hidden state"),
                "{name}: {e}"
            );
        }
        let e = lm.teacher_forced(&[1, 2], &[vec![3, 4]]).unwrap_err();
        assert!(is_non_finite(inner(&e), "teacher forcing"), "{name}: {e}");
        let mut s = lm.start(&[1, 2], 3).unwrap();
        let e = s.next_log_probs().unwrap_err();
        assert!(is_non_finite(inner(&e), "particle 0"), "{name}: {e}");
    }
}
