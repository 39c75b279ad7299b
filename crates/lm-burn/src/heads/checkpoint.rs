//! One-file checkpoints of twist heads: weights, the configuration and metadata in the
//! safetensors header, optionally the optimiser's state; read back with every field checked
//! before anything is sized from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Param, ParamId};
use burn::tensor::Device;

use super::{HeadConfig, HeadModule, ParamRef, ParamValue, TwistHead, validate_shape};
use crate::error::{LmError, Result};
use crate::temporaries::write_atomic;

impl TwistHead {
    /// Writes the head to `path` as one file (see [`TwistHead::save_checkpoint`]), without
    /// optimiser state.
    pub fn save(&self, path: &Path, metadata: &serde_json::Value) -> Result<()> {
        self.save_checkpoint(path, metadata, None)
    }

    /// Writes a checkpoint as ONE safetensors file: the weights (tensors named as in
    /// [`HeadConfig::param_specs`]), the
    /// optimiser's state when given (raw bytes, tensor `optimizer.state`) and, in the header's
    /// `__metadata__` entry `tsmc.twist_head`, the head's configuration, the conditioning state,
    /// the parameter ids and `metadata`. The file goes through a temporary sibling renamed into
    /// place, so a reader sees the old checkpoint or the new one, never a mix (a run killed
    /// while saving leaves the old one). A copy of the metadata is then written to `path` with
    /// extension `json` for people to read; tsmc never reads it back.
    pub fn save_checkpoint(
        &self,
        path: &Path,
        metadata: &serde_json::Value,
        optimizer: Option<&[u8]>,
    ) -> Result<()> {
        if path.extension().is_some_and(|e| e == "json") {
            return Err(LmError::format(
                path,
                "a checkpoint path ending in .json would be overwritten by its own metadata copy",
            ));
        }
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (spec, (_, param)) in self
            .config
            .param_specs()
            .into_iter()
            .zip(self.module.ordered())
        {
            let t = match param {
                ParamRef::Matrix(w) => w.val().inner(),
                ParamRef::Vector(b) => b.val().inner().unsqueeze::<2>(),
            };
            let values = t
                .try_into_vec_as::<f32>()
                .map_err(LmError::read_back("twist head weights"))?;
            let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.insert(spec.name, (spec.shape, bytes));
        }
        let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, (s, b))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .expect("consistent"),
                )
            })
            .collect();
        if let Some(state) = optimizer {
            views.push((
                OPTIMIZER_TENSOR.to_string(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::U8,
                    vec![state.len()],
                    state,
                )
                .expect("consistent"),
            ));
        }
        let param_ids: BTreeMap<String, u64> = self
            .parameters()
            .into_iter()
            .map(|(name, id, _)| (name, id))
            .collect();
        let meta = serde_json::json!({
            "format": CHECKPOINT_FORMAT,
            "head": self.config,
            "cond_hidden": self.cond_hidden,
            "param_ids": param_ids,
            "optimizer_state": optimizer.is_some(),
            "metadata": metadata,
        });
        let info = std::collections::HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        let bytes = safetensors::serialize(views, Some(info))
            .map_err(|e| LmError::safetensors(path, "cannot serialise the twist head", e))?;
        write_atomic(path, &bytes)?;
        let mut copy = meta;
        copy["note"] = serde_json::json!(format!(
            "a copy, for people, of the metadata inside {}; tsmc reads only that file",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        write_atomic(
            &path.with_extension("json"),
            serde_json::to_string_pretty(&copy)
                .expect("json")
                .as_bytes(),
        )
    }

    /// Reads a head written by [`TwistHead::save`] or [`TwistHead::save_checkpoint`] (or by an
    /// older tsmc: weights, with the metadata in the `.json` beside them); returns it and the
    /// stored metadata.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, serde_json::Value)> {
        let c = Self::read_checkpoint(path, device, false)?;
        Ok((c.head, c.metadata))
    }

    /// [`TwistHead::load`] with the optimiser state saved with the head, if any (from an older
    /// tsmc: the `.optim` file beside the weights).
    pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
        Self::read_checkpoint(path, device, true)
    }

    fn read_checkpoint(path: &Path, device: &Device, with_optimizer: bool) -> Result<Checkpoint> {
        let file = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
        // SAFETY: read-only mapping; tsmc replaces checkpoints by renaming, never in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LmError::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
            LmError::safetensors(path, "not a valid safetensors file (truncated?)", e)
        })?;
        let embedded = header.metadata().as_ref().and_then(|m| m.get(META_KEY));
        let (meta, meta_path, optimizer) = match embedded {
            Some(text) => {
                let meta: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| LmError::json(path, format!("header entry `{META_KEY}`"), e))?;
                if meta["format"] != CHECKPOINT_FORMAT {
                    return Err(config_error(
                        path,
                        "format",
                        format!("{CHECKPOINT_FORMAT} (a twist head checkpoint of this tsmc)"),
                        &meta["format"],
                    ));
                }
                let optimizer = if with_optimizer {
                    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                        LmError::safetensors(path, "not a valid safetensors file (truncated?)", e)
                    })?;
                    match st.tensor(OPTIMIZER_TENSOR) {
                        Ok(v) if v.dtype() == safetensors::Dtype::U8 && v.shape().len() == 1 => {
                            Some(v.data().to_vec())
                        }
                        Ok(v) => {
                            return Err(LmError::Shape {
                                path: path.to_path_buf(),
                                tensor: OPTIMIZER_TENSOR.into(),
                                expected: vec![v.data().len()],
                                found: v.shape().to_vec(),
                            });
                        }
                        Err(_) => None,
                    }
                } else {
                    None
                };
                if with_optimizer && meta["optimizer_state"] == true && optimizer.is_none() {
                    return Err(LmError::MissingTensor {
                        path: path.to_path_buf(),
                        tensor: OPTIMIZER_TENSOR.into(),
                    });
                }
                (meta, path.to_path_buf(), optimizer)
            }
            None => {
                // An older checkpoint: metadata and optimiser state in separate files.
                let meta_path = path.with_extension("json");
                let text = std::fs::read_to_string(&meta_path).map_err(|e| {
                    LmError::format(
                        path,
                        format!(
                            "no `{META_KEY}` entry in the header (not a twist head checkpoint), \
                             and no readable metadata file {} beside it as an older tsmc wrote: {e}",
                            meta_path.display()
                        ),
                    )
                })?;
                let meta: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| LmError::json(&meta_path, "invalid JSON", e))?;
                let optim_path = path.with_extension("optim");
                let optimizer = if with_optimizer && optim_path.exists() {
                    Some(std::fs::read(&optim_path).map_err(|e| LmError::io(&optim_path, e))?)
                } else {
                    None
                };
                (meta, meta_path, optimizer)
            }
        };
        drop(map);
        let config: HeadConfig = serde_json::from_value(meta["head"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `head`", e))?;
        let cond_hidden: Option<Vec<f32>> = serde_json::from_value(meta["cond_hidden"].clone())
            .map_err(|e| LmError::json(&meta_path, "field `cond_hidden`", e))?;
        validate_head(&meta_path, &config, cond_hidden.as_deref())?;
        let ids = param_ids(&meta_path, &meta["param_ids"], &config)?;
        let source = crate::weights::SafetensorsFile::open(path)?;
        let mut loader = crate::weights::Loader::new(&source, device);
        loader.ignore(|n| n == OPTIMIZER_TENSOR);
        let mut values = Vec::new();
        for spec in config.param_specs() {
            // Parameter ids are kept so that a saved optimiser state matches the reloaded head.
            let id = ids.as_ref().map(|ids| ParamId::from(ids[&spec.name]));
            values.push(match spec.shape[..] {
                [rows, cols] => {
                    let mut p = Param::from_tensor(loader.tensor(&spec.name, [rows, cols])?);
                    if let Some(id) = id {
                        p.id = id;
                    }
                    ParamValue::Matrix(p)
                }
                _ => {
                    let mut p = Param::from_tensor(loader.tensor(&spec.name, [spec.shape[0]])?);
                    if let Some(id) = id {
                        p.id = id;
                    }
                    ParamValue::Vector(p)
                }
            });
        }
        loader.finish()?;
        Ok(Checkpoint {
            head: Self {
                module: HeadModule::assemble(&config, values),
                config,
                cond_hidden,
                base: None,
                device: device.clone(),
            },
            metadata: meta["metadata"].clone(),
            optimizer,
            path: path.to_path_buf(),
        })
    }
}

