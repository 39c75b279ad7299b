//! Fuzz targets for lm-burn's readers (short runs here; `cargo xtask fuzz` runs 100,000 cases
//! per target): GGUF files, Hugging Face model directories (`config.json` and
//! `model.safetensors`) and `tokenizer.json`, each mutated from a known-good tiny model. A case
//! passes when the reader returns a model (which must then run a few decoding steps without
//! panicking) or an error naming the file; a panic, an abort, a hang or an allocation over
//! the budget of the fuzz harness fails it.

mod common;

use std::path::Path;

use fuzz_harness::bytes::{self, ByteMutation, Field};
use fuzz_harness::json::{self, JsonMutation};
use fuzz_harness::proptest::prelude::*;
use fuzz_harness::{BudgetAllocator, Case, fuzz};
use lm_burn::{BurnLm, LmError, Tokenizer, default_device};
use serde_json::{Value, json};
use smc_core::model::{DecodeSession, LanguageModel};

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

const TINY: [&str; 5] = ["llama", "llama-tied", "qwen2", "gpt2", "gpt-neo"];

/// The error must say which file (or folder) it is about. (`Ok(false)`: the case was refused.)
fn names(e: &LmError, what: &Path) -> Result<bool, String> {
    let msg = e.to_string();
    if msg.contains(&what.display().to_string()) {
        Ok(false)
    } else {
        Err(format!("the error does not name {}: {msg}", what.display()))
    }
}

/// What a loaded model must survive: a full forward pass, a batched decoding session (prefill,
/// steps, a push, a reorder) and the tokenizer both ways. Errors are fine; panics are not.
fn exercise(lm: &BurnLm) {
    let v = lm.dims().vocab.max(1) as u32;
    let tokens = [1 % v, 2 % v, 3 % v];
    let _ = lm.forward_logits(&tokens);
    if let Ok(mut s) = lm.start(&tokens[..2], 2) {
        let _ = s.next_log_probs();
        let _ = s.push(&[tokens[2], tokens[0]]);
        let _ = s.next_log_probs();
        let _ = s.reorder(&[1, 0]);
        let _ = s.next_log_probs();
    }
    if let Ok(t) = lm.tokenizer()
        && let Ok(ids) = t.encode("the cat sat 12")
    {
        let _ = t.decode(&ids);
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF: the tiny Llama converted, with a byte-level BPE tokenizer in its metadata.

/// GPT-2's byte-to-character table of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32)
        .chain('¡' as u32..='¬' as u32)
        .chain('®' as u32..='ÿ' as u32)
        .collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars[b as usize] = char::from_u32(c).unwrap();
    }
    printable.clear();
    chars
}

/// 320 tokens (the 256 byte characters, then 64 letter pairs) and the 64 merges.
fn bpe_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    for a in "etaoinsh".chars() {
        for b in "etaoinsh".chars() {
            tokens.push(format!("{a}{b}"));
            merges.push(format!("{a} {b}"));
        }
    }
    (tokens, merges)
}

