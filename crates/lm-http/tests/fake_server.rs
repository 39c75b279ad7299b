//! SMC through the HTTP backend against a fake serving engine that answers with a tabular
//! model's exact next-token tables: the same runs as in process when N = V, exactness for the
//! top-N-truncated target when N < V, exactness for the full target with the server's own
//! draws whatever N, and typed errors naming the URL.

mod common;

use std::time::Duration;

use common::{FakeServer, Fault, Format, dead_url, quick_retries, ranked};
use lm_http::{HttpError, HttpLm, HttpLmOptions, Protocol, RetryPolicy};
use smc_core::prelude::*;
use smc_core::smc::log_weights_of;

const FORMATS: [(Format, Protocol); 3] = [
    (Format::LlamaTopLogprobs, Protocol::LlamaServer),
    (Format::LlamaProbs, Protocol::LlamaServer),
    (Format::OpenAiKeyed, Protocol::OpenAi),
];

fn model() -> TabularLm {
    TabularLm::random(4, 2, 1.0, 31)
}

const PROMPT: [u32; 2] = [2, 0];
const HORIZON: usize = 3;

fn potential() -> FnPotential<impl Fn(&[u32], &[u32]) -> f64> {
    FnPotential::new("smooth", |_: &[u32], s: &[u32]| {
        0.8 * s.iter().filter(|&&x| x == 3).count() as f64 - 0.5 * f64::from(s[0])
    })
}

/// A client whose base proposal reads the rows (no draws by the server).
fn connect(server: &FakeServer, protocol: Protocol, vocab: usize, top_n: usize) -> HttpLm {
    connect_drawing(server, protocol, vocab, top_n, 0)
}

/// A client whose base proposal takes `ahead` tokens per request drawn by the server.
fn connect_drawing(
    server: &FakeServer,
    protocol: Protocol,
    vocab: usize,
    top_n: usize,
    ahead: usize,
) -> HttpLm {
    HttpLm::connect(
        HttpLmOptions::new(&server.url, protocol, vocab)
            .with_top_n(top_n)
            .with_timeout(Duration::from_secs(20))
            .with_parallel(4)
            .with_retry(quick_retries())
            .with_draw_ahead(ahead),
    )
    .unwrap()
}

/// mean and standard error of `x`.
fn mean_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[test]
fn with_the_whole_vocabulary_runs_match_the_in_process_model() {
    let lm = model();
    let phi = potential();
    let psi = Enumeration::new(&lm, &PROMPT, HORIZON, &phi)
        .unwrap()
        .optimal_twist()
        .perturbed(0.4, 2);
    for (format, protocol) in FORMATS {
        let server = FakeServer::start(lm.clone(), format, Fault::None);
        let http = connect(&server, protocol, 4, 4);
        assert_eq!(http.top_n(), 4);
        for (name, config, twist) in [
            ("bootstrap", SmcConfig::bootstrap(6, HORIZON), None),
            (
                "twisted",
                SmcConfig::twisted(6, HORIZON),
                Some(&psi as &dyn Twist),
            ),
            (
                "twisted, no twist",
                SmcConfig::twisted(6, HORIZON).with_criterion(Criterion::EssBelow(0.5)),
                None,
            ),
        ] {
            let mut bitwise = 0;
            for seed in 0..10 {
                let cfg = config.with_seed(seed);
                let local = run_smc(&lm, twist, &phi, &PROMPT, &cfg).unwrap();
                let remote = run_smc(&http, twist, &phi, &PROMPT, &cfg).unwrap();
                assert_eq!(local.tokens, remote.tokens, "{format:?} {name} seed {seed}");
                assert_eq!(
                    local.ancestors, remote.ancestors,
                    "{format:?} {name} seed {seed}"
                );
                // llama's older format sends probabilities, read back through exp and ln.
                let tol = if format == Format::LlamaProbs {
                    1e-12
                } else {
                    1e-13
                };
                assert!(
                    (local.log_z_hat - remote.log_z_hat).abs() <= tol,
                    "{format:?} {name} seed {seed}: log Zhat {} in process, {} over HTTP",
                    local.log_z_hat,
                    remote.log_z_hat
                );
                for (a, b) in local.log_p0.iter().zip(&remote.log_p0) {
                    assert!((a - b).abs() <= tol, "{format:?} {name}: log p0 {a} vs {b}");
                }
                bitwise += usize::from(local.log_z_hat.to_bits() == remote.log_z_hat.to_bits());
            }
            // Not always bit for bit: serde_json's default float parser (lm-http does not turn
            // on its float_roundtrip feature, which would rebuild the workspace's serde_json
            // users) may read a shortest-form f64 one ulp off; and the bootstrap run over HTTP
            // adds log M_t (about 1e-16 here) that the in-process run, whose rows are
            // normalised, does not.
            eprintln!("{format:?} {name}: {bitwise}/10 runs bit-for-bit equal");
        }
        assert!(server.completion_requests() > 0);
    }
}

