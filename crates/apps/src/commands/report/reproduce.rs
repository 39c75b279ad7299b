//! The report's section for a `tsmc reproduce` run: its KL table and its SMC table, each as a
//! table and a chart, read from the run's `summary.json`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use smc_bounds::Estimate;

use crate::svg::{esc, line_chart};

/// An estimate (mean, se, n, df) held in field `key` of `v`.
fn estimate(path: &Path, v: &Value, key: &str) -> Result<Estimate> {
    serde_json::from_value(v[key].clone()).with_context(|| {
        format!(
            "{}: field `{key}` of sampler {} must be an estimate (mean, se, n, df)",
            path.display(),
            v["sampler"]
        )
    })
}

/// An estimate that a summary may leave out (`null` or absent: no such comparison, or no
/// timings in older records).
fn optional(path: &Path, v: &Value, key: &str) -> Result<Option<Estimate>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => estimate(path, v, key).map(Some),
    }
}

/// A header field as the page shows it: escaped text, a number, or "?" where it is missing.
fn shown(v: &Value) -> String {
    match v {
        Value::String(x) => esc(x),
        Value::Number(n) => n.to_string(),
        _ => "?".to_string(),
    }
}

/// A row's sampler name; every row of ours has one.
fn sampler(path: &Path, r: &Value) -> Result<String> {
    r["sampler"].as_str().map(str::to_string).with_context(|| {
        format!(
            "{}: a row has no sampler name (expected the summary.json of `tsmc reproduce`)",
            path.display()
        )
    })
}

/// "mean ± 95% half-width".
fn pm(e: &Estimate) -> String {
    format!("{:.3} ± {:.3}", e.mean, e.ci95())
}

/// One vertical segment per sampler, from `mean - half-width` to `mean + half-width`, at its
/// row's index, labelled in the legend.
fn intervals(title: &str, y_label: &str, rows: &[(String, Estimate)]) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .enumerate()
        .map(|(i, (name, e))| {
            let h = e.ci95();
            (
                name.clone(),
                vec![(i as f64, e.mean - h), (i as f64, e.mean + h)],
            )
        })
        .collect();
    line_chart(title, "sampler (legend order)", y_label, &series, false)
}

