//! Scores a continuation after a prompt and prints one JSON object:
//! `prompt_ids`, `top5` (the five most likely next tokens after the prompt, [id, log-prob]),
//! `continuation_ids` and `sum_logprob` = log p0(continuation | prompt), where prompt +
//! continuation are tokenised together and split at the prompt's length. A NaN or infinite
//! logit or log-probability (a model whose activations overflow) is an error: the program exits
//! non-zero with a message instead of printing `null`.
//!
//! cargo run --release -p lm-burn --example score -- --model default --prompt "Once upon a time," \
//!     --continuation " there was a little girl named Lily."

use anyhow::{Context, Result, bail};
use clap::Parser;
use lm_burn::{Backend, BurnLm};

#[derive(Parser)]
struct Args {
    /// `default`, a Hugging Face model directory, or a .gguf file.
    #[arg(long, default_value = "default")]
    model: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// The continuation text.
    #[arg(long, default_value = "")]
    continuation: String,
    /// cpu, wgpu or cuda (the latter two need the crate feature of the same name).
    #[arg(long, default_value = "cpu")]
    backend: Backend,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = args.backend.device().map_err(anyhow::Error::msg)?;
    let lm = BurnLm::load(&args.model, &device)
        .with_context(|| format!("loading model {}", args.model))?;
    let tok = lm.tokenizer()?;
    let prompt_ids = tok.encode(&args.prompt)?;
    if prompt_ids.is_empty() {
        bail!("the prompt {:?} has no tokens", args.prompt);
    }
    let full = tok.encode(&format!("{}{}", args.prompt, args.continuation))?;
    if full.len() < prompt_ids.len() || full[..prompt_ids.len()] != prompt_ids[..] {
        eprintln!(
            "warning: the prompt's tokens change when the continuation is appended; splitting at the prompt's length"
        );
    }
    let continuation_ids = full[prompt_ids.len().min(full.len())..].to_vec();
    let v = lm.dims().vocab;
    let logits = lm.forward_logits(&prompt_ids)?;
    let last: Vec<f64> = logits[(prompt_ids.len() - 1) * v..]
        .iter()
        .map(|&x| x as f64)
        .collect();
    let lse = smc_core::logspace::log_sum_exp(&last);
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let top5: Vec<(usize, f64)> = order.iter().take(5).map(|&i| (i, last[i] - lse)).collect();
    let sum_logprob = lm.score(
        &[full[..prompt_ids.len()].to_vec()],
        std::slice::from_ref(&continuation_ids),
    )?[0];
    // The library refuses non-finite values already; JSON cannot hold them either.
    if !lse.is_finite() || !sum_logprob.is_finite() {
        bail!("non-finite log-probability (log-normaliser {lse}, sum_logprob {sum_logprob})");
    }
    println!(
        "{}",
        serde_json::json!({
            "prompt_ids": prompt_ids,
            "top5": top5,
            "continuation_ids": continuation_ids,
            "sum_logprob": sum_logprob,
        })
    );
    Ok(())
}
