//! Fuzz target for the twist checkpoint reader (short run here; `cargo xtask fuzz` runs
//! 100,000 cases): checkpoints of a trained linear head and a trained conditional MLP head with
//! their metadata, safetensors header, bytes and Adam state (burnpack) mutated. `TwistHead::load`
//! and `HeadTrainable::resume` must return a head or an error naming the file; a resumed head
//! must survive a training update (Adam with the restored state) without panicking.

use std::path::{Path, PathBuf};

use fuzz_harness::bytes::{self, ByteMutation, Field};
use fuzz_harness::json::{self, JsonMutation};
use fuzz_harness::proptest::prelude::*;
use fuzz_harness::{BudgetAllocator, Case, fuzz};
use lm_burn::heads::{HeadConfig, HeadKind, META_KEY, OPTIMIZER_TENSOR, TwistHead};
use lm_burn::{BurnLm, default_device};
use serde_json::Value;
use smc_core::prelude::*;
use twist_learn::*;

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

const PROMPT: [u32; 3] = [5, 17, 250];

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

fn phi() -> impl Potential {
    FnPotential::new(
        "s1 < 40",
        |_: &[u32], s: &[u32]| {
            if s[0] < 40 { 0.0 } else { -2.0 }
        },
    )
}

/// One update of CTL with K = 2, T = 1.
fn update(lm: &BurnLm, twist: &mut HeadTrainable) -> Result<(), TrainError> {
    let cfg = TrainConfig {
        method: Method::Ctl,
        steps: 1,
        batch_size: 2,
        horizon: 1,
        learning_rate: 1e-2,
        seed: 0,
        start_step: 0,
        batch: BatchSource::Sampled,
    };
    train(lm, twist, &phi(), &PROMPT, &cfg, |_, _, _| {
        Ok::<(), TrainError>(())
    })
    .map(|_| ())
}

/// A checkpoint of a head trained for two updates (so Adam has state for every parameter).
fn seed_checkpoint(lm: &BurnLm, kind: HeadKind, conditioning: Option<Vec<u32>>) -> Vec<u8> {
    seed_checkpoint_of(lm, HeadConfig::for_model(lm, kind, conditioning))
}

