//! The second table of `tsmc reproduce`: SMC itself with each sampler's twists at the
//! evaluation's K (p0: bootstrap SMC, no twist), on common random numbers per seed. Per
//! sampler: the SMC lower bound (mean of its runs' log Zhat), the conditional-SMC upper bound,
//! the width between them, the width's paired difference against bootstrap SMC, and the
//! standard deviation of log Zhat across runs, pooled within (seed, task). Only evaluations
//! whose bounds follow [`BoundRule::Smc`] count: older records' bounds are the tighter of SIS
//! and SMC, not SMC's.

use serde::Serialize;
use smc_bounds::Estimate;

use super::records::{BoundRule, Record, TaskEval};
use super::table::pm;

/// One sampler's SMC numbers over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SmcRow {
    /// "p0" (bootstrap SMC) or the method whose twists drive twisted SMC.
    pub sampler: String,
    /// The SMC lower bound on log Z over seeds.
    pub lower: Estimate,
    /// The conditional-SMC upper bound over seeds.
    pub upper: Estimate,
    /// upper - lower over seeds.
    pub width: Estimate,
    /// The width minus bootstrap SMC's, paired by seed.
    pub width_vs_p0: Estimate,
    /// The standard deviation of log Zhat across runs, pooled within (seed, task), and its
    /// degrees of freedom (the runs less one per (seed, task)); `None` without two runs.
    pub sd_log_zhat: Option<(f64, usize)>,
}

/// The rows, one per sampler in the order the records first name them.
pub fn smc_rows(records: &[Record]) -> Vec<SmcRow> {
    let smc_tasks = |r: &'_ Record| -> Vec<TaskEval> {
        r.tasks
            .iter()
            .filter(|t| t.rule == BoundRule::Smc)
            .cloned()
            .collect()
    };
    let records: Vec<Record> = records
        .iter()
        .map(|r| Record {
            tasks: smc_tasks(r),
            ..r.clone()
        })
        .filter(|r| !r.tasks.is_empty())
        .collect();
    let records = records.as_slice();
    let mut samplers: Vec<&str> = Vec::new();
    for r in records {
        if !samplers.contains(&r.sampler.as_str()) {
            samplers.push(&r.sampler);
        }
    }
    // Per seed, the mean over tasks of a task's value.
    let per_seed = |sampler: &str, f: &dyn Fn(f64, f64) -> f64| -> Vec<(u64, f64)> {
        records
            .iter()
            .filter(|r| r.sampler == sampler && !r.tasks.is_empty())
            .map(|r| {
                let n = r.tasks.len() as f64;
                let sum: f64 = r.tasks.iter().map(|t| f(t.lower, t.upper)).sum();
                (r.seed, sum / n)
            })
            .collect()
    };
    let width = |s: &str| per_seed(s, &|l, u| u - l);
    let p0_width = width("p0");
    samplers
        .iter()
        .map(|&s| {
            let values = |v: Vec<(u64, f64)>| v.into_iter().map(|(_, x)| x).collect::<Vec<_>>();
            let w = width(s);
            let diffs: Vec<f64> = w
                .iter()
                .filter_map(|&(seed, x)| {
                    p0_width
                        .iter()
                        .find(|&&(p, _)| p == seed)
                        .map(|&(_, y)| x - y)
                })
                .collect();
            let (mut ss, mut df) = (0.0, 0usize);
            for t in records
                .iter()
                .filter(|r| r.sampler == s)
                .flat_map(|r| &r.tasks)
            {
                let n = t.lower_runs.len();
                if n >= 2 {
                    let mean = t.lower_runs.iter().sum::<f64>() / n as f64;
                    ss += t.lower_runs.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
                    df += n - 1;
                }
            }
            SmcRow {
                sampler: s.to_string(),
                lower: Estimate::from_values(&values(per_seed(s, &|l, _| l))),
                upper: Estimate::from_values(&values(per_seed(s, &|_, u| u))),
                width: Estimate::from_values(&values(w)),
                width_vs_p0: Estimate::from_values(&diffs),
                sd_log_zhat: (df > 0).then(|| ((ss / df as f64).sqrt(), df)),
            }
        })
        .collect()
}

/// The table in markdown, with what it measures.
pub fn smc_markdown(rows: &[SmcRow], particles: usize, runs: usize) -> String {
    if rows.is_empty() {
        return "\nNo evaluation with SMC bounds (records written before they were kept): no \
                SMC table.\n"
            .to_string();
    }
    let mut s = format!(
        "\nSMC with each sampler's twists at K = {particles} (p0: bootstrap SMC, no twist), \
         resampling at every step, on the same random numbers per seed: the lower bound is the \
         mean log Zhat of {runs} run(s), the upper bound conditional SMC around the exact \
         samples; a narrower interval and a smaller spread of log Zhat mean a better sampler at \
         equal K.\n\n| sampler | SMC lower | CSMC upper | width | width vs p0 | sd of log Zhat (df) |\n\
         |---|---|---|---|---|---|\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.sampler,
            pm(&r.lower),
            pm(&r.upper),
            pm(&r.width),
            if r.sampler == "p0" {
                "0".to_string()
            } else {
                pm(&r.width_vs_p0)
            },
            r.sd_log_zhat
                .map_or("-".to_string(), |(sd, df)| format!("{sd:.3} ({df})")),
        ));
    }
    s.push_str(
        "\nmean ± 95% Student t half-width over seeds (the same degrees of freedom as the KL \
         table); the width's difference is paired by seed. The sd of log Zhat pools the runs' \
         squared deviations within each (seed, task).\n",
    );
    s
}

/// The chart: per sampler, a vertical segment from its SMC lower bound to its conditional-SMC
/// upper bound (means over seeds) at x = its row's index, labelled in the legend.
pub fn smc_svg(rows: &[SmcRow], particles: usize) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let label = match r.sd_log_zhat {
                Some((sd, _)) => format!("{} (sd {sd:.2})", r.sampler),
                None => r.sampler.clone(),
            };
            (
                label,
                vec![(i as f64, r.lower.mean), (i as f64, r.upper.mean)],
            )
        })
        .collect();
    crate::svg::line_chart(
        &format!("log Z bounds of SMC at K = {particles}: lower (SMC) to upper (conditional SMC)"),
        "sampler (legend order; p0 = bootstrap SMC)",
        "log Z",
        &series,
        false,
    )
}
