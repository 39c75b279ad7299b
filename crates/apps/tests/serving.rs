//! `tsmc sample --model http://...` against a fake llama-server in this process that answers
//! with the default model's own next-token log-probabilities (computed here with lm-burn, the
//! whole context prefilled per request) and tokenizes with its tokenizer: with N = V the run
//! gives the local run's particles; two replicas, one dying mid-run, give the single-server
//! run; what a served model cannot do is a clear error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lm_burn::default_model::ensure_default_model;
use lm_burn::{BurnLm, ModelTokenizer, default_device};
use serde_json::{Value, json};
use smc_core::model::{DecodeSession, LanguageModel};

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

/// The default model, loaded once and used by one request at a time.
fn model() -> &'static Mutex<BurnLm> {
    static LM: OnceLock<Mutex<BurnLm>> = OnceLock::new();
    LM.get_or_init(|| {
        let path = ensure_default_model().unwrap();
        Mutex::new(BurnLm::from_gguf(&path, &default_device()).unwrap())
    })
}

fn tokenizer() -> &'static ModelTokenizer {
    static T: OnceLock<ModelTokenizer> = OnceLock::new();
    T.get_or_init(|| ModelTokenizer::load("default").unwrap())
}

/// How the fake server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Good,
    /// Its tokenizer gives other ids (every id + 1).
    OtherTokenizer,
    /// It has no /tokenize.
    NoTokenize,
    /// It reports another vocabulary size.
    OtherVocab,
}

struct Fake {
    mode: Mode,
    /// Completion requests answered before the server dies.
    lives: usize,
    requests: AtomicUsize,
    dead: AtomicBool,
    addr: SocketAddr,
}

/// Starts a fake llama-server; returns its URL and state.
fn start(mode: Mode, lives: usize) -> (String, Arc<Fake>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        mode,
        lives,
        requests: AtomicUsize::new(0),
        dead: AtomicBool::new(false),
        addr,
    });
    let shared = Arc::clone(&fake);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.dead.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let fake = Arc::clone(&shared);
            std::thread::spawn(move || {
                let _ = serve(stream, &fake);
            });
        }
    });
    (format!("http://{addr}"), fake)
}

fn serve(stream: TcpStream, fake: &Fake) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        if fake.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let vocab = tokenizer().vocab;
        let (status, text) = match path {
            "/v1/models" => {
                let n_vocab = if fake.mode == Mode::OtherVocab {
                    100
                } else {
                    vocab
                };
                let meta = json!({"vocab_type": 2, "n_vocab": n_vocab});
                (
                    200,
                    json!({"data": [{"id": "/srv/SmolLM2.gguf", "meta": meta}]}),
                )
            }
            "/tokenize" if fake.mode == Mode::NoTokenize => (404, json!({"error": "no route"})),
            "/tokenize" => {
                let text = request["content"].as_str().unwrap_or("");
                let mut ids = tokenizer().tokenizer.encode(text).unwrap();
                if fake.mode == Mode::OtherTokenizer {
                    ids.iter_mut().for_each(|t| *t = (*t + 1) % vocab as u32);
                }
                (200, json!({"tokens": ids}))
            }
            "/completion" => {
                if fake.requests.fetch_add(1, Ordering::SeqCst) >= fake.lives {
                    fake.dead.store(true, Ordering::SeqCst);
                    let _ = TcpStream::connect(fake.addr);
                    return Ok(());
                }
                (200, completion(&request))
            }
            _ => (404, json!({"error": "no route"})),
        };
        let text = text.to_string();
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        writer.write_all(response.as_bytes())?;
    }
}

/// The model's next-token log-probabilities after `tokens`.
fn row_after(tokens: &[u32]) -> Vec<f64> {
    let lm = model().lock().unwrap();
    let mut session = lm.start(tokens, 1).unwrap();
    session.next_log_probs().unwrap().log_probs.row(0).to_vec()
}

/// The top `n_probs` next-token log-probabilities after the request's token ids; with
/// `return_tokens`, `n_predict` tokens drawn from the model with the request's seed.
fn completion(request: &Value) -> Value {
    let tokens: Vec<u32> = request["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    if request["return_tokens"] == json!(true) {
        let mut state = request["seed"].as_u64().unwrap();
        let mut context = tokens.clone();
        let (mut ids, mut probs) = (Vec::new(), Vec::new());
        for _ in 0..request["n_predict"].as_u64().unwrap() {
            let row = row_after(&context);
            // splitmix64: a uniform draw without a random-number crate.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let mut u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
            let v = (0..row.len())
                .find(|&v| {
                    u -= row[v].exp();
                    u < 0.0
                })
                .unwrap_or(row.len() - 1);
            ids.push(v);
            probs.push(json!({"id": v, "logprob": row[v], "top_logprobs": []}));
            context.push(v as u32);
        }
        return json!({"content": "", "tokens": ids, "completion_probabilities": probs});
    }
    let n = request["n_probs"].as_u64().unwrap() as usize;
    let row = row_after(&tokens);
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let top: Vec<Value> = order
        .iter()
        .take(n)
        .map(|&v| json!({"id": v, "logprob": row[v]}))
        .collect();
    json!({"content": "", "completion_probabilities": [{"top_logprobs": top}]})
}

