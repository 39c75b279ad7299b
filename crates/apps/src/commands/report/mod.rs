//! `tsmc report`: one self-contained HTML page (inline SVG, no scripts, no CDN) from the JSONL
//! files of `tsmc sample`, `tsmc bounds` and `tsmc train` and the summary of `tsmc reproduce`:
//! ESS per step, the particle genealogy, bounds on log Z against K, KL over training, and a
//! reproduction's KL and SMC tables with their charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::svg::{esc, genealogy, line_chart};

mod read;
mod reproduce;

use read::{count, num, read_checked};

/// The validated settings of `tsmc report`.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Output of `tsmc sample --out`.
    pub sample: Option<PathBuf>,
    /// Output of `tsmc bounds --out`.
    pub bounds: Option<PathBuf>,
    /// Output of `tsmc train --out`.
    pub curve: Option<PathBuf>,
    /// The `summary.json` of a `tsmc reproduce` run.
    pub reproduce: Option<PathBuf>,
    /// The HTML file to write.
    pub out: PathBuf,
}

/// The run record and particles of a `tsmc sample --out` file, checked: one run record, as many
/// particles as it declares, the ESS of every step, a genealogy of T - 1 rows of K indices each
/// below K.
struct SampleFile {
    run: Value,
    ess: Vec<(f64, f64)>,
    ancestors: Vec<Vec<usize>>,
    k: usize,
    particles: Vec<(f64, f64, String)>,
}

