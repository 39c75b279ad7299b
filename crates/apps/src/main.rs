//! The `tsmc` command line: parse, then run (everything else is in the library).

use std::process::ExitCode;

use clap::Parser;
use tsmc_apps::cli::Cli;

fn main() -> ExitCode {
    tsmc_apps::signals::install();
    match Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