/// A checkpoint as read back by [`TwistHead::load_checkpoint`].
#[derive(Debug)]
pub struct Checkpoint {
    /// The head, its parameters carrying their saved ids.
    pub head: TwistHead,
    /// The metadata stored with it.
    pub metadata: serde_json::Value,
    /// The optimiser's state saved with it (raw bytes), if any.
    pub optimizer: Option<Vec<u8>>,
    /// The checkpoint file.
    pub path: PathBuf,
}

/// The version of the one-file checkpoint layout.
pub const CHECKPOINT_FORMAT: u64 = 2;
/// The safetensors `__metadata__` entry holding a checkpoint's JSON metadata.
pub const META_KEY: &str = "tsmc.twist_head";
/// The tensor holding a checkpoint's optimiser state (raw bytes).
pub const OPTIMIZER_TENSOR: &str = "optimizer.state";

fn config_error(
    path: &Path,
    field: &str,
    expected: impl Into<String>,
    found: impl ToString,
) -> LmError {
    LmError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

/// Checks a head's configuration and conditioning state before anything is sized from them.
fn validate_head(path: &Path, config: &HeadConfig, cond_hidden: Option<&[f32]>) -> Result<()> {
    validate_shape(config).map_err(|e| match e {
        LmError::InvalidHead {
            field,
            expected,
            found,
        } => config_error(path, &field, expected, found),
        other => other,
    })?;
    if let Some(c) = &config.conditioning {
        if c.is_empty() {
            return Err(config_error(
                path,
                "head.conditioning",
                "at least one token (or null for an unconditional head)",
                "[]",
            ));
        }
        if let Some(t) = c.iter().find(|&&t| t as usize >= config.vocab_size) {
            return Err(config_error(
                path,
                "head.conditioning",
                format!("token ids below head.vocab_size = {}", config.vocab_size),
                t,
            ));
        }
    }
    match (&config.conditioning, cond_hidden) {
        (Some(_), None) => Err(config_error(
            path,
            "cond_hidden",
            "the conditioning tokens' hidden state (head.conditioning is set)",
            "null",
        )),
        (None, Some(_)) => Err(config_error(
            path,
            "cond_hidden",
            "null: head.conditioning is null, so the head is not conditional",
            "a conditioning state",
        )),
        (Some(_), Some(h)) if h.len() != config.hidden_size => Err(config_error(
            path,
            "cond_hidden",
            format!("{} values (head.hidden_size)", config.hidden_size),
            format!("{} values", h.len()),
        )),
        (Some(_), Some(h)) if h.iter().any(|x| !x.is_finite()) => Err(config_error(
            path,
            "cond_hidden",
            "finite values",
            "a non-finite value",
        )),
        _ => Ok(()),
    }
}

/// The saved parameter ids by name: none for a head saved without them; otherwise exactly one
/// distinct id per parameter.
fn param_ids(
    path: &Path,
    value: &serde_json::Value,
    config: &HeadConfig,
) -> Result<Option<BTreeMap<String, u64>>> {
    if value.is_null() {
        return Ok(None);
    }
    let ids: BTreeMap<String, u64> = serde_json::from_value(value.clone())
        .map_err(|e| LmError::json(path, "field `param_ids`", e))?;
    let names: Vec<String> = config.param_specs().into_iter().map(|s| s.name).collect();
    let expected = || format!("one id for each of {}", names.join(", "));
    if let Some(n) = names.iter().find(|n| !ids.contains_key(*n)) {
        return Err(config_error(
            path,
            "param_ids",
            expected(),
            format!("none for `{n}`"),
        ));
    }
    if let Some(n) = ids.keys().find(|n| !names.contains(n)) {
        return Err(config_error(
            path,
            "param_ids",
            expected(),
            format!("an id for `{n}`, which the head does not have"),
        ));
    }
    let distinct: std::collections::BTreeSet<u64> = ids.values().copied().collect();
    if distinct.len() != ids.len() {
        return Err(config_error(
            path,
            "param_ids",
            "distinct ids",
            format!("{ids:?}"),
        ));
    }
    Ok(Some(ids))
}
