//! Hostile GGUF files (the hostile-input issue's probe): every declared count and length is
//! checked against the bytes left in the file before anything is allocated, arrays nest a
//! bounded depth, tensor offsets must be aligned, and hyper-parameters that are present must be
//! valid (a NaN rotary base is an error, not the default). All are typed errors naming the file
//! and the key, never an abort, a stack overflow or a panic.

use std::path::{Path, PathBuf};

use lm_burn::gguf::{GgufFile, GgufModel, MAX_ARRAY_DEPTH, MetaArray, MetaValue};
use lm_burn::llama::LlamaConfig;
use lm_burn::{BurnLm, LmError, default_device};

/// A metadata value: its GGUF type and its bytes.
type Meta = (u32, Vec<u8>);

fn u32v(x: u32) -> Meta {
    (4, x.to_le_bytes().to_vec())
}
fn u64v(x: u64) -> Meta {
    (10, x.to_le_bytes().to_vec())
}
fn f32v(x: f32) -> Meta {
    (6, x.to_le_bytes().to_vec())
}
fn strv(s: &str) -> Meta {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    (8, b)
}
/// An array declaring `count` elements of type `elem`, followed by `payload`.
fn arrv(elem: u32, count: u64, payload: &[u8]) -> Meta {
    let mut b = elem.to_le_bytes().to_vec();
    b.extend(count.to_le_bytes());
    b.extend(payload);
    (9, b)
}

struct Tensor {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

fn f32_tensor(name: &str, n: usize) -> Tensor {
    Tensor {
        name: name.into(),
        ne: vec![n as u64],
        ty: 0,
        data: vec![0; 4 * n],
        offset: None,
    }
}

/// A GGUF v3 file; counts can be overridden to lie.
struct Gguf {
    meta: Vec<(String, Meta)>,
    tensors: Vec<Tensor>,
    alignment: u64,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
}

impl Gguf {
    /// A llama header (64 wide, 4 heads, 1 kv head, 2 blocks, 128 positions, 320 tokens) with
    /// one small tensor per block: enough for the config view, no weights to load.
    fn llama() -> Self {
        let meta = [
            ("general.architecture", strv("llama")),
            ("llama.embedding_length", u32v(64)),
            ("llama.feed_forward_length", u32v(160)),
            ("llama.block_count", u32v(2)),
            ("llama.attention.head_count", u32v(4)),
            ("llama.attention.head_count_kv", u32v(1)),
            ("llama.context_length", u32v(128)),
            ("llama.vocab_size", u32v(320)),
        ];
        Self {
            meta: meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensors: vec![
                f32_tensor("blk.0.attn_norm.weight", 64),
                f32_tensor("blk.1.attn_norm.weight", 64),
            ],
            alignment: 32,
            n_tensors: None,
            n_kv: None,
        }
    }

    fn set(mut self, key: &str, value: Meta) -> Self {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), value));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(
            self.n_tensors
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend(self.n_kv.unwrap_or(self.meta.len() as u64).to_le_bytes());
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        for (k, (ty, v)) in &self.meta {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let a = self.alignment.max(1);
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            s(&mut b, &t.name);
            b.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ty.to_le_bytes());
            let o = t.offset.unwrap_or(offset);
            b.extend(o.to_le_bytes());
            offsets.push(o);
            offset = (o + t.data.len() as u64).div_ceil(a) * a;
        }
        let data_start = (b.len() as u64).div_ceil(a) * a;
        for (t, o) in self.tensors.iter().zip(offsets) {
            let at = (data_start + o) as usize;
            if b.len() < at + t.data.len() {
                b.resize(at + t.data.len(), 0);
            }
            b[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        b.resize((b.len() as u64).div_ceil(a) as usize * a as usize, 0);
        b
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }
}

fn open_err(path: &Path) -> LmError {
    match GgufFile::open(path) {
        Ok(_) => panic!("opening {} should fail", path.display()),
        Err(e) => e,
    }
}

fn load_err(path: &Path) -> LmError {
    match BurnLm::from_gguf(path, &default_device()) {
        Ok(_) => panic!("loading {} should fail", path.display()),
        Err(e) => e,
    }
}

