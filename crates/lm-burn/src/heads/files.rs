//! Files written whole or not at all: a temporary sibling renamed into place, temporaries of
//! dead runs removed, and this process's temporaries removed on a signal.

use std::path::{Path, PathBuf};

use crate::error::{LmError, Result};

/// Writes a file through a temporary sibling (see [`temporary_path`]) renamed into place,
/// first removing the temporaries that dead runs left beside it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    remove_stale_temporaries(path);
    let tmp = temporary_path(path);
    let _guard = TemporaryGuard::new(&tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| LmError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))
}

/// The suffix of tsmc's temporary files, followed by the writing process's id.
pub const TEMPORARY_MARK: &str = ".tmp-tsmc-";

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

/// The temporaries this process is writing, removed by [`remove_live_temporaries`] (from a
/// signal handler, before exiting).
static LIVE_TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Registers a temporary file for [`remove_live_temporaries`] until dropped (and removes the
/// file on drop if it is still there, i.e. it was not renamed into place).
pub struct TemporaryGuard(PathBuf);

impl TemporaryGuard {
    /// Registers `path`.
    pub fn new(path: &Path) -> Self {
        if let Ok(mut live) = LIVE_TEMPORARIES.lock() {
            live.push(path.to_path_buf());
        }
        Self(path.to_path_buf())
    }
}

impl Drop for TemporaryGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE_TEMPORARIES.lock() {
            live.retain(|p| p != &self.0);
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes every temporary file this process is writing (for a SIGINT/SIGTERM handler).
pub fn remove_live_temporaries() {
    if let Ok(live) = LIVE_TEMPORARIES.lock() {
        for p in live.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}
