//! Inputs that fuzzing (`tests/fuzz.rs`) found to crash a reader, kept as regression tests:
//! each is now a clear error naming the file.

use lm_burn::{LmError, Tokenizer};

/// A tokenizer.json cut off inside its decoder made the `tokenizers` crate panic
/// (`expect("Helper")`) instead of reporting a syntax error.
#[test]
fn a_tokenizer_cut_off_inside_a_component_is_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let full = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#;
    Tokenizer::from_file(&{
        std::fs::write(&path, full).unwrap();
        path.clone()
    })
    .unwrap();
    let cut = &full[..full.find("\"trim_offsets\"").unwrap() + 5];
    std::fs::write(&path, cut).unwrap();
    let e = Tokenizer::from_file(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LmError::Json { .. }), "{msg}");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("not valid JSON"),
        "{msg}"
    );
}

/// A tokenizer.json that never ends (`/dev/zero`) is refused after a bounded read.
#[cfg(unix)]
#[test]
fn an_endless_tokenizer_file_is_refused_after_a_bounded_read() {
    let e = Tokenizer::from_file(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(e.to_string().contains("larger than 256 MiB"), "{e}");
}

/// A BPE merge whose second token is shorter than the model's `continuing_subword_prefix` made
/// the `tokenizers` crate panic (slicing past the token's end).
#[test]
fn a_bpe_merge_shorter_than_the_subword_prefix_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let tok = |prefix: &str| {
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2, "##b": 3, "a##b": 4 },
                "merges": ["a b"], "continuing_subword_prefix": prefix }
        })
        .to_string()
    };
    std::fs::write(&path, tok("")).unwrap();
    Tokenizer::from_file(&path).unwrap();
    std::fs::write(&path, tok("##")).unwrap();
    let e = Tokenizer::from_file(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("continuing_subword_prefix"),
        "{msg}"
    );
}
