//! Hostile inputs, as a user meets them through the `tsmc` binary: checkpoints that are one
//! unit, outputs that cannot destroy inputs, readers of our own JSONL that validate it, sizes
//! checked before allocation. (Runs stopped part-way: `tests/interrupted.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn tsmc<A: AsRef<str>>(args: &[A]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsmc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fails_with<A: AsRef<str> + std::fmt::Debug>(args: &[A], needle: &str) {
    let (ok, _, stderr) = tsmc(args);
    assert!(!ok, "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tiny_model_copy(dir: &Path) -> PathBuf {
    let src = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../testdata/reference/tiny-models/llama");
    let dst = dir.join("model");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    // A tokenizer of the words w0..w319 (ids 0..319), so that the model runs without download.
    let vocab: serde_json::Map<String, serde_json::Value> = (0..320)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null,
        "decoder": null, "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "w0" }
    });
    std::fs::write(dst.join("tokenizer.json"), tok.to_string()).unwrap();
    dst
}

#[test]
fn an_output_that_is_an_input_a_link_or_a_device_is_refused_and_the_input_survives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model_copy(d);
    let config = model.join("config.json");
    let config_before = std::fs::read(&config).unwrap();
    let exact = d.join("exact.jsonl");
    std::fs::write(&exact, "{\"type\": \"sample\", \"tokens\": [1]}\n").unwrap();
    let sample = d.join("s.jsonl");
    std::fs::write(&sample, "{}\n").unwrap();
    fails_with(
        &["sample", "--model", s(&model), "--out", s(&config)],
        "inside --model",
    );
    fails_with(
        &[
            "train",
            "--model",
            s(&model),
            "--checkpoint",
            s(&model.join("model.safetensors")),
        ],
        "inside --model",
    );
    fails_with(
        &["bounds", "--exact", s(&exact), "--out", s(&exact)],
        "same file as --exact",
    );
    // The same file by another spelling.
    let other_spelling = d.join("model/../s.jsonl");
    fails_with(
        &[
            "report",
            "--sample",
            s(&sample),
            "--out",
            s(&other_spelling),
        ],
        "same file as --sample",
    );
    fails_with(
        &["train", "--checkpoint", s(&d.join("h.json"))],
        "ends in .json",
    );
    fails_with(
        &[
            "train",
            "--checkpoint",
            s(&d.join("c.jsonl")),
            "--out",
            s(&d.join("c.jsonl")),
        ],
        "two outputs",
    );
    fails_with(
        &["train", "--resume", s(&exact), "--out", s(&exact)],
        "same file as --resume",
    );
    #[cfg(unix)]
    {
        let link = d.join("link.jsonl");
        std::os::unix::fs::symlink(&sample, &link).unwrap();
        fails_with(&["demo", "--out", s(&link)], "symbolic link");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        fails_with(&["demo", "--out", "/dev/null"], "not a regular file");
    }
    fails_with(&["demo", "--out", s(&model)], "not a regular file");
    fails_with(
        &["train", "--eval-tasks", "0"],
        "--eval-tasks must be at least 1",
    );
    assert_eq!(std::fs::read(&config).unwrap(), config_before);
    assert_eq!(std::fs::read_to_string(&sample).unwrap(), "{}\n");
    assert!(std::fs::read_to_string(&exact).unwrap().contains("sample"));
}