#[test]
fn with_the_whole_vocabulary_bootstrap_smc_is_unbiased_for_z() {
    let lm = model();
    let phi = potential();
    let z = Enumeration::new(&lm, &PROMPT, HORIZON, &phi)
        .unwrap()
        .log_z()
        .exp();
    let server = FakeServer::start(lm, Format::LlamaTopLogprobs, Fault::None);
    let http = connect(&server, Protocol::LlamaServer, 4, 4);
    // 300 seeds; |mean(Zhat / Z) - 1| <= 4 SE (a false alarm about 6e-5 of the time for a
    // normal mean; the seeds are fixed, so the outcome is deterministic).
    let ratios: Vec<f64> = (0..300)
        .map(|seed| {
            let cfg = SmcConfig::bootstrap(4, HORIZON).with_seed(seed);
            run_smc(&http, None, &phi, &PROMPT, &cfg)
                .unwrap()
                .log_z_hat
                .exp()
                / z
        })
        .collect();
    let (mean, se) = mean_se(&ratios);
    assert!(
        (mean - 1.0).abs() <= 4.0 * se,
        "mean Zhat / Z = {mean}, SE {se}"
    );
}

#[test]
fn with_the_top_n_smc_is_unbiased_for_the_truncated_normaliser() {
    let lm = model();
    let phi = potential();
    let n = 2;
    let z = Enumeration::new(&lm, &PROMPT, HORIZON, &phi)
        .unwrap()
        .log_z()
        .exp();
    // Z_N by enumeration in process: phi times the indicator that every token is among the
    // top N of its context (p0 not renormalised).
    let truncated_lm = lm.clone();
    let inner = potential();
    let phi_n = FnPotential::new("smooth on top-N paths", move |prompt: &[u32], s: &[u32]| {
        let on_top = (0..s.len()).all(|t| {
            let context = [prompt, &s[..t]].concat();
            let row = truncated_lm.next_log_probs(&context).unwrap();
            ranked(row)[..n].contains(&(s[t] as usize))
        });
        if on_top {
            inner
                .log_phi(prompt, &TokenBuffer::from_rows(&[s.to_vec()]))
                .unwrap()[0]
        } else {
            f64::NEG_INFINITY
        }
    });
    let z_n = Enumeration::new(&lm, &PROMPT, HORIZON, &phi_n)
        .unwrap()
        .log_z()
        .exp();
    assert!(
        z_n < 0.9 * z,
        "the truncation must matter: Z_N {z_n}, Z {z}"
    );
    // A twist for the untruncated target (perturbed psi*): the twisted proposal's normaliser
    // then runs over the top N only.
    let psi = Enumeration::new(&lm, &PROMPT, HORIZON, &phi)
        .unwrap()
        .optimal_twist()
        .perturbed(0.4, 3);
    for (format, protocol) in FORMATS {
        let server = FakeServer::start(lm.clone(), format, Fault::None);
        let http = connect(&server, protocol, 4, n);
        // Enumeration through the server (rows with -inf entries) gives Z_N too.
        let z_n_http = Enumeration::new(&http, &PROMPT, HORIZON, &phi)
            .unwrap()
            .log_z()
            .exp();
        assert!(
            (z_n_http / z_n - 1.0).abs() < 1e-12,
            "{format:?}: Z_N {z_n} in process, {z_n_http} enumerated over HTTP"
        );
        for (name, config, twist) in [
            ("bootstrap", SmcConfig::bootstrap(4, HORIZON), None),
            ("twisted, no twist", SmcConfig::twisted(4, HORIZON), None),
            (
                "twisted",
                SmcConfig::twisted(4, HORIZON),
                Some(&psi as &dyn Twist),
            ),
        ] {
            // 300 seeds each; |mean(Zhat / Z_N) - 1| <= 4 SE, and the mean is more than 4 SE
            // below Z (the run does not estimate the untruncated Z).
            let ratios: Vec<f64> = (0..300)
                .map(|seed| {
                    let cfg = config.with_seed(1000 + seed);
                    run_smc(&http, twist, &phi, &PROMPT, &cfg)
                        .unwrap()
                        .log_z_hat
                        .exp()
                        / z_n
                })
                .collect();
            let (mean, se) = mean_se(&ratios);
            assert!(
                (mean - 1.0).abs() <= 4.0 * se,
                "{format:?} {name}: mean Zhat / Z_N = {mean}, SE {se}"
            );
            assert!(
                (z / z_n - mean) > 4.0 * se,
                "{format:?} {name}: mean Zhat / Z_N = {mean} (SE {se}) is not below Z / Z_N = {}",
                z / z_n
            );
        }
    }
}

