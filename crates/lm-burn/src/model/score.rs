//! Full forward passes without a cache: logits at every position, the conditioning vector of
//! conditional twist heads, batched log-probabilities of continuations (the infilling
//! potential) and teacher forcing (twist training).

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::StepOutput;

use super::{BurnLm, Dims, first_non_finite, push_log_softmax, to_vec};
use crate::error::{LmError, Result};

/// Teacher forcing runs in chunks of sequences whose logits hold about this many f32 values
/// (256 MiB), so that memory stays flat however many sequences are forced.
const TEACHER_FORCING_CHUNK_VALUES: usize = 64 << 20;

impl BurnLm {
    /// Logits at every position of one sequence, [S x V] row-major (a full forward, no cache).
    pub fn forward_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(LmError::EmptySequence {
                what: "the sequence".into(),
            });
        }
        let n = tokens.len();
        self.dims()
            .check_context(n, || format!("the sequence ({n} tokens)"))?;
        let (h, _) = crate::cpu::in_pool(|| self.model.forward_seq(tokens, 1, tokens.len()))?;
        let logits = to_vec(self.model.logits(h), "logits")?;
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            let v = self.dims().vocab;
            return Err(LmError::NonFinite {
                what: format!("the logit of token {} at position {}", i % v, i / v),
                value: f64::from(logits[i]),
            });
        }
        Ok(logits)
    }

    /// The final-norm hidden state at the last position of `tokens` encoded alone (\[d\]): the
    /// conditioning vector of conditional twist heads.
    pub fn encode_last_hidden(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (h, n, d) = self.conditioning_states(tokens)?;
        finite_conditioning(
            to_vec(h.slice([0..1, n - 1..n, 0..d]), "hidden states")?,
            "the conditioning hidden state",
        )
    }

    /// The mean over positions of the final-norm hidden states of `tokens` encoded alone
    /// (\[d\]): a conditioning vector that sums up what every token of c predicts.
    pub fn encode_mean_hidden(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (h, n, d) = self.conditioning_states(tokens)?;
        finite_conditioning(
            to_vec(h.reshape([n, d]).mean_dim(0), "hidden states")?,
            "the conditioning hidden state",
        )
    }

    /// The mean of the output embedding's vectors e_{c_i} of `tokens` (\[d\]), the vectors
    /// an embedding head projects onto: a copy feature of the conditioning tokens.
    pub fn mean_output_embedding(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        non_empty_conditioning(tokens)?;
        let vocab = self.dims().vocab;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(LmError::TokenOutOfRange { token, vocab });
        }
        // [d, V]: token v's vector is column v.
        let w = self.output_head();
        let [d, _] = w.dims();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let index = burn::tensor::Tensor::<1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [tokens.len()]),
            &w.device(),
        );
        finite_conditioning(
            to_vec(
                w.select(1, index).mean_dim(1).reshape([d]),
                "output embedding",
            )?,
            "the conditioning tokens' mean output embedding",
        )
    }

    /// The final-norm hidden states [1, n, d] of conditioning tokens encoded alone, with n
    /// and d; empty or over-long sequences are errors.
    fn conditioning_states(&self, tokens: &[u32]) -> Result<(Tensor<3>, usize, usize)> {
        non_empty_conditioning(tokens)?;
        let n = tokens.len();
        self.dims()
            .check_context(n, || format!("the conditioning sequence ({n} tokens)"))?;
        let (h, _) = crate::cpu::in_pool(|| self.model.forward_seq(tokens, 1, n))?;
        let d = h.dims()[2];
        Ok((h, n, d))
    }

    /// log p0(continuation | prefix) for each (prefix, continuation) pair, in one batched pass
    /// per distinct shape (the infilling potential's scoring pass).
    pub fn score(&self, prefixes: &[Vec<u32>], continuations: &[Vec<u32>]) -> Result<Vec<f64>> {
        if prefixes.len() != continuations.len() {
            return Err(LmError::LengthMismatch {
                what: "score: continuations (one per prefix)".into(),
                expected: prefixes.len(),
                found: continuations.len(),
            });
        }
        let mut out = vec![0.0; prefixes.len()];
        // Batch the pairs whose total lengths agree (all of them, in SMC use).
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, (p, c)) in prefixes.iter().zip(continuations).enumerate() {
            if p.is_empty() {
                return Err(LmError::EmptySequence {
                    what: format!("score: prefix {i}"),
                });
            }
            let (pl, cl) = (p.len(), c.len());
            self.dims().check_context(pl.saturating_add(cl), || {
                format!("score: prefix {i} ({pl} tokens) + continuation ({cl} tokens)")
            })?;
            groups.entry((pl, cl)).or_default().push(i);
        }
        let v = self.dims().vocab;
        for ((pl, cl), idx) in groups {
            if cl == 0 {
                continue;
            }
            let seq = pl + cl;
            let mut tokens = Vec::with_capacity(idx.len() * seq);
            for &i in &idx {
                tokens.extend(&prefixes[i]);
                tokens.extend(&continuations[i]);
            }
            let (h, _) = crate::cpu::in_pool(|| self.model.forward_seq(&tokens, idx.len(), seq))?;
            let d = h.dims()[2];
            let h = h.slice([0..idx.len(), pl - 1..seq - 1, 0..d]);
            let logp = to_vec(log_softmax(self.model.logits(h), 2), "log-probabilities")?;
            for (b, &i) in idx.iter().enumerate() {
                let mut sum = 0.0;
                for (j, &tok) in continuations[i].iter().enumerate() {
                    let lp = f64::from(logp[(b * cl + j) * v + tok as usize]);
                    // NaN from overflowed logits, or -inf from an infinite one.
                    if !lp.is_finite() {
                        return Err(LmError::NonFinite {
                            what: format!(
                                "score: log p0 of token {j} (id {tok}) of continuation {i}"
                            ),
                            value: lp,
                        });
                    }
                    sum += lp;
                }
                out[i] = sum;
            }
        }
        Ok(out)
    }

    /// Teacher forcing in full forward passes over prompt + s_{1:T-1}: the step outputs a
    /// decoding session would give for these sequences, without stepping one.
    pub(super) fn teacher_forced_batched(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> Result<Vec<StepOutput>> {
        if prompt.is_empty() {
            return Err(LmError::EmptySequence {
                what: "the prompt".into(),
            });
        }
        let horizon = sequences.first().map_or(0, Vec::len);
        if let Some(i) = sequences.iter().position(|s| s.len() != horizon) {
            return Err(LmError::LengthMismatch {
                what: format!("teacher forcing: tokens in sequence {i} (as many as in the first)"),
                expected: horizon,
                found: sequences[i].len(),
            });
        }
        let k = sequences.len();
        if horizon == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let Dims {
            vocab: v,
            hidden: d,
            ..
        } = self.dims();
        let p = prompt.len();
        let seq = p + horizon - 1;
        self.dims().check_context(seq, || {
            format!(
                "teacher forcing: the prompt ({p} tokens) + {} forced tokens",
                horizon - 1
            )
        })?;
        let mut log_probs: Vec<Vec<f64>> =
            (0..horizon).map(|_| Vec::with_capacity(k * v)).collect();
        let mut hidden: Vec<Vec<f32>> = (0..horizon).map(|_| Vec::with_capacity(k * d)).collect();
        let chunk = (TEACHER_FORCING_CHUNK_VALUES / (horizon * v)).max(1);
        for (g, group) in sequences.chunks(chunk).enumerate() {
            let done = g * chunk;
            let b = group.len();
            let mut tokens = Vec::with_capacity(b * seq);
            for s in group {
                tokens.extend_from_slice(prompt);
                tokens.extend_from_slice(&s[..horizon - 1]);
            }
            let (h, _) = crate::cpu::in_pool(|| self.model.forward_seq(&tokens, b, seq))?;
            let h = h.slice([0..b, p - 1..seq, 0..d]);
            let hv = to_vec(h.clone(), "hidden states")?;
            let logits = to_vec(self.model.logits(h), "logits")?;
            for bi in 0..b {
                for t in 0..horizon {
                    let r = bi * horizon + t;
                    push_log_softmax(&logits[r * v..(r + 1) * v], &mut log_probs[t]).map_err(
                        |value| LmError::NonFinite {
                            what: format!(
                                "teacher forcing: a logit of sequence {} at step {t}",
                                done + bi
                            ),
                            value,
                        },
                    )?;
                    hidden[t].extend_from_slice(&hv[r * d..(r + 1) * d]);
                }
            }
        }
        Ok(log_probs
            .into_iter()
            .zip(hidden)
            .map(|(lp, h)| StepOutput {
                log_probs: LogTable::from_vec(k, v, lp).expect("shape"),
                hidden: Some(HiddenStates {
                    rows: k,
                    dim: d,
                    data: h,
                }),
            })
            .collect())
    }
}

fn non_empty_conditioning(tokens: &[u32]) -> Result<()> {
    if tokens.is_empty() {
        return Err(LmError::EmptySequence {
            what: "the conditioning sequence".into(),
        });
    }
    Ok(())
}

/// `values` if every one is finite, else an error naming `what`.
fn finite_conditioning(values: Vec<f32>, what: &str) -> Result<Vec<f32>> {
    match first_non_finite(&values) {
        Some(value) => Err(LmError::NonFinite {
            what: what.into(),
            value,
        }),
        None => Ok(values),
    }
}
