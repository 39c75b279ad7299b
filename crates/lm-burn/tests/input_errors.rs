//! Invalid inputs to a loaded model are typed errors (callers can tell an empty prompt from a
//! token outside the vocabulary without parsing messages), never panics, and wrapped
//! library errors stay reachable through `source()`.

mod common;

use std::error::Error;

use common::reference_dir;
use lm_burn::{BurnLm, LmError, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

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

#[test]
fn bad_model_inputs_are_typed_errors() {
    let lm = tiny("llama");
    let e = lm.forward_logits(&[]).unwrap_err();
    assert!(matches!(e, LmError::EmptySequence { .. }), "{e}");
    let e = lm.forward_logits(&[1, 320]).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::TokenOutOfRange {
                token: 320,
                vocab: 320
            }
        ),
        "{e}"
    );
    let e = lm.score(&[vec![1]], &[]).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::LengthMismatch {
                expected: 1,
                found: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = lm.score(&[vec![]], &[vec![2]]).unwrap_err();
    assert!(
        matches!(e, LmError::EmptySequence { ref what } if what.contains("prefix 0")),
        "{e}"
    );
    let e = lm.teacher_forced(&[1], &[vec![2, 3], vec![4]]).unwrap_err();
    assert!(
        matches!(
            inner(&e),
            LmError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{e}"
    );

    let e = lm.start(&[], 2).err().unwrap();
    assert!(matches!(inner(&e), LmError::EmptySequence { .. }), "{e}");
    let mut s = lm.start(&[1, 2], 2).unwrap();
    let e = s.push(&[3]).unwrap_err();
    assert!(
        matches!(
            inner(&e),
            LmError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = s.reorder(&[0, 2]).unwrap_err();
    assert!(
        matches!(
            inner(&e),
            LmError::AncestorOutOfRange {
                ancestor: 2,
                particles: 2
            }
        ),
        "{e}"
    );
    // A failed step leaves the session usable.
    s.push(&[3, 4]).unwrap();
    s.next_log_probs().unwrap();

    let e = BurnLm::load("/no/such/model", &default_device()).unwrap_err();
    assert!(
        matches!(e, LmError::ModelNotFound { ref spec } if spec == "/no/such/model"),
        "{e}"
    );
    assert!(
        matches!(tiny("gpt2").tokenizer(), Err(LmError::NoTokenizer { .. })),
        "the tiny models come without tokenizer.json"
    );
}

#[test]
fn learned_positions_bound_gpt_sequences() {
    // The tiny GPT-2 has 128 learned positions.
    let e = tiny("gpt2").forward_logits(&[1; 129]).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::PositionOutOfRange {
                position: 128,
                max: 128,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn wrapped_library_errors_keep_their_source() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let e = BurnLm::from_hf_dir(tmp.path(), &default_device()).unwrap_err();
    assert!(matches!(e, LmError::Json { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
    assert!(
        e.source()
            .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()),
        "{e}"
    );

    let dir = reference_dir().join("tiny-models/llama");
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"short").unwrap();
    let e = BurnLm::from_hf_dir(tmp.path(), &default_device()).unwrap_err();
    assert!(
        matches!(e, LmError::Safetensors { .. }) && e.source().is_some(),
        "{e}"
    );
}
