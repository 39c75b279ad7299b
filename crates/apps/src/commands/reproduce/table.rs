//! The KL table of `tsmc reproduce` from its records: log Z per (seed, task), rows per
//! sampler, paired differences against p0; table.md and summary.json.

use anyhow::Result;
use serde::Serialize;

use lm_burn::heads::CondEncoding;
use smc_bounds::Estimate;
use twist_learn::BiasOptimizer;

use super::records::{BoundRule, Record, ReproduceSettings, Row, TaskEval};
use super::smc_table::{smc_markdown, smc_rows, smc_svg};
use crate::presets::Preset;

/// Writes table.md, summary.json and smc.svg (built by [`build`]) into `out_dir` and prints the
/// table.
pub(super) fn finish(out_dir: &std::path::Path, built: &Built) -> Result<()> {
    let Built { md, summary, svg } = built;
    lm_burn::temporaries::write_atomic(&out_dir.join("table.md"), md.as_bytes())?;
    lm_burn::temporaries::write_atomic(&out_dir.join("smc.svg"), svg.as_bytes())?;
    lm_burn::temporaries::write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    println!("{md}");
    println!("wrote {}", out_dir.display());
    Ok(())
}

/// What `tsmc reproduce` writes: the tables (markdown), the summary (JSON) and the SMC chart.
pub struct Built {
    /// table.md.
    pub md: String,
    /// summary.json.
    pub summary: serde_json::Value,
    /// smc.svg.
    pub svg: String,
}