/// `tsmc reproduce` reads the model (and, with `--table-only`, records.jsonl in `--out-dir`);
/// the files it writes in `--out-dir` pass the same output rule as every other output.
#[test]
fn reproduce_out_dir_files_cannot_be_inputs_links_or_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model_copy(d);
    let config_before = std::fs::read(model.join("config.json")).unwrap();
    let model_arg = s(&model).to_string();
    let reproduce = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["reproduce", "--task", "toxicity", "--model"]
            .map(String::from)
            .to_vec();
        args.push(model_arg.clone());
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    // The model directory as the output directory: records.jsonl would land among its files.
    fails_with(&reproduce(&["--out-dir", s(&model)]), "inside --model");
    // A sub-folder of the model directory, by another spelling.
    let inside = d.join("other/../model/runs");
    std::fs::create_dir_all(d.join("other")).unwrap();
    fails_with(&reproduce(&["--out-dir", s(&inside)]), "inside --model");
    // A file (here the model's weights) as the output directory.
    fails_with(
        &reproduce(&["--out-dir", s(&model.join("model.safetensors"))]),
        "is not a directory",
    );
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    #[cfg(unix)]
    {
        // table.md a link to the model's config, summary.json a device.
        std::os::unix::fs::symlink(model.join("config.json"), out.join("table.md")).unwrap();
        fails_with(
            &reproduce(&["--table-only", "--out-dir", s(&out)]),
            "table.md in --out-dir",
        );
        std::fs::remove_file(out.join("table.md")).unwrap();
        std::os::unix::fs::symlink("/dev/null", out.join("summary.json")).unwrap();
        fails_with(&reproduce(&["--out-dir", s(&out)]), "symbolic link");
        std::fs::remove_file(out.join("summary.json")).unwrap();
        // records.jsonl a link to the model's weights: an output of a full run.
        std::os::unix::fs::symlink(model.join("model.safetensors"), out.join("records.jsonl"))
            .unwrap();
        fails_with(
            &reproduce(&["--out-dir", s(&out)]),
            "records.jsonl in --out-dir",
        );
    }
    assert_eq!(
        std::fs::read(model.join("config.json")).unwrap(),
        config_before
    );
    // A run that cannot load its model leaves the records of an earlier run alone.
    let kept = d.join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("records.jsonl"), "{}\n").unwrap();
    let missing = d.join("no-such-model");
    fails_with(
        &[
            "reproduce",
            "--task",
            "toxicity",
            "--model",
            s(&missing),
            "--out-dir",
            s(&kept),
        ],
        "no-such-model",
    );
    assert_eq!(
        std::fs::read_to_string(kept.join("records.jsonl")).unwrap(),
        "{}\n"
    );
}

/// A `tsmc sample --out` file of K = 2 particles and T = 2 tokens, with `edit` applied to the
/// run record.
fn sample_file(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let particle = |i: usize| {
        serde_json::json!({ "type": "particle", "particle": i, "text": "x", "tokens": [1, 2],
            "log_weight": 0.0, "weight": 0.5, "log_p0": -1.0, "log_phi": 0.0 })
    };
    let mut run = serde_json::json!({
        "type": "run", "model": "m", "prompt": "p", "prompt_tokens": [1], "potential": "q",
        "method": "smc", "num_particles": 2, "num_tokens": 2, "seed": 0, "resampling": null,
        "log_z_hat": -1.0, "final_ess": 2.0,
        "steps": [{ "step": 1, "ess": 2.0 }, { "step": 2, "ess": 1.5 }],
        "ancestors": [[0, 0]],
    });
    edit(&mut run);
    let text = format!("{}\n{}\n{}\n", particle(0), particle(1), run);
    std::fs::write(path, text).unwrap();
}

#[test]
fn report_validates_every_record_and_names_the_line_of_the_first_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, html) = (d.join("in.jsonl"), d.join("r.html"));
    let report = |option: &str, needle: &str| {
        fails_with(&["report", option, s(&input), "--out", s(&html)], needle);
        assert!(!html.exists());
    };
    sample_file(&input, |_| {});
    let (ok, _, stderr) = tsmc(&["report", "--sample", s(&input), "--out", s(&html)]);
    assert!(ok, "{stderr}");
    std::fs::remove_file(&html).unwrap();
    sample_file(&input, |r| r["ancestors"] = serde_json::json!([[0, 7]]));
    report("--sample", "line 3: ancestors row 0 holds index 7");
    sample_file(&input, |r| r["ancestors"] = serde_json::json!([[0]]));
    report("--sample", "line 3: ancestors row 0 has 1 entries");
    sample_file(&input, |r| {
        r["num_particles"] = serde_json::json!(1_000_000_000_000u64)
    });
    report("--sample", "holds 2 particle records");
    sample_file(&input, |r| r["num_tokens"] = serde_json::json!(5));
    report("--sample", "2 steps, but num_tokens is 5");
    sample_file(&input, |r| r["steps"][1]["ess"] = serde_json::json!("many"));
    report("--sample", "line 3: field `ess` must be a number");
    std::fs::write(&input, "").unwrap();
    for option in ["--sample", "--bounds", "--curve"] {
        report(option, "no records");
    }
    std::fs::write(&input, "{\"type\": \"particle\"}\n[1, 2]\n").unwrap();
    report("--sample", "line 2: not a JSON object");
    // A bounds file given as a sample, a sample file as bounds: wrong-typed inputs.
    std::fs::write(&input, "{\"type\": \"bounds\", \"row\": {}}\n").unwrap();
    report("--sample", "line 1: record type \"bounds\"");
    sample_file(&input, |_| {});
    report("--bounds", "line 1: record type \"particle\"");
    std::fs::write(
        &input,
        "{\"type\": \"bounds\", \"row\": {\"k\": 4, \"sis_lower\": {\"mean\": null}}}\n",
    )
    .unwrap();
    report(
        "--bounds",
        "line 1: field `sis_lower.mean` must be a number",
    );
    // Curves: null KLs (what --eval-tasks 0 once wrote), loss lines only, a bad step.
    std::fs::write(
        &input,
        "{\"step\": 0, \"loss\": 1.0}\n{\"step\": 1, \"sampler\": \"twisted\", \"eval\": {\"kl_q_sigma\": {\"mean\": null}, \"kl_sigma_q\": {\"mean\": 1.0}}}\n",
    )
    .unwrap();
    report(
        "--curve",
        "line 2: field `eval.kl_q_sigma.mean` must be a number",
    );
    std::fs::write(&input, "{\"step\": 0, \"loss\": 1.0}\n").unwrap();
    report("--curve", "no evaluation of the twist");
    std::fs::write(&input, "{\"step\": -1, \"loss\": 1.0}\n").unwrap();
    report("--curve", "line 1: field `step`");
    std::fs::write(&input, "{\"step\": 0, \"loss\": 1.0}\nnot json\n").unwrap();
    report("--curve", "line 2 is not a valid record");
}

