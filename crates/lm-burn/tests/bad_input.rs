//! Bad model files give clear errors naming the file and the tensor or field, never a panic;
//! f16 and bf16 weights load exactly as their f32 values.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::reference_dir;
use lm_burn::gguf::GgufFile;
use lm_burn::{BurnLm, LmError, default_device};
use safetensors::{Dtype, tensor::TensorView};

/// The tiny llama's tensors as (dtype, shape, bytes).
fn tiny_llama() -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(reference_dir().join("tiny-models/llama/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// Writes a model directory with the tiny llama's config and the given tensors.
fn write_model(dir: &Path, tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> PathBuf {
    std::fs::copy(
        reference_dir().join("tiny-models/llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (dt, shape, data))| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

fn load_err(dir: &Path) -> String {
    match BurnLm::from_hf_dir(dir, &default_device()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_extra_misshapen_and_mistyped_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";

    let mut t = tiny_llama();
    t.remove(name);
    let e = load_err(&write_model(tmp.path(), &t));
    assert!(
        e.contains("missing tensor")
            && e.contains(name)
            && e.contains(&tmp.path().display().to_string()),
        "{e}"
    );

    let mut t = tiny_llama();
    t.insert(
        "model.layers.9.surprise.weight".into(),
        (Dtype::F32, vec![2], vec![0; 8]),
    );
    let e = load_err(&write_model(tmp.path(), &t));
    assert!(
        e.contains("unexpected tensor") && e.contains("model.layers.9.surprise.weight"),
        "{e}"
    );

    let mut t = tiny_llama();
    t.insert(name.into(), (Dtype::F32, vec![2, 3], vec![0; 24]));
    let e = load_err(&write_model(tmp.path(), &t));
    assert!(
        e.contains(name) && e.contains("[2, 3]") && e.contains("expected [160, 64]"),
        "{e}"
    );

    let mut t = tiny_llama();
    t.insert(
        name.into(),
        (Dtype::I32, vec![160, 64], vec![0; 160 * 64 * 4]),
    );
    let e = load_err(&write_model(tmp.path(), &t));
    assert!(
        e.contains(name) && e.contains("unsupported type") && e.contains("I32"),
        "{e}"
    );
}

#[test]
fn truncated_files_and_bad_configs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_model(tmp.path(), &tiny_llama());
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );

    let dir = write_model(tmp.path(), &tiny_llama());
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": \"wide\""),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("`hidden_size`") && e.contains("\"wide\""),
        "{e}"
    );

    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\""),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("unsupported architecture") && e.contains("mamba"),
        "{e}"
    );

    let e = load_err(&tmp.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("config.json"), "{e}");
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn f16_and_bf16_weights_load_as_their_exact_f32_values() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = [5u32, 17, 250, 3, 99, 42];
    for (dtype, to_bits) in [
        (
            Dtype::F16,
            (|x: f32| half::f16::from_f32(x).to_le_bytes().to_vec()) as fn(f32) -> Vec<u8>,
        ),
        (Dtype::BF16, |x: f32| {
            half::bf16::from_f32(x).to_le_bytes().to_vec()
        }),
    ] {
        let back = |b: &[u8]| -> f32 {
            match dtype {
                Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            }
        };
        let mut half_t = BTreeMap::new();
        let mut rounded = BTreeMap::new();
        for (n, (_, shape, data)) in tiny_llama() {
            let bits: Vec<u8> = f32s(&data).into_iter().flat_map(to_bits).collect();
            let vals: Vec<u8> = bits
                .chunks_exact(2)
                .flat_map(|b| back(b).to_le_bytes())
                .collect();
            half_t.insert(n.clone(), (dtype, shape.clone(), bits));
            rounded.insert(n, (Dtype::F32, shape, vals));
        }
        let (a, b) = (tmp.path().join("half"), tmp.path().join("rounded"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let la = BurnLm::from_hf_dir(&write_model(&a, &half_t), &default_device()).unwrap();
        let lb = BurnLm::from_hf_dir(&write_model(&b, &rounded), &default_device()).unwrap();
        assert_eq!(
            la.forward_logits(&ids).unwrap(),
            lb.forward_logits(&ids).unwrap(),
            "{dtype:?}"
        );
    }
}

/// A minimal GGUF writer for tests: metadata of strings/u32 and tensors with raw bytes.
fn write_gguf(path: &Path, tensors: &[(&str, Vec<u64>, u32, Vec<u8>)], truncate_by: usize) {
    let mut b: Vec<u8> = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    let mut offset = 0u64;
    for (name, ne, ty, data) in tensors {
        s(&mut b, name);
        b.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        let start = b.len();
        b.extend(data);
        while !(b.len() - start).is_multiple_of(32) {
            b.push(0);
        }
    }
    b.truncate(b.len() - truncate_by);
    std::fs::write(path, b).unwrap();
}

#[test]
fn gguf_types_dequantise_and_bad_gguf_files_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.gguf");
    let f32_data: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let f16_data: Vec<u8> = [0.25f32, -8.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let mut q4_0 = half::f16::from_f32(2.0).to_le_bytes().to_vec();
    q4_0.extend((0..16u8).map(|i| i | (15 << 4)));
    write_gguf(
        &path,
        &[
            ("a.weight", vec![2], 0, f32_data),
            ("b.weight", vec![2], 1, f16_data),
            ("c.weight", vec![32], 2, q4_0),
            ("d.weight", vec![32], 6, vec![0; 22]),
        ],
        0,
    );
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.dequantize("a.weight").unwrap(), vec![1.5, -2.0]);
    assert_eq!(f.dequantize("b.weight").unwrap(), vec![0.25, -8.0]);
    let c = f.dequantize("c.weight").unwrap();
    assert_eq!(&c[..3], &[-16.0, -14.0, -12.0]);
    assert_eq!(c[16], 14.0);
    let e = f.dequantize("d.weight").unwrap_err().to_string();
    assert!(
        e.contains("d.weight") && e.contains("unsupported type") && e.contains("Q4_1"),
        "{e}"
    );

    write_gguf(&path, &[("a.weight", vec![64], 0, vec![0; 256])], 100);
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(
        e.contains("t.gguf") && e.contains("truncated") && e.contains("a.weight"),
        "{e}"
    );

    std::fs::write(&path, b"GGUF\x03\x00").unwrap();
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("truncated GGUF file"), "{e}");
    std::fs::write(&path, b"NOPE0000000000000000000000").unwrap();
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let e = BurnLm::load(path.to_str().unwrap(), &default_device())
        .err()
        .unwrap();
    assert!(matches!(e, LmError::Format { .. }), "{e}");
}

#[test]
fn sharded_checkpoints_load_like_a_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tiny_llama();
    let names: Vec<String> = all.keys().cloned().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let dir = tmp.path();
    std::fs::copy(
        reference_dir().join("tiny-models/llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|n| {
                let (dt, shape, data) = &all[n];
                (
                    n.clone(),
                    TensorView::new(*dt, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), serde_json::Value::String(shard.into()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ids = [5u32, 17, 250, 3];
    let sharded = BurnLm::from_hf_dir(dir, &default_device())
        .unwrap()
        .forward_logits(&ids)
        .unwrap();
    let single = BurnLm::from_hf_dir(
        &reference_dir().join("tiny-models/llama"),
        &default_device(),
    )
    .unwrap()
    .forward_logits(&ids)
    .unwrap();
    assert_eq!(sharded, single);
}
