//! The `tsmc` binary as a user runs it: outputs, and bad input giving a clear error, a non-zero
//! exit and no partial output file.

use std::process::Command;

fn tsmc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsmc"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_prints_bounds_next_to_exact_values_and_writes_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.jsonl");
    let (ok, stdout, stderr) = tsmc(&[
        "demo",
        "--horizon",
        "3",
        "--particles",
        "4,16",
        "--seeds",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("exact log Z") && stdout.contains("KL(q||sigma)"),
        "{stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3 * 2);
    assert!(
        lines
            .iter()
            .all(|l| l["log_z_exact"].is_f64() && l["smc_lower"]["mean"].is_f64())
    );
}

#[test]
fn sample_on_the_default_model_writes_particles_and_a_run_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.jsonl");
    let (ok, stdout, stderr) = tsmc(&[
        "sample",
        "-k",
        "4",
        "-t",
        "3",
        "--potential",
        "keyword:the",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("log Zhat"), "{stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "particle").count(), 4);
    let run = lines.iter().find(|l| l["type"] == "run").unwrap();
    assert_eq!(run["steps"].as_array().unwrap().len(), 3);
    assert!(run["log_z_hat"].is_f64());
    // Where the time went: K x T particle-tokens over the wall time, and the model's phases
    // within it: 4 x 2 tokens pushed, since no forward pass follows the last step.
    let timing = &run["timing"];
    assert!(
        timing["particle_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{timing}"
    );
    assert_eq!(timing["model"]["tokens"], 8, "{timing}");
    assert!(
        timing["model"]["forward_s"].as_f64().unwrap() <= timing["wall_s"].as_f64().unwrap(),
        "{timing}"
    );
    assert!(stdout.contains("particle-tokens/s"), "{stdout}");
    // The report renders it as a self-contained page: inline SVG, nothing fetched.
    let html = dir.path().join("r.html");
    let page = report_page("--sample", out.to_str().unwrap(), html.to_str().unwrap());
    assert!(page.contains("<svg") && page.contains("Genealogy") && page.contains("ESS per step"));
    assert!(
        !page.contains("<script") && !page.contains("src=\"http"),
        "not self-contained"
    );
}

/// `--weights q8` keeps the default model's Q4_1 and Q8_0 weights exactly: the same seed gives
/// the same log Zhat as f32, and the run record names the format; a served model refuses it.
#[test]
fn sample_with_quantised_weights_gives_the_f32_answer_on_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut log_z = Vec::new();
    for w in ["f32", "q8"] {
        let out = dir.path().join(format!("{w}.jsonl"));
        let (ok, stdout, stderr) = tsmc(&[
            "sample",
            "-k",
            "3",
            "-t",
            "4",
            "--seed",
            "7",
            "--potential",
            "none",
            "--constraint",
            "no-chars:e",
            "--weights",
            w,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert_eq!(stdout.contains("weights q8"), w == "q8", "{stdout}");
        let text = std::fs::read_to_string(&out).unwrap();
        let run: serde_json::Value = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["type"] == "run")
            .unwrap();
        assert_eq!(run["backend"]["weights"], w);
        log_z.push(run["log_z_hat"].as_f64().unwrap());
    }
    assert_eq!(log_z[0], log_z[1]);
    let (ok, _, stderr) = tsmc(&["sample", "--model", "http://127.0.0.1:9", "--weights", "q8"]);
    assert!(!ok && stderr.contains("--weights"), "{stderr}");
}

/// `--lookahead N` with an infilling potential: the exact final twist, named in the summary
/// line and the run record, its model time in the timing line.
#[test]
fn sample_with_a_final_lookahead_on_infilling_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("look.jsonl");
    // Three particles, three tokens, the lookahead over 4 candidates, and `extra`.
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "-k",
            "3",
            "-t",
            "3",
            "--potential",
            "infilling: the end.",
            "--lookahead",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tsmc(&args)
    };
    let (ok, stdout, stderr) = sample(&[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("final lookahead over 4 tokens"), "{stdout}");
    let run: serde_json::Value = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["type"] == "run")
        .unwrap();
    assert_eq!(run["lookahead"], 4, "{run}");
    assert!(run["lookahead_mass"].is_null(), "{run}");
    assert!(run["twist"].is_null(), "{run}");
    assert!(run["log_z_hat"].as_f64().unwrap().is_finite(), "{run}");
    // The lookahead's model runs are timed apart from the rest of the SMC.
    assert!(stdout.contains(" + final lookahead "), "{stdout}");
    let look_s = run["timing"]["lookahead_s"].as_f64().unwrap();
    assert!(
        look_s > 0.0 && look_s <= run["timing"]["wall_s"].as_f64().unwrap(),
        "{run}"
    );
    // The report names what shaped the proposal.
    let html = dir.path().join("look.html");
    let page = report_page("--sample", out.to_str().unwrap(), html.to_str().unwrap());
    assert!(
        page.contains("final lookahead candidates <code>4</code>"),
        "{page}"
    );
    let (ok, stdout, stderr) = sample(&["--lookahead-mass", "0.5"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("over 4 tokens holding 0.5 of p0"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.jsonl");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["sample", "--prompt", "", "--out", o],
            "--prompt is empty",
        ),
        (
            vec!["sample", "-t", "0", "--out", o],
            "--tokens must be at least 1",
        ),
        (
            vec!["sample", "-k", "0", "--out", o],
            "--particles must be at least 1",
        ),
        (
            vec![
                "sample",
                "-k",
                "2",
                "-t",
                "1",
                "--potential",
                "bogus:1",
                "--out",
                o,
            ],
            "unknown potential",
        ),
        (
            vec!["sample", "--model", "/no/such/model", "--out", o],
            "/no/such/model",
        ),
        (vec!["sample", "--criterion", "ess:3", "--out", o], "ess"),
        (
            vec![
                "sample",
                "--potential",
                "infilling:x",
                "--lookahead",
                "0",
                "--out",
                o,
            ],
            "--lookahead must be at least 1",
        ),
        (
            vec!["sample", "--lookahead", "4", "--out", o],
            "--lookahead scores the continuation of an infilling:TEXT potential",
        ),
        (
            vec![
                "sample",
                "--potential",
                "infilling:x",
                "--lookahead",
                "4",
                "--lookahead-mass",
                "1.5",
                "--out",
                o,
            ],
            "--lookahead-mass must lie in (0, 1], found 1.5",
        ),
        (
            vec![
                "sample",
                "--model",
                "http://127.0.0.1:9",
                "--potential",
                "infilling:x",
                "--lookahead",
                "4",
                "--out",
                o,
            ],
            "--lookahead runs the model on candidate tokens",
        ),
        (
            vec![
                "sample",
                "--potential",
                "infilling:x",
                "--lookahead",
                "4",
                "--max-tokens",
                "3",
                "--out",
                o,
            ],
            "--max-tokens",
        ),
        (vec!["demo", "--particles", "0", "--out", o], "--particles"),
    ] {
        let (ok, _, stderr) = tsmc(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left {o}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{args:?} left {leftovers:?}");
    }
}

#[test]
fn exact_collects_rejection_and_joint_ancestral_samples_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exact.jsonl");
    let o = out.to_str().unwrap();
    let (ok, stdout, stderr) = tsmc(&[
        "exact",
        "-t",
        "3",
        "-n",
        "2",
        "--potential",
        "regex:.",
        "--out",
        o,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("rejection: 2 exact samples"), "{stdout}");
    let (ok, _, stderr) = tsmc(&[
        "exact",
        "-t",
        "3",
        "-n",
        "2",
        "--infilling",
        "2",
        "--out",
        o,
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["conditioning"].as_array().unwrap().len(), 2);
    assert_eq!(lines[2]["method"], "joint ancestral");
}

#[test]
fn tasks_lists_the_paper_presets() {
    let (ok, stdout, stderr) = tsmc(&["tasks"]);
    assert!(ok, "{stderr}");
    for name in [
        "toxicity-threshold",
        "toxicity",
        "sentiment",
        "infilling",
        "infilling-short",
    ] {
        assert!(stdout.contains(name), "{name} missing from {stdout}");
    }
}

/// `tsmc report FLAG INPUT --out OUT`, which must succeed, and the page it wrote.
fn report_page(flag: &str, input: &str, out: &str) -> String {
    let (ok, _, stderr) = tsmc(&["report", flag, input, "--out", out]);
    assert!(ok, "{stderr}");
    std::fs::read_to_string(out).unwrap()
}

fn reproduce_small(task: &str, dir: &std::path::Path) -> (bool, String, String) {
    reproduce_small_with(task, dir, &[])
}

fn reproduce_small_with(
    task: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "reproduce",
        "--task",
        task,
        "--tokens",
        "2",
        "--seeds",
        "2",
        "--steps",
        "1",
        "--methods",
        "ctl",
        "-k",
        "4",
        "--exact-samples",
        "2",
        "--eval-particles",
        "4",
        "--fq-samples",
        "4",
        "--upper-samples",
        "1",
        "--lower-runs",
        "1",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tsmc(&args)
}

/// A replay pool drawn once and shared by the seeds, with conditional-SMC positives, an
/// embedding head whose bias takes plain gradient steps, and bootstrap SMC at equal time: the
/// run completes and the table and summary say how CTL's positives were made, how b was
/// stepped, and give the equal-time row in the SMC table only.
#[test]
fn reproduce_with_a_shared_replay_pool_states_it() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--replay-samples",
        "2",
        "--replay-shared",
        "--replay-csmc",
        "--head",
        "embedding",
        "--bias-lr",
        "1",
        "--bias-optim",
        "sgd",
        "--equal-time",
    ];
    let (ok, _, stderr) = reproduce_small_with("toxicity", dir.path(), &extra);
    assert!(ok, "{stderr}");
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(
        table.contains("replayed from 2 more drawn once and shared by every seed")
            && table.contains("conditional SMC around one per update"),
        "{table}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["replay_shared"], true, "{summary}");
    assert_eq!(summary["replay_form"], "csmc", "{summary}");
    assert_eq!(summary["bias_optim"], "sgd", "{summary}");
    assert!(
        table.contains("per-token bias: gradient descent at 1, at most 0.1 an update"),
        "{table}"
    );
    // The equal-time run has its own K: in the SMC table, not among the KL rows.
    let names = |key: &str| -> Vec<String> {
        summary[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sampler"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("rows"), ["p0", "ctl"], "{summary}");
    assert!(
        names("smc_rows").contains(&"p0-equal-time".to_string()),
        "{summary}"
    );
    let ctl = &summary["smc_rows"][1];
    assert!(ctl["width_vs_equal_time"]["mean"].is_f64(), "{ctl}");
    assert!(
        ctl["seconds_per_run"]["mean"].as_f64().unwrap() > 0.0,
        "{ctl}"
    );
    let svg = std::fs::read_to_string(dir.path().join("smc.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
}

/// --fit-epochs: every seed evaluates the fit alone as the sampler `fit` before CTL, which
/// starts from it; the table and summary say so.
#[test]
fn reproduce_with_a_fit_to_the_replay_pool_evaluates_the_fit_as_its_own_row() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--replay-samples",
        "3",
        "--head",
        "embedding",
        "--fit-epochs",
        "2",
        "--fit-lr",
        "1e-3",
    ];
    let (ok, _, stderr) = reproduce_small_with("toxicity", dir.path(), &extra);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    let rows: Vec<&str> = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sampler"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["p0", "fit", "ctl"], "{summary}");
    // Every sampler's paired differences by seed, in the summary and the table.
    let per_seed = summary["rows"][2]["delta_per_seed"].as_array().unwrap();
    assert_eq!(per_seed.len(), 2, "{summary}");
    assert_eq!(per_seed[1][0], 1, "{summary}");
    assert_eq!(summary["fit_epochs"], 2, "{summary}");
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(
        table.contains("every head first fitted to that pool by maximum likelihood")
            && table.contains("| ctl |")
            && table.contains("seeds below zero"),
        "{table}"
    );
    let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
    assert_eq!(
        records.matches("\"sampler\":\"fit\"").count(),
        2,
        "{records}"
    );
}

#[test]
fn reproduce_writes_a_kl_table_over_seeds_for_a_classifier_and_an_infilling_task() {
    for task in ["toxicity", "infilling-short"] {
        let dir = tempfile::tempdir().unwrap();
        let (ok, stdout, stderr) = reproduce_small(task, dir.path());
        assert!(ok, "{task}: {stderr}");
        let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
        assert!(
            stdout.contains("| p0 |") && table.contains("| ctl |"),
            "{table}"
        );
        assert!(
            table.contains("KL(q‖σ)") && table.contains(" ± "),
            "{table}"
        );
        let records: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.path().join("records.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        // Two seeds x (p0, ctl); infilling keeps one entry per conditioning sequence.
        assert_eq!(records.len(), 4, "{task}");
        let tasks_per_seed = if task == "toxicity" { 1 } else { 2 };
        assert!(
            records
                .iter()
                .all(|r| r["tasks"].as_array().unwrap().len() == tasks_per_seed)
        );
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("summary.json")).unwrap(),
        )
        .unwrap();
        for row in summary["rows"].as_array().unwrap() {
            assert_eq!(row["kl_q_sigma"]["n"], 2, "{task}: {row}");
            assert!(row["kl_sigma_q"]["mean"].is_f64(), "{task}: {row}");
        }
    }
}

/// `--lookahead N` on an infilling task adds the samplers `lookahead` (p0 with the exact final
/// twist) and `ctl+lookahead` for every seed, left out of the ordering's verdict, and
/// `--lookahead-mass` is named in the table and summary; on a task without a continuation, with
/// no candidates, or with a mass outside (0, 1], it is refused before anything runs.
#[test]
fn reproduce_lookahead_adds_the_exact_final_twist_samplers_on_infilling() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = reproduce_small_with(
        "infilling-short",
        dir.path(),
        &["--lookahead", "3", "--lookahead-mass", "0.9"],
    );
    assert!(ok, "{stderr}");
    let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
    for sampler in ["p0", "ctl", "lookahead", "ctl+lookahead"] {
        let n = records
            .matches(&format!("\"sampler\":\"{sampler}\""))
            .count();
        assert_eq!(n, 2, "{sampler}: {records}");
    }
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(table.contains("| ctl+lookahead |"), "{table}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["lookahead"], 3);
    assert_eq!(summary["lookahead_mass"], 0.9);
    assert!(
        table.contains("top 3 tokens holding 0.9 of p0's mass"),
        "{table}"
    );
    // CTL is the only method, so there is no verdict on the ordering.
    assert!(summary["ordering"].is_null(), "{}", summary["ordering"]);
    // The report shows both tables, with the intervals and the bounds charted.
    let html = dir.path().join("reproduce.html");
    let summary_path = dir.path().join("summary.json");
    let page = report_page(
        "--reproduce",
        summary_path.to_str().unwrap(),
        html.to_str().unwrap(),
    );
    for want in [
        "Reproduction: <code>infilling-short</code>",
        "<td>ctl+lookahead</td>",
        "Twisted SMC against bootstrap SMC",
        "ΔKL(σ‖q) against p0, 95% intervals over seeds",
        "<th>sd of log Zhat (df)</th>",
    ] {
        assert!(page.contains(want), "{want}: {page}");
    }
    // Two KL charts and the bounds; one lower-bound run gives no spread to chart.
    assert_eq!(page.matches("<svg").count(), 3, "{page}");
    // The run's directory names its summary.
    let from_dir = report_page(
        "--reproduce",
        dir.path().to_str().unwrap(),
        dir.path().join("from-dir.html").to_str().unwrap(),
    );
    assert!(from_dir.contains("<td>ctl+lookahead</td>"), "{from_dir}");
    // Another file in its place is refused, naming it.
    let (ok, _, stderr) = tsmc(&[
        "report",
        "--reproduce",
        dir.path().join("records.jsonl").to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("records.jsonl"), "{stderr}");
    for (i, (task, extra, message)) in [
        (
            "toxicity",
            &["--lookahead", "2"][..],
            "--lookahead scores the continuation c",
        ),
        (
            "infilling-short",
            &["--lookahead", "0"][..],
            "at least one candidate",
        ),
        (
            "infilling-short",
            &["--lookahead", "3", "--lookahead-mass", "1.5"][..],
            "--lookahead-mass must lie in (0, 1], found 1.5",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("refused-{i}"));
        let (ok, _, stderr) = reproduce_small_with(task, &out, extra);
        assert!(!ok && stderr.contains(message), "{task}: {stderr}");
        assert!(!out.exists(), "{task}");
    }
}

#[test]
fn reproduce_rejects_unknown_tasks_and_methods_the_task_cannot_train() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = tsmc(&["reproduce", "--task", "toxic"]);
    assert!(
        !ok && stderr.contains("unknown task") && stderr.contains("toxicity-threshold"),
        "{stderr}"
    );
    let (ok, _, stderr) = tsmc(&[
        "reproduce",
        "--task",
        "infilling",
        "--methods",
        "rl",
        "--out-dir",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("ctl only"), "{stderr}");
    assert!(!dir.path().join("x").exists());
    // Replayed positives are CTL's, on fixed-potential tasks; a bias rate needs an embedding
    // head's per-token bias and must be a positive number.
    let out = dir.path().join("y");
    for (args, message) in [
        (
            &["--task", "infilling-short", "--replay-samples", "8"][..],
            "--replay-samples is for fixed-potential tasks",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--replay-samples",
                "8",
                "--methods",
                "rl",
            ][..],
            "ctl is not among --methods",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--head",
                "linear",
                "--bias-lr",
                "1e-2",
            ][..],
            "--bias-lr is for the per-token bias of --head embedding or low-rank:R; found --head linear",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--head",
                "embedding",
                "--bias-lr=-1",
            ][..],
            "--bias-lr must be a positive number",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--head",
                "embedding",
                "--bias-optim",
                "sgd",
            ][..],
            "--bias-optim sgd needs --bias-lr",
        ),
        (
            &["--task", "toxicity-threshold", "--replay-csmc"][..],
            "--replay-csmc needs exact samples to replay",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--head",
                "embedding",
                "--cond-encoding",
                "mean-embedding",
            ][..],
            "--cond-encoding is for conditional (infilling) heads",
        ),
        (
            &["--task", "toxicity-threshold", "--replay-shared"][..],
            "--replay-shared needs exact samples to replay",
        ),
        (
            &["--task", "toxicity-threshold", "--fit-epochs", "3"][..],
            "--fit-epochs fits the heads to CTL's replay pool: give --replay-samples N",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--replay-samples",
                "4",
                "--fit-epochs",
                "3",
                "--fit-lr=0",
            ][..],
            "--fit-lr must be a positive number",
        ),
        (
            &[
                "--task",
                "toxicity-threshold",
                "--exact-samples",
                "8",
                "--replay-samples",
                "8",
                "--max-draws",
                "15",
            ][..],
            "rejection cannot accept more samples than it draws",
        ),
    ] {
        let mut all = vec!["reproduce", "--out-dir", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let (ok, _, stderr) = tsmc(&all);
        assert!(!ok && stderr.contains(message), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}");
    }
}