/// The JSON metadata inside a checkpoint's safetensors header, edited as a hostile user would.
fn edit_checkpoint(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let key = "tsmc.twist_head";
    let mut meta: serde_json::Value =
        serde_json::from_str(header["__metadata__"][key].as_str().unwrap()).unwrap();
    edit(&mut meta);
    header["__metadata__"][key] = meta.to_string().into();
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Whether a checkpoint file is complete: its header parses, carries the metadata and Adam's
/// state, and the file holds exactly the bytes the header declares.
fn checkpoint_is_complete(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let end = header
        .as_object()
        .unwrap()
        .values()
        .filter_map(|t| t["data_offsets"][1].as_u64())
        .max()
        .unwrap() as usize;
    header["__metadata__"]["tsmc.twist_head"].is_string()
        && header["optimizer.state"].is_object()
        && bytes.len() == 8 + n + end
}

fn train_args<'a>(ckpt: &'a str, curve: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--task",
        "potential",
        "--method",
        "ctl",
        "--steps",
        "2",
        "-k",
        "2",
        "-t",
        "1",
        "--checkpoint",
        ckpt,
        "--out",
        curve,
    ]
}

#[test]
fn checkpoints_with_a_wrapping_step_or_inconsistent_conditioning_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ckpt, curve) = (d.join("h.safetensors"), d.join("c.jsonl"));
    let (ok, _, stderr) = tsmc(&train_args(s(&ckpt), s(&curve)));
    assert!(ok, "{stderr}");
    assert!(checkpoint_is_complete(&ckpt));
    let resume = |needle: &str| {
        let mut args = train_args(s(&ckpt), s(&curve));
        args.extend(["--resume", s(&ckpt)]);
        fails_with(&args, needle);
    };
    edit_checkpoint(&ckpt, |m| {
        m["metadata"]["step"] = serde_json::json!(u64::MAX)
    });
    resume("more updates would pass the largest update count");
    edit_checkpoint(&ckpt, |m| m["metadata"]["step"] = serde_json::json!("two"));
    resume("metadata field `step` must be the update count");
    // A conditioning state without conditioning tokens: no panic in sample, bounds or resume.
    edit_checkpoint(&ckpt, |m| {
        m["metadata"]["step"] = serde_json::json!(2);
        m["cond_hidden"] = serde_json::json!(vec![0.1f32; 576]);
    });
    fails_with(
        &["sample", "-t", "1", "-k", "2", "--twist", s(&ckpt)],
        "cond_hidden",
    );
    let exact = d.join("e.jsonl");
    std::fs::write(&exact, "{\"type\": \"sample\", \"tokens\": [1]}\n").unwrap();
    fails_with(
        &[
            "bounds",
            "-t",
            "1",
            "--twist",
            s(&ckpt),
            "--exact",
            s(&exact),
            "--out",
            s(&d.join("b.jsonl")),
        ],
        "cond_hidden",
    );
    resume("cond_hidden");
}