/// The tables, the summary and the chart from the records.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    preset: &Preset,
    args: &ReproduceSettings,
    horizon: usize,
    cond_len: Option<usize>,
    records: &[Record],
    rejection_log_z: Option<f64>,
    seconds: f64,
    model: &str,
) -> Built {
    // Bootstrap SMC at equal time has another K: it belongs to the SMC table only.
    let at_k: Vec<Record> = records
        .iter()
        .filter(|r| r.particles.is_none())
        .cloned()
        .collect();
    let (log_z, rows) = table(&at_k);
    let mut rules: Vec<BoundRule> = Vec::new();
    for rule in records.iter().flat_map(|r| r.tasks.iter().map(|t| t.rule)) {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    let mut md = markdown(
        preset,
        args,
        horizon,
        cond_len,
        &log_z,
        rejection_log_z,
        &rows,
        seconds,
        &rules,
    );
    let order = super::ordering::ordering(&rows);
    if let Some(o) = &order {
        md.push_str(&super::ordering::ordering_markdown(o));
    }
    let smc = smc_rows(records, args.eval_particles);
    md.push_str(&smc_markdown(
        &smc,
        args.eval_particles,
        args.lower_runs.max(1),
    ));
    let summary = serde_json::json!({
        "task": preset.name, "tokens": horizon, "cond_tokens": cond_len, "seeds": args.seeds,
        "steps": args.steps, "particles": args.particles, "lr": args.lr, "head": args.head.kind_name(), "init": args.head.init_name(),
        "eval_particles": args.eval_particles, "fq_samples": args.fq_samples,
        "exact_samples": args.exact_samples, "replay_samples": args.replay_samples, "replay_form": format!("{:?}", args.replay_form).to_lowercase(), "replay_shared": args.replay_shared, "fit_epochs": args.fit.map(|f| f.epochs), "fit_lr": args.fit.map(|f| f.lr), "bias_lr": args.head.bias_lr, "bias_optim": args.head.bias_optim_name(), "bias_gate": args.head.bias_gate_name(), "gate_lr": args.head.gate_lr, "cond_encoding": args.head.cond_encoding_name(), "equal_time": args.equal_time, "lookahead": args.lookahead, "lookahead_mass": args.lookahead_mass, "log_z_per_task": log_z, "bound_rules": rules,
        "rejection_log_z": rejection_log_z, "rows": rows, "ordering": order, "smc_rows": smc,
        "seconds": seconds, "model": model,
    });
    let svg = smc_svg(&smc, args.eval_particles);
    Built { md, summary, svg }
}

/// log Z per (seed, task), then the rows.
///
/// log Z is never the extreme of noisy runs: for each (seed, task) the lower bound is the mean
/// of every sampler's lower bound and the upper bound the mean of every sampler's upper bound
/// (fixed, equal weights: a fixed-weight average of bounds in expectation is one), and log Z the
/// midpoint. Its spread over seeds enters the KL columns, whose values are formed per seed; the
/// midpoint's possible bias is at most the half-gap, reported beside the table.
fn table(records: &[Record]) -> (Vec<LogZ>, Vec<Row>) {
    let mut samplers: Vec<String> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    for r in records {
        if !samplers.contains(&r.sampler) {
            samplers.push(r.sampler.clone());
        }
        if !seeds.contains(&r.seed) {
            seeds.push(r.seed);
        }
    }
    let mut log_z: Vec<LogZ> = Vec::new();
    for &seed in &seeds {
        let recs: Vec<&Record> = records.iter().filter(|r| r.seed == seed).collect();
        let tasks = recs.iter().map(|r| r.tasks.len()).min().unwrap_or(0);
        for task in 0..tasks {
            let n = recs.len() as f64;
            log_z.push(LogZ {
                seed,
                task,
                lower: recs.iter().map(|r| r.tasks[task].lower).sum::<f64>() / n,
                upper: recs.iter().map(|r| r.tasks[task].upper).sum::<f64>() / n,
                samplers: recs.len(),
            });
        }
    }
    let mid = |seed: u64, task: usize| {
        log_z
            .iter()
            .find(|z| z.seed == seed && z.task == task)
            .map_or(f64::NAN, LogZ::midpoint)
    };
    // Per seed, the sampler's mean F_q and G_q over tasks (for differences against p0).
    let means = |s: &str, f: &dyn Fn(&TaskEval) -> f64| -> Vec<(u64, f64)> {
        records
            .iter()
            .filter(|r| r.sampler == s)
            .map(|r| {
                let n = r.tasks.len() as f64;
                (r.seed, r.tasks.iter().map(f).sum::<f64>() / n)
            })
            .collect()
    };
    let paired_by_seed = |a: &[(u64, f64)], b: &[(u64, f64)], sign: f64| -> Vec<(u64, f64)> {
        a.iter()
            .filter_map(|&(seed, x)| {
                b.iter()
                    .find(|&&(s, _)| s == seed)
                    .map(|&(_, y)| (seed, sign * (x - y)))
            })
            .collect()
    };
    let estimate =
        |d: &[(u64, f64)]| Estimate::from_values(&d.iter().map(|&(_, x)| x).collect::<Vec<_>>());
    let (p0_f, p0_g) = (means("p0", &|t| t.f_q.mean), means("p0", &|t| t.g_q.mean));
    let rows = samplers
        .iter()
        .map(|s| {
            let recs: Vec<&Record> = records.iter().filter(|r| &r.sampler == s).collect();
            let dq = paired_by_seed(&means(s, &|t| t.f_q.mean), &p0_f, -1.0);
            let ds = paired_by_seed(&means(s, &|t| t.g_q.mean), &p0_g, 1.0);
            let per_seed = |f: &dyn Fn(&TaskEval, f64) -> f64| -> Vec<f64> {
                recs.iter()
                    .map(|r| {
                        let n = r.tasks.len() as f64;
                        r.tasks
                            .iter()
                            .enumerate()
                            .map(|(i, t)| f(t, mid(r.seed, i)))
                            .sum::<f64>()
                            / n
                    })
                    .collect()
            };
            Row {
                sampler: s.clone(),
                kl_q_sigma: Estimate::from_values(&per_seed(&|t, z| z - t.f_q.mean)),
                kl_sigma_q: Estimate::from_values(&per_seed(&|t, z| t.g_q.mean - z)),
                f_q: Estimate::from_values(&per_seed(&|t, _| t.f_q.mean)),
                g_q: Estimate::from_values(&per_seed(&|t, _| t.g_q.mean)),
                delta_kl_q_sigma: estimate(&dq),
                delta_kl_sigma_q: estimate(&ds),
                delta_per_seed: dq
                    .iter()
                    .filter_map(|&(seed, q)| {
                        ds.iter()
                            .find(|&&(s, _)| s == seed)
                            .map(|&(_, d)| (seed, q, d))
                    })
                    .collect(),
                train_seconds: recs.iter().map(|r| r.train_seconds).sum::<f64>()
                    / recs.len() as f64,
            }
        })
        .collect();
    (log_z, rows)
}

/// The log Z bounds of one (seed, task): means over the samplers of their bounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LogZ {
    /// Seed.
    pub seed: u64,
    /// Task index within the seed (0 for a fixed potential).
    pub task: usize,
    /// Mean of the samplers' lower bounds.
    pub lower: f64,
    /// Mean of the samplers' upper bounds.
    pub upper: f64,
    /// How many samplers the means are over.
    pub samplers: usize,
}