#[test]
fn train_on_a_potential_writes_checkpoints_and_a_curve_with_kl_estimates_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let common = ["--potential", "toxicity:beta=1", "-t", "2"];
    let mut args = vec!["exact", "-n", "3", "--out"];
    let exact = p("exact.jsonl");
    args.push(&exact);
    args.extend(common);
    let (ok, _, stderr) = tsmc(&args);
    assert!(ok, "{stderr}");
    let (ckpt, curve) = (p("head.safetensors"), p("curve.jsonl"));
    let mut args = vec![
        "train",
        "--task",
        "potential",
        "--method",
        "ctl",
        "--steps",
        "2",
        "-k",
        "4",
        "--exact",
        &exact,
        "--fq-samples",
        "4",
        "--checkpoint",
        &ckpt,
        "--out",
        &curve,
    ];
    args.extend(common);
    let (ok, _, stderr) = tsmc(&args);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&curve)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // p0 and the initial head, then per update a loss line and an evaluation (steps 1, 2).
    let evals: Vec<&serde_json::Value> = lines.iter().filter(|l| l["eval"].is_object()).collect();
    assert_eq!(evals.len(), 4, "{lines:?}");
    assert_eq!(evals[0]["sampler"], "p0 (no twist)");
    for e in &evals {
        for key in ["kl_q_sigma", "kl_sigma_q", "kl_sum", "f_q", "g_q"] {
            assert!(e["eval"][key]["mean"].is_f64(), "{key}: {e}");
        }
    }
    assert_eq!(lines.iter().filter(|l| l["loss"].is_f64()).count(), 2);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("head.json")).unwrap()).unwrap();
    assert_eq!(meta["metadata"]["step"], 2);
    let curve2 = p("curve2.jsonl");
    let mut args = vec![
        "train",
        "--task",
        "potential",
        "--method",
        "ctl",
        "--steps",
        "1",
        "-k",
        "4",
        "--resume",
        &ckpt,
        "--checkpoint",
        &ckpt,
        "--out",
        &curve2,
    ];
    args.extend(common);
    let (ok, _, stderr) = tsmc(&args);
    assert!(ok, "{stderr}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("head.json")).unwrap()).unwrap();
    assert_eq!(meta["metadata"]["step"], 3);
}

