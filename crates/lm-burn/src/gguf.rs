//! GGUF files: a bounds-checked reader (every read is checked against the file size, and every
//! declared count or length against the bytes left in the file before anything is allocated
//! for it, so that a truncated, corrupt or hostile file is an error naming the file, never a
//! panic or an abort), dequantisation of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 at load,
//! llama.cpp's Q/K row permutation undone, the Hugging Face view of the config, and the
//! tokenizer built from the metadata.
//!
//! Memory stays within a small multiple of the file's size: metadata arrays are stored by
//! element type (an array of n u8 takes n bytes, not n enum values), arrays nest at most
//! [`MAX_ARRAY_DEPTH`] deep, and tensor descriptions are read one by one, never preallocated
//! from a declared count.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Value, json};

use crate::config::JsonConfig;
use crate::error::{LmError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{RawTensor, WeightSource};

/// How deep metadata arrays may nest (an array of arrays is depth 2). Real files use 1; the
/// bound keeps a file of nested arrays from overflowing the reader's stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;

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
    Array(MetaArray),
}

/// A metadata array, stored by element type so that it takes about as much memory as it takes
/// bytes in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// uint8 elements.
    U8(Vec<u8>),
    /// int8 elements.
    I8(Vec<i8>),
    /// uint16 elements.
    U16(Vec<u16>),
    /// int16 elements.
    I16(Vec<i16>),
    /// uint32 elements.
    U32(Vec<u32>),
    /// int32 elements.
    I32(Vec<i32>),
    /// float32 elements.
    F32(Vec<f32>),
    /// bool elements.
    Bool(Vec<bool>),
    /// string elements.
    Str(Vec<String>),
    /// array elements.
    Array(Vec<MetaArray>),
    /// uint64 elements.
    U64(Vec<u64>),
    /// int64 elements.
    I64(Vec<i64>),
    /// float64 elements.
    F64(Vec<f64>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a value (nested arrays are cloned).
    pub fn get(&self, i: usize) -> Option<MetaValue> {
        Some(match self {
            MetaArray::U8(v) => MetaValue::Uint(*v.get(i)? as u64),
            MetaArray::I8(v) => MetaValue::Int(*v.get(i)? as i64),
            MetaArray::U16(v) => MetaValue::Uint(*v.get(i)? as u64),
            MetaArray::I16(v) => MetaValue::Int(*v.get(i)? as i64),
            MetaArray::U32(v) => MetaValue::Uint(*v.get(i)? as u64),
            MetaArray::I32(v) => MetaValue::Int(*v.get(i)? as i64),
            MetaArray::F32(v) => MetaValue::Float(*v.get(i)? as f64),
            MetaArray::Bool(v) => MetaValue::Bool(*v.get(i)?),
            MetaArray::Str(v) => MetaValue::Str(v.get(i)?.clone()),
            MetaArray::Array(v) => MetaValue::Array(v.get(i)?.clone()),
            MetaArray::U64(v) => MetaValue::Uint(*v.get(i)?),
            MetaArray::I64(v) => MetaValue::Int(*v.get(i)?),
            MetaArray::F64(v) => MetaValue::Float(*v.get(i)?),
        })
    }

    /// The elements, if they are strings.
    pub fn strings(&self) -> Option<&[String]> {
        match self {
            MetaArray::Str(v) => Some(v),
            _ => None,
        }
    }
}

impl MetaValue {
    /// The value as an unsigned integer (a non-negative integer of any type).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Uint(x) => Some(*x),
            MetaValue::Int(x) if *x >= 0 => Some(*x as u64),
            _ => None,
        }
    }
    /// The value as a number (a float or an integer).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(x) => Some(*x),
            MetaValue::Uint(x) => Some(*x as f64),
            MetaValue::Int(x) => Some(*x as f64),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Bytes one value of metadata type `ty` takes at least in the file (`None`: unknown type).
