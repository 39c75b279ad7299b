//! Weight sources (Hugging Face safetensors directories and GGUF files) and the loader that
//! hands tensors to an architecture by name, checking shapes and reporting missing and extra
//! tensors with the file they concern.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{LmError, Result};

/// A tensor read from a file and converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Shape, outermost first (Hugging Face / PyTorch order).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// Somewhere tensors can be read from by (Hugging Face) name.
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    /// The names of all tensors.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads a tensor as f32 (dequantising or converting as needed).
    fn read(&self, name: &str) -> Result<RawTensor>;
}

/// Converts little-endian f16 / bf16 / f32 bytes to f32.
pub(crate) fn bytes_to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// A Hugging Face model directory's weights: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Files are memory-mapped; tensors are read on demand.
pub struct SafetensorsDir {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> (file index, shape)
    index: BTreeMap<String, (usize, Vec<usize>)>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| LmError::io(path, e))?;
    // SAFETY: the file is opened read-only; tsmc never writes model files while mapping them.
    unsafe { Mmap::map(&file) }.map_err(|e| LmError::io(path, e))
}

impl SafetensorsDir {
    /// Opens the weights of a model directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LmError::io(&index_path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| LmError::json(&index_path, "invalid JSON", e))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LmError::Config {
                    path: index_path.clone(),
                    field: "weight_map".into(),
                    expected: "an object from tensor names to shard files".into(),
                    found: "nothing".into(),
                })?;
            let set: BTreeSet<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            set.into_iter().collect()
        } else {
            return Err(LmError::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory",
            ));
        };
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let mmap = map_file(&path)?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| {
                LmError::safetensors(&path, "not a valid safetensors file (truncated?)", e)
            })?;
            for (tname, view) in st.tensors() {
                index.insert(tname, (i, view.shape().to_vec()));
            }
            files.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }
}

impl WeightSource for SafetensorsDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, s)| s.clone())
    }

    fn read(&self, name: &str) -> Result<RawTensor> {
        let (i, _) = self.index.get(name).ok_or_else(|| LmError::MissingTensor {
            path: self.dir.clone(),
            tensor: name.into(),
        })?;
        let (path, mmap) = &self.files[*i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| LmError::safetensors(path, "not a valid safetensors file", e))?;
        let view = st
            .tensor(name)
            .map_err(|e| LmError::safetensors(path, format!("tensor `{name}`"), e))?;
        let data =
            bytes_to_f32(view.data(), view.dtype()).ok_or_else(|| LmError::UnsupportedType {
                path: path.clone(),
                tensor: name.into(),
                dtype: format!("{:?}", view.dtype()),
                supported: "F32, F16, BF16",
            })?;
        Ok(RawTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

/// A single safetensors file as a weight source (twist-head checkpoints).
pub struct SafetensorsFile(SafetensorsDir);

impl SafetensorsFile {
    /// Opens one safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let mmap = map_file(path)?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| {
            LmError::safetensors(path, "not a valid safetensors file (truncated?)", e)
        })?;
        let index = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (0, v.shape().to_vec())))
            .collect();
        Ok(Self(SafetensorsDir {
            dir: path.to_path_buf(),
            files: vec![(path.to_path_buf(), mmap)],
            index,
        }))
    }
}

impl WeightSource for SafetensorsFile {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn names(&self) -> Vec<String> {
        self.0.names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }
    fn read(&self, name: &str) -> Result<RawTensor> {
        self.0.read(name)
    }
}

/// The number of distinct indices i among names `{prefix}{i}.…`.
pub fn layer_count(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| {
            let (index, _) = n.strip_prefix(prefix)?.split_once('.')?;
            index.parse::<usize>().ok()
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// Hands tensors to an architecture, checking shapes, and remembers which were used so that
/// [`Loader::finish`] can report tensors the architecture did not expect.
pub struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: Device,
    used: BTreeSet<String>,
}

impl<'a> Loader<'a> {
    /// A loader over `source` that creates tensors on `device`.
    pub fn new(source: &'a dyn WeightSource, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            used: BTreeSet::new(),
        }
    }

    /// The weights file or directory.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the source has a tensor.
    pub fn has(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    /// Checks that the weights hold at least `declared` layers named `{prefix}{i}.…` (the
    /// number of distinct indices i), so that a config's layer count is checked before anything
    /// is allocated per layer; `field` names the config field in the error. (Tensors of layers
    /// beyond `declared` are left unused, and [`Loader::finish`] names them.)
    pub fn expect_layers(&self, prefix: &str, declared: usize, field: &str) -> Result<()> {
        let found = layer_count(&self.source.names(), prefix);
        if declared <= found {
            Ok(())
        } else {
            Err(LmError::LayerCount {
                path: self.source.path().to_path_buf(),
                field: field.into(),
                declared,
                found,
            })
        }
    }

    /// Reads a tensor of the expected shape as f32 values.
    pub fn raw(&mut self, name: &str, expected: &[usize]) -> Result<RawTensor> {
        let shape = self
            .source
            .shape(name)
            .ok_or_else(|| LmError::MissingTensor {
                path: self.source.path().to_path_buf(),
                tensor: name.into(),
            })?;
        if shape != expected {
            return Err(LmError::Shape {
                path: self.source.path().to_path_buf(),
                tensor: name.into(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let raw = self.source.read(name)?;
        if raw.data.len() != expected.iter().product::<usize>() {
            return Err(LmError::format(
                self.source.path(),
                format!("tensor `{name}`: data does not match its shape (truncated file?)"),
            ));
        }
        if let Some(i) = raw.data.iter().position(|x| !x.is_finite()) {
            return Err(LmError::format(
                self.source.path(),
                format!(
                    "tensor `{name}` holds a non-finite value {} at index {i}",
                    raw.data[i]
                ),
            ));
        }
        self.used.insert(name.to_string());
        Ok(raw)
    }

    /// A tensor of the expected shape.
    pub fn tensor<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<D>> {
        let raw = self.raw(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(raw.data, expected),
            &self.device,
        ))
    }

    /// A [out, in] PyTorch linear weight, transposed to burn's [in, out].
    pub fn linear(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<Tensor<2>> {
        Ok(self.tensor(name, [out_dim, in_dim])?.transpose())
    }

    /// A [in, out] weight stored as such (GPT-2's Conv1D), returned as a transposed view of a
    /// row-major [out, in] copy: the layout every other linear weight has.
    pub fn conv1d(&mut self, name: &str, in_dim: usize, out_dim: usize) -> Result<Tensor<2>> {
        let raw = self.raw(name, &[in_dim, out_dim])?;
        let mut t = vec![0.0f32; raw.data.len()];
        for i in 0..in_dim {
            for o in 0..out_dim {
                t[o * in_dim + i] = raw.data[i * out_dim + o];
            }
        }
        Ok(Tensor::<2>::from_data(TensorData::new(t, [out_dim, in_dim]), &self.device).transpose())
    }

    /// An optional tensor: `None` when absent.
    pub fn optional<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Option<Tensor<D>>> {
        if self.has(name) {
            self.tensor(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Marks tensors as used without reading them (e.g. buffers like `attn.bias` masks).
    pub fn ignore(&mut self, pred: impl Fn(&str) -> bool) {
        for n in self.source.names() {
            if pred(&n) {
                self.used.insert(n);
            }
        }
    }

    /// Errors if the source holds tensors that were not used.
    pub fn finish(self) -> Result<()> {
        let extra: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(n))
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(LmError::ExtraTensors {
                path: self.source.path().to_path_buf(),
                count: extra.len(),
                examples: extra
                    .iter()
                    .take(5)
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}
