//! `tsmc reproduce`: the paper's KL table for one task preset. For every seed: draw exact target
//! samples, evaluate the base model as proposal, then train a fresh twist head with each method
//! and evaluate its twisted proposal. Evaluation = F_q (draws from q), G_q (exact samples) and
//! the SMC lower and conditional-SMC upper bounds on log Z (declared in advance). log Z per
//! (seed, task) is the midpoint of the means over samplers of their bounds (no selection); then
//! KL(q‖σ) = log Z - F_q and KL(σ‖q) = G_q - log Z per seed, reported as mean ± the 95% Student
//! t half-width over seeds. Every evaluation is appended to `records.jsonl` as soon as it is done
//! (nothing is lost if the run stops); the tables go to `table.md`, `summary.json` and the SMC
//! chart `smc.svg` at the end.

mod evaluate;
mod fit;
mod ordering;
mod per_seed;
mod records;
mod smc_table;
mod table;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use lm_burn::heads::TwistHead;
use lm_burn::infilling::InfillingPotential;
use smc_bounds::joint_ancestral;
use smc_core::seed;
use smc_core::smc::rng_from_seed;
use twist_learn::{
    AdamConfig, HeadTrainable, Method, Parameterization, TrainConfig, train, train_ctl_replay,
};

use crate::jsonl::{Appender, read_numbered};
use crate::potentials::PotentialSpec;
use crate::presets::Preset;
use crate::setup::load_model_and_prompt;
use evaluate::{Ctx, Task, collect_exact, evaluate, print_record, record};
pub use records::{BoundRule, EQUAL_TIME, Record, ReproduceSettings, Row, TaskEval};
use smc_table::equal_time_particles;
pub use table::Built;
use table::{build, finish};

