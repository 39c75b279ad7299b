//! The scoring example as a user calls it, on the default model, against the reference values;
//! on a model whose activations overflow it fails with a message instead of printing `null`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{copy_tiny_model, fill_tensor, write_word_tokenizer};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn score_example_prints_reference_ids_top5_and_log_probability() {
    let out = Command::new(example("score"))
        .args([
            "--model",
            "default",
            "--prompt",
            "Once upon a time",
            "--continuation",
            ", there was a little girl named Lily.",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["prompt_ids"],
        serde_json::json!([6403, 1980, 253, 655])
    );
    assert_eq!(
        json["continuation_ids"],
        serde_json::json!([28, 665, 436, 253, 1838, 8180, 3365, 14176, 30])
    );
    let top5 = json["top5"].as_array().unwrap();
    let want = [
        (28, -0.0755),
        (281, -4.1350),
        (665, -4.8503),
        (260, -5.2820),
        (253, -5.2895),
    ];
    for (got, (id, lp)) in top5.iter().zip(want) {
        assert_eq!(got[0], id);
        assert!((got[1].as_f64().unwrap() - lp).abs() < 1e-3, "{got}");
    }
    // log p(", there was a little girl named Lily." | "Once upon a time") includes the comma.
    let s = json["sum_logprob"].as_f64().unwrap();
    assert!((s - (-0.0755 - 13.9315)).abs() < 2e-3, "{s}");

    let out = Command::new(example("score"))
        .args([
            "--model",
            "default",
            "--prompt",
            "The movie was absolutely",
            "--continuation",
            " terrible and boring.",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (json["sum_logprob"].as_f64().unwrap() - -15.3947).abs() < 1e-3,
        "{json}"
    );
    assert_eq!(
        json["continuation_ids"],
        serde_json::json!([13321, 284, 19290, 30])
    );
}

#[test]
fn score_example_reports_a_missing_model_clearly() {
    let out = Command::new(example("score"))
        .args(["--model", "/no/such/dir", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
}

#[test]
fn score_example_fails_on_non_finite_log_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_tiny_model("llama", &tmp.path().join("llama"));
    write_word_tokenizer(&dir, 320, &[]);
    let run = |dir: &std::path::Path| {
        Command::new(example("score"))
            .args(["--model", dir.to_str().unwrap()])
            .args(["--prompt", "w1 w2", "--continuation", " w3 w4"])
            .output()
            .unwrap()
    };
    // The tiny model scores finitely.
    let out = run(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["sum_logprob"].as_f64().unwrap() < 0.0, "{json}");
    // Its final norm scaled to f32::MAX overflows: an error, not `"sum_logprob": null`.
    fill_tensor(&dir, "model.norm.weight", f32::MAX);
    let out = run(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("null"), "{stdout}");
    assert!(stderr.contains("overflowed"), "{stderr}");
}
