//! Every architecture against transformers' logits on the tiny random models in
//! testdata/reference/tiny-models, and cached decoding against full recomputation.

mod common;

use common::{max_abs_diff, read_tensor, reference_dir};
use lm_burn::{BurnLm, default_device};
use smc_core::model::{DecodeSession, LanguageModel};

const ARCHS: &[&str] = &["llama", "llama-tied", "qwen2", "gpt2", "gpt-neo"];

fn load(name: &str) -> (BurnLm, Vec<u32>, Vec<f64>) {
    let dir = reference_dir().join("tiny-models").join(name);
    let lm = BurnLm::from_hf_dir(&dir, &default_device()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let refs = dir.join("reference_logits.safetensors");
    let (_, ids) = read_tensor(&refs, "input_ids");
    let (shape, logits) = read_tensor(&refs, "logits");
    assert_eq!(shape, vec![12, 320]);
    (lm, ids.iter().map(|&x| x as u32).collect(), logits)
}

#[test]
fn full_forward_logits_match_transformers_to_1e_4() {
    for name in ARCHS {
        let (lm, ids, expected) = load(name);
        let got: Vec<f64> = lm
            .forward_logits(&ids)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "{name}: max |logit diff| = {diff}");
    }
}

fn log_softmax_row(row: &[f64]) -> Vec<f64> {
    let lse = smc_core::logspace::log_sum_exp(row);
    row.iter().map(|x| x - lse).collect()
}

#[test]
fn cached_decoding_of_particles_equals_full_recomputation_and_reference_logits() {
    for name in ARCHS {
        let (lm, ids, expected) = load(name);
        let v = 320;
        // Prompt = the first 5 tokens; 3 particles all continue with the reference tokens.
        let prompt = &ids[..5];
        let mut session = lm.start(prompt, 3).unwrap();
        for t in 5..ids.len() {
            let out = session.next_log_probs().unwrap();
            let want = log_softmax_row(&expected[(t - 1) * v..t * v]);
            for k in 0..3 {
                let diff = max_abs_diff(out.log_probs.row(k), &want);
                assert!(diff < 1e-4, "{name}: position {t} particle {k}: {diff}");
            }
            session.push(&[ids[t]; 3]).unwrap();
        }
    }
}

#[test]
fn reorder_equals_recomputing_the_reordered_sequences() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let prompt = &ids[..4];
        let conts: [[u32; 4]; 3] = [[7, 8, 9, 10], [100, 200, 300, 1], [42, 42, 42, 42]];
        let mut session = lm.start(prompt, 3).unwrap();
        for step in 0..2 {
            let column: Vec<u32> = conts.iter().map(|c| c[step]).collect();
            session.push(&column).unwrap();
        }
        // Particle 0 <- 2, 1 <- 0, 2 <- 2.
        let ancestors = [2usize, 0, 2];
        session.reorder(&ancestors).unwrap();
        let reordered: Vec<[u32; 4]> = ancestors.iter().map(|&a| conts[a]).collect();
        // Continue each particle with its own remaining tokens, then compare.
        session
            .push(&[reordered[0][2], reordered[1][2], reordered[2][2]])
            .unwrap();
        let out = session.next_log_probs().unwrap();
        for (k, cont) in reordered.iter().enumerate() {
            let mut full: Vec<u32> = prompt.to_vec();
            full.extend(&cont[..3]);
            let logits: Vec<f64> = lm
                .forward_logits(&full)
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let last = log_softmax_row(&logits[(full.len() - 1) * 320..]);
            let diff = max_abs_diff(out.log_probs.row(k), &last);
            assert!(diff < 1e-4, "{name}: particle {k}: {diff}");
        }
    }
}