/// The formats whose servers draw: llama-server (aligned, or with withheld log-probabilities
/// looked up, or stopping early at an end token) and vLLM.
fn drawing_servers(lm: &TabularLm) -> Vec<(&'static str, FakeServer, Protocol)> {
    vec![
        (
            "llama-server",
            FakeServer::start(lm.clone(), Format::LlamaTopLogprobs, Fault::None),
            Protocol::LlamaServer,
        ),
        (
            "llama-server, log-probabilities withheld",
            FakeServer::start(lm.clone(), Format::LlamaTopLogprobs, Fault::FoldedProbs),
            Protocol::LlamaServer,
        ),
        (
            "llama-server, stopping after token 3",
            FakeServer::start(lm.clone(), Format::LlamaTopLogprobs, Fault::EndToken(3)),
            Protocol::LlamaServer,
        ),
        (
            "vLLM",
            FakeServer::start(lm.clone(), Format::OpenAiKeyed, Fault::None),
            Protocol::OpenAi,
        ),
    ]
}

#[test]
fn with_the_servers_draws_smc_is_unbiased_for_the_full_normaliser_whatever_n() {
    // Rows of the top 1 only (a row-based run would estimate Z_1 < Z); the server draws
    // from the whole table, two tokens per request (so that resampled copies drop theirs).
    let lm = model();
    let phi = potential();
    let z = Enumeration::new(&lm, &PROMPT, HORIZON, &phi)
        .unwrap()
        .log_z()
        .exp();
    for (name, server, protocol) in drawing_servers(&lm) {
        let http = connect_drawing(&server, protocol, 4, 1, 2);
        for config in [
            SmcConfig::bootstrap(4, HORIZON),
            SmcConfig::bootstrap(4, HORIZON).with_criterion(Criterion::Always),
        ] {
            // 300 seeds; |mean(Zhat / Z) - 1| <= 4 SE (a false alarm about 6e-5 of the time
            // for a normal mean; fixed seeds, so the outcome is deterministic).
            let outs: Vec<SmcOutput> = (0..300)
                .map(|seed| run_smc(&http, None, &phi, &PROMPT, &config.with_seed(seed)).unwrap())
                .collect();
            let ratios: Vec<f64> = outs.iter().map(|o| o.log_z_hat.exp() / z).collect();
            let (mean, se) = mean_se(&ratios);
            assert!(
                (mean - 1.0).abs() <= 4.0 * se,
                "{name}: mean Zhat / Z = {mean}, SE {se}"
            );
            // Every particle's log p0 is the table's, looked up where the server withheld it.
            for out in &outs {
                for (s, lp) in out.tokens.iter().zip(&out.log_p0) {
                    let mut expected = 0.0;
                    for t in 0..s.len() {
                        let context = [&PROMPT[..], &s[..t]].concat();
                        expected += lm.next_log_probs(&context).unwrap()[s[t] as usize];
                    }
                    assert!(
                        (lp - expected).abs() < 1e-12,
                        "{name}: log p0 {lp} vs {expected}"
                    );
                }
            }
        }
        assert!(server.completion_requests() > 0);
    }
}

#[test]
fn with_the_servers_draws_the_same_seed_gives_the_same_run() {
    let lm = model();
    let phi = potential();
    let server = FakeServer::start(lm, Format::LlamaTopLogprobs, Fault::None);
    let http = connect_drawing(&server, Protocol::LlamaServer, 4, 1, 8);
    let cfg = SmcConfig::bootstrap(6, HORIZON).with_seed(5);
    let a = run_smc(&http, None, &phi, &PROMPT, &cfg).unwrap();
    let b = run_smc(&http, None, &phi, &PROMPT, &cfg).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.log_z_hat.to_bits(), b.log_z_hat.to_bits());
}

