//! The `tsmc` command line: parse, then run (everything else is in the library).

use std::process::ExitCode;

use clap::Parser;
use tsmc_apps::cli::Cli;

fn main() -> ExitCode {
    restore_sigpipe();
    match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A closed pipe on stdout (`tsmc demo | head`) ends the process quietly, as it does for other
/// command-line tools, instead of a panic in `println!`: Rust's runtime ignores SIGPIPE, so the
/// default action is restored before anything is printed.
#[cfg(unix)]
fn restore_sigpipe() {
    // SAFETY: called once at start, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
