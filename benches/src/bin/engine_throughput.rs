//! SMC through a serving engine: particle-tokens per second against K and the number of
//! llama-server replicas, with tsmc's own model beside it in the same run.
//!
//! The workload of `decode_profile`'s `smc` mode (the default model, prompt "Once upon a time,
//! there was a", T = 20, every token containing "e" masked, multinomial resampling after every
//! step), with the engine's top-N proposal (`--top-n`, default 200: p0 restricted to the top N
//! of each prefix and renormalised, weighted by their mass; docs/serving.md). Each replica is
//! a llama-server process on loopback with `--parallel 16` slots, the cores shared evenly
//! between the replicas (`--threads cores / S`). Particle-tokens/s = K x T / wall time of the
//! run (model load and server start excluded), median of `--repeats` runs.
//!
//! ```sh
//! cargo xtask engine-bench                      # builds llama-server once, then runs this
//! engine_throughput --server PATH [--k 16 64] [--servers 1 2] [--top-n 200] [--repeats 3]
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lm_burn::default_model::ensure_default_model;
use lm_burn::{BurnLm, WeightFormat, default_device};
use lm_http::{HttpLm, HttpLmOptions, Protocol, RetryPolicy};
use smc_core::prelude::{
    Criterion, LanguageModel, RunOptions, SmcConfig, TokenSetConstraint, UnitPotential,
    run_smc_with,
};
use tsmc_benches::workload::{PROMPT, smc_config, tokens_with_e};

const SLOTS: usize = 16;

struct Args {
    server: PathBuf,
    ks: Vec<usize>,
    servers: Vec<usize>,
    t: usize,
    top_n: usize,
    repeats: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: PathBuf::new(),
        ks: vec![16, 64],
        servers: vec![1, 2],
        t: 20,
        top_n: 200,
        repeats: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let number = |s: &str, what: &str| -> Result<usize, String> {
        s.parse::<usize>()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| format!("{what} must be an integer in 1..=4096, got {s:?}"))
    };
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let mut values = Vec::new();
        i += 1;
        while i < argv.len() && !argv[i].starts_with("--") {
            values.push(argv[i].clone());
            i += 1;
        }
        let one = || -> Result<&String, String> {
            match values.as_slice() {
                [v] => Ok(v),
                _ => Err(format!("{flag} takes one value")),
            }
        };
        match flag {
            "--server" => args.server = PathBuf::from(one()?),
            "--k" => {
                args.ks = values
                    .iter()
                    .map(|v| number(v, "--k"))
                    .collect::<Result<_, _>>()?
            }
            "--servers" => {
                args.servers = values
                    .iter()
                    .map(|v| number(v, "--servers"))
                    .collect::<Result<_, _>>()?
            }
            "--t" => args.t = number(one()?, "--t")?,
            "--top-n" => args.top_n = number(one()?, "--top-n")?,
            "--repeats" => args.repeats = number(one()?, "--repeats")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.server.as_os_str().is_empty() {
        return Err("--server PATH (a llama-server binary) is required".into());
    }
    if args.ks.is_empty() || args.servers.is_empty() {
        return Err("--k and --servers need at least one value each".into());
    }
    Ok(args)
}

/// A llama-server child process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(binary: &Path, gguf: &Path, threads: usize, log: &Path) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["-m", &gguf.display().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--ctx-size", &(512 * SLOTS).to_string()])
            .args(["--parallel", &SLOTS.to_string()])
            .args(["--threads", &threads.to_string()])
            // AMX tile kernels trap on some virtual machines that report AMX (as in
            // crates/apps/tests/engine.rs).
            .arg("--no-repack")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(urls: &[String], vocab: usize, top_n: usize, ahead: usize) -> Result<HttpLm, String> {
    let options = HttpLmOptions::new(urls[0].clone(), Protocol::LlamaServer, vocab)
        .with_servers(urls.iter().cloned())
        .with_top_n(top_n)
        .with_draw_ahead(ahead)
        .with_parallel(SLOTS)
        .with_timeout(Duration::from_secs(120))
        .with_retry(RetryPolicy::default());
    HttpLm::connect(options).map_err(|e| e.to_string())
}

