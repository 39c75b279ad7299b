//! `tsmc report`: one self-contained HTML page (inline SVG, no scripts, no CDN) from the JSONL
//! files of `tsmc sample`, `tsmc bounds` and `tsmc train`: ESS per step, the particle genealogy,
//! bounds on log Z against K, and KL over training.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::jsonl::read_values;

mod svg;

use svg::{esc, genealogy, line_chart};

/// The validated settings of `tsmc report`.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Output of `tsmc sample --out`.
    pub sample: Option<PathBuf>,
    /// Output of `tsmc bounds --out`.
    pub bounds: Option<PathBuf>,
    /// Output of `tsmc train --out`.
    pub curve: Option<PathBuf>,
    /// The HTML file to write.
    pub out: PathBuf,
}

/// Runs `tsmc report`.
pub fn run(args: &ReportSettings) -> Result<()> {
    let mut body = String::new();
    if let Some(path) = &args.sample {
        let lines = read_values(path)?;
        let run = lines
            .iter()
            .find(|l| l["type"] == "run")
            .with_context(|| format!("{}: no run record", path.display()))?;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        let ess: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| {
                (
                    s["step"].as_f64().unwrap_or(0.0),
                    s["ess"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        let _ = write!(
            body,
            "<h2>Sampling</h2><p>model <code>{}</code>, potential <code>{}</code>, K = {}, T = {}, log Zhat = {:.4}, final ESS = {:.1}</p>",
            esc(run["model"].as_str().unwrap_or("")),
            esc(run["potential"].as_str().unwrap_or("")),
            run["num_particles"],
            run["num_tokens"],
            run["log_z_hat"].as_f64().unwrap_or(f64::NAN),
            run["final_ess"].as_f64().unwrap_or(f64::NAN)
        );
        body.push_str(&line_chart(
            "ESS per step (before resampling)",
            "step",
            "ESS",
            &[("ESS".into(), ess)],
            false,
        ));
        let ancestors: Vec<Vec<usize>> =
            serde_json::from_value(run["ancestors"].clone()).unwrap_or_default();
        let k = run["num_particles"].as_u64().unwrap_or(0) as usize;
        if !ancestors.is_empty() && k > 0 {
            body.push_str("<h3>Genealogy (dark: ancestors of the final particles)</h3>");
            body.push_str(&genealogy(&ancestors, k));
        }
        body.push_str("<h3>Particles, heaviest first</h3><table><tr><th>weight</th><th>log phi</th><th>text</th></tr>");
        for p in lines.iter().filter(|l| l["type"] == "particle").take(20) {
            let _ = write!(
                body,
                "<tr><td>{:.3}</td><td>{:.2}</td><td>{}</td></tr>",
                p["weight"].as_f64().unwrap_or(0.0),
                p["log_phi"].as_f64().unwrap_or(0.0),
                esc(p["text"].as_str().unwrap_or(""))
            );
        }
        body.push_str("</table>");
    }
    if let Some(path) = &args.bounds {
        let lines = read_values(path)?;
        let rows: Vec<&Value> = lines
            .iter()
            .filter(|l| l["type"] == "bounds")
            .map(|l| &l["row"])
            .collect();
        let series = |key: &str| -> Vec<(f64, f64)> {
            rows.iter()
                .map(|r| {
                    (
                        r["k"].as_f64().unwrap_or(0.0),
                        r[key]["mean"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        };
        body.push_str("<h2>Bounds on log Z against K</h2>");
        body.push_str(&line_chart(
            "lower (SIS, SMC) and upper (SIS, conditional SMC) bounds",
            "K (particles)",
            "log Z",
            &[
                ("SIS lower".into(), series("sis_lower")),
                ("SMC lower".into(), series("smc_lower")),
                ("SMC upper".into(), series("smc_upper")),
                ("SIS upper".into(), series("sis_upper")),
            ],
            true,
        ));
        if let Some(kl) = lines.iter().find(|l| l["type"] == "kl") {
            let e = &kl["estimates"];
            let _ = write!(
                body,
                "<p>KL(q‖σ) = {:.4} ± {:.4}, KL(σ‖q) = {:.4} ± {:.4} (± 95% Student t half-width), log Z ≈ {:.4}</p>",
                e["kl_q_sigma"]["mean"].as_f64().unwrap_or(f64::NAN),
                half_width(&e["kl_q_sigma"]),
                e["kl_sigma_q"]["mean"].as_f64().unwrap_or(f64::NAN),
                half_width(&e["kl_sigma_q"]),
                e["log_z"]["mean"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(path) = &args.curve {
        let lines = read_values(path)?;
        let pick = |sampler: &str, key: &str| -> Vec<(f64, f64)> {
            lines
                .iter()
                .filter(|l| l["sampler"] == sampler)
                .map(|l| {
                    (
                        l["step"].as_f64().unwrap_or(0.0),
                        l["eval"][key]["mean"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        };
        let base = |key: &str| -> Vec<(f64, f64)> {
            let b = pick("p0 (no twist)", key);
            let last = lines
                .iter()
                .filter_map(|l| l["step"].as_f64())
                .fold(0.0, f64::max);
            b.first()
                .map(|&(_, y)| vec![(0.0, y), (last, y)])
                .unwrap_or_default()
        };
        body.push_str("<h2>Training</h2>");
        body.push_str(&line_chart(
            "KL estimates over twist updates",
            "update",
            "KL (nats)",
            &[
                ("KL(q||σ) twisted".into(), pick("twisted", "kl_q_sigma")),
                ("KL(σ||q) twisted".into(), pick("twisted", "kl_sigma_q")),
                ("KL(q||σ) p0".into(), base("kl_q_sigma")),
                ("KL(σ||q) p0".into(), base("kl_sigma_q")),
            ],
            false,
        ));
    }
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tsmc report</title><style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}} table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:2px 6px;font-size:12px}}</style></head><body><h1>tsmc report</h1>{body}</body></html>"
    );
    lm_burn::heads::write_atomic(&args.out, html.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The 95% half-width of an estimate as a JSON object (mean, se, n and, in newer files, df).
fn half_width(v: &Value) -> f64 {
    serde_json::from_value::<smc_bounds::Estimate>(v.clone()).map_or(f64::NAN, |e| e.ci95())
}