#[test]
fn batched_scoring_equals_sum_of_full_forward_log_probs() {
    let (lm, ids, _) = load("llama");
    let prefixes = vec![ids[..3].to_vec(), ids[2..5].to_vec(), ids[..6].to_vec()];
    let conts = vec![vec![5, 6], vec![17, 18], vec![1, 2]];
    let scores = lm.score(&prefixes, &conts).unwrap();
    for i in 0..3 {
        let mut full = prefixes[i].clone();
        full.extend(&conts[i]);
        let logits: Vec<f64> = lm
            .forward_logits(&full)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let mut want = 0.0;
        for (j, &tok) in conts[i].iter().enumerate() {
            let pos = prefixes[i].len() - 1 + j;
            want += log_softmax_row(&logits[pos * 320..(pos + 1) * 320])[tok as usize];
        }
        assert!(
            (scores[i] - want).abs() < 1e-4,
            "pair {i}: {} vs {want}",
            scores[i]
        );
    }
}

/// The model's continuation scores (one pass, logits at c's positions) equal the sums of the
/// teacher-forced rows that the trait's default would take.
#[test]
fn continuation_scores_equal_the_teacher_forced_rows() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let prompt = &ids[..3];
        let (seqs, c) = (vec![vec![7u32, 8], vec![100, 200]], [42u32, 5, 9]);
        let got = lm.score_continuation(prompt, &seqs, &c).unwrap();
        let full: Vec<Vec<u32>> = seqs.iter().map(|s| [&s[..], &c[..]].concat()).collect();
        let rows = lm.teacher_forced(prompt, &full).unwrap();
        for (r, g) in got.iter().enumerate() {
            let want: f64 = c
                .iter()
                .enumerate()
                .map(|(j, &t)| rows[2 + j].log_probs.row(r)[t as usize])
                .sum();
            assert!(
                (g - want).abs() < 1e-4,
                "{name}: sequence {r}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn batched_teacher_forcing_equals_replaying_a_decoding_session() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let prompt = &ids[..3];
        let seqs = vec![
            vec![7u32, 8, 9, 10],
            vec![100, 200, 300, 1],
            vec![42, 42, 42, 42],
        ];
        let fast = lm.teacher_forced(prompt, &seqs).unwrap();
        let mut session = lm.start(prompt, 3).unwrap();
        assert_eq!(fast.len(), 4);
        for (t, out) in fast.iter().enumerate() {
            let want = session.next_log_probs().unwrap();
            let diff = max_abs_diff(out.log_probs.as_slice(), want.log_probs.as_slice());
            assert!(diff < 1e-4, "{name}: step {t}: log-prob diff {diff}");
            let (h, hw) = (out.hidden.as_ref().unwrap(), want.hidden.as_ref().unwrap());
            assert_eq!((h.rows, h.dim), (hw.rows, hw.dim));
            let hd: Vec<f64> = h.data.iter().map(|&x| x as f64).collect();
            let hwd: Vec<f64> = hw.data.iter().map(|&x| x as f64).collect();
            let diff = max_abs_diff(&hd, &hwd);
            assert!(diff < 1e-4, "{name}: step {t}: hidden diff {diff}");
            let column: Vec<u32> = seqs.iter().map(|s| s[t]).collect();
            session.push(&column).unwrap();
        }
        assert!(lm.teacher_forced(prompt, &[vec![1, 2], vec![3]]).is_err());
    }
}

/// 8-bit decoding weights ([`WeightFormat::Q8`]) on random f32 weights: each weight moves by
/// at most 1/510 of its block's range, and the log-probabilities of cached decoding stay
/// within 5e-2 of transformers' (measured: 0.021 at most; the f32 path is within 1e-4). Full
/// forward passes keep the f32 weights; the architectures without quantised decoding, and a
/// model whose weights are already shared, refuse the format.
#[test]
fn quantised_decoding_stays_near_the_reference_logits() {
    use lm_burn::WeightFormat;
    for name in ["llama", "llama-tied", "qwen2"] {
        let (lm, ids, expected) = load(name);
        let lm = lm.with_weight_format(WeightFormat::Q8).unwrap();
        let v = 320;
        let prompt = &ids[..5];
        let mut session = lm.start(prompt, 3).unwrap();
        let mut worst = 0.0f64;
        for t in 5..ids.len() {
            let out = session.next_log_probs().unwrap();
            let want = log_softmax_row(&expected[(t - 1) * v..t * v]);
            for k in 0..3 {
                worst = worst.max(max_abs_diff(out.log_probs.row(k), &want));
            }
            session.push(&[ids[t]; 3]).unwrap();
        }
        assert!(worst < 5e-2, "{name}: max |log-prob diff| = {worst}");
        assert!(worst > 0.0, "{name}: the quantised weights were not used");
        // Full forward passes keep the f32 weights.
        let got: Vec<f64> = lm
            .forward_logits(&ids)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert!(max_abs_diff(&got, &expected) < 1e-4, "{name}");
    }
    for name in ["gpt2", "gpt-neo"] {
        let (lm, _, _) = load(name);
        let err = lm.with_weight_format(WeightFormat::Q8).unwrap_err();
        assert!(err.to_string().contains("q8"), "{name}: {err}");
    }
    let (lm, _, _) = load("llama");
    let _shared = lm.clone();
    assert!(lm.with_weight_format(WeightFormat::Q8).is_err());
}

