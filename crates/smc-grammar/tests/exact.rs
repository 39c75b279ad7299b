//! A regex grammar through llguidance on an enumerable model, against brute force.
//!
//! Vocabulary: "a", "b", "ab", "{", "}" and an end token; the language is the regex
//! `\{(ab|b)*\}|a*b` over the output's bytes (several tokenizations of one text, prefixes that
//! die, texts that end or go on). The oracle is the `regex` crate on the concatenated bytes,
//! independent of llguidance. Checked:
//! - masks equal brute force: a text token is allowed exactly when some continuation of at
//!   most `DEPTH` tokens completes the text into a sentence (enough for this language, whose
//!   shortest completions are at most 2 tokens long), the end token exactly when the text is
//!   a sentence (variable-length outputs) and never with outputs of exactly T tokens;
//! - sessions with shared, forked and resampled states give each particle the mask of its own
//!   token history;
//! - with the optimal twist under the constraint (the target mass ahead of each prefix),
//!   log Zhat = log Z for every seed (variable-length outputs);
//! - constrained SMC without a twist: Zhat is unbiased for Z = p0(output accepted), computed
//!   by enumeration, with exactly T tokens and with variable-length outputs (truncated or
//!   forced end at the maximum): over N = 3000 seeds, |mean Zhat - Z| / SE < 4 (SE the sample
//!   standard deviation over sqrt(N)); a false alarm has probability about 6e-5 per check,
//!   8 checks. Every particle with positive weight is accepted by the oracle.

use rand::{RngExt, SeedableRng};
use smc_core::prelude::*;
use smc_grammar::{GrammarCompiler, GrammarConstraint, GrammarSpec, TokenBytes, TokenPiece};

const V: usize = 6;
const EOS: u32 = 5;
const TEXT: [&[u8]; 5] = [b"a", b"b", b"ab", b"{", b"}"];
const PATTERN: &str = r"\{(ab|b)*\}|a*b";
const DEPTH: usize = 4;

fn vocab() -> TokenBytes {
    let mut pieces: Vec<TokenPiece> = TEXT.iter().map(|t| TokenPiece::Bytes(t.to_vec())).collect();
    pieces.push(TokenPiece::Special("<end>".into()));
    TokenBytes::new(pieces, vec![EOS]).unwrap()
}

fn grammar() -> GrammarConstraint {
    GrammarCompiler::new(&vocab())
        .unwrap()
        .compile("regex", &GrammarSpec::Regex(PATTERN.into()))
        .unwrap()
}

fn oracle() -> regex::bytes::Regex {
    regex::bytes::Regex::new(&format!("^(?:{PATTERN})$")).unwrap()
}

fn text(tokens: &[u32]) -> Vec<u8> {
    tokens
        .iter()
        .flat_map(|&t| TEXT[t as usize].to_vec())
        .collect()
}

/// Whether some continuation of at most `depth` text tokens makes `tokens` a sentence.
fn completable(rx: &regex::bytes::Regex, tokens: &[u32], depth: usize) -> bool {
    if rx.is_match(&text(tokens)) {
        return true;
    }
    depth > 0
        && (0..TEXT.len() as u32).any(|v| {
            let mut next = tokens.to_vec();
            next.push(v);
            completable(rx, &next, depth - 1)
        })
}

/// Every sequence of text tokens of length `len`.
fn sequences(len: usize) -> Vec<Vec<u32>> {
    (0..TEXT.len().pow(len as u32))
        .map(|i| smc_core::tabular::decode_index(i, TEXT.len(), len))
        .collect()
}

#[test]
fn masks_equal_brute_force_completability() {
    let g = grammar();
    let rx = oracle();
    for within in [true, false] {
        for len in 0..=3 {
            for prefix in sequences(len) {
                if !completable(&rx, &prefix, DEPTH) {
                    continue;
                }
                let mut s = if within {
                    g.start_within(&[], 1, 10, V).unwrap()
                } else {
                    g.start(&[], 1, 10, V).unwrap()
                };
                for &t in &prefix {
                    s.push(&[t]).unwrap();
                }
                let mut mask = TokenMask::none(V);
                s.allowed(0, &mut mask).unwrap();
                for v in 0..TEXT.len() as u32 {
                    let mut next = prefix.clone();
                    next.push(v);
                    assert_eq!(
                        mask.contains(v),
                        completable(&rx, &next, DEPTH),
                        "prefix {prefix:?}, token {v}"
                    );
                }
                let accepted = rx.is_match(&text(&prefix));
                assert_eq!(s.accepts(0).unwrap(), accepted, "prefix {prefix:?}");
                assert_eq!(g.accepts_tokens(&prefix), accepted, "prefix {prefix:?}");
                assert_eq!(mask.contains(EOS), within && accepted, "prefix {prefix:?}");
            }
        }
    }
}