#[test]
fn an_embedding_head_trains_resumes_and_drives_sample() {
    // With the bias in the common Adam, and with plain gradient steps for it (no Adam state for
    // b in the checkpoint, which resuming must accept).
    // And with the bias gated by the hidden state (the checkpoint keeps the gate).
    for bias in [
        &[][..],
        &["--bias-lr", "1", "--bias-optim", "sgd"][..],
        &[
            "--bias-gate",
            "sigmoid",
            "--gate-lr",
            "1e-3",
            "--bias-lr",
            "1",
            "--bias-optim",
            "sgd",
        ][..],
    ] {
        embedding_head_trains_resumes_and_drives_sample(bias);
    }
    let (ok, _, stderr) = tsmc(&["train", "--head", "embedding", "--gate-lr", "1e-3"]);
    assert!(
        !ok && stderr.contains("--gate-lr is for the gate of --bias-gate"),
        "{stderr}"
    );
    let (ok, _, stderr) = tsmc(&["train", "--head", "mlp", "--bias-gate", "linear"]);
    assert!(
        !ok && stderr.contains("--bias-gate is for the per-token bias of --head embedding"),
        "{stderr}"
    );
    for bad in ["low-rank:0", "low-rank", "embeddings"] {
        let (ok, _, stderr) = tsmc(&["train", "--head", bad]);
        assert!(!ok && stderr.contains("low-rank:R"), "{bad}: {stderr}");
    }
}

