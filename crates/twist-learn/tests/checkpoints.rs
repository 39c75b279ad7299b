//! Hostile and broken checkpoints: a checkpoint is one file (weights, metadata and Adam's state
//! together); one without Adam's state, with another head's, with state that does not match
//! the parameters' shapes, or with inconsistent conditioning metadata is a clear error, never a
//! panic or a silent restart of Adam.

use std::path::{Path, PathBuf};

use lm_burn::heads::{HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, default_device};
use smc_core::prelude::*;
use twist_learn::*;

fn tiny_llama() -> BurnLm {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    BurnLm::from_hf_dir(
        &dir.join("../../testdata/reference/tiny-models/llama"),
        &default_device(),
    )
    .unwrap()
}

const PROMPT: [u32; 3] = [5, 17, 250];

/// A head trained for two updates (so Adam has state for every parameter).
fn trained(lm: &BurnLm, seed: u64, conditioning: Option<Vec<u32>>) -> HeadTrainable {
    let head = TwistHead::new(
        lm,
        HeadConfig::for_model(lm, HeadKind::Linear, conditioning),
        seed,
        &default_device().autodiff(),
    )
    .unwrap();
    let mut twist = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
    let phi = FnPotential::new(
        "s1 < 40",
        |_: &[u32], s: &[u32]| {
            if s[0] < 40 { 0.0 } else { -2.0 }
        },
    );
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 2,
        batch_size: 4,
        horizon: 2,
        learning_rate: 1e-2,
        seed,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(lm, &mut twist, &phi, &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .unwrap();
    twist
}

fn resume(path: &Path) -> Result<(HeadTrainable, serde_json::Value), TrainError> {
    HeadTrainable::resume(
        path,
        &default_device().autodiff(),
        Parameterization::Identity,
        AdamConfig::default(),
    )
}

fn optimizer_of(path: &Path) -> Vec<u8> {
    TwistHead::load_checkpoint(path, &default_device())
        .unwrap()
        .optimizer
        .unwrap()
}

/// Rewrites the JSON metadata inside a checkpoint's safetensors header (as a hostile editor
/// would), leaving the tensors as they are.
fn edit_metadata(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let key = lm_burn::heads::META_KEY;
    let mut meta: serde_json::Value =
        serde_json::from_str(header["__metadata__"][key].as_str().unwrap()).unwrap();
    edit(&mut meta);
    header["__metadata__"][key] = meta.to_string().into();
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn err_text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[test]
fn a_checkpoint_is_one_file_with_adam_inside_and_a_readable_copy_beside_it() {
    let lm = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    trained(&lm, 1, None)
        .save_checkpoint(&path, &serde_json::json!({ "step": 2 }))
        .unwrap();
    // The copy is for people: removing it changes nothing for tsmc.
    let copy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(copy["metadata"]["step"], 2);
    std::fs::remove_file(path.with_extension("json")).unwrap();
    let (_, meta) = resume(&path).unwrap();
    assert_eq!(meta["step"], 2);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["h.safetensors"], "no temporaries, no .optim");
}

#[test]
fn resuming_without_adam_state_or_with_another_heads_is_an_error() {
    let lm = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (trained(&lm, 1, None), trained(&lm, 2, None));
    // Saved without optimiser state (TwistHead::save): no silent restart of Adam.
    let bare = dir.path().join("bare.safetensors");
    a.head().save(&bare, &serde_json::json!({})).unwrap();
    let e = err_text(resume(&bare).err().unwrap());
    assert!(e.contains("optimizer.state") && e.contains("none"), "{e}");
    // Head a's weights with head b's Adam state: refused, naming the foreign parameter id.
    let other = dir.path().join("b.safetensors");
    b.save_checkpoint(&other, &serde_json::json!({})).unwrap();
    let mixed = dir.path().join("mixed.safetensors");
    a.head()
        .save_checkpoint(&mixed, &serde_json::json!({}), Some(&optimizer_of(&other)))
        .unwrap();
    let e = err_text(resume(&mixed).err().unwrap());
    assert!(e.contains("another head's optimiser state"), "{e}");
    // Parameter ids that do not match the state's shapes (weight and bias swapped): an error,
    // not a panic at the next Adam step.
    let swapped = dir.path().join("swapped.safetensors");
    a.save_checkpoint(&swapped, &serde_json::json!({})).unwrap();
    edit_metadata(&swapped, |m| {
        let ids = m["param_ids"].as_object_mut().unwrap();
        let (w, bias) = (ids["layers.0.weight"].clone(), ids["layers.0.bias"].clone());
        ids.insert("layers.0.weight".into(), bias);
        ids.insert("layers.0.bias".into(), w);
    });
    let e = err_text(resume(&swapped).err().unwrap());
    assert!(e.contains("shape") && e.contains("layers.0."), "{e}");
    // Garbage in place of Adam's state.
    let garbage = dir.path().join("garbage.safetensors");
    a.head()
        .save_checkpoint(&garbage, &serde_json::json!({}), Some(b"not a burnpack"))
        .unwrap();
    let e = err_text(resume(&garbage).err().unwrap());
    assert!(e.contains("burnpack"), "{e}");
    // Missing or duplicate parameter ids.
    let dup = dir.path().join("dup.safetensors");
    a.save_checkpoint(&dup, &serde_json::json!({})).unwrap();
    edit_metadata(&dup, |m| {
        let ids = m["param_ids"].as_object_mut().unwrap();
        let w = ids["layers.0.weight"].clone();
        ids.insert("layers.0.bias".into(), w);
    });
    let e = err_text(resume(&dup).err().unwrap());
    assert!(e.contains("param_ids") && e.contains("distinct"), "{e}");
    // The intact checkpoint still resumes.
    resume(&swapped.with_file_name("b.safetensors")).unwrap();
}

#[test]
fn inconsistent_conditioning_metadata_is_an_error_naming_the_field() {
    let lm = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    trained(&lm, 3, None)
        .save_checkpoint(&path, &serde_json::json!({}))
        .unwrap();
    // A conditioning state without conditioning tokens (the input would be sized wrongly).
    edit_metadata(&path, |m| {
        m["cond_hidden"] = serde_json::json!(vec![0.5f32; 64])
    });
    for e in [
        err_text(TwistHead::load(&path, &default_device()).err().unwrap()),
        err_text(resume(&path).err().unwrap()),
    ] {
        assert!(
            e.contains("cond_hidden") && e.contains("not conditional"),
            "{e}"
        );
    }
    // Conditioning tokens without their state, or a state of the wrong size.
    edit_metadata(&path, |m| {
        m["cond_hidden"] = serde_json::Value::Null;
        m["head"]["conditioning"] = serde_json::json!([1, 2]);
    });
    let e = err_text(TwistHead::load(&path, &default_device()).err().unwrap());
    assert!(e.contains("cond_hidden") && e.contains("null"), "{e}");
    edit_metadata(&path, |m| m["cond_hidden"] = serde_json::json!([1.0, 2.0]));
    let e = err_text(TwistHead::load(&path, &default_device()).err().unwrap());
    assert!(e.contains("cond_hidden") && e.contains("2 values"), "{e}");
    // Conditioning tokens beyond the vocabulary.
    edit_metadata(&path, |m| {
        m["head"]["conditioning"] = serde_json::json!([4_000_000_000u32])
    });
    let e = err_text(TwistHead::load(&path, &default_device()).err().unwrap());
    assert!(e.contains("head.conditioning"), "{e}");
}

/// Found by fuzzing: a checkpoint whose header lost its `tsmc.twist_head` entry was reported as
/// a missing `.json` file, without naming the checkpoint; now the error names the checkpoint
/// and says what its header lacks.
#[test]
fn a_checkpoint_without_its_metadata_entry_is_named_in_the_error() {
    let lm = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    trained(&lm, 1, None)
        .save_checkpoint(&path, &serde_json::json!({ "step": 2 }))
        .unwrap();
    std::fs::remove_file(path.with_extension("json")).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object_mut().unwrap().remove("__metadata__");
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    for e in [
        err_text(TwistHead::load(&path, &default_device()).err().unwrap()),
        err_text(resume(&path).err().unwrap()),
    ] {
        assert!(
            e.contains(&path.display().to_string()) && e.contains("no `tsmc.twist_head` entry"),
            "{e}"
        );
    }
}

/// Found by fuzzing: Adam's state records the rank of each parameter's state (`{id}.__rank`);
/// a wrong one was accepted and burn panicked at the next update ("Given dimensions differ from
/// the tensor rank"). Now resume refuses it, naming the parameter.
#[test]
fn adam_state_with_a_wrong_parameter_rank_is_refused() {
    let lm = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    let a = trained(&lm, 1, None);
    a.save_checkpoint(&path, &serde_json::json!({})).unwrap();
    let mut state = optimizer_of(&path);
    // Each `{id}.__rank` key is followed by the CBOR map {"UInt": rank}; every rank here is 1
    // or 2, a one-byte CBOR integer right after "UInt".
    let at = state
        .windows(6)
        .position(|w| w == b"__rank")
        .expect("a rank scalar");
    let rank = at
        + state[at..]
            .windows(4)
            .position(|w| w == b"UInt")
            .expect("its value")
        + 4;
    assert!(matches!(state[rank], 1 | 2), "{}", state[rank]);
    state[rank] = 3;
    a.head()
        .save_checkpoint(&path, &serde_json::json!({}), Some(&state))
        .unwrap();
    let e = err_text(resume(&path).err().unwrap());
    assert!(e.contains("__rank") && e.contains("rank"), "{e}");
}