/// A format error naming the file and containing every one of `words`.
fn assert_format(e: &LmError, path: &Path, words: &[&str]) {
    let msg = e.to_string();
    assert!(matches!(e, LmError::Format { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg} lacks {w:?}");
    }
}

/// A config error on the GGUF key `field` containing every one of `words`.
fn assert_config(e: &LmError, path: &Path, field: &str, words: &[&str]) {
    let msg = e.to_string();
    assert!(
        matches!(e, LmError::Config { field: f, .. } if f == field),
        "expected a config error on `{field}`: {msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg} lacks {w:?}");
    }
}

#[test]
fn the_test_header_reads_with_documented_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let path = Gguf::llama().write(tmp.path(), "ok.gguf");
    let cfg = GgufModel::open(&path).unwrap().config().unwrap();
    let c = LlamaConfig::from_json(&cfg).unwrap();
    // Absent keys, and only absent keys, take the defaults.
    assert_eq!((c.rope_theta, c.rms_norm_eps), (10_000.0, 1e-6));
    assert_eq!(
        (c.num_layers, c.head_dim, c.max_position_embeddings),
        (2, 16, 128)
    );
    let path = Gguf::llama()
        .set("llama.rope.freq_base", f32v(500_000.0))
        .set("llama.attention.layer_norm_rms_epsilon", f32v(1e-5))
        .write(tmp.path(), "set.gguf");
    let c = LlamaConfig::from_json(&GgufModel::open(&path).unwrap().config().unwrap()).unwrap();
    assert_eq!(c.rope_theta, 500_000.0);
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-12);
}

#[test]
fn a_huge_block_count_is_checked_against_the_file_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    for count in [1_000_000_000_000u64, 3] {
        let path = Gguf::llama()
            .set("llama.block_count", u64v(count))
            .write(tmp.path(), "blocks.gguf");
        assert_config(
            &load_err(&path),
            &path,
            "llama.block_count",
            &[&count.to_string(), "blocks the file's tensors hold (2)"],
        );
    }
}

#[test]
fn non_finite_or_non_positive_floats_are_errors_not_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    for key in [
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        for bad in [
            f32v(f32::NAN),
            f32v(f32::INFINITY),
            f32v(0.0),
            f32v(-1.0),
            strv("1e4"),
        ] {
            let path = Gguf::llama().set(key, bad).write(tmp.path(), "float.gguf");
            assert_config(&load_err(&path), &path, key, &["finite positive number"]);
        }
    }
    // Integers that are present must be integers too (no silent fallback).
    for key in ["llama.context_length", "llama.attention.head_count_kv"] {
        let path = Gguf::llama()
            .set(key, strv("many"))
            .write(tmp.path(), "int.gguf");
        assert_config(&load_err(&path), &path, key, &["unsigned integer", "many"]);
    }
}

#[test]
fn head_layouts_are_validated_under_their_gguf_names() {
    let tmp = tempfile::tempdir().unwrap();
    let path = Gguf::llama()
        .set("llama.attention.head_count", u32v(3))
        .write(tmp.path(), "heads.gguf");
    assert_config(
        &load_err(&path),
        &path,
        "llama.attention.head_count",
        &["divisor of hidden_size = 64"],
    );
    let path = Gguf::llama()
        .set("llama.attention.key_length", u32v(15))
        .write(tmp.path(), "hd.gguf");
    assert_config(
        &load_err(&path),
        &path,
        "llama.attention.key_length",
        &["even"],
    );
    let path = Gguf::llama()
        .set("llama.attention.head_count_kv", u32v(3))
        .write(tmp.path(), "kv.gguf");
    assert_config(
        &load_err(&path),
        &path,
        "llama.attention.head_count_kv",
        &["divisor of num_attention_heads = 4"],
    );
}

#[test]
fn nested_arrays_are_bounded_not_a_stack_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    // 100 000 levels of single-element arrays of arrays: 1.2 MB.
    let depth = 100_000;
    let mut payload = Vec::with_capacity(depth * 12);
    for _ in 0..depth - 1 {
        payload.extend(9u32.to_le_bytes());
        payload.extend(1u64.to_le_bytes());
    }
    payload.extend(0u32.to_le_bytes());
    payload.extend(0u64.to_le_bytes());
    let path = Gguf::llama()
        .set("evil.nested", arrv(9, 1, &payload))
        .write(tmp.path(), "nested.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["evil.nested", &format!("more than {MAX_ARRAY_DEPTH} deep")],
    );
    // Shallow nesting is read, as typed arrays.
    let mut inner = 4u32.to_le_bytes().to_vec();
    inner.extend(2u64.to_le_bytes());
    inner.extend(7u32.to_le_bytes());
    inner.extend(8u32.to_le_bytes());
    let path = Gguf::llama()
        .set("fine.nested", arrv(9, 1, &inner))
        .write(tmp.path(), "shallow.gguf");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.meta("fine.nested"),
        Some(&MetaValue::Array(MetaArray::Array(vec![MetaArray::U32(
            vec![7, 8]
        )])))
    );
}

