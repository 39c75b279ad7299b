//! Hugging Face `config.json` reading with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{LmError, Result};

/// A parsed `config.json` with typed, error-reporting accessors.
pub struct JsonConfig {
    path: PathBuf,
    value: Value,
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
        })
    }

    /// Wraps an in-memory value (GGUF metadata is converted to this form).
    pub fn from_value(path: &Path, value: Value) -> Self {
        Self {
            path: path.to_path_buf(),
            value,
        }
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
        LmError::Config {
            path: self.path.clone(),
            field: field.into(),
            expected: expected.into(),
            found: found.map_or("nothing".into(), |v| v.to_string()),
        }
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

    /// A required number.
    pub fn f64(&self, field: &str) -> Result<f64> {
        let v = self.get(field);
        v.and_then(Value::as_f64)
            .ok_or_else(|| self.err(field, "a number", v))
    }

    /// The first present number among `fields`, or `default`.
    pub fn f64_any(&self, fields: &[&str], default: f64) -> Result<f64> {
        for f in fields {
            if self.get(f).is_some() {
                return self.f64(f);
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