/// The section's HTML from the `summary.json` at `path`.
pub(super) fn section(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --reproduce {}", path.display()))?;
    let s: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not JSON (expected the summary.json of `tsmc reproduce`)",
            path.display()
        )
    })?;
    let expected = "expected the summary.json of `tsmc reproduce`";
    let Some(task) = s["task"].as_str() else {
        bail!("{}: no `task` name ({expected})", path.display());
    };
    let Some(rows) = s["rows"].as_array() else {
        bail!("{}: no `rows` array ({expected})", path.display());
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Reproduction: <code>{}</code></h2><p>T = {}, {} seeds, {} updates per method, \
         model <code>{}</code>, {} s. Mean ± 95% Student t half-width over seeds; Δ columns \
         paired against p0 by seed (negative: better than p0).</p>",
        esc(task),
        shown(&s["tokens"]),
        shown(&s["seeds"]),
        shown(&s["steps"]),
        shown(&s["model"]),
        s["seconds"]
            .as_f64()
            .map_or("?".to_string(), |x| format!("{x:.0}"))
    );
    body.push_str(
        "<table><tr><th>sampler</th><th>KL(q‖σ)</th><th>KL(σ‖q)</th><th>ΔKL(q‖σ)</th>\
         <th>ΔKL(σ‖q)</th><th>df</th></tr>",
    );
    let (mut dq, mut ds) = (Vec::new(), Vec::new());
    for r in rows {
        let name = sampler(path, r)?;
        let [kq, ks, dkq, dks] = [
            "kl_q_sigma",
            "kl_sigma_q",
            "delta_kl_q_sigma",
            "delta_kl_sigma_q",
        ]
        .map(|k| estimate(path, r, k));
        let (dkq, dks) = (dkq?, dks?);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            pm(&kq?),
            pm(&ks?),
            pm(&dkq),
            pm(&dks),
            dkq.df
        );
        if name != "p0" {
            dq.push((name.clone(), dkq));
            ds.push((name, dks));
        }
    }
    body.push_str("</table>");
    body.push_str(&intervals(
        "ΔKL(q‖σ) against p0, 95% intervals over seeds",
        "nats",
        &dq,
    ));
    body.push_str(&intervals(
        "ΔKL(σ‖q) against p0, 95% intervals over seeds",
        "nats",
        &ds,
    ));
    let Some(smc) = s["smc_rows"].as_array().filter(|r| !r.is_empty()) else {
        return Ok(body);
    };
    body.push_str(
        "<h3>Twisted SMC against bootstrap SMC</h3><table><tr><th>sampler</th><th>K</th>\
         <th>s a run</th><th>lower</th><th>upper</th><th>width</th><th>width vs p0</th>\
         <th>width vs p0 at equal time</th><th>sd of log Zhat (df)</th></tr>",
    );
    let (mut bounds, mut spread) = (Vec::new(), Vec::new());
    for (i, r) in smc.iter().enumerate() {
        let name = sampler(path, r)?;
        let [lower, upper, width, vs_p0] =
            ["lower", "upper", "width", "width_vs_p0"].map(|k| estimate(path, r, k));
        let (lower, upper) = (lower?, upper?);
        let vs_equal =
            optional(path, r, "width_vs_equal_time")?.map_or("-".to_string(), |e| pm(&e));
        let seconds = optional(path, r, "seconds_per_run")?
            .map_or("-".to_string(), |e| format!("{:.2}", e.mean));
        let k = match (r["particles"][0].as_u64(), r["particles"][1].as_u64()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "?".to_string(),
        };
        let sd = match (r["sd_log_zhat"][0].as_f64(), r["sd_log_zhat"][1].as_u64()) {
            (Some(sd), Some(df)) => {
                spread.push((i as f64, sd));
                format!("{sd:.3} ({df})")
            }
            _ => "-".to_string(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{k}</td><td>{seconds}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{vs_equal}</td><td>{sd}</td></tr>",
            esc(&name),
            pm(&lower),
            pm(&upper),
            pm(&width?),
            pm(&vs_p0?)
        );
        bounds.push((name, vec![(i as f64, lower.mean), (i as f64, upper.mean)]));
    }
    body.push_str("</table>");
    body.push_str(&line_chart(
        "log Z bounds: SMC lower to conditional-SMC upper (means over seeds)",
        "sampler (legend order; p0 = bootstrap SMC)",
        "log Z",
        &bounds,
        false,
    ));
    if !spread.is_empty() {
        body.push_str(&line_chart(
            "sd of log Zhat (pooled within each seed and task), by sampler in table order",
            "sampler (table order)",
            "sd of log Zhat",
            &[("sd of log Zhat".to_string(), spread)],
            false,
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(mean: f64) -> Value {
        serde_json::json!({ "mean": mean, "se": 0.1, "n": 4, "df": 3.0 })
    }

    fn summary(sd: Value) -> Value {
        let kl = |s: &str| {
            serde_json::json!({ "sampler": s, "kl_q_sigma": estimate(2.0),
                "kl_sigma_q": estimate(1.0), "delta_kl_q_sigma": estimate(-0.5),
                "delta_kl_sigma_q": estimate(-0.25) })
        };
        let smc = |s: &str, equal: Value| {
            serde_json::json!({ "sampler": s, "lower": estimate(-3.0), "upper": estimate(-1.0),
                "width": estimate(2.0), "width_vs_p0": estimate(-0.75),
                "width_vs_equal_time": equal, "particles": [16, 30],
                "seconds_per_run": estimate(1.5), "sd_log_zhat": sd })
        };
        serde_json::json!({ "task": "infilling", "tokens": 10, "seeds": 4, "steps": 60,
            "model": "m", "seconds": 3421.0, "rows": [kl("p0"), kl("ctl")],
            "smc_rows": [smc("p0", Value::Null), smc("ctl", estimate(-0.5))] })
    }

    fn render(v: &Value) -> Result<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        std::fs::write(&path, v.to_string()).unwrap();
        section(&path)
    }

    #[test]
    fn the_section_has_both_tables_and_charts_the_spread_when_there_is_one() {
        let page = render(&summary(serde_json::json!([3.127, 64]))).unwrap();
        // 3.182 is t at 3 degrees of freedom: half-width 0.318 from se 0.1.
        assert!(page.contains("<td>-0.500 ± 0.318</td>"), "{page}");
        assert!(page.contains("<td>16-30</td>"), "{page}");
        assert!(page.contains("<td>3.127 (64)</td>"), "{page}");
        assert!(page.contains("<td>-</td><td>3.127 (64)</td>"), "{page}");
        assert_eq!(page.matches("<svg").count(), 4);
        let page = render(&summary(Value::Null)).unwrap();
        assert_eq!(page.matches("<svg").count(), 3);
        // Older summaries have no timings; a header field that is not a number is escaped.
        let mut old = summary(Value::Null);
        old["smc_rows"][0]["seconds_per_run"] = Value::Null;
        old["smc_rows"][1]
            .as_object_mut()
            .unwrap()
            .remove("seconds_per_run");
        old["tokens"] = serde_json::json!("<b>");
        let page = render(&old).unwrap();
        assert!(page.contains("<td>16-30</td><td>-</td>"), "{page}");
        assert!(page.contains("T = &lt;b&gt;,"), "{page}");
    }

    #[test]
    fn other_files_are_refused_naming_the_problem() {
        let e = render(&serde_json::json!({ "rows": [] })).unwrap_err();
        assert!(format!("{e:#}").contains("no `task` name"), "{e:#}");
        let e = render(&serde_json::json!({ "task": "t" })).unwrap_err();
        assert!(format!("{e:#}").contains("no `rows` array"), "{e:#}");
        let mut bad = summary(Value::Null);
        bad["rows"][1]["delta_kl_sigma_q"] = serde_json::json!("x");
        let e = render(&bad).unwrap_err();
        assert!(
            format!("{e:#}").contains("field `delta_kl_sigma_q` of sampler \"ctl\""),
            "{e:#}"
        );
    }
}