/// Sizes are checked before anything is allocated: counts beyond any use, runs that would need
/// more memory than the budget, horizons beyond the model's context, demo tables and
/// enumerations that would not fit. Each is a clear error naming the option.
#[test]
fn sizes_are_checked_before_allocation() {
    let bin = env!("CARGO_BIN_EXE_tsmc");
    for (args, needle) in [
        (
            &["sample", "-k", "100000000", "-t", "2"][..],
            "--particles must be at most",
        ),
        (
            &["sample", "-k", "18446744073709551615", "-t", "2"][..],
            "--particles must be at most",
        ),
        (
            &["sample", "-k", "1000000", "-t", "2", "--memory-budget", "8"][..],
            "raise --memory-budget",
        ),
        (
            &["sample", "-k", "2", "-t", "10000000"][..],
            "context length",
        ),
        (&["demo", "--horizon", "64"][..], "enumeration size"),
        (&["demo", "--vocab", "100000"][..], "--vocab 100000"),
        (
            &["sample", "--memory-budget=-1"][..],
            "--memory-budget must be a positive",
        ),
    ] {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The rest of the probe's size failures, on the tiny model (context 128): counts of 2^64 - 1
/// in every command that takes them (capacity overflows once), a 10,000-token prompt and
/// horizons past the context (memory filled once), particle counts over the memory budget in
/// `train` and `bounds`. Each is a clear error naming the option or the context.
#[test]
fn every_command_checks_counts_prompts_and_horizons_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model_copy(d);
    let m = s(&model);
    let max = "18446744073709551615";
    let exact = d.join("e.jsonl");
    std::fs::write(&exact, "{\"type\": \"sample\", \"tokens\": [1, 2]}\n").unwrap();
    let e = s(&exact);
    // The train runs' outputs go to the test's folder (the defaults would land in the crate).
    let (curve, ckpt) = (d.join("c.jsonl"), d.join("h.safetensors"));
    let (c, h) = (s(&curve), s(&ckpt));
    let long_prompt = vec!["w1"; 10_000].join(" ");
    let lp = long_prompt.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sample", "-t", max], "--tokens must be at most"),
        (vec!["exact", "-n", max], "--samples must be at most"),
        (vec!["exact", "-t", max], "--tokens must be at most"),
        (
            vec!["exact", "--infilling", max],
            "--infilling must be at most",
        ),
        (vec!["train", "-k", max], "--particles must be at most"),
        (vec!["train", "-t", max], "--tokens must be at most"),
        (
            vec!["bounds", "--exact", e, "--fq-samples", max],
            "--fq-samples must be at most",
        ),
        (
            vec!["reproduce", "--task", "toxicity", "-k", max],
            "--particles must be at most",
        ),
        (
            vec!["sample", "--model", m, "--prompt", lp, "-t", "2"],
            "context length of 128",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--prompt",
                lp,
                "--task",
                "potential",
                "--potential",
                "keyword:w5",
            ],
            "context length of 128",
        ),
        (
            vec![
                "exact",
                "--model",
                m,
                "--prompt",
                "w1",
                "--potential",
                "keyword:w5",
                "-t",
                "1000",
            ],
            "context length of 128",
        ),
        (
            vec![
                "exact",
                "--model",
                m,
                "--prompt",
                "w1",
                "--infilling",
                "200",
                "-t",
                "2",
            ],
            "context length of 128",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--prompt",
                "w1",
                "-k",
                "16777216",
                "-t",
                "2",
                "--task",
                "potential",
                "--potential",
                "keyword:w5",
                "--memory-budget",
                "1",
            ],
            "raise --memory-budget",
        ),
        (
            vec![
                "bounds",
                "--model",
                m,
                "--prompt",
                "w1",
                "--exact",
                e,
                "-t",
                "2",
                "--potential",
                "keyword:w5",
                "--fq-samples",
                "16777216",
                "--memory-budget",
                "1",
            ],
            "raise --memory-budget",
        ),
    ];
    let o = d.join("o.jsonl");
    for (mut args, needle) in cases {
        match args[0] {
            "train" => args.extend(["--out", c, "--checkpoint", h]),
            "exact" | "bounds" => args.extend(["--out", s(&o)]),
            _ => {}
        }
        fails_with(&args, needle);
    }
    // A run refused before it starts leaves no output behind.
    assert!(!curve.exists() && !ckpt.exists() && !o.exists());
}
