//! Output files written atomically: into a temporary file beside the target, renamed on
//! success, removed on failure, so that an interrupted or failed run leaves no partial file.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// A JSON-lines file that appears at its path only when [`JsonlWriter::finish`] succeeds.
pub struct JsonlWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<fs::File>>,
}

impl JsonlWriter {
    /// Creates the temporary file next to `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file_name = path
            .file_name()
            .with_context(|| format!("output path {} has no file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = fs::File::create(&tmp)
            .with_context(|| format!("cannot create output file {}", tmp.display()))?;
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
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        file.sync_all()?;
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot move output into {}", self.path.display()))?;
        Ok(())
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