fn records(path: &std::path::Path) -> (Vec<Value>, Value) {
    let lines: Vec<Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let run = lines.iter().find(|l| l["type"] == "run").unwrap().clone();
    let mut particles: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["type"] == "particle")
        .collect();
    particles.sort_by_key(|p| p["particle"].as_u64());
    (particles, run)
}

/// The README's main job, short.
const MAIN_JOB: [&str; 12] = [
    "sample",
    "--constraint",
    "no-chars:eE",
    "--potential",
    "none",
    "--max-tokens",
    "5",
    "--resample-at",
    "word",
    "-k",
    "4",
    "--seed=2",
];

#[test]
fn with_the_whole_vocabulary_a_served_run_gives_the_local_particles() {
    let dir = tempfile::tempdir().unwrap();
    let (url, fake) = start(Mode::Good, usize::MAX);
    let local = dir.path().join("local.jsonl");
    let served = dir.path().join("served.jsonl");
    let (ok, _, stderr) = tsmc(&[&MAIN_JOB[..], &["--out", local.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    let v = tokenizer().vocab.to_string();
    let args = [
        "--model",
        &url,
        "--top-n",
        &v,
        "--out",
        served.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = tsmc(&[&MAIN_JOB[..], &args].concat());
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("log Zhat") && stdout.contains(&url),
        "{stdout}"
    );
    eprintln!("{stdout}");
    assert!(fake.requests.load(Ordering::SeqCst) > 0);
    let (local, local_run) = records(&local);
    let (served, served_run) = records(&served);
    for (a, b) in local.iter().zip(&served) {
        assert_eq!(a["tokens"], b["tokens"], "{a}\n{b}");
    }
    // Rows recomputed per request (batch of one, whole context) differ from cached decoding
    // in the last bits of f32 arithmetic only.
    let (a, b) = (
        local_run["log_z_hat"].as_f64().unwrap(),
        served_run["log_z_hat"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-3, "log Zhat {a} local, {b} served");
    assert_eq!(local_run["backend"]["kind"], "local");
    let backend = &served_run["backend"];
    assert_eq!(backend["kind"], "http");
    assert_eq!(backend["protocol"], "llama-server");
    assert_eq!(backend["servers"][0]["url"], url);
    assert_eq!(backend["top_n"], tokenizer().vocab);
    assert_eq!(backend["tokenizer_check"], "agrees");
    assert_eq!(served_run["end_tokens"], local_run["end_tokens"]);
}

#[test]
fn two_replicas_one_dying_mid_run_give_the_single_server_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, _) = start(Mode::Good, usize::MAX);
    let single = dir.path().join("single.jsonl");
    let (ok, _, stderr) = tsmc(
        &[
            &MAIN_JOB[..],
            &["--model", &one, "--out", single.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(ok, "{stderr}");
    let (a, _) = start(Mode::Good, usize::MAX);
    let (b, dying) = start(Mode::NoTokenize, 3);
    let list = dir.path().join("servers.txt");
    std::fs::write(&list, format!("# two replicas\n{a}\n{b}\n")).unwrap();
    let pair = dir.path().join("pair.jsonl");
    let model = format!("@{}", list.display());
    let args = [
        "--model",
        &model,
        "--attempts",
        "3",
        "--out",
        pair.to_str().unwrap(),
    ];
    let (ok, _, stderr) = tsmc(&[&MAIN_JOB[..], &args].concat());
    assert!(ok, "{stderr}");
    assert!(
        dying.dead.load(Ordering::SeqCst),
        "the second server must have died"
    );
    let (single, single_run) = records(&single);
    let (pair, pair_run) = records(&pair);
    assert_eq!(single.len(), pair.len());
    for (x, y) in single.iter().zip(&pair) {
        assert_eq!(x["tokens"], y["tokens"]);
        assert_eq!(x["log_weight"], y["log_weight"]);
    }
    assert_eq!(single_run["log_z_hat"], pair_run["log_z_hat"]);
    assert_eq!(pair_run["backend"]["servers"].as_array().unwrap().len(), 2);
    assert_eq!(single_run["backend"]["top_n"], 100);
}

#[test]
fn what_a_served_model_cannot_do_is_a_clear_error() {
    let (url, _) = start(Mode::Good, usize::MAX);
    let sample = |extra: &[&str]| {
        let args = [
            &["sample", "--model", &url, "-k", "2", "-t", "2"][..],
            extra,
        ]
        .concat();
        tsmc(&args)
    };
    let (ok, _, stderr) = sample(&["--potential", "infilling: the end."]);
    assert!(!ok && stderr.contains("forward pass"), "{stderr}");
    let (ok, _, stderr) = sample(&["--twist", "/nonexistent/head.safetensors"]);
    assert!(!ok && stderr.contains("hidden states"), "{stderr}");
    let (ok, _, stderr) = tsmc(&["exact", "--model", &url, "-n", "1", "--draw-ahead", "0"]);
    assert!(!ok && stderr.contains("--draw-ahead 0"), "{stderr}");
    let (ok, _, stderr) = tsmc(&[
        "bounds",
        "--model",
        &url,
        "--exact",
        "/nonexistent.jsonl",
        "--twist",
        "/nonexistent/head.safetensors",
    ]);
    assert!(!ok && stderr.contains("hidden states"), "{stderr}");
    let (ok, _, stderr) = tsmc(&["train", "--model", &url]);
    assert!(!ok && stderr.contains("exact and bounds"), "{stderr}");
    let (ok, _, stderr) = tsmc(&["sample", "--top-n", "5", "-k", "2", "-t", "2"]);
    assert!(
        !ok && stderr.contains("--top-n applies to a served model"),
        "{stderr}"
    );
    let (ok, _, stderr) = sample(&["--top-n", "0"]);
    assert!(!ok && stderr.contains("--top-n"), "{stderr}");
    // A server whose tokenizer differs, or that serves another vocabulary, or none at all.
    let (other, _) = start(Mode::OtherTokenizer, usize::MAX);
    let (ok, _, stderr) = tsmc(&["sample", "--model", &other, "-k", "2", "-t", "2"]);
    assert!(!ok && stderr.contains("disagree"), "{stderr}");
    let (vocab, _) = start(Mode::OtherVocab, usize::MAX);
    let (ok, _, stderr) = tsmc(&["sample", "--model", &vocab, "-k", "2", "-t", "2"]);
    assert!(
        !ok && stderr.contains(&vocab) && stderr.contains("100 tokens"),
        "{stderr}"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (ok, _, stderr) = tsmc(&["sample", "--model", &down, "--attempts", "1", "-t", "2"]);
    assert!(
        !ok && stderr.contains("could not reach") && stderr.contains(&down),
        "{stderr}"
    );
    let (ok, _, stderr) = tsmc(&["sample", "--model", "http://a,ftp://b"]);
    assert!(!ok && stderr.contains("ftp://b"), "{stderr}");
}

#[test]
fn served_exact_samples_and_bounds_come_from_the_servers_draws() {
    let dir = tempfile::tempdir().unwrap();
    let (url, fake) = start(Mode::Good, usize::MAX);
    let exact = dir.path().join("exact.jsonl");
    // phi = 1: every draw is accepted, and every bound is log Z = 0 exactly.
    let common = ["--model", &url, "--potential", "none", "-t", "3"];
    let (ok, stdout, stderr) = tsmc(
        &[
            &["exact"][..],
            &common,
            &["-n", "3", "--batch", "3", "--out", exact.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("3 exact samples in 3 draws"), "{stdout}");
    // Two requests per draw: the server drew 1, then 2 tokens (tokens per request double).
    assert_eq!(fake.requests.load(Ordering::SeqCst), 6);
    let samples: Vec<Value> = std::fs::read_to_string(&exact)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["type"] == "sample")
        .collect();
    assert_eq!(samples.len(), 3);
    let bounds = dir.path().join("bounds.jsonl");
    let (ok, stdout, stderr) = tsmc(
        &[
            &["bounds"][..],
            &common,
            &["--exact", exact.to_str().unwrap(), "--particles", "2"],
            &[
                "--seeds",
                "2",
                "--fq-samples",
                "2",
                "--out",
                bounds.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(ok, "{stderr}");
    eprintln!("{stdout}");
    let kl = std::fs::read_to_string(&bounds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["type"] == "kl")
        .unwrap();
    let log_z = kl["estimates"]["log_z"]["mean"].as_f64().unwrap();
    assert!(log_z.abs() < 1e-12, "log Z {log_z}: {kl}");
}
