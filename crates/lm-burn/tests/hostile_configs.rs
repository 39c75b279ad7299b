//! Hostile `config.json` values (the hostile-input issue's probe): layer counts far beyond the
//! weights, odd head dimensions, heads that do not divide the hidden size, zero sizes and
//! non-positive floats are typed errors naming the file and the field, never an abort, a panic
//! or a silently replaced default.

mod common;

use std::path::{Path, PathBuf};

use common::reference_dir;
use lm_burn::{BurnLm, LmError, default_device};
use serde_json::{Value, json};

/// A copy of the tiny model `name` in `tmp` with `edit` applied to its config.
fn tiny_with(tmp: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = reference_dir().join("tiny-models").join(name);
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> LmError {
    match BurnLm::from_hf_dir(dir, &default_device()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

/// Loading fails with a config error on `field` whose message contains every one of `words`.
fn assert_config_err(dir: &Path, field: &str, words: &[&str]) {
    let e = load_err(dir);
    let msg = e.to_string();
    assert!(
        matches!(&e, LmError::Config { field: f, .. } if f == field),
        "expected a config error on `{field}`, got: {msg}"
    );
    assert!(msg.contains("config.json"), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg} lacks {w:?}");
    }
}

#[test]
fn huge_layer_counts_are_rejected_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // 10^12 layers: over the sanity bound, rejected while the config is read.
    for (model, field) in [
        ("llama", "num_hidden_layers"),
        ("gpt2", "n_layer"),
        ("gpt-neo", "num_layers"),
    ] {
        let dir = tiny_with(tmp.path(), model, |c| {
            c[field] = json!(1_000_000_000_000u64);
        });
        assert_config_err(&dir, field, &["1000000000000", "at most 65536"]);
    }
    // Within the bound but more than the weights hold: checked against the weights before
    // anything is allocated per layer.
    for (model, field) in [
        ("llama", "num_hidden_layers"),
        ("qwen2", "num_hidden_layers"),
        ("gpt2", "n_layer"),
        ("gpt-neo", "num_layers"),
    ] {
        let dir = tiny_with(tmp.path(), model, |c| {
            c[field] = json!(60_000);
            c["attention_layers"] = json!(vec!["global"; 60_000]);
        });
        let e = load_err(&dir);
        assert!(
            matches!(
                &e,
                LmError::LayerCount { field: f, declared: 60_000, found: 2, .. } if f == field
            ),
            "{model}: {e}"
        );
    }
}

#[test]
fn odd_and_inconsistent_head_dimensions_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    // Rotary embeddings need an even head dimension, given or derived.
    let dir = tiny_with(tmp.path(), "llama", |c| c["head_dim"] = json!(15));
    assert_config_err(&dir, "head_dim", &["even", "15"]);
    let dir = tiny_with(tmp.path(), "qwen2", |c| {
        c["num_attention_heads"] = json!(64);
        c["num_key_value_heads"] = json!(64);
    });
    assert_config_err(&dir, "head_dim", &["even", "found 1"]);
    // Without head_dim, the hidden size must split into the heads.
    let dir = tiny_with(tmp.path(), "llama", |c| {
        c.as_object_mut().unwrap().remove("head_dim");
        c["num_attention_heads"] = json!(3);
        c["num_key_value_heads"] = json!(1);
    });
    assert_config_err(
        &dir,
        "num_attention_heads",
        &["divisor of hidden_size = 64", "found 3"],
    );
    // Key/value heads must divide the query heads.
    let dir = tiny_with(tmp.path(), "qwen2", |c| c["num_key_value_heads"] = json!(3));
    assert_config_err(
        &dir,
        "num_key_value_heads",
        &["divisor of num_attention_heads = 4", "found 3"],
    );
    // GPT-2 and GPT-Neo derive the head dimension from the hidden size.
    let dir = tiny_with(tmp.path(), "gpt2", |c| c["n_head"] = json!(5));
    assert_config_err(&dir, "n_head", &["divisor of n_embd = 64", "found 5"]);
    let dir = tiny_with(tmp.path(), "gpt-neo", |c| c["num_heads"] = json!(7));
    assert_config_err(
        &dir,
        "num_heads",
        &["divisor of hidden_size = 64", "found 7"],
    );
}

