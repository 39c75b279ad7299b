//! GGUF files: a bounds-checked reader (every read is checked against the file size, so a
//! truncated or corrupt file is an error naming the file, never a panic), dequantisation of
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 at load, llama.cpp's Q/K row permutation undone, the
//! Hugging Face view of the config, and the tokenizer built from the metadata.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Value, json};

use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{RawTensor, WeightSource};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Uint(x) => Some(*x),
            MetaValue::Int(x) if *x >= 0 => Some(*x as u64),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(x) => Some(*x),
            MetaValue::Uint(x) => Some(*x as f64),
            MetaValue::Int(x) => Some(*x as f64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// ggml tensor types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale d, 16 bytes of 4-bit q; value = (q - 8) d.
    Q4_0,
    /// Blocks of 32: f16 scale d, f16 min m, 16 bytes of 4-bit q; value = q d + m.
    Q4_1,
    /// Blocks of 32: f16 scale d, 32 i8 q; value = q d.
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// Bytes for `n` elements (n a multiple of the block size for block types).
    fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            GgmlType::F32 => Some(n * 4),
            GgmlType::F16 | GgmlType::Bf16 => Some(n * 2),
            GgmlType::Q4_0 => n.is_multiple_of(32).then_some(n / 32 * 18),
            GgmlType::Q4_1 => n.is_multiple_of(32).then_some(n / 32 * 20),
            GgmlType::Q8_0 => n.is_multiple_of(32).then_some(n / 32 * 34),
        }
    }
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// A tensor's description in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml dimensions ne, innermost first.
    pub ne: Vec<usize>,
    /// ggml type id.
    pub type_id: u32,
    /// Byte offset of the data from the start of the file.
    pub start: usize,
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Metadata key-value pairs.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensors by GGUF name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            LmError::format(
                self.path,
                format!(
                    "truncated GGUF file: reading {what} needs bytes {}..{} but the file has {}",
                    self.pos,
                    self.pos.saturating_add(n),
                    self.bytes.len()
                ),
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        // Any length beyond the file is corrupt; checking here avoids huge allocations.
        if n > self.bytes.len() as u64 {
            return Err(LmError::format(
                self.path,
                format!("corrupt GGUF file: {what} has length {n}, larger than the file"),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| LmError::format(self.path, format!("{what} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, what: &str) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::Uint(self.take(1, what)?[0] as u64),
            1 => MetaValue::Int(self.take(1, what)?[0] as i8 as i64),
            2 => MetaValue::Uint(
                u16::from_le_bytes(self.take(2, what)?.try_into().expect("2")) as u64,
            ),
            3 => MetaValue::Int(
                i16::from_le_bytes(self.take(2, what)?.try_into().expect("2")) as i64,
            ),
            4 => MetaValue::Uint(self.u32(what)? as u64),
            5 => MetaValue::Int(self.u32(what)? as i32 as i64),
            6 => MetaValue::Float(
                f32::from_le_bytes(self.take(4, what)?.try_into().expect("4")) as f64,
            ),
            7 => MetaValue::Bool(self.take(1, what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                let elem = self.u32(what)?;
                let n = self.len(what)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Uint(self.u64(what)?),
            11 => MetaValue::Int(self.u64(what)? as i64),
            12 => MetaValue::Float(f64::from_le_bytes(
                self.take(8, what)?.try_into().expect("8"),
            )),
            other => {
                return Err(LmError::format(
                    self.path,
                    format!("corrupt GGUF file: {what} has unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF (version 2 or 3) file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| LmError::io(path, e))?;
        // SAFETY: read-only mapping of a model file that tsmc never writes while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LmError::io(path, e))?;
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        if c.take(4, "the magic number")? != b"GGUF" {
            return Err(LmError::format(
                path,
                "not a GGUF file (the magic number is not \"GGUF\")",
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(LmError::format(
                path,
                format!("unsupported GGUF version {version} (supported: 2, 3)"),
            ));
        }
        let n_tensors = c.len("the tensor count")?;
        let n_kv = c.len("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("the type of metadata `{key}`"))?;
            let value = c.value(ty, &format!("metadata `{key}`"))?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name {i}"))?;
            let n_dims = c.u32(&format!("the rank of `{name}`"))? as usize;
            if n_dims > 8 {
                return Err(LmError::format(
                    path,
                    format!("corrupt GGUF file: tensor `{name}` has rank {n_dims}"),
                ));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.len(&format!("the shape of `{name}`"))?);
            }
            let type_id = c.u32(&format!("the type of `{name}`"))?;
            let offset = c.u64(&format!("the offset of `{name}`"))?;
            infos.push((name, ne, type_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, ne, type_id, offset) in infos {
            let start = data_start.saturating_add(offset as usize);
            let n: usize = ne.iter().product();
            // Unsupported types are reported when the tensor is read, with its name.
            if let Some(bytes) = GgmlType::from_id(type_id).and_then(|t| t.bytes_for(n)) {
                let end = start.saturating_add(bytes);
                if end > mmap.len() {
                    return Err(LmError::format(
                        path,
                        format!(
                            "truncated GGUF file: tensor `{name}` needs bytes {start}..{end} but the file has {}",
                            mmap.len()
                        ),
                    ));
                }
            }
            tensors.insert(name, TensorInfo { ne, type_id, start });
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Dequantises a tensor in the file's raw layout (row-major with ggml's ne reversed).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LmError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })?;
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| LmError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.into(),
            dtype: format!("ggml type {}", info.type_id),
            supported: SUPPORTED_TYPES,
        })?;
        let n: usize = info.ne.iter().product();
        let nbytes = ty.bytes_for(n).ok_or_else(|| {
            LmError::format(
                &self.path,
                format!("tensor `{name}`: {n} elements is not a whole number of {ty:?} blocks"),
            )
        })?;
        let bytes = self
            .mmap
            .get(info.start..info.start + nbytes)
            .ok_or_else(|| {
                LmError::format(&self.path, format!("truncated GGUF file: tensor `{name}`"))
            })?;
        Ok(dequantize(ty, bytes, n))
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantises `n` elements of type `ty` from `bytes`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16(&block[0..2]);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (head, m_of) = if ty == GgmlType::Q4_0 {
                (2, None)
            } else {
                (4, Some(2))
            };
            for block in bytes.chunks_exact(head + 16) {
                let d = f16(&block[0..2]);
                let qs = &block[head..];
                match m_of {
                    None => {
                        out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                        out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
                    }
                    Some(mo) => {
                        let m = f16(&block[mo..mo + 2]);
                        out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                        out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
                    }
                }
            }
        }
    }
    out
}

/// Undoes llama.cpp's permutation of Q/K rows (interleaved rotary -> Hugging Face half-split):
/// HF row h*hd + j*hd/2 + i = GGUF row h*hd + 2i + j.
pub fn unpermute_rows(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * hd + 2 * i + j) * cols;
                let dst = (h * hd + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// A GGUF model: its weights under Hugging Face names, its config and tokenizer.
pub struct GgufModel {
    file: GgufFile,
    arch: String,
    /// HF name -> GGUF name.
    names: BTreeMap<String, String>,
    n_heads: usize,
    n_kv_heads: usize,
}

fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let mapped = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}.{kind}"))
}

impl GgufModel {
    /// Opens a GGUF model file of the llama or qwen2 architecture.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = file
            .meta("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("")
            .to_string();
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(LmError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: arch,
                supported: "llama, qwen2 (GGUF)".into(),
            });
        }
        let mut names = BTreeMap::new();
        for g in file.tensors.keys() {
            match hf_name(g) {
                Some(h) => {
                    names.insert(h, g.clone());
                }
                None if g == "rope_freqs.weight" => {}
                None => {
                    return Err(LmError::ExtraTensors {
                        path: path.to_path_buf(),
                        count: 1,
                        examples: format!("`{g}` (not part of the {arch} architecture)"),
                    });
                }
            }
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = file
            .meta(&key("attention.head_count"))
            .and_then(MetaValue::as_u64)
            .unwrap_or(0) as usize;
        let n_kv_heads = file
            .meta(&key("attention.head_count_kv"))
            .and_then(MetaValue::as_u64)
            .map_or(n_heads, |x| x as usize);
        Ok(Self {
            file,
            arch,
            names,
            n_heads,
            n_kv_heads,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The Hugging Face view of the hyper-parameters, for the architecture's config reader.
    pub fn config(&self) -> Result<JsonConfig> {
        let path = self.file.path();
        let a = &self.arch;
        let get = |k: &str| self.file.meta(&format!("{a}.{k}"));
        let need_u = |k: &str| -> Result<u64> {
            get(k)
                .and_then(MetaValue::as_u64)
                .ok_or_else(|| LmError::Config {
                    path: path.to_path_buf(),
                    field: format!("{a}.{k}"),
                    expected: "an unsigned integer".into(),
                    found: get(k).map_or("nothing".into(), |v| format!("{v:?}")),
                })
        };
        let hidden = need_u("embedding_length")?;
        let vocab = match self.file.meta("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(t)) => t.len() as u64,
            _ => get("vocab_size").and_then(MetaValue::as_u64).unwrap_or(0),
        };
        let embd = self
            .file
            .tensors
            .get("token_embd.weight")
            .map(|t| t.ne.clone());
        let vocab = embd
            .and_then(|ne| ne.get(1).copied())
            .map_or(vocab, |v| v as u64);
        let value: Value = json!({
            "model_type": a,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": need_u("feed_forward_length")?,
            "num_hidden_layers": need_u("block_count")?,
            "num_attention_heads": need_u("attention.head_count")?,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": get("attention.key_length").and_then(MetaValue::as_u64).unwrap_or(hidden / self.n_heads.max(1) as u64),
            "rms_norm_eps": get("attention.layer_norm_rms_epsilon").and_then(MetaValue::as_f64).unwrap_or(1e-6),
            "rope_theta": get("rope.freq_base").and_then(MetaValue::as_f64).unwrap_or(10_000.0),
            "max_position_embeddings": get("context_length").and_then(MetaValue::as_u64).unwrap_or(4096),
            "tie_word_embeddings": !self.file.tensors.contains_key("output.weight"),
            "attention_bias": self.file.tensors.contains_key("blk.0.attn_q.bias"),
        });
        Ok(JsonConfig::from_value(path, value))
    }

    /// The byte-level BPE tokenizer described by the metadata.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        use tokenizers::models::bpe::{BPE, Vocab};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::{AddedToken, PreTokenizerWrapper};

        let name = self.file.path().display().to_string();
        let err = |detail: String| LmError::Tokenizer {
            source_name: name.clone(),
            detail,
            source: None,
        };
        let model = self
            .file
            .meta("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match self.file.meta(key) {
                Some(MetaValue::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .ok_or_else(|| err(format!("{key} holds a non-string")))
                    })
                    .collect(),
                _ => Err(err(format!("{key} is missing"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        err(format!(
                            "merge {m:?} is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LmError::Tokenizer {
                source_name: name.clone(),
                detail: format!("cannot build the BPE model: {e}"),
                source: Some(e),
            })?;
        let pre = self
            .file
            .meta("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            other => {
                return Err(err(format!(
                    "pre-tokenizer {other:?} is not supported (supported: smollm, gpt2, default)"
                )));
            }
        };
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(ByteLevel::default()));
        // Control tokens (type 3) are special: never split, kept whole.
        if let Some(MetaValue::Array(types)) = self.file.meta("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64() == Some(3))
                .map(|(_, s)| AddedToken::from(s.clone(), true))
                .collect();
            tok.add_special_tokens(&special);
        }
        Ok(Tokenizer::from_inner(tok, name))
    }
}

impl WeightSource for GgufModel {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let g = self.names.get(name)?;
        let mut shape = self.file.tensors[g].ne.clone();
        shape.reverse();
        Some(shape)
    }

    fn read(&self, name: &str) -> Result<RawTensor> {
        let g = self.names.get(name).ok_or_else(|| LmError::MissingTensor {
            path: self.file.path().to_path_buf(),
            tensor: name.into(),
        })?;
        let shape = self.shape(name).expect("present");
        let mut data = self.file.dequantize(g)?;
        if self.arch == "llama" && shape.len() == 2 {
            let cols = shape[1];
            if g.ends_with("attn_q.weight") {
                data = unpermute_rows(&data, self.n_heads, cols);
            } else if g.ends_with("attn_k.weight") {
                data = unpermute_rows(&data, self.n_kv_heads, cols);
            }
        }
        Ok(RawTensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(out, in).
        let (n_heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..n_heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = (h * hd + j * hd / 2 + i) * cols;
                    let dst = (h * hd + 2 * i + j) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, n_heads, cols), hf);
    }

    #[test]
    fn q4_1_and_q8_0_blocks_dequantise_as_documented() {
        let d = half::f16::from_f32(0.5).to_le_bytes();
        let m = half::f16::from_f32(-1.0).to_le_bytes();
        let mut q41 = vec![d[0], d[1], m[0], m[1]];
        q41.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize(GgmlType::Q4_1, &q41, 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 15.0 * 0.5 - 1.0);
        assert_eq!(v[16], 15.0 * 0.5 - 1.0);
        let mut q8 = vec![d[0], d[1]];
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &q8, 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
    }
}