#[test]
fn drawing_ahead_doubles_the_tokens_per_request_until_a_resampling() {
    let lm = model();
    let server = FakeServer::start(lm, Format::LlamaTopLogprobs, Fault::None);
    let http = connect_drawing(&server, Protocol::LlamaServer, 4, 1, 8);
    // Without resampling, requests draw 1, then 2 tokens (doubling): T = 3 tokens of each
    // particle in two requests.
    let cfg = SmcConfig::sis(5, HORIZON, Proposal::Base).with_seed(1);
    run_smc(&http, None, &UnitPotential, &PROMPT, &cfg).unwrap();
    assert_eq!(server.completion_requests(), 10);
    // Multinomial resampling at every step copies particles (with these seeds, at each step):
    // one token per request from then on.
    let before = server.completion_requests();
    let cfg = SmcConfig::bootstrap(5, HORIZON)
        .with_scheme(Scheme::Multinomial)
        .with_criterion(Criterion::Always);
    let out = run_smc(&http, None, &UnitPotential, &PROMPT, &cfg.with_seed(2)).unwrap();
    // The rule replayed on the run's genealogy (after steps 1 and 2): a particle without a
    // token drawn ahead sends a request; tokens per request double, back to 1 after a
    // resampling with copies; the first copy keeps its ancestor's tokens.
    let (mut now, mut held, mut requests) = (1usize, vec![0usize; 5], 0);
    for t in 1..=HORIZON {
        for h in held.iter_mut().filter(|h| **h == 0) {
            *h = now.min(HORIZON - t + 1);
            requests += 1;
        }
        now = (now * 2).min(8);
        held.iter_mut().for_each(|h| *h -= 1);
        if let Some(a) = out.ancestors.get(t - 1) {
            let mut taken = [false; 5];
            held = a
                .iter()
                .map(|&p| {
                    if std::mem::replace(&mut taken[p], true) {
                        0
                    } else {
                        held[p]
                    }
                })
                .collect();
            if a.iter().enumerate().any(|(i, p)| a[..i].contains(p)) {
                now = 1;
            }
        }
    }
    assert!(requests > 10, "{:?}", out.ancestors);
    assert_eq!(server.completion_requests() - before, requests);
}

#[test]
fn tokens_drawn_ahead_go_to_one_copy_and_are_dropped_when_another_token_is_pushed() {
    let lm = model();
    let server = FakeServer::start(lm, Format::LlamaTopLogprobs, Fault::None);
    let http = connect_drawing(&server, Protocol::LlamaServer, 4, 1, 8);
    let mut session = http.start(&PROMPT, 2).unwrap();
    let draw = [NextToken::Draw; 2];
    let step = |session: &mut lm_http::HttpSession<'_>, remaining, seed| {
        let drawn = session.draw_from_p0(&draw, remaining, seed).unwrap();
        let tokens: Vec<u32> = drawn.iter().map(|d| d.unwrap().0).collect();
        session.push(&tokens).unwrap();
    };
    // One token per request first, then two: the third step's tokens were drawn ahead.
    step(&mut session, 4, 11);
    assert_eq!(server.completion_requests(), 2);
    step(&mut session, 3, 12);
    assert_eq!(server.completion_requests(), 4);
    step(&mut session, 2, 13);
    assert_eq!(
        server.completion_requests(),
        4,
        "the third tokens were drawn ahead"
    );
    // Both copies of particle 0 after a resampling: neither holds a token drawn ahead now, so
    // both ask.
    session.reorder(&[0, 0]).unwrap();
    let third = session.draw_from_p0(&draw, 1, 14).unwrap();
    assert_eq!(server.completion_requests(), 6);
    // Copies of a particle that holds a token drawn ahead: the first keeps it, the second asks.
    let mut session = http.start(&PROMPT, 2).unwrap();
    step(&mut session, 4, 21);
    step(&mut session, 3, 22);
    assert_eq!(server.completion_requests(), 10);
    session.reorder(&[1, 1]).unwrap();
    session.draw_from_p0(&draw, 2, 23).unwrap();
    assert_eq!(server.completion_requests(), 11);
    // A pushed token other than the one drawn ahead (a reference's) drops the rest.
    let mut session = http.start(&PROMPT, 1).unwrap();
    session.draw_from_p0(&[NextToken::Draw], 3, 11).unwrap();
    session.push(&[0]).unwrap();
    let d = session.draw_from_p0(&[NextToken::Draw], 2, 11).unwrap()[0].unwrap();
    assert_eq!(server.completion_requests(), 13);
    session.push(&[(d.0 + 1) % 4]).unwrap();
    session.draw_from_p0(&[NextToken::Draw], 1, 12).unwrap();
    assert_eq!(server.completion_requests(), 14);
    // A given token comes back with its own log p0, asked of the server.
    let given = session.draw_from_p0(&[NextToken::Given(2)], 2, 0).unwrap()[0].unwrap();
    assert_eq!(given.0, 2);
    assert!(third.iter().all(Option::is_some));
}