/// Waits until every server answers (llama-server answers 503 while it loads).
fn wait_ready(urls: &[String], vocab: usize) -> Result<(), String> {
    let started = Instant::now();
    for url in urls {
        while connect(std::slice::from_ref(url), vocab, 1, 0).is_err() {
            if started.elapsed() > Duration::from_secs(180) {
                return Err(format!(
                    "llama-server at {url} did not come up within 180 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// The two workloads: the masked one (rows: the proposal renormalises p0 on the allowed top
/// N), and bootstrap SMC without a mask (resampling when the ESS falls below K / 2), whose
/// proposal is p0 itself: a served model draws it (`--draw-ahead`).
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Masked,
    Bootstrap,
}

/// Median particle-tokens/s of `repeats` SMC runs (seeds 0..repeats), or the first error.
fn rate<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    constraint: &TokenSetConstraint,
    workload: Workload,
    k: usize,
    t: usize,
    repeats: usize,
) -> Result<f64, String> {
    let mut rates = Vec::with_capacity(repeats);
    for seed in 0..repeats as u64 {
        let (config, options) = match workload {
            Workload::Masked => (
                smc_config(k, t, seed),
                RunOptions::twist(None).with_constraint(constraint),
            ),
            Workload::Bootstrap => (
                SmcConfig::bootstrap(k, t)
                    .with_criterion(Criterion::EssBelow(0.5))
                    .with_seed(seed),
                RunOptions::twist(None),
            ),
        };
        let start = Instant::now();
        run_smc_with(lm, &UnitPotential, &options, prompt, &config).map_err(|e| e.to_string())?;
        rates.push((k * t) as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn cell(r: &Result<f64, String>) -> String {
    match r {
        Ok(v) => format!("{v:.1}"),
        Err(e) => format!("failed: {}", e.replace('|', "/")),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let gguf = ensure_default_model().map_err(|e| e.to_string())?;
    let load = |w| {
        BurnLm::load("default", &default_device())
            .and_then(|lm| lm.with_weight_format(w))
            .map_err(|e| e.to_string())
    };
    let (f32_lm, q8_lm, bf16_lm) = (
        load(WeightFormat::F32)?,
        load(WeightFormat::Q8)?,
        load(WeightFormat::Bf16)?,
    );
    let tokenizer = f32_lm.tokenizer().map_err(|e| e.to_string())?;
    let prompt = tokenizer.encode(PROMPT).map_err(|e| e.to_string())?;
    let vocab = f32_lm.dims().vocab;
    let forbidden = tokens_with_e(tokenizer, vocab);
    let constraint = TokenSetConstraint::forbidding("no-chars:e", vocab, forbidden)
        .map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let logs = std::env::temp_dir().join(format!("tsmc-engine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;

    type Rows = Vec<(String, Vec<Result<f64, String>>)>;
    let (mut masked, mut bootstrap): (Rows, Rows) = (Vec::new(), Vec::new());
    let rates = |lm: &dyn Fn(Workload, usize) -> Result<f64, String>, w| {
        args.ks.iter().map(|&k| lm(w, k)).collect::<Vec<_>>()
    };
    for (name, lm) in [
        ("tsmc local f32", &f32_lm),
        ("tsmc local q8", &q8_lm),
        ("tsmc local bf16", &bf16_lm),
    ] {
        let run = |w, k| rate(lm, &prompt, &constraint, w, k, args.t, args.repeats);
        masked.push((name.to_string(), rates(&run, Workload::Masked)));
        bootstrap.push((name.to_string(), rates(&run, Workload::Bootstrap)));
    }
    drop((f32_lm, q8_lm, bf16_lm));
    for &s in &args.servers {
        let threads = (cores / s).max(1);
        let servers = (0..s)
            .map(|i| Server::start(&args.server, &gguf, threads, &logs.join(format!("{i}.log"))))
            .collect::<Result<Vec<_>, _>>()?;
        let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
        wait_ready(&urls, vocab)?;
        let name = format!("llama-server x {s} ({threads} thread(s) each)");
        let rows_lm = connect(&urls, vocab, args.top_n, 0)?;
        let run = |w, k| rate(&rows_lm, &prompt, &constraint, w, k, args.t, args.repeats);
        masked.push((
            format!("{name}, top {}", args.top_n),
            rates(&run, Workload::Masked),
        ));
        bootstrap.push((
            format!("{name}, top-{} rows", args.top_n),
            rates(&run, Workload::Bootstrap),
        ));
        for ahead in [1, 8] {
            let drawing = connect(&urls, vocab, args.top_n, ahead)?;
            let run = |w, k| rate(&drawing, &prompt, &constraint, w, k, args.t, args.repeats);
            bootstrap.push((
                format!("{name}, server draws {ahead} per request"),
                rates(&run, Workload::Bootstrap),
            ));
        }
    }

    let ks: Vec<String> = args.ks.iter().map(|k| format!("K = {k}")).collect();
    for (title, rows) in [
        (
            "masked workload (every token with \"e\" masked, resampling every step)",
            &masked,
        ),
        (
            "bootstrap SMC, no mask (resampling at ESS < K/2)",
            &bootstrap,
        ),
    ] {
        println!(
            "\nParticle-tokens/s, {title} (K x T / wall time, T = {}, median of {}; {cores} cores)\n",
            args.t, args.repeats
        );
        println!("| backend | {} |", ks.join(" | "));
        println!("|---|{}", "---|".repeat(args.ks.len()));
        for (name, rates) in rows {
            let cells: Vec<String> = rates.iter().map(cell).collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }
    Ok(())
}
