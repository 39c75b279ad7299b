//! The second table of `tsmc reproduce`: SMC itself with each sampler's twists at the
//! evaluation's K (p0: bootstrap SMC, no twist), on common random numbers per seed. Per
//! sampler: the SMC lower bound (mean of its runs' log Zhat), the conditional-SMC upper bound,
//! the width between them, the width's paired difference against bootstrap SMC, and the
//! standard deviation of log Zhat across runs, pooled within (seed, task). Only evaluations
//! whose bounds follow [`BoundRule::Smc`] count: older records' bounds are the tighter of SIS
//! and SMC, not SMC's. With `--equal-time`, bootstrap SMC also runs per seed with the particles
//! that the twisted samplers' SMC time buys ([`EQUAL_TIME`]), and each twisted row's width is
//! paired against it too.

use serde::Serialize;
use smc_bounds::Estimate;

use super::records::{BoundRule, EQUAL_TIME, Record, TaskEval};
use super::table::pm;

/// One sampler's SMC numbers over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SmcRow {
    /// "p0" (bootstrap SMC), [`EQUAL_TIME`] (bootstrap SMC at equal time) or the method whose
    /// twists drive twisted SMC.
    pub sampler: String,
    /// The SMC lower bound on log Z over seeds.
    pub lower: Estimate,
    /// The conditional-SMC upper bound over seeds.
    pub upper: Estimate,
    /// upper - lower over seeds.
    pub width: Estimate,
    /// The width minus bootstrap SMC's, paired by seed.
    pub width_vs_p0: Estimate,
    /// The width minus that of bootstrap SMC at equal time, paired by seed (`None` for the
    /// bootstrap rows and without equal-time records).
    pub width_vs_equal_time: Option<Estimate>,
    /// The smallest and largest K of the row's SMC runs over seeds.
    pub particles: (usize, usize),
    /// Wall-clock seconds of one SMC run, over seeds (`None` in records without timings).
    pub seconds_per_run: Option<Estimate>,
    /// The standard deviation of log Zhat across runs, pooled within (seed, task), and its
    /// degrees of freedom (the runs less one per (seed, task)); `None` without two runs.
    pub sd_log_zhat: Option<(f64, usize)>,
}

/// Largest K that bootstrap SMC may be given at equal time, as a multiple of the evaluation's.
pub const MAX_EQUAL_TIME_FACTOR: usize = 16;

/// Bootstrap SMC's particles at equal time for one seed's records: the evaluation's K scaled
/// by the twisted samplers' mean SMC seconds a run over p0's (bootstrap SMC at K), never below
/// K and at most [`MAX_EQUAL_TIME_FACTOR`] K. Cost is not linear in K (wider batches run
/// faster a row), so the table reports the seconds each row's runs actually took. `None`
/// without timed p0 and twisted evaluations.
pub fn equal_time_particles(seed_records: &[&Record], k: usize) -> Option<usize> {
    let seconds = |r: &Record| {
        let n = r.tasks.len().max(1) as f64;
        r.tasks.iter().map(|t| t.smc_seconds).sum::<f64>() / n
    };
    let base = seed_records
        .iter()
        .find(|r| r.sampler == "p0" && r.particles.is_none())
        .map(|r| seconds(r))?;
    let twisted: Vec<f64> = seed_records
        .iter()
        .filter(|r| r.sampler != "p0" && r.particles.is_none())
        .map(|r| seconds(r))
        .collect();
    // A zero, negative or NaN time gives no ratio.
    if base.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || twisted.is_empty() {
        return None;
    }
    let ratio = twisted.iter().sum::<f64>() / twisted.len() as f64 / base;
    let scaled = (k as f64 * ratio).round();
    let max = k.saturating_mul(MAX_EQUAL_TIME_FACTOR);
    Some(if scaled.is_finite() {
        (scaled as usize).clamp(k, max)
    } else {
        max
    })
}