fn embedding_head_trains_resumes_and_drives_sample(bias: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ckpt, curve) = (p("head.safetensors"), p("curve.jsonl"));
    let common = ["--potential", "toxicity:beta=1", "-t", "2", "-k", "4"];
    for (steps, resume) in [("2", None), ("1", Some(ckpt.as_str()))] {
        let mut args = vec![
            "train",
            "--task",
            "potential",
            "--head",
            "low-rank:8",
            "--steps",
            steps,
            "--checkpoint",
            &ckpt,
            "--out",
            &curve,
        ];
        if let Some(r) = resume {
            args.extend(["--resume", r]);
        }
        args.extend(common);
        args.extend(bias);
        let (ok, _, stderr) = tsmc(&args);
        assert!(ok, "{bias:?}: {stderr}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("head.json")).unwrap()).unwrap();
    assert_eq!(meta["metadata"]["step"], 3);
    assert_eq!(meta["head"]["kind"], "embedding");
    assert_eq!(meta["head"]["rank"], 8);
    let gate = bias.contains(&"--bias-gate");
    assert_eq!(meta["head"]["bias_gate"].is_string(), gate, "{meta}");
    if gate {
        // Resuming with another gate is refused, naming both.
        let mut args = vec![
            "train",
            "--task",
            "potential",
            "--head",
            "low-rank:8",
            "--steps",
            "1",
            "--resume",
            &ckpt,
            "--bias-gate",
            "linear",
        ];
        args.extend(common);
        let (ok, _, stderr) = tsmc(&args);
        assert!(
            !ok && stderr.contains("--bias-gate linear does not match")
                && stderr.contains("bias gate sigmoid"),
            "{stderr}"
        );
    }
    // d r + r d + V parameters, not the output embedding: a small file.
    let size = std::fs::metadata(&ckpt).unwrap().len();
    assert!(size < 2_000_000, "{size} bytes");
    let lines = std::fs::read_to_string(&curve).unwrap();
    assert!(lines.contains("cpu_seconds"), "{lines}");
    let mut args = vec!["sample", "--twist", &ckpt, "--seed", "1"];
    args.extend(common);
    let (ok, stdout, stderr) = tsmc(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("log Zhat"), "{stdout}");
    assert!(stdout.contains(&format!("| twist {ckpt} |")), "{stdout}");
}

#[test]
fn train_on_one_infilling_task_measures_every_snapshot_on_a_particle_gibbs_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ckpt, curve) = (p("head.safetensors"), p("curve.jsonl"));
    let args = [
        "train",
        "--task",
        "infilling-fixed",
        "-t",
        "2",
        "--cond-tokens",
        "1",
        "--steps",
        "2",
        "-k",
        "4",
        "--gibbs-sweeps",
        "3",
        "--eval-particles",
        "4",
        "--fq-samples",
        "4",
        "--task-seed",
        "5",
        "--checkpoint",
        &ckpt,
        "--out",
        &curve,
    ];
    let (ok, stdout, stderr) = tsmc(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| update | sampler |"), "{stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&curve)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["loss"].is_f64()).count(), 2);
    // One declared pair: the last head's twisted SMC bounds.
    assert_eq!(lines.iter().filter(|l| l["type"] == "bounds").count(), 1);
    // p0, then the initial head and the heads after updates 1 and 2, on the same samples.
    let evals: Vec<&serde_json::Value> = lines.iter().filter(|l| l["eval"].is_object()).collect();
    let steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 0, 1, 2], "{lines:?}");
    assert_eq!(evals[0]["sampler"], "p0 (no twist)");
    assert_eq!(evals[0]["eval"]["g_q_minus_p0"]["mean"], 0.0);
    for e in &evals {
        assert_eq!(e["eval"]["g_q"]["n"], 4, "s* and three sweeps: {e}");
        for key in ["kl_q_sigma", "kl_sigma_q", "kl_sum", "f_q"] {
            assert!(e["eval"][key]["mean"].is_f64(), "{key}: {e}");
        }
    }
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["held_out_exact"].as_array().unwrap().len(), 2);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("head.json")).unwrap()).unwrap();
    assert_eq!(meta["metadata"]["task"], "infilling-fixed");
    assert_eq!(meta["metadata"]["conditioning"], summary["conditioning"]);
    // A checkpoint trained for another continuation does not resume silently.
    let mut other = args.to_vec();
    let seed_at = other.iter().position(|a| *a == "5").unwrap();
    other[seed_at] = "6";
    other.extend(["--resume", &ckpt]);
    let (ok, _, stderr) = tsmc(&other);
    assert!(!ok);
    assert!(
        stderr.contains("trained for conditioning tokens"),
        "{stderr}"
    );
    // One continuation trains an unconditional head: there is no c to encode, nor for a
    // potential.
    let mut other = args.to_vec();
    other.extend(["--cond-encoding", "mean-hidden"]);
    for args in [
        &other[..],
        &[
            "train",
            "--task",
            "potential",
            "--cond-encoding",
            "mean-embedding",
        ][..],
    ] {
        let (ok, _, stderr) = tsmc(args);
        assert!(
            !ok && stderr
                .contains("--cond-encoding is for the conditional heads of --task infilling"),
            "{stderr}"
        );
    }
}

