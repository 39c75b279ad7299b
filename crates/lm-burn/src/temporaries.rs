//! Files that appear whole or not at all. An output is written into a temporary sibling
//! `.NAME.tmp-tsmc-PID` and renamed into place, so a reader sees the old file or the new one.
//! The temporaries this process has open are registered, and creating, renaming and removing
//! them happen under the registry's lock, so that a SIGINT/SIGTERM handler
//! ([`remove_live_and_exit`]) finds every temporary that exists and the process exits without
//! leaving one. Those of killed processes (SIGKILL cannot be handled) are removed by the next
//! writer of the same path ([`remove_stale_temporaries`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{LmError, Result};

/// The suffix of tsmc's temporary files, followed by the writing process's id.
pub const TEMPORARY_MARK: &str = ".tmp-tsmc-";

/// The temporaries this process is writing.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registry, also after a panic elsewhere poisoned it (a list of paths cannot be left
/// inconsistent).
fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The temporary sibling of `path` this process writes before renaming it into place:
/// `.NAME.tmp-tsmc-PID`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMPORARY_MARK}{}", std::process::id()))
}

/// Removes the temporaries of `path` (`.NAME.tmp-tsmc-PID`) left by processes that no longer
/// run (a killed run). Where the process table cannot be read (no `/proc`), nothing is removed.
pub fn remove_stale_temporaries(path: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}{TEMPORARY_MARK}");
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        }) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A registered temporary file: removed when dropped unless [`Temporary::persist`] renamed it
/// into place.
#[derive(Debug)]
pub struct Temporary {
    path: PathBuf,
    persisted: bool,
}

impl Temporary {
    /// Removes the stale temporaries of `target`, then creates (truncating) this process's
    /// temporary for it and registers it, both under the registry's lock.
    pub fn create(target: &Path) -> std::io::Result<(Self, File)> {
        remove_stale_temporaries(target);
        let path = temporary_path(target);
        let mut live = live();
        let file = File::create(&path)?;
        live.push(path.clone());
        Ok((
            Self {
                path,
                persisted: false,
            },
            file,
        ))
    }

    /// The temporary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary into `target` (under the registry's lock) and unregisters it.
    /// The caller has written and synced the file.
    pub fn persist(mut self, target: &Path) -> std::io::Result<()> {
        let mut live = live();
        std::fs::rename(&self.path, target)?;
        live.retain(|p| p != &self.path);
        self.persisted = true;
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let mut live = live();
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
        live.retain(|p| p != &self.path);
    }
}

/// Writes a file through its temporary (see [`Temporary`]) renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (tmp, mut f) = Temporary::create(path).map_err(|e| LmError::io(temporary_path(path), e))?;
    f.write_all(bytes).map_err(|e| LmError::io(tmp.path(), e))?;
    f.sync_all().map_err(|e| LmError::io(tmp.path(), e))?;
    drop(f);
    tmp.persist(path).map_err(|e| LmError::io(path, e))
}

/// For a SIGINT/SIGTERM handler: removes every temporary this process has open and exits with
/// `code` (130 for SIGINT, 143 for SIGTERM, as shells report them). The registry's lock is held
/// until the process ends, so no other thread creates or renames a temporary in between.
pub fn remove_live_and_exit(code: i32) -> ! {
    let live = live();
    for p in live.iter() {
        let _ = std::fs::remove_file(p);
    }
    // The lock is kept (not dropped) on purpose: `exit` ends every thread.
    std::mem::forget(live);
    std::process::exit(code)
}
