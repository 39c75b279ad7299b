//! The `tsmc` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bounds;
mod common;
mod demo;
mod exact;
mod output;
mod potentials;
mod progress;
mod report;
mod reproduce;
mod sample;
mod tasks;
mod train;
mod train_fixed;

/// Twisted sequential Monte Carlo for language models.
#[derive(Debug, Parser)]
#[command(name = "tsmc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Twisted SMC on an enumerable tabular language model, where log Z, sigma and the optimal
    /// twists are exact: bounds on log Z against K and KL estimates next to the exact values.
    Demo(demo::DemoArgs),
    /// Sample continuations of a prompt from the target p0(s | prompt) phi(s) / Z with SMC on a
    /// language model (the default model unless --model is given); JSONL output.
    Sample(sample::SampleArgs),
    /// Learn twists (contrastive twist learning on the infilling task) with evaluation by both
    /// KL estimates, checkpoints and a training curve.
    Train(train::TrainArgs),
    /// Collect exact target samples (rejection, class rejection or joint ancestral draws).
    Exact(exact::ExactArgs),
    /// Bounds on log Z against K, F_q, G_q and both KL estimates for a proposal or twist.
    Bounds(bounds::BoundsArgs),
    /// A self-contained HTML report (SVG plots) of sample, bounds and training outputs.
    Report(report::ReportArgs),
    /// The paper's KL table for a task preset: exact samples, p0 and every method's trained
    /// twist evaluated by F_q, G_q and log Z bounds, mean ± 1.96 SE over seeds.
    Reproduce(reproduce::ReproduceArgs),
    /// List the task presets (the paper's tasks: prompt, T, potential, exact samples, methods).
    Tasks,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Exact(args) => exact::run(&args),
        Command::Bounds(args) => bounds::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Tasks => {
            print!("{}", tasks::describe());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
