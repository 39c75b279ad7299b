//! Fuzz targets for the command line's own readers (short runs here; `cargo xtask fuzz` runs
//! 100,000 cases per target), in process, with no model loaded:
//! - `cli`: argument vectors built from the parser's own list of subcommands and options, with
//!   interesting values, parsed with `Cli::try_parse_from` and validated into settings;
//! - `jsonl`: our JSON-lines files (`tsmc sample --out`, `tsmc bounds --out`, `tsmc train
//!   --out`, `tsmc exact`, reproduce's records.jsonl) with records and lines mutated, read by
//!   every reader (the report, the exact-sample reader, the reproduce table).
//!
//! A case passes with `Ok` or an error with a message; a panic, an abort, a hang or an
//! allocation over the fuzz harness's budget fails it.

use std::path::Path;

use clap::{CommandFactory, Parser};
use fuzz_harness::bytes::{self, ByteMutation};
use fuzz_harness::json::{self, JsonMutation};
use fuzz_harness::proptest::prelude::*;
use fuzz_harness::proptest::sample::Index;
use fuzz_harness::{BudgetAllocator, Case, fuzz};
use serde_json::{Value, json};
use tsmc_apps::cli::Cli;
use tsmc_apps::commands::report::{ReportSettings, render};
use tsmc_apps::commands::reproduce::{ReproduceSettings, rebuild_table};

#[global_allocator]
static ALLOC: BudgetAllocator = BudgetAllocator;

// ---------------------------------------------------------------------------------------------
// The command line.

/// One option of a subcommand: its long name, whether it takes a value, its possible values.
struct Opt {
    long: String,
    takes_value: bool,
    values: Vec<String>,
}

/// Every subcommand with its options, from clap's own description of `tsmc`.
fn commands() -> Vec<(String, Vec<Opt>)> {
    Cli::command()
        .get_subcommands()
        .map(|sub| {
            let opts = sub
                .get_arguments()
                .filter_map(|a| {
                    let long = a.get_long()?.to_string();
                    let takes_value = a.get_num_args().is_none_or(|n| n.takes_values());
                    let values = a
                        .get_possible_values()
                        .iter()
                        .map(|v| v.get_name().to_string())
                        .collect();
                    Some(Opt {
                        long,
                        takes_value,
                        values,
                    })
                })
                .collect();
            (sub.get_name().to_string(), opts)
        })
        .collect()
}

/// Values that break argument validation: counts at and beyond every limit, non-numbers,
/// special floats, paths that are devices, folders, links or inputs, and malformed specs.
const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "16777216",
    "16777217",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "",
    " ",
    "x",
    "/dev/null",
    "/dev/zero",
    ".",
    "..",
    "/",
    "default",
    "DIR",
    "DIR/out.jsonl",
    "DIR/link",
    "DIR/input.jsonl",
    "DIR/out.json",
    "keyword:",
    "keyword:w",
    "regex:(",
    "regex:a{1000000}",
    "regex:(?i)dragon",
    "toxicity:beta=nan",
    "toxicity:beta=1e400",
    "toxicity:threshold=2",
    "toxicity:file=/dev/zero",
    "sentiment:negative",
    "infilling:",
    "infilling:the end",
    "judge:is it?",
    "none",
    "no-chars:",
    "no-chars:e",
    "ess:0.5",
    "ess:2",
    "ess:nan",
    "ess:-1",
    "always",
    "never",
    "0,1,2",
    "18446744073709551615,0",
    ",",
    "toxicity",
    "infilling-short",
];

/// One argument: an option (by index) and a value (a listed one, one of the option's possible
/// values, or any short text), or a free word.
#[derive(Debug, Clone)]
enum Arg {
    Opt(Index, Index, u8),
    Free(String),
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        8 => (any::<Index>(), any::<Index>(), 0u8..4).prop_map(|(o, v, k)| Arg::Opt(o, v, k)),
        1 => "[ -~]{0,12}".prop_map(Arg::Free),
    ]
}