/// The log-probabilities of 3 particles decoding their own continuations of ids[..4], with a
/// resampling step after the second token, after `reserve` (None: no hint).
fn decode_with_reservation(lm: &BurnLm, ids: &[u32], reserve: Option<usize>) -> Vec<Vec<f64>> {
    let mut session = lm.start(&ids[..4], 3).unwrap();
    if let Some(n) = reserve {
        session.reserve(n).unwrap();
    }
    let mut rows = Vec::new();
    for step in 0..7 {
        let out = session.next_log_probs().unwrap();
        rows.extend((0..3).map(|k| out.log_probs.row(k).to_vec()));
        let column: Vec<u32> = (0..3).map(|k| (ids[4 + step] + 37 * k) % 320).collect();
        session.push(&column).unwrap();
        if step == 1 {
            session.reorder(&[2, 0, 2]).unwrap();
        }
    }
    rows
}

#[test]
fn a_cache_reservation_changes_no_log_probability() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let unhinted = decode_with_reservation(&lm, &ids, None);
        // Too small (the cache grows past it), exact, and larger than needed.
        for n in [0, 2, 7, 100] {
            let hinted = decode_with_reservation(&lm, &ids, Some(n));
            assert!(
                hinted == unhinted,
                "{name}: reserve({n}) changed the log-probabilities"
            );
        }
    }
}

fn to_f64(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

#[test]
fn conditioning_encodings_are_the_means_they_name() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let c = &ids[..5];
        // Causal attention: c's state at position i is that of c[..=i] encoded alone.
        let states: Vec<Vec<f32>> = (1..=c.len())
            .map(|n| lm.encode_last_hidden(&c[..n]).unwrap())
            .collect();
        let d = states[0].len();
        let mean: Vec<f64> = (0..d)
            .map(|j| states.iter().map(|s| f64::from(s[j])).sum::<f64>() / c.len() as f64)
            .collect();
        let diff = max_abs_diff(&to_f64(lm.encode_mean_hidden(c).unwrap()), &mean);
        assert!(diff < 1e-4, "{name}: mean hidden state off by {diff}");

        let head = lm.output_head();
        let [rows, vocab] = head.dims();
        assert_eq!(rows, d, "{name}");
        let w: Vec<f32> = head.try_into_vec_as::<f32>().unwrap();
        let mean: Vec<f64> = (0..d)
            .map(|j| {
                c.iter()
                    .map(|&t| f64::from(w[j * vocab + t as usize]))
                    .sum::<f64>()
                    / c.len() as f64
            })
            .collect();
        let diff = max_abs_diff(&to_f64(lm.mean_output_embedding(c).unwrap()), &mean);
        assert!(diff < 1e-6, "{name}: mean output embedding off by {diff}");

        let e = lm.mean_output_embedding(&[1, vocab as u32]).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("token id {vocab} is outside")),
            "{name}: {e}"
        );
        for e in [
            lm.mean_output_embedding(&[]).unwrap_err(),
            lm.encode_mean_hidden(&[]).unwrap_err(),
        ] {
            assert!(
                e.to_string().contains("conditioning sequence"),
                "{name}: {e}"
            );
        }
    }
}