#[test]
fn shared_forked_and_resampled_states_keep_their_own_masks() {
    let g = grammar();
    let k = 6;
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
    for _ in 0..50 {
        let mut s = g.start_within(&[], k, 10, V).unwrap();
        let mut histories = vec![Vec::<u32>::new(); k];
        for _ in 0..5 {
            let mut mask = TokenMask::none(V);
            let mut tokens = Vec::new();
            for (p, h) in histories.iter().enumerate() {
                s.allowed(p, &mut mask).unwrap();
                let mut fresh = g.start_within(&[], 1, 10, V).unwrap();
                for &t in h {
                    fresh.push(&[t]).unwrap();
                }
                let mut expected = TokenMask::none(V);
                fresh.allowed(0, &mut expected).unwrap();
                assert_eq!(mask, expected, "history {h:?}");
                // Mostly allowed text tokens, sometimes a forbidden one (the particle dies).
                let allowed: Vec<u32> = mask.iter().filter(|&t| t != EOS).collect();
                let t = if allowed.is_empty() || rng.random_bool(0.1) {
                    rng.random_range(0..TEXT.len() as u32)
                } else {
                    allowed[rng.random_range(0..allowed.len())]
                };
                tokens.push(t);
            }
            s.push(&tokens).unwrap();
            for (h, &t) in histories.iter_mut().zip(&tokens) {
                h.push(t);
            }
            let ancestors: Vec<usize> = (0..k).map(|_| rng.random_range(0..k)).collect();
            s.reorder(&ancestors).unwrap();
            histories = ancestors.iter().map(|&a| histories[a].clone()).collect();
        }
    }
}

/// An enumerated output's log target mass (p0 of the output and how it ends, times its
/// acceptance).
struct Output {
    log_target: f64,
}

struct Problem {
    lm: TabularLm,
    prompt: Vec<u32>,
    max: usize,
    rx: regex::bytes::Regex,
}

impl Problem {
    fn new(seed: u64) -> Self {
        Self {
            lm: TabularLm::random(V, 1, 1.5, seed),
            prompt: vec![3],
            max: 4,
            rx: oracle(),
        }
    }

    fn log_accept(&self, s: &[u32]) -> f64 {
        if self.rx.is_match(&text(s)) {
            0.0
        } else {
            f64::NEG_INFINITY
        }
    }

    fn row(&self, s: &[u32]) -> Vec<f64> {
        let ctx: Vec<u32> = self.prompt.iter().chain(s).copied().collect();
        self.lm.next_log_probs(&ctx).unwrap().to_vec()
    }

    /// Outputs extending `start` with variable length, with log target mass given `start`.
    fn enumerate_from(&self, start: &[u32], at_max: AtMaxTokens) -> Vec<Output> {
        let mut out = Vec::new();
        let mut stack = vec![(start.to_vec(), 0.0f64)];
        while let Some((s, lp)) = stack.pop() {
            let row = self.row(&s);
            let end_mass = lp + row[EOS as usize];
            if s.len() == self.max {
                let mass = match at_max {
                    AtMaxTokens::Truncate => lp,
                    AtMaxTokens::ForceEnd => end_mass,
                };
                out.push(Output {
                    log_target: mass + self.log_accept(&s),
                });
                continue;
            }
            out.push(Output {
                log_target: end_mass + self.log_accept(&s),
            });
            for v in 0..TEXT.len() as u32 {
                let mut next = s.clone();
                next.push(v);
                stack.push((next, lp + row[v as usize]));
            }
        }
        out
    }

    /// log Z with exactly `max` text tokens (the end token is a forbidden token there).
    fn log_z_fixed(&self) -> f64 {
        let masses: Vec<f64> = sequences(self.max)
            .iter()
            .map(|s| {
                let mut lp = 0.0;
                for i in 0..s.len() {
                    lp += self.row(&s[..i])[s[i] as usize];
                }
                lp + self.log_accept(s)
            })
            .collect();
        log_sum_exp(&masses)
    }

    fn log_z(&self, at_max: AtMaxTokens) -> f64 {
        log_z_of(&self.enumerate_from(&[], at_max))
    }

    /// log psi_t(s_{1:t}) = log of the target mass ahead of the prefix; a prefix ending in the
    /// end token is a complete output, worth its acceptance.
    fn optimal_twist(&self, at_max: AtMaxTokens) -> TabularTwist {
        TabularTwist::from_fn(V, self.max, |prefix| {
            match prefix.iter().position(|&x| x == EOS) {
                Some(i) if i + 1 == prefix.len() => self.log_accept(&prefix[..i]),
                Some(_) => 0.0,
                None => log_z_of(&self.enumerate_from(prefix, at_max)),
            }
        })
    }
}