fn min_value_bytes(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string's u64 length; an array's u32 element type and u64 count.
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Bytes a tensor description takes at least: name length, rank, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;
/// Bytes a metadata pair takes at least: key length, value type, a one-byte value.
const MIN_METADATA_BYTES: usize = 8 + 4 + 1;

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

    /// Bytes for `n` elements (n a multiple of the block size for block types; `None` when it
    /// is not, or the size overflows).
    fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            GgmlType::F32 => n.checked_mul(4),
            GgmlType::F16 | GgmlType::Bf16 => n.checked_mul(2),
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
    fn corrupt(&self, detail: String) -> LmError {
        LmError::format(self.path, format!("corrupt GGUF file: {detail}"))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
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
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A declared count of items taking at least `min_bytes` each, checked against the bytes
    /// left in the file before anything is allocated for them.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        self.count_with(min_bytes, || what.to_string())
    }
    /// [`Cursor::count`] with the description built only for an error.
    fn count_with(&mut self, min_bytes: usize, what: impl Fn() -> String) -> Result<usize> {
        // The description is built only when the count itself is cut off.
        let n = if self.remaining() >= 8 {
            self.u64("")?
        } else {
            self.u64(&what())?
        };
        let remaining = self.remaining();
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_bytes))
            .is_some_and(|need| need <= remaining);
        if !fits {
            return Err(self.corrupt(format!(
                "{} declares {n} items of at least {min_bytes} byte(s) each, but only \
                 {remaining} bytes are left in the file",
                what()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count_with(1, || format!("the length of {what}"))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| LmError::format(self.path, format!("{what} is not valid UTF-8")))
    }
    /// `n` fixed-size elements, converted by `f` from their little-endian bytes.
    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &str,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        // `n` was checked against the bytes left, so this neither overflows nor over-allocates.
        let bytes = self.take(n * N, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    /// An array value (after its type tag); `depth` is its nesting depth (1 at the top).
    fn array_value(&mut self, what: &str, depth: usize) -> Result<MetaArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.corrupt(format!(
                "{what} nests arrays more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let elem = self.u32(what)?;
        let min = min_value_bytes(elem)
            .ok_or_else(|| self.corrupt(format!("{what} has unknown element type {elem}")))?;
        let n = self.count_with(min, || format!("the length of {what}"))?;
        Ok(match elem {
            0 => MetaArray::U8(self.fixed(n, what, |[b]| b)?),
            1 => MetaArray::I8(self.fixed(n, what, |[b]| b as i8)?),
            2 => MetaArray::U16(self.fixed(n, what, u16::from_le_bytes)?),
            3 => MetaArray::I16(self.fixed(n, what, i16::from_le_bytes)?),
            4 => MetaArray::U32(self.fixed(n, what, u32::from_le_bytes)?),
            5 => MetaArray::I32(self.fixed(n, what, i32::from_le_bytes)?),
            6 => MetaArray::F32(self.fixed(n, what, f32::from_le_bytes)?),
            7 => MetaArray::Bool(self.fixed(n, what, |[b]| b != 0)?),
            8 => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                MetaArray::Str(v)
            }
            9 => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(what, depth + 1)?);
                }
                MetaArray::Array(v)
            }
            10 => MetaArray::U64(self.fixed(n, what, u64::from_le_bytes)?),
            11 => MetaArray::I64(self.fixed(n, what, i64::from_le_bytes)?),
            _ => MetaArray::F64(self.fixed(n, what, f64::from_le_bytes)?),
        })
    }
    fn value(&mut self, ty: u32, what: &str) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::Uint(u8::from_le_bytes(self.array(what)?) as u64),
            1 => MetaValue::Int(i8::from_le_bytes(self.array(what)?) as i64),
            2 => MetaValue::Uint(u16::from_le_bytes(self.array(what)?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(what)?) as i64),
            4 => MetaValue::Uint(self.u32(what)? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(what)?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.array(what)?) as f64),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::Str(self.string(what)?),
            9 => MetaValue::Array(self.array_value(what, 1)?),
            10 => MetaValue::Uint(self.u64(what)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.corrupt(format!("{what} has unknown value type {other}")));
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
        let corrupt =
            |detail: String| LmError::format(path, format!("corrupt GGUF file: {detail}"));
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
        // Read in file order, but checked against the bytes left once both are known.
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.count("the metadata count", MIN_METADATA_BYTES)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("the type of metadata `{key}`"))?;
            let value = c.value(ty, &format!("metadata `{key}`"))?;
            match metadata.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(value);
                }
                Entry::Occupied(e) => {
                    return Err(corrupt(format!("metadata key `{}` appears twice", e.key())));
                }
            }
        }
        let remaining = c.remaining();
        if usize::try_from(n_tensors)
            .ok()
            .and_then(|n| n.checked_mul(MIN_TENSOR_INFO_BYTES))
            .is_none_or(|need| need > remaining)
        {
            return Err(corrupt(format!(
                "the tensor count declares {n_tensors} tensors of at least \
                 {MIN_TENSOR_INFO_BYTES} bytes each, but only {remaining} bytes are left after \
                 the metadata"
            )));
        }
        // Descriptions are read one by one, so memory follows the bytes actually read.
        let mut infos = Vec::new();
        for i in 0..n_tensors as usize {
            let name = c.string(&format!("tensor name {i}"))?;
            let n_dims = c.u32(&format!("the rank of `{name}`"))? as usize;
            if n_dims > 8 {
                return Err(corrupt(format!("tensor `{name}` has rank {n_dims}")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64(&format!("the shape of `{name}`"))?;
                ne.push(usize::try_from(d).map_err(|_| {
                    corrupt(format!("tensor `{name}` has a dimension of {d} elements"))
                })?);
            }
            let type_id = c.u32(&format!("the type of `{name}`"))?;
            let offset = c.u64(&format!("the offset of `{name}`"))?;
            infos.push((name, ne, type_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 30)
                .map(|a| a as usize)
                .ok_or_else(|| {
                    corrupt(format!(
                        "general.alignment is {v:?}, expected a power of two (at most 2^30)"
                    ))
                })?,
        };
        let data_start = c
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| corrupt("the tensor data starts beyond the address space".into()))?;
        let mut tensors = BTreeMap::new();
        for (name, ne, type_id, offset) in infos {
            if !offset.is_multiple_of(alignment as u64) {
                return Err(corrupt(format!(
                    "tensor `{name}` has offset {offset}, not a multiple of the alignment \
                     {alignment} (general.alignment)"
                )));
            }
            let n = ne
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| {
                    corrupt(format!(
                        "tensor `{name}` has shape {ne:?}, too many elements"
                    ))
                })?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| data_start.checked_add(o))
                .filter(|&s| s <= mmap.len())
                .ok_or_else(|| {
                    LmError::format(
                        path,
                        format!(
                            "truncated GGUF file: tensor `{name}` starts at offset {offset} \
                             past the data start {data_start}, beyond the file's {} bytes",
                            mmap.len()
                        ),
                    )
                })?;
            // Unsupported types are reported when the tensor is read, with its name.
            if let Some(ty) = GgmlType::from_id(type_id) {
                let end = ty.bytes_for(n).and_then(|b| start.checked_add(b));
                if end.is_none_or(|e| e > mmap.len()) {
                    return Err(LmError::format(
                        path,
                        format!(
                            "truncated GGUF file: tensor `{name}` ({n} {ty:?} elements) needs \
                             bytes from {start}{} but the file has {}",
                            end.map_or(String::new(), |e| format!(" to {e}")),
                            mmap.len()
                        ),
                    ));
                }
            }
            if tensors.contains_key(&name) {
                return Err(corrupt(format!("tensor `{name}` appears twice")));
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
        let n = info
            .ne
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                LmError::format(&self.path, format!("tensor `{name}`: too many elements"))
            })?;
        let nbytes = ty.bytes_for(n).ok_or_else(|| {
            LmError::format(
                &self.path,
                format!("tensor `{name}`: {n} elements is not a whole number of {ty:?} blocks"),
            )
        })?;
        let bytes = info
            .start
            .checked_add(nbytes)
            .and_then(|end| self.mmap.get(info.start..end))
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
        // Used only to undo the Q/K permutation; `config` validates them, `read` checks them
        // against each tensor's shape.
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

    /// The Hugging Face view of the hyper-parameters, for the architecture's config reader
    /// (whose errors name the GGUF keys). Every key that is present must be valid: a present
    /// but malformed value (a string, a NaN or non-positive float) is an error, and only an
    /// absent key gets its documented default. `block_count` must equal the number of blocks
    /// the file's tensors hold.
    pub fn config(&self) -> Result<JsonConfig> {
        let path = self.file.path();
        let a = &self.arch;
        let key = |k: &str| format!("{a}.{k}");
        let get = |k: &str| self.file.meta(&key(k));
        let bad = |k: &str, expected: &str, v: Option<&MetaValue>| LmError::Config {
            path: path.to_path_buf(),
            field: key(k),
            expected: expected.into(),
            found: v.map_or("nothing".into(), |v| format!("{v:?}")),
        };
        let need_u = |k: &str| -> Result<u64> {
            get(k)
                .and_then(MetaValue::as_u64)
                .ok_or_else(|| bad(k, "an unsigned integer", get(k)))
        };
        let opt_u = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| bad(k, "an unsigned integer", Some(v)))
                })
                .transpose()
        };
        let positive_f = |k: &str, default: f64| -> Result<f64> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| bad(k, "a finite positive number", Some(v))),
            }
        };
        let block_count = need_u("block_count")?;
        let names: Vec<String> = self.file.tensors.keys().cloned().collect();
        let blocks = crate::weights::layer_count(&names, "blk.");
        if block_count != blocks as u64 {
            return Err(bad(
                "block_count",
                &format!("the number of blocks the file's tensors hold ({blocks})"),
                get("block_count"),
            ));
        }
        let hidden = need_u("embedding_length")?;
        let heads = need_u("attention.head_count")?;
        let vocab = match self.file.meta("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(t)) => Some(t.len() as u64),
            _ => opt_u("vocab_size")?,
        };
        let embd_rows = self
            .file
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.ne.get(1).copied());
        let vocab = embd_rows.map(|v| v as u64).or(vocab).unwrap_or(0);
        let mut value: Value = json!({
            "model_type": a,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": need_u("feed_forward_length")?,
            "num_hidden_layers": block_count,
            "num_attention_heads": heads,
            "num_key_value_heads": opt_u("attention.head_count_kv")?.unwrap_or(heads),
            "rms_norm_eps": positive_f("attention.layer_norm_rms_epsilon", 1e-6)?,
            "rope_theta": positive_f("rope.freq_base", 10_000.0)?,
            "max_position_embeddings": opt_u("context_length")?.unwrap_or(4096),
            "tie_word_embeddings": !self.file.tensors.contains_key("output.weight"),
            "attention_bias": self.file.tensors.contains_key("blk.0.attn_q.bias"),
        });
        // Without key_length the architecture derives the head dimension (and checks that
        // embedding_length is a multiple of head_count).
        if let Some(hd) = opt_u("attention.key_length")? {
            value["head_dim"] = json!(hd);
        }
        let names = [
            (
                "vocab_size",
                "token_embd.weight rows (or tokenizer.ggml.tokens)".to_string(),
            ),
            ("hidden_size", key("embedding_length")),
            ("intermediate_size", key("feed_forward_length")),
            ("num_hidden_layers", key("block_count")),
            ("num_attention_heads", key("attention.head_count")),
            ("num_key_value_heads", key("attention.head_count_kv")),
            ("head_dim", key("attention.key_length")),
            ("rms_norm_eps", key("attention.layer_norm_rms_epsilon")),
            ("rope_theta", key("rope.freq_base")),
            ("max_position_embeddings", key("context_length")),
        ];
        Ok(JsonConfig::from_value(path, value).with_field_names(names))
    }

    /// The byte-level BPE tokenizer described by the metadata ([`GgufFile::tokenizer`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        self.file.tokenizer()
    }
}