#[test]
fn fuzz_cli_validation() {
    let cmds = commands();
    fuzz(
        "cli",
        10000,
        (
            any::<Index>(),
            prop::collection::vec(arg(), 0..8),
            prop::option::weighted(0.2, bytes::byte_mutations(2, false)),
        ),
        |case: &Case<'_>, (sub, args, mutate): (Index, Vec<Arg>, Option<Vec<ByteMutation>>)| {
            let dir = case.dir.display().to_string();
            let input = case.dir.join("input.jsonl");
            if !input.exists() {
                std::fs::write(&input, "{}\n").map_err(|e| e.to_string())?;
                #[cfg(unix)]
                std::os::unix::fs::symlink(&input, case.dir.join("link"))
                    .map_err(|e| e.to_string())?;
            }
            let (name, opts) = &cmds[sub.index(cmds.len())];
            let mut argv = vec!["tsmc".to_string(), name.clone()];
            for a in &args {
                match a {
                    Arg::Free(s) => argv.push(s.clone()),
                    Arg::Opt(_, _, _) if opts.is_empty() => {}
                    Arg::Opt(o, v, kind) => {
                        let opt = &opts[o.index(opts.len())];
                        argv.push(format!("--{}", opt.long));
                        if opt.takes_value {
                            let value = if *kind == 0 && !opt.values.is_empty() {
                                opt.values[v.index(opt.values.len())].clone()
                            } else {
                                VALUES[v.index(VALUES.len())].replace("DIR", &dir)
                            };
                            argv.push(value);
                        }
                    }
                }
            }
            if let Some(ms) = &mutate
                && argv.len() > 2
            {
                let last = argv.len() - 1;
                let mut b = argv[last].clone().into_bytes();
                let len = b.len();
                bytes::apply(&mut b, ms, 0..len, &[]);
                argv[last] = String::from_utf8_lossy(&b).into_owned();
            }
            match Cli::try_parse_from(&argv) {
                Err(e) if e.to_string().is_empty() => Err(format!("{argv:?}: an empty error")),
                Err(_) => Ok(false),
                Ok(cli) => match cli.validate() {
                    Ok(()) => Ok(true),
                    Err(e) if format!("{e:#}").is_empty() => {
                        Err(format!("{argv:?}: an empty error"))
                    }
                    Err(_) => Ok(false),
                },
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Our JSON-lines files.

fn estimate(mean: f64) -> Value {
    json!({ "mean": mean, "se": 0.1, "n": 16, "df": 15.0 })
}

/// A KL row of a reproduction's summary.json.
fn summary_row(sampler: &str) -> Value {
    json!({ "sampler": sampler, "kl_q_sigma": estimate(1.0), "kl_sigma_q": estimate(1.0),
        "delta_kl_q_sigma": estimate(0.0), "delta_kl_sigma_q": estimate(0.0) })
}

/// An SMC row of a reproduction's summary.json.
fn summary_smc_row(sampler: &str) -> Value {
    json!({ "sampler": sampler, "lower": estimate(-3.0), "upper": estimate(-1.0),
        "width": estimate(2.0), "width_vs_p0": estimate(0.0), "width_vs_equal_time": null,
        "particles": [4, 4], "seconds_per_run": estimate(1.0), "sd_log_zhat": [0.5, 2] })
}

/// Known-good files of each kind, as records.
fn jsonl_seeds() -> Vec<Vec<Value>> {
    let particle = |i: usize| {
        json!({ "type": "particle", "particle": i, "text": "x", "tokens": [1, 2],
            "log_weight": 0.0, "weight": 0.5, "log_p0": -1.0, "log_phi": 0.0 })
    };
    let run = json!({
        "type": "run", "model": "m", "prompt": "p", "prompt_tokens": [1], "potential": "q",
        "method": "smc", "num_particles": 2, "num_tokens": 2, "seed": 0, "resampling": null,
        "log_z_hat": -1.0, "final_ess": 2.0,
        "steps": [{ "step": 1, "ess": 2.0 }, { "step": 2, "ess": 1.5 }],
        "ancestors": [[0, 0]],
    });
    let bounds = |k: usize| {
        json!({ "type": "bounds", "row": { "k": k, "sis_lower": estimate(-3.0),
            "smc_lower": estimate(-2.5), "smc_upper": estimate(-2.0), "sis_upper": estimate(-1.5) } })
    };
    let kl = json!({ "type": "kl", "estimates": { "kl_q_sigma": estimate(0.5),
        "kl_sigma_q": estimate(0.7), "log_z": estimate(-2.2) } });
    let eval = |step: usize, sampler: &str| {
        json!({ "step": step, "sampler": sampler,
            "eval": { "kl_q_sigma": estimate(0.4), "kl_sigma_q": estimate(0.6) } })
    };
    let record = |seed: u64, sampler: &str| {
        json!({ "seed": seed, "sampler": sampler, "train_seconds": 1.0,
            "tasks": [{ "f_q": estimate(-5.0), "g_q": estimate(-1.0), "lower": -4.0,
                "upper": -2.0, "rule": "smc" }] })
    };
    vec![
        vec![particle(0), particle(1), run],
        vec![bounds(2), bounds(4), kl],
        vec![
            json!({ "step": 0, "loss": 1.0 }),
            eval(0, "p0 (no twist)"),
            eval(1, "twisted"),
            json!({ "step": 1, "loss": 0.5 }),
            eval(2, "twisted"),
        ],
        vec![
            json!({ "type": "sample", "tokens": [1, 2] }),
            json!({ "type": "sample", "tokens": [3, 4] }),
        ],
        vec![
            record(0, "p0"),
            record(0, "ctl"),
            record(1, "p0"),
            record(1, "ctl"),
        ],
        // A reproduction's summary.json: one JSON object, read by `tsmc report --reproduce`.
        vec![json!({
            "task": "t", "tokens": 2, "seeds": 2, "steps": 1, "model": "m", "seconds": 1.0,
            "rows": [summary_row("p0"), summary_row("ctl")],
            "smc_rows": [summary_smc_row("p0"), summary_smc_row("ctl")],
        })],
    ]
}

/// One edit of a JSON-lines file.
#[derive(Debug, Clone)]
enum LineMutation {
    /// A record's JSON.
    Record(Index, Vec<JsonMutation>),
    /// A line removed.
    Drop(Index),
    /// A line repeated.
    Repeat(Index, usize),
    /// Two lines swapped.
    Swap(Index, Index),
    /// A line of text inserted.
    Insert(Index, String),
    /// The file's text.
    Text(Vec<ByteMutation>),
}

fn line_mutation() -> impl Strategy<Value = LineMutation> {
    prop_oneof![
        6 => (any::<Index>(), json::json_mutations(3)).prop_map(|(i, m)| LineMutation::Record(i, m)),
        1 => any::<Index>().prop_map(LineMutation::Drop),
        1 => (any::<Index>(), prop::sample::select(vec![1usize, 2, 100]))
            .prop_map(|(i, n)| LineMutation::Repeat(i, n)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| LineMutation::Swap(a, b)),
        1 => (any::<Index>(), "[ -~]{0,16}").prop_map(|(i, s)| LineMutation::Insert(i, s)),
        1 => bytes::byte_mutations(3, false).prop_map(LineMutation::Text),
    ]
}

fn jsonl_text(records: &[Value], mutations: &[LineMutation]) -> Vec<u8> {
    let mut records: Vec<Value> = records.to_vec();
    let mut extra: Vec<(usize, String)> = Vec::new();
    for m in mutations {
        let n = records.len();
        match m {
            LineMutation::Record(i, ms) if n > 0 => json::apply(&mut records[i.index(n)], ms),
            LineMutation::Drop(i) if n > 0 => {
                records.remove(i.index(n));
            }
            LineMutation::Repeat(i, times) if n > 0 => {
                let r = records[i.index(n)].clone();
                records.extend(std::iter::repeat_n(r, *times));
            }
            LineMutation::Swap(a, b) if n > 0 => records.swap(a.index(n), b.index(n)),
            LineMutation::Insert(i, s) => extra.push((i.index(n + 1), s.clone())),
            _ => {}
        }
    }
    let mut lines: Vec<String> = records.iter().map(Value::to_string).collect();
    for (at, s) in extra {
        lines.insert(at.min(lines.len()), s);
    }
    let mut text = lines.join("\n").into_bytes();
    text.push(b'\n');
    for m in mutations {
        if let LineMutation::Text(ms) = m {
            let len = text.len();
            bytes::apply(&mut text, ms, 0..len, &[]);
        }
    }
    text
}

fn reproduce_settings(out_dir: &Path) -> ReproduceSettings {
    ReproduceSettings {
        preset: tsmc_apps::presets::preset("toxicity").unwrap(),
        tokens: 2,
        cond_tokens: None,
        methods: vec![twist_learn::Method::Ctl],
        seeds: 2,
        steps: 1,
        particles: 2,
        lr: 1e-4,
        head: tsmc_apps::training::HeadChoice {
            kind: lm_burn::heads::HeadKind::Linear,
            rank: None,
            zero_output: false,
            bias_lr: None,
            bias_optimizer: twist_learn::BiasOptimizer::Adam,
            bias_gate: None,
            gate_lr: None,
            cond_encoding: None,
        },
        eval_particles: 2,
        fq_samples: 2,
        exact_samples: 2,
        replay_samples: 0,
        replay_form: twist_learn::ReplayForm::Direct,
        replay_shared: false,
        fit: None,
        upper_samples: 1,
        lower_runs: 1,
        max_draws: 10,
        model: tsmc_apps::setup::ModelChoice {
            model: "default".into(),
            backend: lm_burn::Backend::Cpu,
            memory_budget: None,
            weights: lm_burn::WeightFormat::F32,
        },
        out_dir: out_dir.to_path_buf(),
        table_only: true,
        equal_time: false,
        lookahead: None,
        lookahead_mass: None,
    }
}

#[test]
fn fuzz_jsonl_readers() {
    let seeds = jsonl_seeds();
    // Every seed is read by its own reader without error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(&path, jsonl_text(seed, &[])).unwrap();
        let ok = match i {
            0..=2 => render(&report(i, &path)).is_ok(),
            3 => tsmc_apps::jsonl::read_exact(&path, 2).is_ok(),
            4 => rebuild_table(&reproduce_settings(dir.path())).is_ok(),
            _ => render(&report(3, &path)).is_ok(),
        };
        assert!(ok, "seed {i}");
    }
    fuzz(
        "jsonl",
        5000,
        (
            0..seeds.len(),
            prop::collection::vec(line_mutation(), 1..=3),
        ),
        |case: &Case<'_>, (seed, mutations): (usize, Vec<LineMutation>)| {
            let path = case.dir.join("records.jsonl");
            std::fs::write(&path, jsonl_text(&seeds[seed], &mutations))
                .map_err(|e| e.to_string())?;
            let mut accepted = false;
            let mut check = |r: anyhow::Result<()>| match r {
                Ok(()) => {
                    accepted = true;
                    Ok(())
                }
                Err(e) if !format!("{e:#}").contains("records.jsonl") => {
                    Err(format!("the error does not name the file: {e:#}"))
                }
                Err(_) => Ok(()),
            };
            for kind in 0..4 {
                check(render(&report(kind, &path)).map(drop))?;
            }
            check(tsmc_apps::jsonl::read_exact(&path, 2).map(drop))?;
            check(rebuild_table(&reproduce_settings(case.dir)).map(drop))?;
            Ok(accepted)
        },
    );
}

/// The report of `path` as a sample (0), bounds (1), curve (2) or reproduction summary (3) file.
fn report(kind: usize, path: &Path) -> ReportSettings {
    let p = Some(path.to_path_buf());
    ReportSettings {
        sample: if kind == 0 { p.clone() } else { None },
        bounds: if kind == 1 { p.clone() } else { None },
        curve: if kind == 2 { p.clone() } else { None },
        reproduce: if kind == 3 { p } else { None },
        out: path.with_extension("html"),
    }
}