#[test]
fn teacher_forcing_over_http_sees_p0_of_tokens_outside_the_top_n() {
    let lm = model();
    let phi = potential();
    let exact = Enumeration::new(&lm, &PROMPT, HORIZON, &phi).unwrap();
    let sequences: Vec<Vec<u32>> = (0..exact.len()).map(|i| exact.sequence(i)).collect();
    for (name, server, protocol) in drawing_servers(&lm) {
        let http = connect_drawing(&server, protocol, 4, 1, 8);
        // Under the server's draws q = p0, so log sigma~ - log q = log phi for every output,
        // however unlikely (rows of the top 1 would make most of them -inf).
        let lw = log_weights_of(&http, None, &phi, &PROMPT, Proposal::Base, &sequences).unwrap();
        for (i, w) in lw.iter().enumerate() {
            assert!((w - exact.log_phi()[i]).abs() < 1e-12, "{name}: output {i}");
        }
        let outs = http.teacher_forced(&PROMPT, &sequences).unwrap();
        for (i, s) in sequences.iter().enumerate() {
            for t in 0..HORIZON {
                let context = [&PROMPT[..], &s[..t]].concat();
                let expected = lm.next_log_probs(&context).unwrap()[s[t] as usize];
                assert!((outs[t].log_probs.row(i)[s[t] as usize] - expected).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn particles_with_the_same_prefix_share_one_request() {
    let lm = model();
    let server = FakeServer::start(lm, Format::LlamaTopLogprobs, Fault::None);
    let http = connect(&server, Protocol::LlamaServer, 4, 4);
    let mut session = http.start(&PROMPT, 16).unwrap();
    session.next_log_probs().unwrap();
    assert_eq!(server.completion_requests(), 1);
    session
        .push(&[0, 1, 0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3])
        .unwrap();
    let out = session.next_log_probs().unwrap();
    assert_eq!(server.completion_requests(), 1 + 4);
    assert_eq!(out.log_probs.row(0), out.log_probs.row(2));
    session.reorder(&[15; 16]).unwrap();
    session.next_log_probs().unwrap();
    assert_eq!(server.completion_requests(), 1 + 4 + 1);
    assert!(!session.log_probs_normalised());
}

/// The error of a run against a faulty server: a backend error whose message names the URL,
/// with the `HttpError` as its source.
fn run_error(url: &str, protocol: Protocol, lm: &HttpLm) -> HttpError {
    let err = run_smc(
        lm,
        None,
        &UnitPotential,
        &PROMPT,
        &SmcConfig::bootstrap(3, 2),
    )
    .unwrap_err();
    assert!(err.to_string().contains(url), "{protocol}: {err}");
    match err {
        SmcError::Backend { source, .. } => *source.downcast::<HttpError>().unwrap(),
        other => panic!("expected a backend error, got {other}"),
    }
}

/// Which `HttpError` variant an error must be.
type ErrorKind = fn(&HttpError) -> bool;

/// Permanent faults fail at the first attempt; a server error (transient) is tried three times
/// and the error lists every attempt.
#[test]
fn faulty_servers_give_typed_errors_naming_the_url() {
    let cases: [(Fault, ErrorKind, &str); 6] = [
        (
            Fault::NotJson,
            |e| matches!(e, HttpError::Malformed { .. }),
            "not JSON",
        ),
        (
            Fault::MissingField,
            |e| matches!(e, HttpError::Malformed { .. }),
            "missing",
        ),
        (
            Fault::IdOutOfVocab,
            |e| matches!(e, HttpError::Malformed { .. }),
            "outside the vocabulary",
        ),
        (
            Fault::PositiveLogprob,
            |e| matches!(e, HttpError::Malformed { .. }),
            "more than 1",
        ),
        (
            Fault::ServerError,
            |e| match e {
                HttpError::Exhausted { earlier, last } => {
                    earlier.len() == 2 && matches!(**last, HttpError::Status { status: 500, .. })
                }
                _ => false,
            },
            "all 3 attempts failed",
        ),
        (
            Fault::StringKeys,
            |e| matches!(e, HttpError::Malformed { .. }),
            "token strings",
        ),
    ];
    for (fault, is_expected, message) in cases {
        for (format, protocol) in [
            (Format::LlamaTopLogprobs, Protocol::LlamaServer),
            (Format::OpenAiKeyed, Protocol::OpenAi),
        ] {
            if fault == Fault::StringKeys && protocol != Protocol::OpenAi {
                continue;
            }
            let server = FakeServer::start(model(), format, fault.clone());
            let http = connect(&server, protocol, 4, 2);
            let err = run_error(&server.url, protocol, &http);
            assert!(is_expected(&err), "{fault:?} {protocol}: {err}");
            let text = err.to_string();
            assert!(text.contains(&server.url), "{text}");
            assert!(text.contains(message), "{fault:?} {protocol}: {text}");
            let attempts = if fault == Fault::ServerError { 3 } else { 1 };
            assert_eq!(
                server.completion_requests(),
                attempts,
                "{fault:?} {protocol}"
            );
        }
    }
}

/// A request the server refuses (HTTP 404: a llama-server client against an OpenAI-only
/// server) is permanent: not retried.
#[test]
fn refused_requests_are_not_retried() {
    let server = FakeServer::start(model(), Format::OpenAiKeyed, Fault::None);
    let http = connect(&server, Protocol::LlamaServer, 4, 2);
    let err = run_error(&server.url, Protocol::LlamaServer, &http);
    assert!(
        matches!(err, HttpError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(server.completion_requests(), 1);
}

#[test]
fn a_server_that_is_down_is_an_error_at_connection() {
    let url = dead_url();
    for protocol in Protocol::ALL {
        let options = HttpLmOptions::new(&url, protocol, 4).with_retry(quick_retries());
        let err = HttpLm::connect(options).unwrap_err();
        let HttpError::Exhausted { earlier, last } = &err else {
            panic!("expected every attempt to fail, got {err}");
        };
        assert_eq!(earlier.len(), 2, "{err}");
        assert!(matches!(**last, HttpError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
        // Without retries, the failure itself.
        let once = HttpLmOptions::new(&url, protocol, 4).with_retry(RetryPolicy::none());
        let err = HttpLm::connect(once).unwrap_err();
        assert!(matches!(err, HttpError::Unreachable { .. }), "{err}");
    }
}

#[test]
fn a_server_that_does_not_answer_times_out() {
    let server = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::Hang);
    let http = HttpLm::connect(
        HttpLmOptions::new(&server.url, Protocol::LlamaServer, 4)
            .with_timeout(Duration::from_millis(300))
            .with_retry(quick_retries()),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = run_error(&server.url, Protocol::LlamaServer, &http);
    let HttpError::Exhausted { last, .. } = &err else {
        panic!("expected every attempt to time out, got {err}");
    };
    assert!(matches!(**last, HttpError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_vocabulary_mismatch_is_an_error_at_connection() {
    let server = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::WrongVocab(7));
    let err =
        HttpLm::connect(HttpLmOptions::new(&server.url, Protocol::LlamaServer, 4)).unwrap_err();
    assert!(
        matches!(
            err,
            HttpError::VocabMismatch {
                expected: 4,
                found: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&server.url), "{err}");
    // The server reports its vocabulary; the right size connects and is recorded.
    let ok = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::None);
    assert_eq!(
        connect(&ok, Protocol::LlamaServer, 4, 2).server_vocab(),
        Some(4)
    );
    // An OpenAI server names its model (sent with every request) but not its vocabulary.
    let openai = FakeServer::start(model(), Format::OpenAiKeyed, Fault::None);
    let http = connect(&openai, Protocol::OpenAi, 4, 2);
    assert_eq!(http.model(), Some(common::MODEL_NAME));
    assert_eq!(http.server_vocab(), None);
}

#[test]
fn bad_options_are_refused() {
    let url = "http://127.0.0.1:9";
    for options in [
        HttpLmOptions::new("127.0.0.1:8080", Protocol::LlamaServer, 4),
        HttpLmOptions::new(url, Protocol::LlamaServer, 0),
        HttpLmOptions::new(url, Protocol::LlamaServer, 4).with_top_n(0),
        HttpLmOptions::new(url, Protocol::LlamaServer, 4).with_parallel(0),
        HttpLmOptions::new(url, Protocol::LlamaServer, 4).with_timeout(Duration::ZERO),
    ] {
        let err = HttpLm::connect(options).unwrap_err();
        assert!(matches!(err, HttpError::Config { .. }), "{err}");
    }
}
