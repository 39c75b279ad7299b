//! Reading the report's inputs: numbered JSONL records of ours, their fields checked with
//! errors that name the file, line and field.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::jsonl::read_numbered;

/// A field of record `v` on line `line` of `path` as a number.
pub(super) fn num(path: &Path, line: usize, v: &Value, field: &str) -> Result<f64> {
    let mut x = v;
    for key in field.split('.') {
        x = &x[key];
    }
    x.as_f64().with_context(|| {
        format!(
            "{}: line {line}: field `{field}` must be a number, found {x}",
            path.display()
        )
    })
}

/// A field as a count.
pub(super) fn count(path: &Path, line: usize, v: &Value, field: &str) -> Result<usize> {
    v[field]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .with_context(|| {
            format!(
                "{}: line {line}: field `{field}` must be a non-negative integer, found {}",
                path.display(),
                v[field]
            )
        })
}

/// Reads a JSONL file of ours, refusing an empty one and records whose `type` is not one of
/// `types` (when given); `what` names the command that writes it.
pub(super) fn read_checked(path: &Path, what: &str, types: &[&str]) -> Result<Vec<(usize, Value)>> {
    let lines: Vec<(usize, Value)> = read_numbered(path)?;
    if lines.is_empty() {
        bail!(
            "{}: no records (expected the output of {what})",
            path.display()
        );
    }
    for (line, v) in &lines {
        if !v.is_object() {
            bail!(
                "{}: line {line}: not a JSON object (expected the output of {what})",
                path.display()
            );
        }
        if !types.is_empty() && !types.iter().any(|t| v["type"] == *t) {
            bail!(
                "{}: line {line}: record type {} is not one of {types:?} (expected the output of {what})",
                path.display(),
                v["type"]
            );
        }
    }
    Ok(lines)
}
