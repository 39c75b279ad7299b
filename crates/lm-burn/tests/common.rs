//! Shared helpers of lm-burn's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository's `testdata/reference` (provenance in `testdata/README.md`).
pub fn reference_dir() -> PathBuf {
    manifest_dir().join("../../testdata/reference")
}

/// Reads a tensor of a safetensors file as f64 values (f32 or i64).
pub fn read_tensor(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let data = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), data)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// This crate's directory, read when the test runs (cargo sets CARGO_MANIFEST_DIR for test
/// binaries): a binary reused from a shared target directory that another checkout built must
/// not read the test data of that other checkout.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Copies the tiny model `name` into `dir` (a fresh directory), without a tokenizer.
pub fn copy_tiny_model(name: &str, dir: &std::path::Path) -> PathBuf {
    let src = reference_dir().join("tiny-models").join(name);
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

/// Writes `dir/tokenizer.json`: a whitespace word-level tokenizer with words `w0`..`w{n-1}`
/// (ids 0..n) plus the given added tokens (id, text).
pub fn write_word_tokenizer(dir: &std::path::Path, n: usize, added: &[(u32, &str)]) {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = added
        .iter()
        .map(|(id, text)| {
            serde_json::json!({
                "id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "w0" }
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

/// Rewrites the tensor `name` of `dir/model.safetensors` (f32) with every value set to `value`.
pub fn fill_tensor(dir: &std::path::Path, name: &str, value: f32) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    assert_eq!(t.1, safetensors::Dtype::F32);
    t.3 = value.to_le_bytes().repeat(t.3.len() / 4);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}
