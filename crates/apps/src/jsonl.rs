//! The JSON-lines files of tsmc, read and written in one place: outputs written atomically
//! (into a temporary file beside the target, renamed on success, removed on failure, so that an
//! interrupted or failed run leaves no partial file), append-only records that survive a stopped
//! run, and the readers of our own files, which name the line of the first bad record.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lm_burn::temporaries::Temporary;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A JSON-lines file that appears at its path only when [`JsonlWriter::finish`] succeeds. It is
/// written into `.NAME.tmp-tsmc-PID` beside the target; temporaries that killed runs left there
/// are removed when the next writer of the same path starts.
pub struct JsonlWriter {
    path: PathBuf,
    tmp: Temporary,
    out: Option<BufWriter<fs::File>>,
}

impl JsonlWriter {
    /// Creates the temporary file next to `path` (which must not be a link or a special file).
    pub fn create(path: &Path) -> Result<Self> {
        if path.file_name().is_none() {
            bail!("output path {} has no file name", path.display());
        }
        crate::output::check_target("output", path)?;
        let (tmp, file) = Temporary::create(path)
            .with_context(|| format!("cannot create a temporary file beside {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::new(file)),
        })
    }

    /// Appends one JSON object as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let out = self.out.as_mut().context("writer already finished")?;
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        let out = self.out.take().context("writer already finished")?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", self.tmp.path().display()))?;
        file.sync_all()?;
        drop(file);
        self.tmp
            .persist(&self.path)
            .with_context(|| format!("cannot move output into {}", self.path.display()))?;
        Ok(())
    }
}

/// A JSON-lines file that is appended to and flushed record by record, so that a run that
/// stops keeps every record written so far.
pub struct Appender {
    path: PathBuf,
    out: BufWriter<fs::File>,
}

impl Appender {
    /// Creates (truncates) the file (which must not be a link or a special file).
    pub fn create(path: &Path) -> Result<Self> {
        crate::output::check_target("output", path)?;
        let file =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends one record and flushes it to the file.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut write = || -> std::io::Result<()> {
            serde_json::to_writer(&mut self.out, record)?;
            self.out.write_all(b"\n")?;
            self.out.flush()
        };
        write().with_context(|| format!("appending to {}", self.path.display()))
    }
}

/// Reads the non-empty lines of a JSON-lines file as JSON values.
pub fn read_values(path: &Path) -> Result<Vec<serde_json::Value>> {
    read_records(path)
}

/// Reads the non-empty lines of a JSON-lines file as records of type `T`; the error names the
/// file and the line of the first record that does not parse.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    Ok(read_numbered(path)?.into_iter().map(|(_, r)| r).collect())
}

/// The largest JSON-lines file tsmc reads: far above what its commands write for any run that
/// fits in memory, and a bound on a file that never ends (`/dev/zero`).
pub const MAX_JSONL_BYTES: u64 = 1 << 30;

/// [`read_records`] with each record's line number (from 1).
pub fn read_numbered<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_JSONL_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > MAX_JSONL_BYTES {
        bail!(
            "{}: larger than {} GiB, more than any tsmc run writes",
            path.display(),
            MAX_JSONL_BYTES >> 30
        );
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|r| (i + 1, r))
                .with_context(|| {
                    format!("{}: line {} is not a valid record", path.display(), i + 1)
                })
        })
        .collect()
}

/// Reads the exact samples of a `tsmc exact` JSONL file, each of `horizon` tokens, in the order
/// they were drawn.
pub fn read_exact(path: &Path, horizon: usize) -> Result<Vec<Vec<u32>>> {
    let values: Vec<(usize, serde_json::Value)> =
        read_numbered(path).context("reading exact samples")?;
    let mut out = Vec::new();
    for (line, v) in &values {
        if v["type"] != "sample" {
            continue;
        }
        let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone())
            .with_context(|| format!("{}: line {line}: field `tokens`", path.display()))?;
        if tokens.len() != horizon {
            bail!(
                "{}: line {line}: {} tokens, expected T = {horizon}",
                path.display(),
                tokens.len()
            );
        }
        out.push(tokens);
    }
    if out.is_empty() {
        bail!(
            "{}: no exact samples (lines with \"type\": \"sample\")",
            path.display()
        );
    }
    Ok(out)
}
