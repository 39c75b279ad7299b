//! Several servers as replicas of one model: the work is spread over them, a server that dies
//! or answers 503 mid-run is retried on the other and the run gives exactly the single-server
//! result, a run whose servers all fail ends in an error naming each, and servers that are not
//! replicas of one model are refused at connection. Also the tokenizer endpoint.

mod common;

use std::time::Duration;

use common::{FakeServer, Fault, Format, quick_retries, toy_tokens};
use lm_http::{HttpError, HttpLm, HttpLmOptions, Protocol, RetryPolicy};
use smc_core::prelude::*;

fn model() -> TabularLm {
    TabularLm::random(4, 2, 1.0, 31)
}

const PROMPT: [u32; 2] = [2, 0];
const HORIZON: usize = 4;
const K: usize = 12;

fn potential() -> FnPotential<impl Fn(&[u32], &[u32]) -> f64> {
    FnPotential::new("smooth", |_: &[u32], s: &[u32]| {
        0.8 * s.iter().filter(|&&x| x == 3).count() as f64 - 0.5 * f64::from(s[0])
    })
}

fn options(urls: &[&str], protocol: Protocol) -> HttpLmOptions {
    HttpLmOptions::new(urls[0], protocol, 4)
        .with_servers(urls.iter().copied())
        .with_top_n(4)
        .with_timeout(Duration::from_secs(20))
        .with_parallel(3)
        .with_retry(quick_retries())
}

fn connect(urls: &[&str], protocol: Protocol) -> HttpLm {
    HttpLm::connect(options(urls, protocol)).unwrap()
}

fn config(seed: u64) -> SmcConfig {
    SmcConfig::bootstrap(K, HORIZON)
        .with_seed(seed)
        .with_criterion(Criterion::EssBelow(0.9))
}

/// The reference: one healthy server.
fn single_server_runs(format: Format, protocol: Protocol, seeds: u64) -> Vec<SmcOutput> {
    let server = FakeServer::start(model(), format, Fault::None);
    let http = connect(&[&server.url], protocol);
    (0..seeds)
        .map(|seed| run_smc(&http, None, &potential(), &PROMPT, &config(seed)).unwrap())
        .collect()
}

fn assert_same(a: &SmcOutput, b: &SmcOutput, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}");
    assert_eq!(a.ancestors, b.ancestors, "{what}");
    assert_eq!(a.log_z_hat.to_bits(), b.log_z_hat.to_bits(), "{what}");
    let bits = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.log_w), bits(&b.log_w), "{what}");
}

const FORMATS: [(Format, Protocol); 2] = [
    (Format::LlamaTopLogprobs, Protocol::LlamaServer),
    (Format::OpenAiKeyed, Protocol::OpenAi),
];

#[test]
fn two_healthy_replicas_share_the_work_and_give_the_single_server_result() {
    for (format, protocol) in FORMATS {
        let reference = single_server_runs(format, protocol, 5);
        let a = FakeServer::start(model(), format, Fault::None);
        let b = FakeServer::start(model(), format, Fault::None);
        let http = connect(&[&a.url, &b.url], protocol);
        assert_eq!(http.servers().len(), 2);
        for (seed, expected) in reference.iter().enumerate() {
            let out = run_smc(&http, None, &potential(), &PROMPT, &config(seed as u64)).unwrap();
            assert_same(expected, &out, &format!("{protocol} seed {seed}"));
        }
        let (ra, rb) = (a.completion_requests(), b.completion_requests());
        assert!(ra > 0 && rb > 0, "{protocol}: requests {ra} and {rb}");
        // Balanced within a factor of two.
        assert!(
            ra <= 2 * rb && rb <= 2 * ra,
            "{protocol}: requests {ra} and {rb}"
        );
    }
}

#[test]
fn lineages_stay_on_their_server() {
    let a = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::None);
    let b = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::None);
    let http = connect(&[&a.url, &b.url], Protocol::LlamaServer);
    let mut session = http.start(&PROMPT, 4).unwrap();
    session.next_log_probs().unwrap();
    let first = session.servers()[0].unwrap();
    assert!(session.servers().iter().all(|&s| s == Some(first)));
    // Four distinct prefixes: two stay with the prompt's server, two move.
    session.push(&[0, 1, 2, 3]).unwrap();
    session.next_log_probs().unwrap();
    let step2: Vec<usize> = session.servers().iter().map(|s| s.unwrap()).collect();
    assert_eq!(step2.iter().filter(|&&s| s == first).count(), 2);
    // Each particle's next prefix extends its own: it stays where it is.
    session.push(&[1, 1, 1, 1]).unwrap();
    session.next_log_probs().unwrap();
    let step3: Vec<usize> = session.servers().iter().map(|s| s.unwrap()).collect();
    assert_eq!(step3, step2);
    // Copies follow their ancestor.
    session.reorder(&[3, 3, 0, 0]).unwrap();
    let copied: Vec<usize> = session.servers().iter().map(|s| s.unwrap()).collect();
    assert_eq!(copied, vec![step3[3], step3[3], step3[0], step3[0]]);
}

