//! Set-up shared by the commands that run a language model.

use anyhow::{Context, Result, bail};
use lm_burn::{Backend, BurnLm, Device};

/// Loads `model` on `backend` and tokenises a non-empty `prompt`; returns the model, the
/// prompt's token ids and the device.
pub fn load_model_and_prompt(
    model: &str,
    backend: Backend,
    prompt: &str,
) -> Result<(BurnLm, Vec<u32>, Device)> {
    if prompt.is_empty() {
        bail!("--prompt is empty: SMC needs a prompt to condition on");
    }
    let device = backend.device().map_err(anyhow::Error::msg)?;
    let lm = BurnLm::load(model, &device).with_context(|| format!("loading model {model:?}"))?;
    let ids = lm.tokenizer()?.encode(prompt)?;
    if ids.is_empty() {
        bail!("the prompt {prompt:?} has no tokens");
    }
    Ok((lm, ids, device))
}
