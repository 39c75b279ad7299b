//! Hugging Face `config.json` reading with errors that name the file and the field.
//!
//! Every value an architecture uses is validated here or by the architecture's config reader
//! before anything is allocated from it: counts are positive (and layer counts below
//! [`MAX_LAYERS`]), floats are finite and positive, and derived sizes are checked for overflow.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{LmError, Result};

/// The most layers a config may declare. Far above any real model (the largest have a few
/// hundred); a larger count is a corrupt or hostile file, rejected before anything is allocated
/// per layer. The exact count is then checked against the weights.
pub const MAX_LAYERS: usize = 1 << 16;

/// A parsed `config.json` with typed, error-reporting accessors.
pub struct JsonConfig {
    path: PathBuf,
    value: Value,
    /// Field -> the name errors give it (a GGUF file's metadata keys).
    field_names: BTreeMap<String, String>,
}

impl JsonConfig {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| LmError::json(path, "invalid JSON", e))?;
        if !value.is_object() {
            return Err(LmError::format(path, "expected a JSON object"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            value,
            field_names: BTreeMap::new(),
        })
    }

    /// Wraps an in-memory value (GGUF metadata is converted to this form).
    pub fn from_value(path: &Path, value: Value) -> Self {
        Self {
            path: path.to_path_buf(),
            value,
            field_names: BTreeMap::new(),
        }
    }

    /// Names errors give fields (`num_hidden_layers` -> `llama.block_count` for a GGUF file,
    /// whose values are converted to Hugging Face fields).
    pub fn with_field_names<K: Into<String>, V: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.field_names
            .extend(names.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The name errors give `field`: itself, or the file's own name for it.
    pub fn field_name(&self, field: &str) -> String {
        self.field_names
            .get(field)
            .cloned()
            .unwrap_or_else(|| field.to_string())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, field: &str) -> Option<&Value> {
        // Dotted paths reach nested objects ("rope_parameters.rope_theta").
        let mut v = &self.value;
        for part in field.split('.') {
            v = v.get(part)?;
        }
        (!v.is_null()).then_some(v)
    }

    fn err(&self, field: &str, expected: &str, found: Option<&Value>) -> LmError {
        self.invalid(
            field,
            expected,
            found.map_or("nothing".into(), |v| v.to_string()),
        )
    }

    /// A [`LmError::Config`] for `field` of this file (under the name errors give it).
    pub fn invalid(
        &self,
        field: &str,
        expected: impl Into<String>,
        found: impl Display,
    ) -> LmError {
        LmError::Config {
            path: self.path.clone(),
            field: self.field_name(field),
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    /// `a * b`, or an error naming `field` (whose value is `a` or `b`) when the product of these
    /// sizes overflows.
    pub fn product(&self, field: &str, what: &str, a: usize, b: usize) -> Result<usize> {
        a.checked_mul(b).ok_or_else(|| {
            self.invalid(
                field,
                format!("a size whose {what} fits in memory"),
                format!("{a} x {b}"),
            )
        })
    }

    /// A required positive integer.
    pub fn usize(&self, field: &str) -> Result<usize> {
        let v = self.get(field);
        v.and_then(Value::as_u64)
            .filter(|&x| x > 0)
            .map(|x| x as usize)
            .ok_or_else(|| self.err(field, "a positive integer", v))
    }

    /// An optional positive integer.
    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        if self.get(field).is_none() {
            Ok(default)
        } else {
            self.usize(field)
        }
    }

    /// A required number of layers: a positive integer of at most [`MAX_LAYERS`].
    pub fn layers(&self, field: &str) -> Result<usize> {
        let v = self.get(field);
        v.and_then(Value::as_u64)
            .filter(|&x| x > 0 && x <= MAX_LAYERS as u64)
            .map(|x| x as usize)
            .ok_or_else(|| {
                self.err(
                    field,
                    &format!("a positive number of layers, at most {MAX_LAYERS}"),
                    v,
                )
            })
    }

    /// A required finite number.
    pub fn f64(&self, field: &str) -> Result<f64> {
        let v = self.get(field);
        v.and_then(Value::as_f64)
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.err(field, "a finite number", v))
    }

    /// The first present number among `fields`, or `default` when none is present.
    pub fn f64_any(&self, fields: &[&str], default: f64) -> Result<f64> {
        for f in fields {
            if self.get(f).is_some() {
                return self.f64(f);
            }
        }
        Ok(default)
    }

    /// The first present number among `fields`, which must be finite and positive (an epsilon,
    /// a rotary base), or `default` when none is present. A present but invalid value is an
    /// error, never replaced by the default.
    pub fn positive_f64_any(&self, fields: &[&str], default: f64) -> Result<f64> {
        for f in fields {
            if let Some(v) = self.get(f) {
                return v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| self.err(f, "a finite positive number", Some(v)));
            }
        }
        Ok(default)
    }

    /// An optional boolean.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, "true or false", Some(v))),
        }
    }

    /// An optional string.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.get(field).and_then(Value::as_str)
    }

    /// An optional value.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.get(field)
    }

    /// The architecture: `model_type`, else the first of `architectures`.
    pub fn model_type(&self) -> Option<String> {
        self.str("model_type").map(String::from).or_else(|| {
            self.get("architectures")
                .and_then(|a| a.get(0))
                .and_then(Value::as_str)
                .map(String::from)
        })
    }
}