/// A server that fails mid-run (dies: its connections close and new ones are refused; or
/// answers 503) loses its work to the other: the runs give exactly the single-server results.
#[test]
fn a_replica_failing_mid_run_is_retried_on_the_other() {
    for (format, protocol) in FORMATS {
        let reference = single_server_runs(format, protocol, 6);
        for fault in [Fault::Die, Fault::Unavailable] {
            let a = FakeServer::start(model(), format, Fault::None);
            let b = FakeServer::start_after(model(), format, fault.clone(), 5);
            let http = connect(&[&a.url, &b.url], protocol);
            for (seed, expected) in reference.iter().enumerate() {
                let out =
                    run_smc(&http, None, &potential(), &PROMPT, &config(seed as u64)).unwrap();
                assert_same(expected, &out, &format!("{protocol} {fault:?} seed {seed}"));
            }
            assert!(
                b.completion_requests() > 5,
                "{protocol} {fault:?}: the fault must have been hit"
            );
        }
    }
}

#[test]
fn a_run_whose_servers_all_fail_names_each() {
    let a = FakeServer::start_after(model(), Format::LlamaTopLogprobs, Fault::Die, 3);
    let b = FakeServer::start_after(model(), Format::LlamaTopLogprobs, Fault::Unavailable, 3);
    let http = connect(&[&a.url, &b.url], Protocol::LlamaServer);
    let err = run_smc(&http, None, &potential(), &PROMPT, &config(0)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&a.url) && text.contains(&b.url), "{text}");
    assert!(text.contains("all 3 attempts failed"), "{text}");
    assert!(text.contains("503"), "{text}");
    let SmcError::Backend { source, .. } = err else {
        panic!("expected a backend error: {text}");
    };
    let err = source.downcast::<HttpError>().unwrap();
    assert!(matches!(*err, HttpError::Exhausted { .. }), "{err}");
}

#[test]
fn a_killed_single_server_ends_the_run_in_an_error() {
    let server = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::None);
    let http = connect(&[&server.url], Protocol::LlamaServer);
    run_smc(&http, None, &potential(), &PROMPT, &config(0)).unwrap();
    server.kill();
    let err = run_smc(&http, None, &potential(), &PROMPT, &config(1)).unwrap_err();
    assert!(err.to_string().contains(&server.url), "{err}");
    assert!(err.to_string().contains("could not reach"), "{err}");
}

#[test]
fn servers_that_are_not_replicas_of_one_model_are_refused_at_connection() {
    let a = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::None);
    // Another vocabulary.
    let b = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::WrongVocab(7));
    let err = HttpLm::connect(options(&[&a.url, &b.url], Protocol::LlamaServer)).unwrap_err();
    assert!(
        matches!(&err, HttpError::VocabMismatch { url, found: 7, .. } if url.contains(&b.url)),
        "{err}"
    );
    // Another model.
    let c = FakeServer::start(
        model(),
        Format::LlamaTopLogprobs,
        Fault::ModelName("/models/other.gguf".into()),
    );
    let err = HttpLm::connect(options(&[&a.url, &c.url], Protocol::LlamaServer)).unwrap_err();
    assert!(
        matches!(&err, HttpError::ReplicaMismatch { url, .. } if *url == c.url),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&a.url) && text.contains("other.gguf"),
        "{text}"
    );
    // Another parameter count is another model; another context size is a server setting.
    let e = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::OtherParams);
    let err = HttpLm::connect(options(&[&a.url, &e.url], Protocol::LlamaServer)).unwrap_err();
    assert!(
        matches!(&err, HttpError::ReplicaMismatch { what, .. } if what.contains("metadata")),
        "{err}"
    );
    let f = FakeServer::start(model(), Format::LlamaTopLogprobs, Fault::OtherContext);
    HttpLm::connect(options(&[&a.url, &f.url], Protocol::LlamaServer)).unwrap();
    // The same model file in another folder is the same model.
    let d = FakeServer::start(
        model(),
        Format::LlamaTopLogprobs,
        Fault::ModelName("/srv/weights/fake-model".into()),
    );
    HttpLm::connect(options(&[&a.url, &d.url], Protocol::LlamaServer)).unwrap();
    // A server listed twice, or an OpenAI model no server serves.
    let err = HttpLm::connect(options(&[&a.url, &a.url], Protocol::LlamaServer)).unwrap_err();
    assert!(matches!(err, HttpError::Config { .. }), "{err}");
    let openai = FakeServer::start(model(), Format::OpenAiKeyed, Fault::None);
    let err =
        HttpLm::connect(options(&[&openai.url], Protocol::OpenAi).with_model("gpt-x")).unwrap_err();
    assert!(err.to_string().contains(common::MODEL_NAME), "{err}");
}

#[test]
fn the_tokenizer_endpoint() {
    for (format, protocol) in FORMATS {
        let server = FakeServer::start(model(), format, Fault::None);
        let http = connect(&[&server.url], protocol);
        let text = "Once upon a time";
        assert_eq!(http.tokenize(text).unwrap(), Some(toy_tokens(text, 4)));
        let none = FakeServer::start(model(), format, Fault::NoTokenize);
        let http = connect(&[&none.url], protocol);
        assert_eq!(http.tokenize(text).unwrap(), None);
    }
    // Ids outside the vocabulary are nonsense: a client told V = 4 against a V = 7 server
    // that does not report V (OpenAI).
    let server = FakeServer::start(
        TabularLm::random(7, 1, 1.0, 3),
        Format::OpenAiKeyed,
        Fault::None,
    );
    let http = HttpLm::connect(
        HttpLmOptions::new(&server.url, Protocol::OpenAi, 4).with_retry(RetryPolicy::none()),
    )
    .unwrap();
    let err = http.tokenize("a").unwrap_err(); // b'a' % 7 = 6
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