/// Runs `tsmc reproduce`.
pub fn run(args: &ReproduceSettings) -> Result<()> {
    let preset = args.preset;
    let horizon = args.tokens;
    let cond_len = args.cond_tokens;
    let methods = &args.methods;
    let out_dir = args.out_dir.clone();
    let records_path = out_dir.join("records.jsonl");
    if args.table_only {
        return finish(&out_dir, &rebuild_table(args)?);
    }
    let loaded = load_model_and_prompt(&args.model, preset.prompt)?;
    loaded.check_size(
        &args.model,
        args.particles
            .max(args.eval_particles)
            .max(args.fq_samples)
            .max(64),
        args.tokens + args.cond_tokens.unwrap_or(0),
    )?;
    if args.fit.is_some() {
        crate::setup::check_fit_size(&loaded.lm, &args.model, args.replay_samples, args.tokens)?;
    }
    // Only now: a run refused before it starts leaves an earlier run's records alone.
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    let mut records_out = Appender::create(&records_path)?;
    let (lm, prompt) = (&loaded.lm, &loaded.prompt);
    let ad = loaded.device.clone().autodiff();
    let ctx = Ctx {
        lm,
        prompt,
        horizon,
        args,
    };
    let started = Instant::now();
    let per_seed = methods.len() + 1 + usize::from(args.fit.is_some());
    let bar = ProgressBar::new((args.seeds * per_seed) as u64);
    bar.set_style(
        ProgressStyle::with_template("reproduce {pos}/{len} [{bar:30}] {msg} {elapsed}/{eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut records = Vec::new();
    let mut rejection = (0usize, 0usize);
    // With --replay-shared the pool is drawn once, from its own stream, for every seed.
    let shared_pool = if args.replay_shared && args.replay_samples > 0 && cond_len.is_none() {
        bar.set_message("the shared replay pool");
        let phi = preset_potential(preset)?.build(lm)?;
        let pool_seed = seed::derive(0, seed::label::APP_REPLAY_POOL, 0);
        let collected = collect_exact(&ctx, preset, phi.as_ref(), pool_seed, args.replay_samples)?;
        rejection.0 += collected.accepted;
        rejection.1 += collected.draws;
        Some(
            collected
                .samples
                .into_iter()
                .map(|s| s.tokens)
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    for seed in 0..args.seeds as u64 {
        bar.set_message(format!("seed {seed}: exact samples"));
        let tasks = match cond_len {
            None => {
                let phi = preset_potential(preset)?.build(lm)?;
                let own_pool = if shared_pool.is_some() {
                    0
                } else {
                    args.replay_samples
                };
                let exact_seed = seed::derive(0, seed::label::APP_EXACT, seed);
                let n = args.exact_samples + own_pool;
                let collected = collect_exact(&ctx, preset, phi.as_ref(), exact_seed, n)?;
                rejection.0 += collected.accepted;
                rejection.1 += collected.draws;
                let mut exact: Vec<Vec<u32>> =
                    collected.samples.into_iter().map(|s| s.tokens).collect();
                let own = exact.split_off(exact.len().min(args.exact_samples));
                let replay = shared_pool.clone().unwrap_or(own);
                if args.replay_samples > 0 && replay.is_empty() {
                    bail!(
                        "seed {seed}: no exact sample left for CTL to replay after the \
                         evaluation's {} in {} draws: raise --max-draws",
                        exact.len(),
                        collected.draws
                    );
                }
                if replay.len() < args.replay_samples {
                    bar.println(format!(
                        "seed {seed}: CTL replays {} exact samples, not --replay-samples {}: \
                         --max-draws {} ran out, so this seed's CTL trains on the smaller pool",
                        replay.len(),
                        args.replay_samples,
                        args.max_draws
                    ));
                }
                vec![Task {
                    potential: phi,
                    conditioning: None,
                    exact,
                    replay,
                }]
            }
            Some(m) => {
                let mut rng = rng_from_seed(seed::derive(0, seed::label::APP_EXACT, seed));
                joint_ancestral(lm, prompt, horizon, m, args.exact_samples, &mut rng)?
                    .into_iter()
                    .map(|pair| {
                        let c = pair.conditioning.unwrap_or_default();
                        Task {
                            potential: Box::new(InfillingPotential::new(lm, c.clone())),
                            conditioning: Some(c),
                            exact: vec![pair.tokens],
                            replay: Vec::new(),
                        }
                    })
                    .collect()
            }
        };
        bar.set_message(format!("seed {seed}: evaluating p0"));
        let rec = record(&ctx, None, &tasks, seed, "p0".into(), 0.0, None)?;
        keep(&bar, &mut records_out, &mut records, rec)?;
        bar.inc(1);
        if args.lookahead.is_some() {
            let name = "lookahead".to_string();
            let rec = record(&ctx, None, &tasks, seed, name, 0.0, args.lookahead)?;
            keep(&bar, &mut records_out, &mut records, rec)?;
        }
        let fresh = |method: Method| -> Result<TwistHead> {
            let placeholder = cond_len.map(|m| vec![prompt[0]; m]);
            Ok(TwistHead::new(
                lm,
                args.head.config(lm, placeholder),
                seed::derive(
                    0,
                    seed::label::APP_HEAD_INIT,
                    seed * Method::ALL.len() as u64 + method as u64,
                ),
                &ad,
            )?)
        };
        let mut fits = match args.fit {
            Some(settings) if cond_len.is_none() => {
                bar.set_message(format!("seed {seed}: fitting the heads to the replay pool"));
                let mut fits = fit::Fits::new(lm, prompt, &tasks[0].replay, settings, seed)?;
                // The fit alone, evaluated as its own sampler: what the methods start from.
                let identity = Parameterization::Identity;
                let (head, secs) = fits.fitted(fresh(Method::Ctl)?, identity)?;
                let mut twist = HeadTrainable::new(head, identity, AdamConfig::default());
                let rec = record(
                    &ctx,
                    Some(&mut twist),
                    &tasks,
                    seed,
                    "fit".into(),
                    secs,
                    None,
                )?;
                keep(&bar, &mut records_out, &mut records, rec)?;
                bar.inc(1);
                Some(fits)
            }
            _ => None,
        };
        for &method in methods {
            let param = Parameterization::for_method(method);
            let (head, fit_seconds) = match fits.as_mut() {
                Some(fits) => fits.fitted(fresh(method)?, param)?,
                None => (fresh(method)?, 0.0),
            };
            let mut twist = HeadTrainable::new(head, param, AdamConfig::default())
                .with_bias_lr(args.head.bias_lr)
                .with_bias_optimizer(args.head.bias_optimizer)
                .with_gate_lr(args.head.gate_lr);
            let t0 = Instant::now();
            let msg = |i: usize| format!("seed {seed}: {method:?} update {i}/{}", args.steps);
            bar.set_message(msg(0));
            if let Some(m) = cond_len {
                let cfg = twist_learn::InfillingConfig {
                    horizon,
                    cond_len: m,
                    batch_size: args.particles,
                    steps: args.steps,
                    learning_rate: args.lr,
                    seed: seed::derive(0, seed::label::APP_TRAIN, seed),
                    start_step: 0,
                    batch: Default::default(),
                };
                twist_learn::train_infilling_ctl(lm, &mut twist, prompt, &cfg, |i, _, _| {
                    bar.set_message(msg(i));
                    Ok::<(), anyhow::Error>(())
                })?;
            } else {
                let cfg = TrainConfig {
                    method,
                    steps: args.steps,
                    batch_size: args.particles,
                    horizon,
                    learning_rate: args.lr,
                    seed: seed::derive(0, seed::label::APP_TRAIN, seed),
                    start_step: 0,
                    batch: Default::default(),
                };
                let on_step = |i: usize, _: &HeadTrainable, _: f64| {
                    bar.set_message(msg(i));
                    Ok::<(), anyhow::Error>(())
                };
                let (phi, pool) = (tasks[0].potential.as_ref(), &tasks[0].replay);
                if method == Method::Ctl && !pool.is_empty() {
                    let form = args.replay_form;
                    train_ctl_replay(lm, &mut twist, phi, prompt, &cfg, pool, form, on_step)?;
                } else {
                    train(lm, &mut twist, phi, prompt, &cfg, on_step)?;
                }
            }
            let train_seconds = fit_seconds + t0.elapsed().as_secs_f64();
            bar.set_message(format!("seed {seed}: evaluating {method:?}"));
            let name = format!("{method:?}").to_lowercase();
            let rec = record(
                &ctx,
                Some(&mut twist),
                &tasks,
                seed,
                name.clone(),
                train_seconds,
                None,
            )?;
            keep(&bar, &mut records_out, &mut records, rec)?;
            bar.inc(1);
            if args.lookahead.is_some() {
                let name = format!("{name}+lookahead");
                let (twist, la) = (Some(&mut twist), args.lookahead);
                let rec = record(&ctx, twist, &tasks, seed, name, train_seconds, la)?;
                keep(&bar, &mut records_out, &mut records, rec)?;
            }
        }
        if args.equal_time {
            let this_seed: Vec<&Record> = records.iter().filter(|r| r.seed == seed).collect();
            if let Some(k) = equal_time_particles(&this_seed, args.eval_particles) {
                bar.set_message(format!("seed {seed}: bootstrap SMC at equal time, K = {k}"));
                let rec = Record {
                    seed,
                    sampler: EQUAL_TIME.into(),
                    train_seconds: 0.0,
                    tasks: evaluate(&ctx, None, &tasks, seed, k, 1, None)?,
                    particles: Some(k),
                };
                keep(&bar, &mut records_out, &mut records, rec)?;
            }
        }
    }
    bar.finish_and_clear();
    let rejection_log_z = (rejection.1 > 0 && rejection.0 > 0)
        .then(|| (rejection.0 as f64 / rejection.1 as f64).ln());
    let built = build(
        preset,
        args,
        horizon,
        cond_len,
        &records,
        rejection_log_z,
        started.elapsed().as_secs_f64(),
        lm.name(),
    );
    finish(&out_dir, &built)
}

/// Prints an evaluation's record, appends it to records.jsonl and keeps it for the tables.
fn keep(
    bar: &ProgressBar,
    out: &mut Appender,
    records: &mut Vec<Record>,
    rec: Record,
) -> Result<()> {
    bar.suspend(|| print_record(&rec));
    out.write(&rec)?;
    records.push(rec);
    Ok(())
}

/// `--table-only`: the tables (markdown), summary (JSON) and chart rebuilt from the output directory's
/// validated records.jsonl, keeping the run's time, model and rejection estimate when an earlier
/// summary.json has them (no model runs here, so `--model` says nothing about the records).
/// Writes nothing.
pub fn rebuild_table(args: &ReproduceSettings) -> Result<Built> {
    let records = read_checked_records(&args.out_dir.join("records.jsonl"))?;
    let previous: serde_json::Value = std::fs::read_to_string(args.out_dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    Ok(build(
        args.preset,
        args,
        args.tokens,
        args.cond_tokens,
        &records,
        previous["rejection_log_z"].as_f64(),
        previous["seconds"].as_f64().unwrap_or(0.0),
        previous["model"].as_str().unwrap_or(&args.model.model),
    ))
}

/// The records of a records.jsonl, checked: at least one, each with at least one task, and the
/// records of one seed with the same number of tasks (the table pairs them by task). Errors
/// name the line of the first bad record.
fn read_checked_records(path: &std::path::Path) -> Result<Vec<Record>> {
    let records: Vec<(usize, Record)> = read_numbered(path)?;
    if records.is_empty() {
        bail!("{}: no records", path.display());
    }
    for (line, r) in &records {
        if r.tasks.is_empty() {
            bail!("{}: line {line}: a record without tasks", path.display());
        }
        if let Some((first, other)) = records
            .iter()
            .find(|(_, o)| o.seed == r.seed && o.tasks.len() != r.tasks.len())
        {
            bail!(
                "{}: line {line}: {} tasks for seed {}, but line {first} has {}",
                path.display(),
                r.tasks.len(),
                r.seed,
                other.tasks.len()
            );
        }
    }
    Ok(records.into_iter().map(|(_, r)| r).collect())
}

/// The potential of a fixed-potential preset.
fn preset_potential(preset: &Preset) -> Result<PotentialSpec> {
    preset
        .potential
        .parse()
        .with_context(|| format!("the potential of preset {}", preset.name))
}