/// A GGUF writer that remembers where its integer fields are.
#[derive(Default)]
struct Writer {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl Writer {
    fn int(&mut self, x: u64, width: usize, field: bool) {
        if field {
            self.fields.push(Field {
                offset: self.b.len(),
                width,
            });
        }
        self.b.extend(&x.to_le_bytes()[..width]);
    }
    fn str(&mut self, s: &str, field: bool) {
        self.int(s.len() as u64, 8, field);
        self.b.extend(s.as_bytes());
    }
}

enum Meta {
    U32(u32),
    F32(f32),
    Str(&'static str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// ggml's blocks of 32 (Q8_0, Q4_0, Q4_1) of `x`.
fn quantize(ty: u32, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        match ty {
            8 => {
                let d = amax / 127.0;
                out.extend(f16_bytes(d));
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
            }
            2 => {
                let max = block
                    .iter()
                    .copied()
                    .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16_bytes(d));
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
            }
            _ => {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16_bytes(d));
                out.extend(f16_bytes(min));
                let q = |v: f32| (((v - min) * inv + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
            }
        }
    }
    out
}

/// The GGUF name of a Llama tensor.
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let part = match part {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{layer}.{part}.{kind}")
}

/// The tiny Llama as a GGUF file with every tensor type the reader supports: the bytes, the
/// integer fields, and where the tensor data starts.
fn gguf_seed() -> (Vec<u8>, Vec<Field>, usize) {
    let src = common::reference_dir().join("tiny-models/llama/model.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (tokens, merges) = bpe_vocab();
    let mut types = vec![1i32; tokens.len()];
    types[0] = 3;
    let meta: Vec<(&str, Meta)> = vec![
        ("general.architecture", Meta::Str("llama")),
        ("general.alignment", Meta::U32(32)),
        ("llama.embedding_length", Meta::U32(64)),
        ("llama.feed_forward_length", Meta::U32(160)),
        ("llama.block_count", Meta::U32(2)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.context_length", Meta::U32(128)),
        ("llama.rope.freq_base", Meta::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("tokenizer.ggml.model", Meta::Str("gpt2")),
        ("tokenizer.ggml.pre", Meta::Str("smollm")),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.merges", Meta::Strs(merges)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
    ];
    let kind = |g: &str| -> u32 {
        match g {
            "blk.0.attn_q.weight" | "blk.0.ffn_down.weight" => 8,
            "blk.0.ffn_up.weight" => 1,
            "blk.1.ffn_gate.weight" => 30,
            "blk.1.attn_v.weight" => 2,
            "blk.1.attn_output.weight" => 3,
            _ => 0,
        }
    };
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let g = gguf_name(&name);
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let ty = kind(&g);
            let data = match ty {
                0 => view.data().to_vec(),
                1 => values.iter().flat_map(|v| f16_bytes(*v)).collect(),
                30 => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => quantize(ty, &values),
            };
            let ne = view.shape().iter().rev().map(|&d| d as u64).collect();
            (g, ne, ty, data)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = Writer::default();
    w.b.extend(b"GGUF");
    w.int(3, 4, true);
    w.int(tensors.len() as u64, 8, true);
    w.int(meta.len() as u64, 8, true);
    for (key, value) in &meta {
        w.str(key, true);
        match value {
            Meta::U32(x) => {
                w.int(4, 4, true);
                w.int(*x as u64, 4, true);
            }
            Meta::F32(x) => {
                w.int(6, 4, true);
                w.b.extend(x.to_le_bytes());
            }
            Meta::Str(s) => {
                w.int(8, 4, true);
                w.str(s, true);
            }
            Meta::Strs(items) => {
                w.int(9, 4, true);
                w.int(8, 4, true);
                w.int(items.len() as u64, 8, true);
                for (i, s) in items.iter().enumerate() {
                    // A few of the lengths are fields; all of them would drown the others.
                    w.str(s, i < 2 || i + 1 == items.len());
                }
            }
            Meta::I32s(items) => {
                w.int(9, 4, true);
                w.int(5, 4, true);
                w.int(items.len() as u64, 8, true);
                for x in items {
                    w.b.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, ne, ty, data) in &tensors {
        w.str(name, true);
        w.int(ne.len() as u64, 4, true);
        for d in ne {
            w.int(*d, 8, true);
        }
        w.int(*ty as u64, 4, true);
        w.int(offset, 8, true);
        offset = (offset + data.len() as u64).div_ceil(32) * 32;
    }
    let data_start = w.b.len().div_ceil(32) * 32;
    w.b.resize(data_start, 0);
    for (_, _, _, data) in &tensors {
        w.b.extend(data);
        w.b.resize(w.b.len().div_ceil(32) * 32, 0);
    }
    (w.b, w.fields, data_start)
}

#[test]
fn fuzz_gguf_reader() {
    let (seed, fields, data_start) = gguf_seed();
    // The seed itself loads and runs.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    std::fs::write(&path, &seed).unwrap();
    let lm = BurnLm::from_gguf(&path, &default_device()).unwrap();
    assert_eq!(lm.dims().vocab, 320);
    lm.forward_logits(&[1, 2, 3]).unwrap();
    drop(lm);
    fuzz(
        "gguf",
        1000,
        bytes::byte_mutations(6, true),
        |case: &Case<'_>, mutations: Vec<ByteMutation>| {
            let mut b = seed.clone();
            bytes::apply(&mut b, &mutations, 0..data_start, &fields);
            let path = case.dir.join("model.gguf");
            std::fs::write(&path, &b).map_err(|e| e.to_string())?;
            match BurnLm::from_gguf(&path, &default_device()) {
                Ok(lm) => {
                    exercise(&lm);
                    Ok(true)
                }
                Err(e) => names(&e, &path),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directories: config.json and the safetensors file (its JSON header or bytes).

/// A tiny model's config and the parts of its safetensors file.
struct HfSeed {
    config: Value,
    header: Value,
    data: Vec<u8>,
}

fn hf_seeds() -> Vec<HfSeed> {
    TINY.iter()
        .map(|name| {
            let dir = common::reference_dir().join("tiny-models").join(name);
            let config: Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
            let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            HfSeed {
                config,
                header: serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
                data: bytes[8 + n..].to_vec(),
            }
        })
        .collect()
}

/// A safetensors file from a header and the tensor bytes.
fn safetensors_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

/// One edit of a model directory.
#[derive(Debug, Clone)]
enum HfMutation {
    /// The config's JSON.
    Config(Vec<JsonMutation>),
    /// The config's text.
    ConfigText(Vec<ByteMutation>),
    /// The safetensors header's JSON (dtypes, shapes, offsets).
    Header(Vec<JsonMutation>),
    /// The safetensors file's bytes (most in the header).
    Weights(Vec<ByteMutation>),
}

fn hf_mutation() -> impl Strategy<Value = HfMutation> {
    prop_oneof![
        4 => json::json_mutations(4).prop_map(HfMutation::Config),
        1 => bytes::byte_mutations(4, false).prop_map(HfMutation::ConfigText),
        3 => json::json_mutations(4).prop_map(HfMutation::Header),
        2 => bytes::byte_mutations(4, true).prop_map(HfMutation::Weights),
    ]
}

#[test]
fn fuzz_hf_model_loader() {
    let seeds = hf_seeds();
    fuzz(
        "hf-model",
        1000,
        (0..TINY.len(), prop::collection::vec(hf_mutation(), 1..=3)),
        |case: &Case<'_>, (model, mutations): (usize, Vec<HfMutation>)| {
            let seed = &seeds[model];
            let (mut config, mut header) = (seed.config.clone(), seed.header.clone());
            for m in &mutations {
                match m {
                    HfMutation::Config(ms) => json::apply(&mut config, ms),
                    HfMutation::Header(ms) => json::apply(&mut header, ms),
                    _ => {}
                }
            }
            let mut config_text = serde_json::to_vec_pretty(&config).unwrap();
            let mut weights = safetensors_bytes(&header, &seed.data);
            let header_end = weights.len() - seed.data.len();
            for m in &mutations {
                match m {
                    HfMutation::ConfigText(ms) => {
                        let len = config_text.len();
                        bytes::apply(&mut config_text, ms, 0..len, &[]);
                    }
                    HfMutation::Weights(ms) => bytes::apply(
                        &mut weights,
                        ms,
                        0..header_end,
                        &[Field {
                            offset: 0,
                            width: 8,
                        }],
                    ),
                    _ => {}
                }
            }
            let dir = case.dir.join("model");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("config.json"), &config_text).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("model.safetensors"), &weights).map_err(|e| e.to_string())?;
            match BurnLm::from_hf_dir(&dir, &default_device()) {
                Ok(lm) => {
                    exercise(&lm);
                    Ok(true)
                }
                Err(e) => names(&e, &dir),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json: a word-level and a byte-level BPE tokenizer.

fn word_tokenizer() -> Value {
    let vocab: serde_json::Map<String, Value> =
        (0..320).map(|i| (format!("w{i}"), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": { "type": "Lowercase" },
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "w0" }
    })
}

fn bpe_tokenizer() -> Value {
    use tokenizers::models::bpe::{BPE, Vocab};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let (tokens, merges) = bpe_vocab();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<|end|>", true)]);
    serde_json::from_str(&tok.to_string(false).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
enum TokMutation {
    Json(Vec<JsonMutation>),
    Text(Vec<ByteMutation>),
}

#[test]
fn fuzz_tokenizer_loader() {
    let seeds = [word_tokenizer(), bpe_tokenizer()];
    let strategy = (
        0..seeds.len(),
        json::json_mutations(4),
        prop::option::weighted(0.3, bytes::byte_mutations(3, false)),
    );
    fuzz(
        "tokenizer",
        1000,
        strategy.prop_map(|(s, j, b)| {
            let mut ms = vec![TokMutation::Json(j)];
            ms.extend(b.map(TokMutation::Text));
            (s, ms)
        }),
        |case: &Case<'_>, (seed, mutations): (usize, Vec<TokMutation>)| {
            let mut doc = seeds[seed].clone();
            let mut text = Vec::new();
            for m in &mutations {
                match m {
                    TokMutation::Json(ms) => {
                        json::apply(&mut doc, ms);
                        text = doc.to_string().into_bytes();
                    }
                    TokMutation::Text(ms) => {
                        let len = text.len();
                        bytes::apply(&mut text, ms, 0..len, &[]);
                    }
                }
            }
            let path = case.dir.join("tokenizer.json");
            std::fs::write(&path, &text).map_err(|e| e.to_string())?;
            match Tokenizer::from_file(&path) {
                Ok(t) => {
                    for s in ["w1 w2 w300", "the cat sat", "", "é\u{0}<s><|end|>"] {
                        if let Ok(ids) = t.encode(s) {
                            let _ = t.decode(&ids);
                        }
                    }
                    let _ = t.decode(&[0, 319, 5000, u32::MAX]);
                    let _ = t.check_model_vocab(320);
                    let _ = t.token_to_id("w1");
                    Ok(true)
                }
                Err(e) => names(&e, &path),
            }
        },
    );
}