fn log_z_of(outputs: &[Output]) -> f64 {
    log_sum_exp(&outputs.iter().map(|o| o.log_target).collect::<Vec<_>>())
}

#[test]
fn optimal_twist_under_the_grammar_gives_exact_log_z_for_every_seed() {
    let g = grammar();
    for (seed, at_max) in [(1, AtMaxTokens::Truncate), (2, AtMaxTokens::ForceEnd)] {
        let p = Problem::new(seed);
        let exact = p.log_z(at_max);
        assert!(exact.is_finite() && exact < -0.05, "{exact}");
        let psi = p.optimal_twist(at_max);
        let end = EndOfSequence::new(vec![EOS], at_max).unwrap();
        let options = RunOptions::twist(Some(&psi))
            .with_constraint(&g)
            .with_end(&end);
        for seed in 0..20 {
            let config = SmcConfig::twisted(4, p.max).with_seed(seed);
            let out = run_smc_with(&p.lm, &UnitPotential, &options, &p.prompt, &config).unwrap();
            assert!(
                (out.log_z_hat - exact).abs() < 1e-9,
                "{at_max:?}, seed {seed}: log Zhat {} vs log Z {exact}",
                out.log_z_hat
            );
        }
    }
}

/// N runs: |mean Zhat - Z| / SE < 4, and every particle with positive weight is accepted.
fn check_unbiased(name: &str, p: &Problem, options: &RunOptions<'_>, config: SmcConfig, z: f64) {
    const N: u64 = 3000;
    let mut zs = Vec::with_capacity(N as usize);
    for seed in 0..N {
        let out = match run_smc_with(
            &p.lm,
            &UnitPotential,
            options,
            &p.prompt,
            &config.with_seed(seed),
        ) {
            Ok(out) => out,
            // No particle accepted, or all at weight zero: Zhat = 0 for this run.
            Err(SmcError::Constraint { .. } | SmcError::NoPositiveWeight { .. }) => {
                zs.push(0.0);
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        for (k, tokens) in out.tokens.iter().enumerate() {
            if out.log_w[k] > f64::NEG_INFINITY {
                assert!(p.rx.is_match(&text(tokens)), "{name}: {tokens:?}");
            }
        }
        zs.push(out.log_z_hat.exp());
    }
    let m = zs.iter().sum::<f64>() / N as f64;
    let var = zs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (N - 1) as f64;
    let zz = (m - z) / (var / N as f64).sqrt();
    assert!(zz.abs() < 4.0, "{name}: mean Zhat {m} vs Z {z}: {zz:.2} SE");
}

#[test]
fn constrained_zhat_is_unbiased_for_the_accepted_mass() {
    let g = grammar();
    let p = Problem::new(4);
    for criterion in [Criterion::Always, Criterion::EssBelow(0.5)] {
        let z = p.log_z_fixed().exp();
        assert!(z > 1e-4 && z < 0.9, "{z}");
        let options = RunOptions::default().with_constraint(&g);
        let config = SmcConfig::bootstrap(4, p.max).with_criterion(criterion);
        check_unbiased(&format!("exactly T, {criterion}"), &p, &options, config, z);
        for at_max in [AtMaxTokens::Truncate, AtMaxTokens::ForceEnd] {
            let z = p.log_z(at_max).exp();
            assert!(z > 1e-3 && z < 0.95, "{z}");
            let end = EndOfSequence::new(vec![EOS], at_max).unwrap();
            let options = RunOptions::default().with_constraint(&g).with_end(&end);
            check_unbiased(&format!("{at_max:?}, {criterion}"), &p, &options, config, z);
        }
    }
}

#[test]
fn every_output_of_a_constrained_run_with_weight_is_a_sentence() {
    let g = grammar();
    let p = Problem::new(9);
    let end = EndOfSequence::new(vec![EOS], AtMaxTokens::ForceEnd).unwrap();
    let options = RunOptions::default().with_constraint(&g).with_end(&end);
    for seed in 0..200 {
        let config = SmcConfig::bootstrap(8, p.max).with_seed(seed);
        let out = run_smc_with(&p.lm, &UnitPotential, &options, &p.prompt, &config).unwrap();
        for (k, tokens) in out.tokens.iter().enumerate() {
            assert!(out.finished[k]);
            if out.log_w[k] > f64::NEG_INFINITY {
                assert!(g.accepts_tokens(tokens), "{tokens:?}");
                assert!(p.rx.is_match(&text(tokens)), "{tokens:?}");
            }
        }
    }
}
