//! `tsmc report`: one self-contained HTML page (inline SVG, no scripts, no CDN) from the JSONL
//! files of `tsmc sample`, `tsmc bounds` and `tsmc train`: ESS per step, the particle genealogy,
//! bounds on log Z against K, and KL over training.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

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
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {} is not JSON", path.display(), i + 1))
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart with points; x optionally on a log2 scale.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 320.0, 60.0, 160.0, 30.0, 45.0);
    let tx = |x: f64| if log_x { x.max(1e-12).log2() } else { x };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, y)| (tx(x), y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return format!("<p>{}: no data</p>", esc(title));
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if x1 - x0 < 1e-12 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 1.0;
        y1 += 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| ml + (tx(x) - x0) / (x1 - x0) * (w - ml - mr);
    let sy = |y: f64| mt + (y1 - y) / (y1 - y0) * (h - mt - mb);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        ml,
        esc(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{:.3}</text><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            ml - 4.0,
            sy(y) + 4.0,
            y,
            w - mr,
            sy(y),
            sy(y)
        );
        let xt = x0 + (x1 - x0) * i as f64 / 4.0;
        let label = if log_x {
            format!("{:.0}", xt.exp2())
        } else {
            format!("{xt:.1}")
        };
        let px = ml + (xt - x0) / (x1 - x0) * (w - ml - mr);
        let _ = write!(
            svg,
            r#"<text x="{px}" y="{}" text-anchor="middle">{label}</text>"#,
            h - mb + 14.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        ml + (w - ml - mr) / 2.0,
        h - 8.0,
        esc(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        mt + (h - mt - mb) / 2.0,
        mt + (h - mt - mb) / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .filter(|(x, y)| tx(*x).is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for pt in &path {
            let (a, b) = pt.split_once(',').expect("pair");
            let _ = write!(svg, r#"<circle cx="{a}" cy="{b}" r="3" fill="{c}"/>"#);
        }
        let ly = mt + 14.0 * i as f64 + 8.0;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            w - mr + 8.0,
            w - mr + 24.0,
            w - mr + 28.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The genealogy: particles at each step, a line from each particle to its parent; lineages of
/// the final particles drawn dark.
fn genealogy(ancestors: &[Vec<usize>], k: usize) -> String {
    let t = ancestors.len() + 1;
    let (w, h) = (640.0, 320.0_f64.max(8.0 * k.min(64) as f64));
    let sx = |s: usize| 40.0 + s as f64 / (t.max(2) - 1) as f64 * (w - 80.0);
    let sy = |p: usize| 20.0 + p as f64 / (k.max(2) - 1) as f64 * (h - 40.0);
    let mut alive = vec![vec![false; k]; t];
    alive[t - 1] = vec![true; k];
    for s in (0..t - 1).rev() {
        for p in 0..k {
            if alive[s + 1][p] {
                alive[s][ancestors[s][p]] = true;
            }
        }
    }
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for s in 0..t - 1 {
        for p in 0..k {
            let a = ancestors[s][p];
            let (c, wd) = if alive[s + 1][p] {
                ("#333", 1.5)
            } else {
                ("#ccc", 0.7)
            };
            let _ = write!(
                svg,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="{wd}"/>"#,
                sx(s),
                sy(a),
                sx(s + 1),
                sy(p)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="40" y="{}">step 1</text><text x="{}" y="{}" text-anchor="end">step {t}</text></svg>"#,
        h - 4.0,
        w - 40.0,
        h - 4.0
    );
    svg
}

/// Runs `tsmc report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    if args.sample.is_none() && args.bounds.is_none() && args.curve.is_none() {
        bail!("nothing to report: give at least one of --sample, --bounds, --curve");
    }
    let mut body = String::new();
    if let Some(path) = &args.sample {
        let lines = read_jsonl(path)?;
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
        let lines = read_jsonl(path)?;
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
                "<p>KL(q‖σ) = {:.4} ± {:.4}, KL(σ‖q) = {:.4} ± {:.4} (± 1.96 SE), log Z ≈ {:.4}</p>",
                e["kl_q_sigma"]["mean"].as_f64().unwrap_or(f64::NAN),
                1.96 * e["kl_q_sigma"]["se"].as_f64().unwrap_or(f64::NAN),
                e["kl_sigma_q"]["mean"].as_f64().unwrap_or(f64::NAN),
                1.96 * e["kl_sigma_q"]["se"].as_f64().unwrap_or(f64::NAN),
                e["log_z"]["mean"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(path) = &args.curve {
        let lines = read_jsonl(path)?;
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
