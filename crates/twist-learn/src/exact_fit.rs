//! Fitting a twist head to exact samples by maximum likelihood of its twisted proposal:
//! minimise E_sigma[-log q(s)], i.e. KL(sigma || q) up to a constant, with
//! log q(s) = sum_t [log p0(s_t | s_<t) + log psi_t(s_<t, s_t) - log sum_v p0(v | s_<t) psi_t(s_<t, v)].
//!
//! This is DPG's objective (spec §5) with its importance-weighted draws from q replaced by exact
//! draws from sigma, which infilling has for free (joint ancestral pairs (s*, c)). It is also
//! CTL's gradient with the twisted target's prefix marginal pi_t(s_<t) replaced by sigma's own
//! (the two agree when psi is the optimal twist). Because the base model is frozen, the hidden
//! states and log p0 rows of the exact samples are computed once ([`ExactExample`]) and every
//! epoch reads them: thousands of pairs cost one batched pass of the base model, and an epoch
//! costs only the head's forward and backward passes.

use burn::module::Module;
use burn::optim::{AdamConfig as BurnAdamConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Int, Tensor, TensorData};
use lm_burn::BurnLm;
use lm_burn::heads::{CondEncoding, TwistHead, encode_conditioning};
use rand::seq::SliceRandom;
use smc_core::model::LanguageModel;
use smc_core::smc::rng_from_seed;

use crate::batch::TrainableTwist;
use crate::error::{Result, TrainError};
use crate::head::HeadTrainable;
use crate::method::Parameterization;

/// log psi from raw outputs under `param`, on tensors.
fn log_psi(raw: Tensor<2>, param: Parameterization) -> Tensor<2> {
    match param {
        Parameterization::Identity => raw,
        Parameterization::LogSigmoid => log_sigmoid(raw),
    }
}

/// One exact sample as the fit reads it: its tokens, and at every step t the base model's
/// hidden state and log p0 row at the prefix s_<t, and the conditioning vector h_c (conditional
/// heads).
#[derive(Debug, Clone)]
pub struct ExactExample {
    /// s_1..s_T.
    pub tokens: Vec<u32>,
    /// Row-major [T, d] hidden states, row t-1 at the prefix s_<t.
    pub hidden: Vec<f32>,
    /// Row-major [T, V] log p0(v | prompt, s_<t).
    pub log_p0: Vec<f32>,
    /// h_c \[d\], for a conditional head.
    pub cond: Option<Vec<f32>>,
}

/// Builds the examples of exact samples `samples` (each with its conditioning tokens for a
/// conditional head, encoded with `encoding`) from one teacher-forced pass of `lm` per chunk
/// of `chunk` samples.
pub fn exact_examples(
    lm: &BurnLm,
    prompt: &[u32],
    samples: &[(Vec<u32>, Option<Vec<u32>>)],
    encoding: CondEncoding,
    chunk: usize,
) -> Result<Vec<ExactExample>> {
    let mut out = Vec::with_capacity(samples.len());
    for part in samples.chunks(chunk.max(1)) {
        let seqs: Vec<Vec<u32>> = part.iter().map(|(s, _)| s.clone()).collect();
        let steps = lm.teacher_forced(prompt, &seqs)?;
        for (k, (tokens, c)) in part.iter().enumerate() {
            let mut hidden = Vec::new();
            let mut log_p0 = Vec::new();
            for step in &steps {
                let h = step.hidden.as_ref().ok_or_else(|| {
                    TrainError::config(
                        "base model",
                        "one that returns hidden states",
                        "a model without them",
                    )
                })?;
                hidden.extend_from_slice(h.row(k));
                log_p0.extend(step.log_probs.row(k).iter().map(|&x| x as f32));
            }
            let cond = match c {
                Some(c) => Some(encode_conditioning(lm, encoding, c)?),
                None => None,
            };
            out.push(ExactExample {
                tokens: tokens.clone(),
                hidden,
                log_p0,
                cond,
            });
        }
    }
    Ok(out)
}

/// Settings of [`fit_exact`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Passes over the examples.
    pub epochs: usize,
    /// Examples per Adam step.
    pub batch: usize,
    /// Adam's rate.
    pub learning_rate: f64,
    /// Seed of the shuffles.
    pub seed: u64,
}

/// The head input rows [sum T, d_in] and the flat log p0 rows and tokens of `examples`.
fn stack(head: &TwistHead, examples: &[&ExactExample]) -> (Vec<f32>, Vec<f32>, Vec<i64>, usize) {
    let d = head.config.hidden_size;
    let (mut x, mut lp, mut idx) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = 0;
    for e in examples {
        for (t, &tok) in e.tokens.iter().enumerate() {
            x.extend_from_slice(&e.hidden[t * d..(t + 1) * d]);
            if let Some(c) = &e.cond {
                x.extend_from_slice(c);
            }
            idx.push(i64::from(tok));
            rows += 1;
        }
        lp.extend_from_slice(&e.log_p0);
    }
    (x, lp, idx, rows)
}