fn seed_checkpoint_of(lm: &BurnLm, config: HeadConfig) -> Vec<u8> {
    let head = TwistHead::new(lm, config, 1, &default_device().autodiff()).unwrap();
    let mut twist = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
    update(lm, &mut twist).unwrap();
    update(lm, &mut twist).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.safetensors");
    twist
        .save_checkpoint(&path, &serde_json::json!({ "step": 2 }))
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// A checkpoint's parts: the safetensors header (with the metadata JSON parsed out of it) and
/// the tensor bytes, with where Adam's state lies in them.
struct Seed {
    header: Value,
    meta: Value,
    data: Vec<u8>,
    optimizer: std::ops::Range<usize>,
}

fn split(bytes: &[u8]) -> Seed {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = serde_json::from_str(header["__metadata__"][META_KEY].as_str().unwrap()).unwrap();
    let offsets = &header[OPTIMIZER_TENSOR]["data_offsets"];
    let optimizer = offsets[0].as_u64().unwrap() as usize..offsets[1].as_u64().unwrap() as usize;
    Seed {
        header,
        meta,
        data: bytes[8 + n..].to_vec(),
        optimizer,
    }
}

#[derive(Debug, Clone)]
enum CkptMutation {
    /// The `tsmc.twist_head` metadata (head config, conditioning state, parameter ids, step).
    Meta(Vec<JsonMutation>),
    /// The safetensors header (tensor dtypes, shapes, offsets).
    Header(Vec<JsonMutation>),
    /// The file's bytes, most in its header.
    Bytes(Vec<ByteMutation>),
    /// Adam's state, most in its burnpack header and CBOR metadata.
    Optimizer(Vec<ByteMutation>),
}

fn mutation() -> impl Strategy<Value = CkptMutation> {
    prop_oneof![
        4 => json::json_mutations(3).prop_map(CkptMutation::Meta),
        2 => json::json_mutations(3).prop_map(CkptMutation::Header),
        2 => bytes::byte_mutations(4, true).prop_map(CkptMutation::Bytes),
        2 => bytes::byte_mutations(4, true).prop_map(CkptMutation::Optimizer),
    ]
}

fn names(e: &impl std::fmt::Display, path: &Path) -> Result<bool, String> {
    let msg = e.to_string();
    if msg.contains(&path.display().to_string()) {
        Ok(false)
    } else {
        Err(format!("the error does not name {}: {msg}", path.display()))
    }
}

#[test]
fn fuzz_checkpoint_reader() {
    let lm = tiny_llama();
    let raw = [
        seed_checkpoint(&lm, HeadKind::Linear, None),
        seed_checkpoint(&lm, HeadKind::Mlp, Some(vec![7, 8])),
        // A low-rank embedding head with a gated bias: its parameters are routed by name.
        seed_checkpoint_of(&lm, {
            let mut c = HeadConfig::for_model(&lm, HeadKind::Embedding, None);
            c.rank = Some(4);
            c.bias_gate = Some(lm_burn::heads::BiasGate::Sigmoid);
            c
        }),
    ];
    let seeds = raw.each_ref().map(|r| split(r));
    let ad = default_device().autodiff();
    // The unmutated checkpoints resume and train.
    let dir = tempfile::tempdir().unwrap();
    for seed in &raw {
        let path = dir.path().join("h.safetensors");
        std::fs::write(&path, seed).unwrap();
        let (mut twist, meta) = HeadTrainable::resume(
            &path,
            &ad,
            Parameterization::Identity,
            AdamConfig::default(),
        )
        .unwrap();
        assert_eq!(meta["step"], 2);
        twist.head_mut().attach_base_model(&lm).unwrap();
        update(&lm, &mut twist).unwrap();
    }
    fuzz(
        "checkpoint",
        2000,
        (0..seeds.len(), prop::collection::vec(mutation(), 1..=3)),
        |case: &Case<'_>, (seed, mutations): (usize, Vec<CkptMutation>)| {
            let s = &seeds[seed];
            let (mut header, mut meta) = (s.header.clone(), s.meta.clone());
            for m in &mutations {
                match m {
                    CkptMutation::Meta(ms) => json::apply(&mut meta, ms),
                    CkptMutation::Header(ms) => json::apply(&mut header, ms),
                    _ => {}
                }
            }
            if let Some(entries) = header
                .get_mut("__metadata__")
                .and_then(Value::as_object_mut)
            {
                entries.insert(META_KEY.into(), meta.to_string().into());
            }
            let mut text = header.to_string();
            while !text.len().is_multiple_of(8) {
                text.push(' ');
            }
            let mut file = (text.len() as u64).to_le_bytes().to_vec();
            file.extend(text.as_bytes());
            let data_start = file.len();
            file.extend(&s.data);
            let length = [Field {
                offset: 0,
                width: 8,
            }];
            // The burnpack header: magic, version, metadata size (the fields), then CBOR.
            let opt = data_start + s.optimizer.start;
            let burnpack = [
                Field {
                    offset: opt + 4,
                    width: 2,
                },
                Field {
                    offset: opt + 6,
                    width: 4,
                },
            ];
            for m in &mutations {
                match m {
                    CkptMutation::Bytes(ms) => bytes::apply(&mut file, ms, 0..data_start, &length),
                    CkptMutation::Optimizer(ms) => {
                        bytes::apply(&mut file, ms, opt..opt + 1024, &burnpack)
                    }
                    _ => {}
                }
            }
            let path = case.dir.join("h.safetensors");
            std::fs::write(&path, &file).map_err(|e| e.to_string())?;
            if let Err(e) = TwistHead::load(&path, &default_device()) {
                names(&e, &path)?;
            }
            match HeadTrainable::resume(
                &path,
                &ad,
                Parameterization::Identity,
                AdamConfig::default(),
            ) {
                Ok((mut twist, _)) => {
                    if twist.head_mut().attach_base_model(&lm).is_ok() {
                        let _ = update(&lm, &mut twist);
                    }
                    Ok(true)
                }
                Err(e) => names(&e, &path),
            }
        },
    );
}