#[test]
fn declared_counts_are_checked_against_the_bytes_left() {
    let tmp = tempfile::tempdir().unwrap();
    // More tensors than the file could describe.
    let mut g = Gguf::llama();
    g.n_tensors = Some(1_000_000);
    let path = g.write(tmp.path(), "tensors.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["tensor count", "1000000", "bytes are left"],
    );
    // More metadata pairs than bytes.
    let mut g = Gguf::llama();
    g.n_kv = Some(1 << 40);
    let path = g.write(tmp.path(), "kv.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["metadata count", "bytes are left"],
    );
    // Arrays: n elements of at least b bytes need n*b bytes (u32: 4, strings: 8, arrays: 12),
    // and a count whose product overflows is no exception.
    for (elem, count) in [(4u32, 1000u64), (8, 1000), (9, 1000), (10, u64::MAX / 2)] {
        let path = Gguf::llama()
            .set("evil.array", arrv(elem, count, &[0; 64]))
            .write(tmp.path(), "array.gguf");
        assert_format(
            &open_err(&path),
            &path,
            &["evil.array", &count.to_string(), "bytes are left"],
        );
    }
    // A string longer than the rest of the file.
    let mut s = (1u64 << 40).to_le_bytes().to_vec();
    s.extend(b"abc");
    let path = Gguf::llama()
        .set("evil.string", (8, s))
        .write(tmp.path(), "string.gguf");
    assert_format(&open_err(&path), &path, &["evil.string", "bytes are left"]);
}

#[test]
fn a_sparse_file_cannot_ask_for_memory_it_does_not_hold() {
    // 16 MiB of zeros after a header declaring one tensor description per 8 bytes: each needs at
    // least 24, so the count is refused before the 2 M descriptions are allocated or read.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sparse.gguf");
    let size: u64 = 16 << 20;
    let mut g = Gguf::llama();
    g.tensors.clear();
    g.n_tensors = Some(size / 8);
    std::fs::write(&path, g.bytes()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size)
        .unwrap();
    assert_format(
        &open_err(&path),
        &path,
        &["tensor count", &(size / 8).to_string()],
    );
}

#[test]
fn tensor_offsets_must_be_aligned_and_sizes_must_not_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Gguf::llama();
    g.tensors[1].offset = Some(256 + 4);
    let path = g.write(tmp.path(), "misaligned.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["blk.1.attn_norm.weight", "260", "alignment 32"],
    );
    // A declared alignment is honoured, and must be a power of two.
    let mut g = Gguf::llama().set("general.alignment", u32v(64));
    g.alignment = 64;
    GgufFile::open(&g.write(tmp.path(), "a64.gguf")).unwrap();
    g.tensors[1].offset = Some(32);
    let path = g.write(tmp.path(), "a64-misaligned.gguf");
    assert_format(&open_err(&path), &path, &["offset 32", "alignment 64"]);
    for bad in [0, 48] {
        let path = Gguf::llama()
            .set("general.alignment", u32v(bad))
            .write(tmp.path(), "align.gguf");
        assert_format(
            &open_err(&path),
            &path,
            &["general.alignment", "power of two"],
        );
    }
    // An element count that overflows is an error, not a wrapped small size.
    let mut g = Gguf::llama();
    g.tensors[0].ne = vec![1 << 32, 1 << 32, 1 << 32];
    let path = g.write(tmp.path(), "overflow.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["blk.0.attn_norm.weight", "too many elements"],
    );
    // Duplicate names are corrupt, not silently overwritten.
    let mut g = Gguf::llama();
    g.tensors[1].name = g.tensors[0].name.clone();
    let path = g.write(tmp.path(), "dup.gguf");
    assert_format(&open_err(&path), &path, &["appears twice"]);
    let mut g = Gguf::llama();
    g.meta.push(("llama.block_count".into(), u32v(2)));
    let path = g.write(tmp.path(), "dupkey.gguf");
    assert_format(
        &open_err(&path),
        &path,
        &["llama.block_count", "appears twice"],
    );
}
