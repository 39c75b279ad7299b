//! Project tasks: `cargo xtask <task>`.
//!
//! - `bench [ARGS]`: runs every criterion benchmark in `benches/` (extra arguments go to
//!   criterion, e.g. `cargo xtask bench resampling` to filter).

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
    run(cargo()
        .args(["bench", "-p", "tsmc-benches", "--"])
        .args(args))
}

fn usage() -> &'static str {
    "usage: cargo xtask <task>\n\ntasks:\n  bench [CRITERION ARGS]   run the criterion benchmarks (results in target/criterion)\n"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
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