impl GgufFile {
    /// The byte-level BPE tokenizer described by the metadata (any architecture: only the
    /// `tokenizer.ggml.*` keys are read).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        use tokenizers::models::bpe::{BPE, Vocab};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::digits::Digits;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::{AddedToken, PreTokenizerWrapper};

        let name = self.path().display().to_string();
        let err = |detail: String| LmError::Tokenizer {
            source_name: name.clone(),
            detail,
            source: None,
        };
        let model = self
            .meta("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .unwrap_or("");
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match self.meta(key) {
                Some(MetaValue::Array(items)) => items
                    .strings()
                    .map(<[String]>::to_vec)
                    .ok_or_else(|| err(format!("{key} is not an array of strings"))),
                Some(_) => Err(err(format!("{key} is not an array of strings"))),
                None => Err(err(format!("{key} is missing"))),
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
        if let Some(MetaValue::Array(types)) = self.meta("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| types.get(*i).and_then(|t| t.as_u64()) == Some(3))
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
        let mut data = self.file.dequantize(g)?;
        let mut shape = self.file.tensors[g].ne.clone();
        shape.reverse();
        if self.arch == "llama" && shape.len() == 2 {
            let (rows, cols) = (shape[0], shape[1]);
            let heads = if g.ends_with("attn_q.weight") {
                Some((self.n_heads, "attention.head_count"))
            } else if g.ends_with("attn_k.weight") {
                Some((self.n_kv_heads, "attention.head_count_kv"))
            } else {
                None
            };
            if let Some((heads, key)) = heads.filter(|_| cols > 0) {
                // The permutation pairs rows within each head: it needs whole heads of an even
                // head dimension.
                if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                    return Err(LmError::format(
                        self.file.path(),
                        format!(
                            "tensor `{g}`: {rows} rows are not {heads} heads ({}.{key}) of an \
                             even head dimension",
                            self.arch
                        ),
                    ));
                }
                data = unpermute_rows(&data, heads, cols);
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