impl LogZ {
    fn midpoint(&self) -> f64 {
        0.5 * (self.lower + self.upper)
    }
}

/// `mean ± half-width` with the Student t half-width of the estimate's degrees of freedom.
/// mean ± the 95% Student t half-width.
pub(super) fn pm(e: &Estimate) -> String {
    format!("{:.3} ± {:.3}", e.mean, e.ci95())
}

/// The multiplier of the standard error in the 95% interval of a mean over `seeds` values (the
/// Student t quantile with seeds - 1 degrees of freedom), read off `Estimate::ci95` itself so
/// that the footnote always states the quantile the table used.
fn t_quantile(seeds: usize) -> f64 {
    let values: Vec<f64> = (0..seeds.max(2)).map(|i| i as f64).collect();
    let e = Estimate::from_values(&values);
    e.ci95() / e.se
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    preset: &Preset,
    args: &ReproduceSettings,
    horizon: usize,
    cond_len: Option<usize>,
    log_z: &[LogZ],
    rejection_log_z: Option<f64>,
    rows: &[Row],
    seconds: f64,
    rules: &[BoundRule],
) -> String {
    let mut s = format!(
        "Task `{}` ({}): prompt {:?}, T = {horizon}{}, {} seeds, {} updates of K = {} per method, \
         lr {}{}, {} ({} init); bounds at K = {}, F_q from {} draws, {} exact samples per seed{}. {:.0} s.\n\n",
        preset.name,
        preset.summary,
        preset.prompt,
        cond_len.map_or(String::new(), |m| format!(
            ", m = {m} (c encoded by its {})",
            match args.head.cond_encoding.unwrap_or_default() {
                CondEncoding::Last => "last hidden state",
                CondEncoding::MeanHidden => "mean hidden state",
                CondEncoding::MeanEmbedding => "mean output-embedding vector",
            }
        )),
        args.seeds,
        args.steps,
        args.particles,
        args.lr,
        args.head
            .bias_lr
            .map_or(String::new(), |b| match args.head.bias_optimizer {
                BiasOptimizer::Adam => format!(" (per-token bias: {b})"),
                BiasOptimizer::Sgd =>
                    format!(" (per-token bias: gradient descent at {b}, at most 0.1 an update)"),
            }),
        match args.head.bias_gate {
            None => format!("{} head", args.head.kind_name()),
            Some(_) => format!(
                "{} head with a {}-gated bias{}",
                args.head.kind_name(),
                args.head.bias_gate_name(),
                args.head
                    .gate_lr
                    .map_or(String::new(), |g| format!(" (gate lr {g})"))
            ),
        },
        args.head.init_name(),
        args.eval_particles,
        args.fq_samples,
        args.exact_samples,
        if args.replay_samples > 0 {
            format!(
                "; CTL's positives replayed from {} more {}, apart from those{}",
                args.replay_samples,
                if args.replay_shared {
                    "drawn once and shared by every seed (the intervals leave out the pool's \
                     randomness)"
                } else {
                    "per seed"
                },
                if args.replay_form == twist_learn::ReplayForm::Csmc {
                    " (conditional SMC around one per update)"
                } else {
                    ""
                }
            ) + &args.fit.map_or(String::new(), |f| {
                format!(
                    "; every head first fitted to that pool by maximum likelihood of its twisted \
                     proposal ({} epochs, Adam at {}, batches of 8; evaluated alone as `fit`, \
                     whose train seconds include the pool's base-model pass; the methods' \
                     include the fit)",
                    f.epochs, f.lr
                )
            })
        } else {
            String::new()
        } + &args.lookahead.map_or(String::new(), |n| format!(
            "; `lookahead` samplers: the exact final twist on the top {n} tokens{}",
            args.lookahead_mass
                .map_or(String::new(), |p| format!(" holding {p} of p0's mass"))
        )),
        seconds
    );
    let lower = Estimate::from_values(&log_z.iter().map(|z| z.lower).collect::<Vec<_>>());
    let upper = Estimate::from_values(&log_z.iter().map(|z| z.upper).collect::<Vec<_>>());
    let half_gap = 0.5 * (upper.mean - lower.mean);
    let what = if cond_len.is_none() {
        "log Z per seed"
    } else {
        "log Z_c per (seed, conditioning sequence)"
    };
    let bias = if half_gap >= 0.0 {
        format!(
            "the midpoint is off by at most the half-gap {half_gap:.3} nats (up to noise), which \
             the absolute KL columns may carry and the Δ columns do not"
        )
    } else {
        format!(
            "the mean bounds cross by {:.3} nats, within their noise: log Z is pinned to about \
             their standard errors",
            -2.0 * half_gap
        )
    };
    s.push_str(&format!(
        "{what} is the midpoint of the mean over samplers of their lower bounds and the mean of \
         their upper bounds (fixed equal weights, so both stay bounds in expectation; no selection \
         of extremes). Over the {} (seed, task) pairs: lower {}, upper {}; {bias}",
        log_z.len(),
        pm(&lower),
        pm(&upper),
    ));
    if let Some(r) = rejection_log_z {
        s.push_str(&format!(
            "; rejection estimate log(accepted / draws) = {r:.3}"
        ));
    }
    s.push_str(".\n\n");
    if rules.contains(&BoundRule::TightestOfSisSmc) {
        s.push_str(
            "These records predate the declared bound rule: each sampler's bounds are the tighter \
             of its SIS and SMC bounds, a selection between two noisy estimates that can bias the \
             pair inwards by about their noise.\n\n",
        );
    }
    s.push_str("| sampler | KL(q‖σ) | KL(σ‖q) | ΔKL(q‖σ) vs p0 | ΔKL(σ‖q) vs p0 | F_q | G_q | train s/seed |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.sampler,
            pm(&r.kl_q_sigma),
            pm(&r.kl_sigma_q),
            pm(&r.delta_kl_q_sigma),
            pm(&r.delta_kl_sigma_q),
            pm(&r.f_q),
            pm(&r.g_q),
            r.train_seconds
        ));
    }
    let n = rows.first().map_or(0, |r| r.kl_q_sigma.n);
    s.push_str(&format!(
        "\nmean ± 95% Student t half-width over {n} seeds ({} degrees of freedom, t = {:.3}); \
         the KL columns are formed per seed with that seed's log Z, so their spread includes \
         log Z's. p0 = the base model as proposal (no twist). The Δ columns are paired by seed \
         (same exact samples, same log Z), so they are free of log Z and of the seed-to-seed \
         spread of the exact samples; negative = better than p0.\n",
        n.saturating_sub(1),
        t_quantile(n),
    ));
    s.push_str(&super::per_seed::per_seed_table(rows));
    s
}
