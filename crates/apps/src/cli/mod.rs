//! The command line's parser types: one file of arguments per command, the groups they share,
//! and the dispatch. Everything below this layer takes validated settings, never clap types.

pub mod bounds;
pub mod demo;
pub mod exact;
pub mod fit;
pub mod groups;
pub mod head;
pub mod report;
pub mod reproduce;
pub mod sample;
pub mod serving;
pub mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::commands;

/// Twisted sequential Monte Carlo for language models.
#[derive(Debug, Parser)]
#[command(name = "tsmc", version, about)]
pub struct Cli {
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
    /// Learn twists (CTL, RL, SIXO, FUDGE, DPG) with evaluation by both KL estimates,
    /// checkpoints and a training curve.
    Train(train::TrainArgs),
    /// Collect exact target samples (rejection, class rejection or joint ancestral draws).
    Exact(exact::ExactArgs),
    /// Bounds on log Z against K, F_q, G_q and both KL estimates for a proposal or twist.
    Bounds(bounds::BoundsArgs),
    /// A self-contained HTML report (SVG plots) of sample, bounds and training outputs.
    Report(report::ReportArgs),
    /// The paper's KL table for a task preset: exact samples, p0 and every method's trained
    /// twist evaluated by F_q, G_q and log Z bounds, with Student t intervals over seeds.
    Reproduce(reproduce::ReproduceArgs),
    /// List the task presets (the paper's tasks: prompt, T, potential, exact samples, methods).
    Tasks,
}

impl Cli {
    /// Validates the arguments into the command's settings without running it: nothing is
    /// loaded, read or written (output paths are only looked at). The fuzz tests call this
    /// after `Cli::try_parse_from`.
    pub fn validate(self) -> Result<()> {
        match self.command {
            Command::Demo(args) => args.settings().map(drop),
            Command::Sample(args) => args.settings().map(drop),
            Command::Train(args) => args.settings().map(drop),
            Command::Exact(args) => args.settings().map(drop),
            Command::Bounds(args) => args.settings().map(drop),
            Command::Report(args) => args.settings().map(drop),
            Command::Reproduce(args) => args.settings().map(drop),
            Command::Tasks => Ok(()),
        }
    }

    /// Validates the arguments once and runs the command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Demo(args) => commands::demo::run(&args.settings()?),
            Command::Sample(args) => commands::sample::run(&args.settings()?),
            Command::Train(args) => commands::train::run(&args.settings()?),
            Command::Exact(args) => commands::exact::run(&args.settings()?),
            Command::Bounds(args) => commands::bounds::run(&args.settings()?),
            Command::Report(args) => commands::report::run(&args.settings()?),
            Command::Reproduce(args) => commands::reproduce::run(&args.settings()?),
            Command::Tasks => {
                print!("{}", crate::presets::describe());
                Ok(())
            }
        }
    }
}