fn check_examples(head: &TwistHead, examples: &[ExactExample]) -> Result<()> {
    let (d, v) = (head.config.hidden_size, head.config.vocab_size);
    let conditional = head.config.conditioning.is_some();
    if examples.is_empty() {
        return Err(TrainError::config("exact examples", "at least one", "none"));
    }
    for e in examples {
        if let Some(&tok) = e.tokens.iter().find(|&&tok| tok as usize >= v) {
            return Err(TrainError::config(
                "exact examples",
                format!("token ids below the vocabulary size {v}"),
                tok,
            ));
        }
        let t = e.tokens.len();
        let cond_ok = match (&e.cond, conditional) {
            (Some(c), true) => c.len() == d,
            (None, false) => true,
            _ => false,
        };
        if t == 0 || e.hidden.len() != t * d || e.log_p0.len() != t * v || !cond_ok {
            return Err(TrainError::config(
                "exact examples",
                format!(
                    "T >= 1 rows of hidden size {d} and vocabulary {v}, with h_c exactly for a conditional head"
                ),
                format!(
                    "T = {t}, {} hidden values, {} log p0 values",
                    e.hidden.len(),
                    e.log_p0.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Gradients by parameter name, row-major.
pub type NamedGradients = Vec<(String, Vec<f32>)>;

/// The mean over `examples` of -log q(s) as a differentiable scalar of the head's parameters.
fn mean_nll(twist: &HeadTrainable, examples: &[&ExactExample]) -> Result<Tensor<1>> {
    let head = twist.head();
    let device = head.device().clone();
    let (x, lp, idx, rows) = stack(head, examples);
    let (d_in, v) = (head.config.input_size(), head.config.vocab_size);
    let x = Tensor::<2>::from_data(TensorData::new(x, [rows, d_in]), &device);
    let lp = Tensor::<2>::from_data(TensorData::new(lp, [rows, v]), &device);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [rows, 1]), &device);
    let logits = log_psi(head.forward(x)?, twist.parameterization()) + lp;
    let picked = log_softmax(logits, 1).gather(1, idx);
    Ok(picked.sum().neg() / examples.len() as f32)
}

fn scalar(t: Tensor<1>, what: &'static str) -> Result<f64> {
    Ok(f64::from(t.try_into_scalar::<f32>().map_err(|source| {
        lm_burn::LmError::ReadBack { what, source }
    })?))
}

/// The mean of -log q(s) over `examples` and its gradient with respect to each parameter
/// (named as in `HeadConfig::param_specs`, row-major); the head is not changed. For gradient
/// checks.
pub fn nll_and_gradients(
    twist: &HeadTrainable,
    examples: &[ExactExample],
) -> Result<(f64, NamedGradients)> {
    check_examples(twist.head(), examples)?;
    let all: Vec<&ExactExample> = examples.iter().collect();
    let loss = mean_nll(twist, &all)?;
    let value = scalar(loss.clone(), "exact-fit loss")?;
    let grads = GradientsParams::from_grads(loss.backward(), &twist.head().module);
    Ok((value, twist.named_gradients(&grads)?))
}

/// Minimises the mean over examples of -log q(s) by Adam (its own state, not the twist's),
/// shuffling the examples each epoch; returns the mean loss of each epoch (before each step's
/// update).
pub fn fit_exact(
    twist: &mut HeadTrainable,
    examples: &[ExactExample],
    cfg: &FitConfig,
) -> Result<Vec<f64>> {
    check_examples(twist.head(), examples)?;
    if cfg.batch == 0 || !(cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0) {
        return Err(TrainError::config(
            "exact fit",
            "a batch >= 1 and a positive learning rate",
            format!("batch {}, rate {}", cfg.batch, cfg.learning_rate),
        ));
    }
    let mut optim = BurnAdamConfig::new().init();
    let mut rng = rng_from_seed(cfg.seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut losses = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut total, mut n) = (0.0, 0usize);
        for part in order.chunks(cfg.batch) {
            let chosen: Vec<&ExactExample> = part.iter().map(|&i| &examples[i]).collect();
            let loss = mean_nll(twist, &chosen)?;
            let value = scalar(loss.clone(), "exact-fit loss")?;
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    loss: "exact-sample likelihood".into(),
                    step: epoch + 1,
                    value,
                });
            }
            total += value * chosen.len() as f64;
            n += chosen.len();
            let grads = GradientsParams::from_grads(loss.backward(), &twist.head().module);
            let module = twist.head().module.clone();
            twist.head_mut().module = optim.step(cfg.learning_rate, module, grads);
        }
        losses.push(total / n.max(1) as f64);
    }
    Ok(losses)
}

/// Per example, log p0(s) - log q(s) under the head as it is: its mean over exact samples is
/// KL(sigma || q) - KL(sigma || p0), negative where q is closer to sigma than p0 is.
pub fn exact_log_ratio(twist: &HeadTrainable, examples: &[ExactExample]) -> Result<Vec<f64>> {
    check_examples(twist.head(), examples)?;
    let head = twist.head();
    let device = head.device().clone().without_autodiff();
    let module = head.module.valid();
    let base = head.base_embedding();
    let (d_in, v) = (head.config.input_size(), head.config.vocab_size);
    let mut out = Vec::with_capacity(examples.len());
    for e in examples {
        let (x, lp, idx, rows) = stack(head, &[e]);
        let x = Tensor::<2>::from_data(TensorData::new(x, [rows, d_in]), &device);
        let lp = Tensor::<2>::from_data(TensorData::new(lp.clone(), [rows, v]), &device);
        let raw = module.forward(x, base.as_ref())?;
        let logq = log_softmax(log_psi(raw, twist.parameterization()) + lp.clone(), 1);
        let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [rows, 1]), &device);
        let gap = (lp.gather(1, idx.clone()) - logq.gather(1, idx)).sum();
        out.push(scalar(gap, "exact-fit log ratio")?);
    }
    Ok(out)
}

/// The mean of [`exact_log_ratio`] over `examples` with its standard error.
pub fn exact_fit_log_ratio_summary(
    twist: &HeadTrainable,
    examples: &[ExactExample],
) -> Result<(f64, f64)> {
    let v = exact_log_ratio(twist, examples)?;
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok((m, (var / n).sqrt()))
}