#[test]
fn zero_sizes_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, field) in [
        ("llama", "hidden_size"),
        ("llama", "num_attention_heads"),
        ("llama", "num_key_value_heads"),
        ("llama", "head_dim"),
        ("llama", "vocab_size"),
        ("llama", "max_position_embeddings"),
        ("gpt2", "n_head"),
        ("gpt2", "n_embd"),
        ("gpt2", "n_positions"),
        ("gpt-neo", "num_heads"),
        ("gpt-neo", "window_size"),
    ] {
        let dir = tiny_with(tmp.path(), model, |c| c[field] = json!(0));
        assert_config_err(&dir, field, &["positive", "found 0"]);
    }
}

#[test]
fn non_positive_floats_are_errors_not_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, path, field) in [
        ("llama", &["rms_norm_eps"][..], "rms_norm_eps"),
        (
            "llama",
            &["rope_parameters", "rope_theta"][..],
            "rope_parameters.rope_theta",
        ),
        ("qwen2", &["rope_theta"][..], "rope_theta"),
        ("gpt2", &["layer_norm_epsilon"][..], "layer_norm_epsilon"),
        ("gpt-neo", &["layer_norm_epsilon"][..], "layer_norm_epsilon"),
    ] {
        for bad in [json!(0.0), json!(-1e-5), json!("1e-5")] {
            let dir = tiny_with(tmp.path(), model, |c| {
                let mut v = c;
                for p in &path[..path.len() - 1] {
                    v = &mut v[*p];
                }
                v[path[path.len() - 1]] = bad.clone();
            });
            assert_config_err(&dir, field, &["finite positive number"]);
        }
    }
    // JSON has no NaN, and an overflowing literal is an invalid config, not infinity.
    let dir = tiny_with(tmp.path(), "llama", |c| c["rms_norm_eps"] = json!("HUGE"));
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let text = text.replace("\"HUGE\"", "1e999");
    std::fs::write(dir.join("config.json"), text).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, LmError::Json { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );
    // An absent value takes the documented default, and the model still loads.
    let dir = tiny_with(tmp.path(), "qwen2", |c| {
        c.as_object_mut().unwrap().remove("rms_norm_eps");
    });
    BurnLm::from_hf_dir(&dir, &default_device()).unwrap();
}

#[test]
fn a_sliding_window_caps_the_context_instead_of_being_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let context = |dir: &Path| {
        BurnLm::from_hf_dir(dir, &default_device())
            .unwrap()
            .context_length()
    };
    // Mistral's window: a longer sequence would need windowed attention, which is not
    // implemented, so it is refused rather than computed as another model.
    let dir = tiny_with(tmp.path(), "llama", |c| {
        c["model_type"] = json!("mistral");
        c["sliding_window"] = json!(16);
    });
    let lm = BurnLm::from_hf_dir(&dir, &default_device()).unwrap();
    assert_eq!(lm.context_length(), 16);
    lm.forward_logits(&[1; 16]).unwrap();
    let e = lm.forward_logits(&[1; 17]).unwrap_err();
    assert!(
        matches!(e, LmError::PositionOutOfRange { max: 16, .. }),
        "{e}"
    );
    // null (Mistral from v0.2 on): no window, the position table's 128.
    let dir = tiny_with(tmp.path(), "llama", |c| {
        c["model_type"] = json!("mistral");
        c["sliding_window"] = Value::Null;
    });
    assert_eq!(context(&dir), 128);
    // Qwen2 configs carry the field and turn it on with use_sliding_window only.
    let dir = tiny_with(tmp.path(), "qwen2", |c| c["sliding_window"] = json!(16));
    assert_eq!(context(&dir), 128);
    let dir = tiny_with(tmp.path(), "qwen2", |c| {
        c["sliding_window"] = json!(16);
        c["use_sliding_window"] = json!(true);
    });
    assert_eq!(context(&dir), 16);
    // A window that is not a positive integer is an error naming it.
    let dir = tiny_with(tmp.path(), "llama", |c| {
        c["model_type"] = json!("mistral");
        c["sliding_window"] = json!(0);
    });
    assert_config_err(&dir, "sliding_window", &["positive integer"]);
}