#[test]
fn train_fits_only_a_fresh_head_to_a_replay_pool() {
    for (args, message) in [
        (
            &["train", "--task", "potential", "--fit-epochs", "2"][..],
            "--fit-epochs fits the head to the exact samples CTL replays",
        ),
        (
            &[
                "train",
                "--task",
                "potential",
                "--method",
                "ctl",
                "--positives",
                "exact",
                "--replay",
                "pool.jsonl",
                "--resume",
                "head.safetensors",
                "--fit-epochs",
                "2",
            ][..],
            "--fit-epochs fits a fresh head before training; --resume continues a trained one",
        ),
    ] {
        let (ok, _, stderr) = tsmc(args);
        assert!(!ok && stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn train_rejects_unknown_positives_and_gibbs_positives_for_other_methods() {
    let (ok, _, stderr) = tsmc(&["train", "--task", "potential", "--positives", "oracle"]);
    assert!(!ok);
    // clap names the option, the bad value and the possible values.
    assert!(
        stderr.contains("invalid value 'oracle' for '--positives") && stderr.contains("gibbs"),
        "{stderr}"
    );
    // An evaluation past the run's updates would never happen: refused, not skipped.
    let (ok, _, stderr) = tsmc(&[
        "train",
        "--task",
        "potential",
        "--steps",
        "60",
        "--eval-at",
        "30,180",
    ]);
    assert!(
        !ok && stderr.contains("--eval-at 180 is past --steps 60"),
        "{stderr}"
    );
    // Replayed exact positives: a --replay file, CTL, the potential task, and never the
    // evaluation's own exact samples; --replay alone is refused too.
    for (args, message) in [
        (
            &["--positives", "exact"][..],
            "--positives exact replays the exact samples of --replay FILE",
        ),
        (
            &[
                "--positives",
                "exact",
                "--replay",
                "r.jsonl",
                "--method",
                "sixo",
            ][..],
            "--positives exact is for --method ctl",
        ),
        (
            &[
                "--positives",
                "exact",
                "--replay",
                "r.jsonl",
                "--exact",
                "r.jsonl",
            ][..],
            "--replay r.jsonl is also --exact",
        ),
        (
            &["--replay", "r.jsonl"][..],
            "--replay is for --positives exact",
        ),
        (
            &["--positives", "exact-csmc"][..],
            "--positives exact-csmc replays the exact samples of --replay FILE",
        ),
        (
            &[
                "--positives",
                "exact-csmc",
                "--replay",
                "r.jsonl",
                "--method",
                "rl",
            ][..],
            "--positives exact-csmc is for --method ctl",
        ),
    ] {
        let mut all = vec!["train", "--task", "potential"];
        all.extend_from_slice(args);
        let (ok, _, stderr) = tsmc(&all);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = tsmc(&[
        "train",
        "--task",
        "infilling-fixed",
        "--positives",
        "exact",
        "--replay",
        "r.jsonl",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--positives exact is for --task potential"),
        "{stderr}"
    );
    let (ok, _, stderr) = tsmc(&[
        "train",
        "--task",
        "infilling-fixed",
        "--method",
        "rl",
        "--positives",
        "gibbs",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--positives gibbs is for --method ctl"),
        "{stderr}"
    );
}

/// (seed, sampler, F_q, G_q, lower, upper) of one hand-made reproduce record.
type HandRow = (u64, &'static str, f64, f64, f64, f64);

/// Writes `dir`/records.jsonl with one task per row; `extra(sampler, lower)` adds fields to the
/// task (the bound rule and SMC runs; none for records older than them).
fn write_records(
    dir: &std::path::Path,
    rows: &[HandRow],
    extra: impl Fn(&str, f64) -> serde_json::Value,
) {
    let est = |m: f64| serde_json::json!({ "mean": m, "se": 0.1, "n": 16 });
    let text: String = rows
        .iter()
        .map(|&(seed, sampler, f, g, lo, up)| {
            let mut task =
                serde_json::json!({ "f_q": est(f), "g_q": est(g), "lower": lo, "upper": up });
            if let serde_json::Value::Object(more) = extra(sampler, lo) {
                task.as_object_mut().unwrap().extend(more);
            }
            serde_json::json!({
                "seed": seed, "sampler": sampler, "train_seconds": 1.0, "tasks": [task],
            })
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("records.jsonl"), text).unwrap();
}

/// The row of `sampler` in the summary's array `key` (`rows` or `smc_rows`).
fn sampler_row(summary: &serde_json::Value, key: &str, sampler: &str) -> serde_json::Value {
    summary[key]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sampler"] == sampler)
        .unwrap()
        .clone()
}

/// The reproduce table's arithmetic, checked against values computed by hand from a records
/// file written here (no model runs: `--table-only`).
#[test]
fn reproduce_table_arithmetic_matches_values_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let rows: [HandRow; 6] = [
        (0, "p0", -5.0, -1.0, -4.0, -2.0),
        (0, "ctl", -4.0, -2.0, -3.5, -2.5),
        (1, "p0", -6.0, -1.5, -4.2, -1.8),
        (1, "ctl", -4.5, -2.5, -3.8, -2.2),
        (2, "p0", -5.5, 0.0, -5.0, -2.0),
        (2, "ctl", -3.5, -2.0, -4.0, -3.0),
    ];
    // Two SMC runs per evaluation around its lower bound: squared deviations 0.5 (p0) and 0.02
    // (ctl) per (seed, task).
    let runs = |sampler: &str, lo: f64| {
        let d = if sampler == "p0" { 0.5 } else { 0.1 };
        vec![lo - d, lo + d]
    };
    write_records(
        dir.path(),
        &rows,
        |sampler, lo| serde_json::json!({ "rule": "smc", "lower_runs": runs(sampler, lo) }),
    );
    let out_dir = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = tsmc(&[
        "reproduce",
        "--task",
        "toxicity",
        "--table-only",
        "--out-dir",
        out_dir,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 degrees of freedom"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    // Per seed, log Z bounds are the means over the two samplers: seed 0 -> [-3.75, -2.25],
    // seed 1 -> [-4.0, -2.0], seed 2 -> [-4.5, -2.5]; midpoints -3.0, -3.0, -3.5.
    let z = &summary["log_z_per_task"];
    let close = |a: &serde_json::Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9;
    assert!(
        close(&z[0]["lower"], -3.75) && close(&z[0]["upper"], -2.25),
        "{z}"
    );
    assert!(
        close(&z[2]["lower"], -4.5) && close(&z[2]["upper"], -2.5),
        "{z}"
    );
    let row = |name: &str| sampler_row(&summary, "rows", name);
    let (p0, ctl) = (row("p0"), row("ctl"));
    // p0: KL(q||sigma) per seed = midpoint - F_q = 2, 3, 2: mean 7/3, SE = 1/3.
    assert!(close(&p0["kl_q_sigma"]["mean"], 7.0 / 3.0), "{p0}");
    assert!(close(&p0["kl_q_sigma"]["se"], 1.0 / 3.0), "{p0}");
    // p0: KL(sigma||q) per seed = G_q - midpoint = 2, 1.5, 3.5.
    assert!(close(&p0["kl_sigma_q"]["mean"], 7.0 / 3.0), "{p0}");
    // ctl: KL(q||sigma) per seed = 1, 1.5, 0.
    assert!(close(&ctl["kl_q_sigma"]["mean"], 2.5 / 3.0), "{ctl}");
    // Paired ΔKL(q||sigma) = F_q(p0) - F_q(ctl) = -1, -1.5, -2: mean -1.5, SE sqrt(0.25 / 3).
    assert!(close(&ctl["delta_kl_q_sigma"]["mean"], -1.5), "{ctl}");
    assert!(
        close(&ctl["delta_kl_q_sigma"]["se"], (0.25f64 / 3.0).sqrt()),
        "{ctl}"
    );
    // Paired ΔKL(sigma||q) = G_q(ctl) - G_q(p0) = -1, -1, -2.
    assert!(close(&ctl["delta_kl_sigma_q"]["mean"], -4.0 / 3.0), "{ctl}");
    // The printed interval is the Student t half-width, t(0.975, 2) = 4.3027 times the SE.
    let half = 4.302_652_73 * (0.25f64 / 3.0).sqrt();
    assert!(
        stdout.contains(&format!("-1.500 ± {half:.3}")),
        "expected -1.500 ± {half:.3} in\n{stdout}"
    );
    // The SMC table: widths per seed p0 2, 2.4, 3 and ctl 1, 1.6, 1; paired -1, -0.8, -2.
    let smc = |name: &str| sampler_row(&summary, "smc_rows", name);
    let (p0, ctl) = (smc("p0"), smc("ctl"));
    assert!(close(&p0["lower"]["mean"], -13.2 / 3.0), "{p0}");
    assert!(close(&p0["width"]["mean"], 7.4 / 3.0), "{p0}");
    assert!(close(&ctl["width"]["mean"], 3.6 / 3.0), "{ctl}");
    assert!(close(&ctl["width_vs_p0"]["mean"], -3.8 / 3.0), "{ctl}");
    // Pooled sd of log Zhat: sqrt(3 x 0.5 / 3) for p0, sqrt(3 x 0.02 / 3) for ctl, df 3 each.
    assert!(close(&p0["sd_log_zhat"][0], 0.5f64.sqrt()), "{p0}");
    assert!(close(&ctl["sd_log_zhat"][0], 0.02f64.sqrt()), "{ctl}");
    assert_eq!(ctl["sd_log_zhat"][1], 3, "{ctl}");
    let svg = std::fs::read_to_string(dir.path().join("smc.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("ctl (sd 0.14)"),
        "{svg}"
    );
    // A rebuild keeps the model the run named, not --model's default.
    assert_eq!(summary["model"], "default", "{summary}");
    let mut named = summary.clone();
    named["model"] = serde_json::json!("/models/run.gguf");
    std::fs::write(dir.path().join("summary.json"), named.to_string()).unwrap();
    let (ok, _, stderr) = tsmc(&[
        "reproduce",
        "--task",
        "toxicity",
        "--table-only",
        "--out-dir",
        out_dir,
    ]);
    assert!(ok, "{stderr}");
    let rebuilt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(rebuilt["model"], "/models/run.gguf", "{rebuilt}");

    // Records from before the SMC rule was stored: their bounds are the tighter of SIS and
    // SMC, so they make no SMC table, and the chart still opens.
    let old = tempfile::tempdir().unwrap();
    write_records(old.path(), &rows, |_, _| serde_json::json!({}));
    let (ok, stdout, stderr) = tsmc(&[
        "reproduce",
        "--task",
        "toxicity",
        "--table-only",
        "--out-dir",
        old.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("no SMC table"), "{stdout}");
    let svg = std::fs::read_to_string(old.path().join("smc.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
}

/// With systematic resampling conditional SMC has no guaranteed upper bound: the demo prints
/// none (and writes null) instead of an unguaranteed number.
#[test]
fn demo_with_systematic_resampling_prints_no_conditional_smc_upper_bound() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.jsonl");
    let (ok, stdout, stderr) = tsmc(&[
        "demo",
        "--horizon",
        "3",
        "--particles",
        "4",
        "--seeds",
        "4",
        "--scheme",
        "systematic",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("n/a (needs multinomial)"), "{stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["smc_upper"].is_null()), "{lines:?}");
}

/// `tsmc demo | head -0`: a reader that closes the pipe before tsmc writes ends tsmc quietly
/// (as for other command-line tools), never with a panic.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsmc"))
        .args([
            "demo",
            "--horizon",
            "3",
            "--particles",
            "4,16",
            "--seeds",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: tsmc has not printed yet (it is still starting).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A constraint on every token is an exact twist: every particle satisfies it (no token of the
/// continuation contains an "e"), and log Zhat estimates log p0(constraint holds) < 0.
#[test]
fn sample_with_a_token_constraint_draws_only_allowed_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lipogram.jsonl");
    let (ok, stdout, stderr) = tsmc(&[
        "sample",
        "-k",
        "4",
        "-t",
        "4",
        "--constraint",
        "no-chars:e",
        "--potential",
        "none",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("constraint no-chars:e"), "{stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let particles: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["type"] == "particle").collect();
    assert_eq!(particles.len(), 4);
    for p in &particles {
        let text = p["text"].as_str().unwrap();
        assert!(!text.contains('e'), "{text:?}");
        assert!(p["weight"].as_f64().unwrap() > 0.0, "{p}");
    }
    let run = lines.iter().find(|l| l["type"] == "run").unwrap();
    assert_eq!(run["constraint"], "no-chars:e");
    let log_z = run["log_z_hat"].as_f64().unwrap();
    assert!(log_z.is_finite() && log_z < 0.0, "{log_z}");
    let (ok, _, stderr) = tsmc(&["sample", "--constraint", "letters:e"]);
    assert!(!ok && stderr.contains("unknown constraint"), "{stderr}");
}

/// Variable-length outputs: with `--max-tokens` a particle ends at the model's end token
/// (JSONL: its length and whether it finished); `force-end` makes every output end, truncate
/// leaves unfinished ones at exactly the maximum. Boundary resampling runs beside it.
#[test]
fn sample_with_max_tokens_ends_particles_at_the_end_token() {
    let dir = tempfile::tempdir().unwrap();
    for at_max in ["truncate", "force-end"] {
        let out = dir.path().join(format!("{at_max}.jsonl"));
        let (ok, stdout, stderr) = tsmc(&[
            "sample",
            "-k",
            "6",
            "--max-tokens",
            "12",
            "--at-max",
            at_max,
            "--resample-at",
            "word",
            "--potential",
            "none",
            "--prompt",
            "Say hi.",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("at most 12 tokens"), "{stdout}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let run = lines.iter().find(|l| l["type"] == "run").unwrap();
        assert_eq!(run["max_tokens"], 12);
        assert_eq!(run["resample_at"], "word");
        let end_tokens = run["end_tokens"].as_array().unwrap().clone();
        assert!(!end_tokens.is_empty());
        let mut finished = 0;
        for p in lines.iter().filter(|l| l["type"] == "particle") {
            let len = p["length"].as_u64().unwrap();
            let tokens = p["tokens"].as_array().unwrap();
            assert_eq!(tokens.len() as u64, len, "{p}");
            assert!(tokens.iter().all(|t| !end_tokens.contains(t)), "{p}");
            assert!(len <= 12, "{p}");
            if p["finished"].as_bool().unwrap() {
                finished += 1;
            } else {
                assert_eq!(len, 12, "an unfinished output stops at the maximum: {p}");
                assert_eq!(at_max, "truncate", "{p}");
            }
        }
        assert_eq!(run["num_finished"], finished);
    }
    let (ok, _, stderr) = tsmc(&["sample", "--at-max", "force-end"]);
    assert!(!ok && stderr.contains("--max-tokens"), "{stderr}");
    let (ok, _, stderr) = tsmc(&["sample", "--max-tokens", "4", "-t", "4"]);
    assert!(!ok && stderr.contains("--tokens"), "{stderr}");
    let (ok, _, stderr) = tsmc(&["sample", "--criterion", "every:0"]);
    assert!(!ok && stderr.contains("every"), "{stderr}");
}

/// A classifier scoring partial text acts as a twist on the targets (`--prefix-twist`): the run
/// completes, records it, and its log Zhat estimates the same quantity (finite, below 0).
#[test]
fn sample_with_a_prefix_twist_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prefix.jsonl");
    let (ok, _, stderr) = tsmc(&[
        "sample",
        "-k",
        "4",
        "-t",
        "4",
        "--potential",
        "toxicity:beta=1",
        "--prefix-twist",
        "toxicity:beta=1",
        "--prefix-stride",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let run: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(run["prefix_stride"], 2);
    assert!(
        run["prefix_twist"].as_str().unwrap().contains("toxicity"),
        "{run}"
    );
    let log_z = run["log_z_hat"].as_f64().unwrap();
    assert!(log_z.is_finite() && log_z < 0.0, "{log_z}");
    let (ok, _, stderr) = tsmc(&["sample", "--prefix-stride", "2"]);
    assert!(!ok && stderr.contains("--prefix-twist"), "{stderr}");
}

/// Grammar potentials and constraints (llguidance): `--potential json-schema:FILE` runs as a
/// prefix constraint and every weighted output is valid JSON under the schema; bad regexes,
/// schemas and grammars are errors naming the problem, and a constraint that no output within
/// the limit satisfies ends with a message, not a panic.
#[test]
fn sample_under_a_json_schema_gives_valid_json_and_bad_grammars_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("person.jsonl");
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/json-schemas/06-person.json"
    );
    let potential = format!("json-schema:{schema_path}");
    let (ok, stdout, stderr) = tsmc(&[
        "sample",
        "-k",
        "4",
        "--max-tokens",
        "40",
        "--potential",
        &potential,
        "--prompt",
        "<|im_start|>user\nGive a person with a name and an age, as JSON.<|im_end|>\n<|im_start|>assistant\n",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("checked at every token"), "{stderr}");
    assert!(
        stdout.contains(&format!("constraint {potential}")),
        "{stdout}"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut weighted = 0;
    for p in lines.iter().filter(|l| l["type"] == "particle") {
        if p["weight"].as_f64().unwrap() > 0.0 {
            weighted += 1;
            let value: serde_json::Value = serde_json::from_str(p["text"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(validator.is_valid(&value), "{p}");
        }
    }
    assert!(weighted > 0);

    let bad_schema = dir.path().join("bad.json");
    std::fs::write(
        &bad_schema,
        r#"{"type": "integer", "minimum": 5, "maximum": 3}"#,
    )
    .unwrap();
    let bad_lark = dir.path().join("bad.lark");
    std::fs::write(&bad_lark, "start: greeting\n").unwrap();
    let bad_schema = format!("json-schema:{}", bad_schema.display());
    let bad_lark = format!("lark:{}", bad_lark.display());
    for (flag, spec, expected) in [
        ("--constraint", "regex:a(b", "unclosed group"),
        ("--constraint", r"regex:\bking\b", "lookarounds"),
        ("--constraint", bad_schema.as_str(), "Unsatisfiable schema"),
        ("--potential", bad_schema.as_str(), "Unsatisfiable schema"),
        ("--constraint", bad_lark.as_str(), "greeting"),
        (
            "--constraint",
            "json-schema:/no/such.json",
            "cannot read /no/such.json",
        ),
    ] {
        let (ok, _, stderr) = tsmc(&["sample", "--max-tokens", "4", flag, spec]);
        assert!(!ok && stderr.contains(expected), "{spec}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // "ab" forty times takes more than 3 tokens of this vocabulary: no output within the
    // limit is accepted, and the run ends with the constraint's message.
    let (ok, _, stderr) = tsmc(&[
        "sample",
        "-k",
        "2",
        "--max-tokens",
        "3",
        "--constraint",
        "regex:(ab){40}",
        "--potential",
        "none",
    ]);
    assert!(
        !ok && stderr.contains("constraint regex:(ab){40}"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