fn read_sample(path: &Path) -> Result<SampleFile> {
    let what = "`tsmc sample --out`";
    let lines = read_checked(path, what, &["particle", "run"])?;
    let mut runs = lines.iter().filter(|(_, l)| l["type"] == "run");
    let (line, run) = runs.next().with_context(|| {
        format!(
            "{}: no run record (expected the output of {what})",
            path.display()
        )
    })?;
    if let Some((second, _)) = runs.next() {
        bail!(
            "{}: line {second}: a second run record (the first is on line {line})",
            path.display()
        );
    }
    let line = *line;
    let k = count(path, line, run, "num_particles")?;
    let t = count(path, line, run, "num_tokens")?;
    if k == 0 || t == 0 {
        bail!(
            "{}: line {line}: num_particles and num_tokens must be at least 1, found {k} and {t}",
            path.display()
        );
    }
    let particles: Vec<&(usize, Value)> = lines
        .iter()
        .filter(|(_, l)| l["type"] == "particle")
        .collect();
    if particles.len() != k {
        bail!(
            "{}: line {line}: num_particles is {k}, but the file holds {} particle records",
            path.display(),
            particles.len()
        );
    }
    let steps = run["steps"].as_array().with_context(|| {
        format!(
            "{}: line {line}: field `steps` must be an array",
            path.display()
        )
    })?;
    if steps.len() != t {
        bail!(
            "{}: line {line}: {} steps, but num_tokens is {t}",
            path.display(),
            steps.len()
        );
    }
    let ess = steps
        .iter()
        .map(|s| Ok((num(path, line, s, "step")?, num(path, line, s, "ess")?)))
        .collect::<Result<Vec<_>>>()?;
    let ancestors: Vec<Vec<usize>> = serde_json::from_value(run["ancestors"].clone())
        .with_context(|| {
            format!(
                "{}: line {line}: field `ancestors` must be rows of particle indices",
                path.display()
            )
        })?;
    if ancestors.len() != t - 1 {
        bail!(
            "{}: line {line}: {} rows of ancestors, expected num_tokens - 1 = {}",
            path.display(),
            ancestors.len(),
            t - 1
        );
    }
    for (r, row) in ancestors.iter().enumerate() {
        if row.len() != k {
            bail!(
                "{}: line {line}: ancestors row {r} has {} entries, expected num_particles = {k}",
                path.display(),
                row.len()
            );
        }
        if let Some(a) = row.iter().find(|&&a| a >= k) {
            bail!(
                "{}: line {line}: ancestors row {r} holds index {a}, not one of the {k} particles",
                path.display()
            );
        }
    }
    for field in ["log_z_hat", "final_ess"] {
        num(path, line, run, field)?;
    }
    let particles = particles
        .iter()
        .map(|(pl, p)| {
            let text = p["text"].as_str().with_context(|| {
                format!(
                    "{}: line {pl}: field `text` must be a string",
                    path.display()
                )
            })?;
            // log phi is -inf (null in JSON) where a hard constraint fails.
            let log_phi = if p["log_phi"].is_null() {
                f64::NEG_INFINITY
            } else {
                num(path, *pl, p, "log_phi")?
            };
            Ok((num(path, *pl, p, "weight")?, log_phi, text.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SampleFile {
        run: run.clone(),
        ess,
        ancestors,
        k,
        particles,
    })
}

/// Runs `tsmc report`.
pub fn run(args: &ReportSettings) -> Result<()> {
    let html = render(args)?;
    lm_burn::temporaries::write_atomic(&args.out, html.as_bytes())?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The report's HTML from its validated inputs (writes nothing).
pub fn render(args: &ReportSettings) -> Result<String> {
    let mut body = String::new();
    if let Some(path) = &args.sample {
        let SampleFile {
            run,
            ess,
            ancestors,
            k,
            particles,
        } = read_sample(path)?;
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
        // What shaped the proposal and the targets, where the run had any of it.
        let shaping: Vec<String> = [
            ("constraint", "constraint"),
            ("prefix twist", "prefix_twist"),
            ("twist head", "twist"),
            ("final lookahead candidates", "lookahead"),
            ("of p0's mass", "lookahead_mass"),
        ]
        .iter()
        .filter(|(_, key)| !run[*key].is_null())
        .map(|(name, key)| {
            let value = run[*key]
                .as_str()
                .map_or_else(|| run[*key].to_string(), str::to_string);
            format!("{name} <code>{}</code>", esc(&value))
        })
        .collect();
        if !shaping.is_empty() {
            let _ = write!(body, "<p>{}</p>", shaping.join(", "));
        }
        body.push_str(&line_chart(
            "ESS per step (before resampling)",
            "step",
            "ESS",
            &[("ESS".into(), ess)],
            false,
        ));
        if !ancestors.is_empty() {
            body.push_str("<h3>Genealogy (dark: ancestors of the final particles)</h3>");
            body.push_str(&genealogy(&ancestors, k));
        }
        body.push_str("<h3>Particles, heaviest first</h3><table><tr><th>weight</th><th>log phi</th><th>text</th></tr>");
        for (weight, log_phi, text) in particles.iter().take(20) {
            let _ = write!(
                body,
                "<tr><td>{weight:.3}</td><td>{log_phi:.2}</td><td>{}</td></tr>",
                esc(text)
            );
        }
        body.push_str("</table>");
    }
    if let Some(path) = &args.bounds {
        let lines = read_checked(path, "`tsmc bounds --out`", &["bounds", "kl"])?;
        let mut rows = Vec::new();
        for (line, l) in lines.iter().filter(|(_, l)| l["type"] == "bounds") {
            let r = &l["row"];
            let k = count(path, *line, r, "k")?;
            let mut means = Vec::new();
            for key in ["sis_lower", "smc_lower", "smc_upper", "sis_upper"] {
                // The SMC upper bound is null where resampling was not multinomial.
                means.push(if key == "smc_upper" && r[key].is_null() {
                    f64::NAN
                } else {
                    num(path, *line, r, &format!("{key}.mean"))?
                });
            }
            rows.push((k as f64, means));
        }
        if rows.is_empty() {
            bail!(
                "{}: no bounds records (expected the output of `tsmc bounds --out`)",
                path.display()
            );
        }
        let series =
            |i: usize| -> Vec<(f64, f64)> { rows.iter().map(|(k, m)| (*k, m[i])).collect() };
        body.push_str("<h2>Bounds on log Z against K</h2>");
        body.push_str(&line_chart(
            "lower (SIS, SMC) and upper (SIS, conditional SMC) bounds",
            "K (particles)",
            "log Z",
            &[
                ("SIS lower".into(), series(0)),
                ("SMC lower".into(), series(1)),
                ("SMC upper".into(), series(2)),
                ("SIS upper".into(), series(3)),
            ],
            true,
        ));
        if let Some((line, kl)) = lines.iter().find(|(_, l)| l["type"] == "kl") {
            let e = &kl["estimates"];
            let _ = write!(
                body,
                "<p>KL(q‖σ) = {:.4} ± {:.4}, KL(σ‖q) = {:.4} ± {:.4} (± 95% Student t half-width), log Z ≈ {:.4}</p>",
                num(path, *line, e, "kl_q_sigma.mean")?,
                half_width(&e["kl_q_sigma"]),
                num(path, *line, e, "kl_sigma_q.mean")?,
                half_width(&e["kl_sigma_q"]),
                num(path, *line, e, "log_z.mean")?
            );
        }
    }
    if let Some(path) = &args.curve {
        let lines = read_checked(path, "`tsmc train --out`", &[])?;
        let mut evals: Vec<(String, f64, f64, f64)> = Vec::new();
        let mut last = 0.0f64;
        for (line, l) in &lines {
            if l["type"].is_string() {
                continue; // the infilling-fixed task's bounds and summary records
            }
            let step = count(path, *line, l, "step")? as f64;
            last = last.max(step);
            if l.get("eval").is_some() {
                let sampler = l["sampler"].as_str().with_context(|| {
                    format!(
                        "{}: line {line}: field `sampler` must be a string",
                        path.display()
                    )
                })?;
                evals.push((
                    sampler.to_string(),
                    step,
                    num(path, *line, l, "eval.kl_q_sigma.mean")?,
                    num(path, *line, l, "eval.kl_sigma_q.mean")?,
                ));
            } else {
                num(path, *line, l, "loss")?;
            }
        }
        if !evals.iter().any(|e| e.0 == "twisted") {
            bail!(
                "{}: no evaluation of the twist (records with \"sampler\": \"twisted\"; `tsmc train --task potential` evaluates with --exact)",
                path.display()
            );
        }
        let pick = |sampler: &str, kl_q_sigma: bool| -> Vec<(f64, f64)> {
            evals
                .iter()
                .filter(|e| e.0 == sampler)
                .map(|e| (e.1, if kl_q_sigma { e.2 } else { e.3 }))
                .collect()
        };
        let base = |kl_q_sigma: bool| -> Vec<(f64, f64)> {
            pick("p0 (no twist)", kl_q_sigma)
                .first()
                .map(|&(_, y)| vec![(0.0, y), (last, y)])
                .unwrap_or_default()
        };
        body.push_str("<h2>Training</h2>");
        body.push_str(&line_chart(
            "KL estimates over twist updates",
            "update",
            "KL (nats)",
            &[
                ("KL(q||σ) twisted".into(), pick("twisted", true)),
                ("KL(σ||q) twisted".into(), pick("twisted", false)),
                ("KL(q||σ) p0".into(), base(true)),
                ("KL(σ||q) p0".into(), base(false)),
            ],
            false,
        ));
    }
    if let Some(path) = &args.reproduce {
        body.push_str(&reproduce::section(path)?);
    }
    Ok(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tsmc report</title><style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}} table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:2px 6px;font-size:12px}}</style></head><body><h1>tsmc report</h1>{body}</body></html>"
    ))
}

/// The 95% half-width of an estimate as a JSON object (mean, se, n and, in newer files, df).
fn half_width(v: &Value) -> f64 {
    serde_json::from_value::<smc_bounds::Estimate>(v.clone()).map_or(f64::NAN, |e| e.ci95())
}