/// The rows, one per sampler in the order the records first name them.
pub fn smc_rows(records: &[Record], eval_particles: usize) -> Vec<SmcRow> {
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
    let equal_width = width(EQUAL_TIME);
    let paired = |w: &[(u64, f64)], base: &[(u64, f64)]| -> Vec<f64> {
        w.iter()
            .filter_map(|&(seed, x)| base.iter().find(|&&(p, _)| p == seed).map(|&(_, y)| x - y))
            .collect()
    };
    samplers
        .iter()
        .map(|&s| {
            let values = |v: Vec<(u64, f64)>| v.into_iter().map(|(_, x)| x).collect::<Vec<_>>();
            let w = width(s);
            let diffs = paired(&w, &p0_width);
            let twisted = s != "p0" && s != EQUAL_TIME;
            let vs_equal = paired(&w, &equal_width);
            let of_s: Vec<&Record> = records.iter().filter(|r| r.sampler == s).collect();
            let ks = of_s.iter().map(|r| r.particles.unwrap_or(eval_particles));
            let particles = (
                ks.clone().min().unwrap_or(eval_particles),
                ks.max().unwrap_or(eval_particles),
            );
            let secs: Vec<f64> = of_s
                .iter()
                .map(|r| r.tasks.iter().map(|t| t.smc_seconds).sum::<f64>() / r.tasks.len() as f64)
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
                width_vs_equal_time: (twisted && !vs_equal.is_empty())
                    .then(|| Estimate::from_values(&vs_equal)),
                particles,
                seconds_per_run: (!secs.is_empty() && secs.iter().all(|&x| x > 0.0))
                    .then(|| Estimate::from_values(&secs)),
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
    let equal_time = rows.iter().any(|r| r.sampler == EQUAL_TIME);
    let mut s = format!(
        "\nSMC with each sampler's twists at K = {particles} (p0: bootstrap SMC, no twist), \
         resampling at every step, on the same random numbers per seed: the lower bound is the \
         mean log Zhat of {runs} run(s), the upper bound conditional SMC around the exact \
         samples; a narrower interval and a smaller spread of log Zhat mean a better sampler at \
         equal K.{}\n\n| sampler | K | s a run | SMC lower | CSMC upper | width | width vs p0 | width vs p0 at equal time | sd of log Zhat (df) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        if equal_time {
            format!(
                " {EQUAL_TIME}: bootstrap SMC per seed with K scaled by the twisted samplers' \
                 mean SMC seconds a run over bootstrap SMC's at K = {particles} (at least \
                 {particles}, at most {MAX_EQUAL_TIME_FACTOR} times; cost is not linear in K, \
                 so the seconds each row's runs took are shown, and they vary with the \
                 machine's load) with the same seeds."
            )
        } else {
            String::new()
        }
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.sampler,
            if r.particles.0 == r.particles.1 {
                r.particles.0.to_string()
            } else {
                format!("{}-{}", r.particles.0, r.particles.1)
            },
            r.seconds_per_run
                .as_ref()
                .map_or("-".to_string(), |e| format!("{:.2}", e.mean)),
            pm(&r.lower),
            pm(&r.upper),
            pm(&r.width),
            if r.sampler == "p0" {
                "0".to_string()
            } else {
                pm(&r.width_vs_p0)
            },
            r.width_vs_equal_time.as_ref().map_or("-".to_string(), pm),
            r.sd_log_zhat
                .map_or("-".to_string(), |(sd, df)| format!("{sd:.3} ({df})")),
        ));
    }
    s.push_str(
        "\nmean ± 95% Student t half-width over seeds (the same degrees of freedom as the KL \
         table); the widths' differences are paired by seed; s a run is the mean over seeds of \
         one SMC run's wall-clock seconds. The sd of log Zhat pools the runs' squared \
         deviations within each (seed, task).\n",
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
        &format!(
            "log Z bounds of SMC at K = {particles} (p0-equal-time: its own K): lower (SMC) to \
             upper (conditional SMC)"
        ),
        "sampler (legend order; p0 = bootstrap SMC)",
        "log Z",
        &series,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sampler: &str, seconds: &[f64], particles: Option<usize>) -> Record {
        let est = Estimate::from_values(&[0.0, 0.0]);
        Record {
            seed: 0,
            sampler: sampler.into(),
            train_seconds: 0.0,
            tasks: seconds
                .iter()
                .map(|&smc_seconds| TaskEval {
                    f_q: est,
                    g_q: est,
                    lower: -2.0,
                    upper: -1.0,
                    rule: BoundRule::Smc,
                    lower_runs: vec![-2.0],
                    smc_seconds,
                })
                .collect(),
            particles,
        }
    }

    #[test]
    fn equal_time_scales_k_by_the_twisted_samplers_mean_seconds() {
        // p0 takes 2 s a run (mean over its two tasks); the twisted samplers 3 and 2 s: the
        // ratio 1.25 buys 80 particles at K = 64.
        let recs = [
            record("p0", &[1.0, 3.0], None),
            record("ctl", &[3.0, 3.0], None),
            record("rl", &[2.0, 2.0], None),
            record(EQUAL_TIME, &[9.0, 9.0], Some(500)),
        ];
        let refs: Vec<&Record> = recs.iter().collect();
        assert_eq!(equal_time_particles(&refs, 64), Some(80));
        // Never fewer than K, at most MAX_EQUAL_TIME_FACTOR K.
        let fast = [record("p0", &[2.0], None), record("ctl", &[1.0], None)];
        assert_eq!(
            equal_time_particles(&fast.iter().collect::<Vec<_>>(), 64),
            Some(64)
        );
        let slow = [record("p0", &[1.0], None), record("ctl", &[1e9], None)];
        assert_eq!(
            equal_time_particles(&slow.iter().collect::<Vec<_>>(), 64),
            Some(64 * MAX_EQUAL_TIME_FACTOR)
        );
        // Untimed (older) records or no twisted sampler: no equal-time run.
        let untimed = [record("p0", &[0.0], None), record("ctl", &[1.0], None)];
        assert_eq!(
            equal_time_particles(&untimed.iter().collect::<Vec<_>>(), 64),
            None
        );
        let alone = [record("p0", &[1.0], None)];
        assert_eq!(
            equal_time_particles(&alone.iter().collect::<Vec<_>>(), 64),
            None
        );
    }

    #[test]
    fn the_equal_time_column_pairs_each_twisted_width_with_bootstrap_at_equal_time() {
        // Widths: p0 1, ctl 1 (bounds -2, -1 each) against the equal-time run's 0.5.
        let mut equal = record(EQUAL_TIME, &[1.0], Some(80));
        equal.tasks[0].lower = -1.5;
        let recs = [
            record("p0", &[1.0], None),
            record("ctl", &[1.25], None),
            equal,
        ];
        let rows = smc_rows(&recs, 64);
        let row = |s: &str| rows.iter().find(|r| r.sampler == s).unwrap();
        let ctl = row("ctl");
        assert_eq!(ctl.width_vs_equal_time.unwrap().mean, 0.5);
        assert_eq!(ctl.particles, (64, 64));
        assert!(row("p0").width_vs_equal_time.is_none());
        assert_eq!(row(EQUAL_TIME).particles, (80, 80));
        assert_eq!(row(EQUAL_TIME).seconds_per_run.unwrap().mean, 1.0);
        let md = smc_markdown(&rows, 64, 1);
        assert!(md.contains("| p0-equal-time | 80 | 1.00 |"), "{md}");
    }
}