/// A branched session continues exactly as sessions that decode each parent's prefix anew:
/// the lookahead twist's candidates are scored on branches.
#[test]
fn branched_sessions_continue_like_fresh_ones() {
    for name in ARCHS {
        let (lm, ids, _) = load(name);
        let prompt = &ids[..3];
        let prefixes = [[7u32, 8], [100, 200], [3, 3]];
        let mut session = lm.start(prompt, 3).unwrap();
        for pos in 0..2 {
            let column: Vec<u32> = prefixes.iter().map(|p| p[pos]).collect();
            session.push(&column).unwrap();
        }
        let parents = [2usize, 0, 0, 1, 2];
        let mut branch = session.branch(&parents).unwrap().unwrap();
        assert_eq!(branch.num_particles(), 5);
        let next = [9u32, 10, 11, 12, 13];
        branch.push(&next).unwrap();
        let got = branch.next_log_probs().unwrap();
        let seqs: Vec<Vec<u32>> = parents
            .iter()
            .zip(next)
            .map(|(&a, t)| [&prefixes[a][..], &[t, 0]].concat())
            .collect();
        let rows = lm.teacher_forced(prompt, &seqs).unwrap();
        for r in 0..5 {
            let (g, w) = (got.log_probs.row(r), rows[3].log_probs.row(r));
            let err = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "{name}: branch {r}: {err}");
        }
        assert!(session.branch(&[3]).is_err(), "{name}: parent out of range");
        assert!(session.branch(&[]).is_err(), "{name}: no parents");
    }
}

/// The residual stream before the last layer is what a retrained top layer reads: run through
/// every layer and normed, it gives transformers' logits; batched, each row is its sequence's.
#[test]
fn residual_stream_through_every_layer_gives_the_reference_logits() {
    use lm_burn::config::JsonConfig;
    use lm_burn::llama::{Llama, LlamaConfig};
    use lm_burn::weights::{Loader, SafetensorsDir};
    let dir = reference_dir().join("tiny-models").join("llama-tied");
    let (_, ids, expected) = load("llama-tied");
    let dev = default_device();
    let cfg = LlamaConfig::from_json(&JsonConfig::read(&dir.join("config.json")).unwrap()).unwrap();
    let source = SafetensorsDir::open(&dir).unwrap();
    let mut loader = Loader::new(&source, &dev);
    let model = Llama::load(cfg.clone(), &mut loader).unwrap();
    let mut loader = Loader::new(&source, &dev);
    let norm = loader
        .tensor::<1>("model.norm.weight", [cfg.hidden_size])
        .unwrap();
    let embed = loader
        .tensor::<2>(
            "model.embed_tokens.weight",
            [cfg.vocab_size, cfg.hidden_size],
        )
        .unwrap();
    let h = model.residual_stream(&ids, 1, cfg.num_layers).unwrap();
    let h = lm_burn::ops::rms_norm(h, &norm, cfg.rms_norm_eps);
    let logits: Vec<f64> = h
        .reshape([ids.len(), cfg.hidden_size])
        .matmul(embed.transpose())
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect();
    let diff = max_abs_diff(&logits, &expected);
    assert!(diff < 1e-4, "max |logit diff| = {diff}");

    let flat = |t: burn::tensor::Tensor<3>| -> Vec<f64> {
        t.into_data().iter::<f32>().map(f64::from).collect()
    };
    let both = flat(model.residual_stream(&ids, 2, 1).unwrap());
    let first = flat(model.residual_stream(&ids[..6], 1, 1).unwrap());
    let second = flat(model.residual_stream(&ids[6..], 1, 1).unwrap());
    assert!(max_abs_diff(&both[..first.len()], &first) < 1e-5);
    assert!(max_abs_diff(&both[first.len()..], &second) < 1e-5);
    for (tokens, batch) in [(&ids[..], 0), (&ids[..], 5), (&ids[..0], 1)] {
        let e = model
            .residual_stream(tokens, batch, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("residual_stream"), "{e}");
    }
}
