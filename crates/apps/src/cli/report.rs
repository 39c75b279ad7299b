//! `tsmc report` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::commands::report::ReportSettings;

/// Arguments of `tsmc report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output of `tsmc sample --out` (ESS per step, genealogy, particles).
    #[arg(long)]
    sample: Option<PathBuf>,
    /// Output of `tsmc bounds --out` (bounds against K, KL estimates).
    #[arg(long)]
    bounds: Option<PathBuf>,
    /// Output of `tsmc train --out` (KL over training).
    #[arg(long)]
    curve: Option<PathBuf>,
    /// The summary.json of a `tsmc reproduce` run, or its output directory (its KL and SMC
    /// tables, with charts).
    #[arg(long, value_name = "SUMMARY_JSON|DIR")]
    reproduce: Option<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
}

impl ReportArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<ReportSettings> {
        let Self {
            sample,
            bounds,
            curve,
            reproduce,
            out,
        } = self;
        if sample.is_none() && bounds.is_none() && curve.is_none() && reproduce.is_none() {
            bail!(
                "nothing to report: give at least one of --sample, --bounds, --curve, --reproduce"
            );
        }
        // A reproduction is one directory; its summary is the file the report reads.
        let reproduce = reproduce.map(|p| {
            if p.is_dir() {
                p.join("summary.json")
            } else {
                p
            }
        });
        let inputs: Vec<(&str, &std::path::Path)> = [
            ("--sample", &sample),
            ("--bounds", &bounds),
            ("--curve", &curve),
            ("--reproduce", &reproduce),
        ]
        .into_iter()
        .filter_map(|(o, p)| p.as_deref().map(|p| (o, p)))
        .collect();
        crate::output::check_outputs(&[("--out", &out)], &inputs)?;
        Ok(ReportSettings {
            sample,
            bounds,
            curve,
            reproduce,
            out,
        })
    }
}
