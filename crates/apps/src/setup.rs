//! Set-up shared by the commands that run a language model: the model, the prompt and a saved
//! twist head.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lm_burn::heads::TwistHead;
use lm_burn::{Backend, BurnLm, Device};

/// Which model to run, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// `default`, a Hugging Face model directory or a .gguf file.
    pub model: String,
    /// The compute backend.
    pub backend: Backend,
}

/// A loaded model with its tokenised prompt.
pub struct Loaded {
    /// The model.
    pub lm: BurnLm,
    /// The prompt's token ids (never empty).
    pub prompt: Vec<u32>,
    /// The device the model lives on.
    pub device: Device,
}

/// Loads the chosen model and tokenises a non-empty `prompt`.
pub fn load_model_and_prompt(choice: &ModelChoice, prompt: &str) -> Result<Loaded> {
    if prompt.is_empty() {
        bail!("--prompt is empty: SMC needs a prompt to condition on");
    }
    let device = choice.backend.device().map_err(anyhow::Error::msg)?;
    let lm = BurnLm::load(&choice.model, &device)
        .with_context(|| format!("loading model {:?}", choice.model))?;
    let ids = lm.tokenizer()?.encode(prompt)?;
    if ids.is_empty() {
        bail!("the prompt {prompt:?} has no tokens");
    }
    Ok(Loaded {
        lm,
        prompt: ids,
        device,
    })
}

/// Loads a twist head saved by `tsmc train` for `lm`; a conditional (infilling) head is
/// conditioned on `conditioning` (the text of an `infilling:TEXT` potential), which it needs.
pub fn load_twist(
    path: &Path,
    lm: &BurnLm,
    device: &Device,
    conditioning: Option<&str>,
) -> Result<TwistHead> {
    let (mut head, _) = TwistHead::load(path, device)
        .with_context(|| format!("loading twist {}", path.display()))?;
    if head.config.conditioning.is_some() {
        let text = conditioning.with_context(|| {
            format!(
                "{} is a conditional (infilling) twist: use --potential infilling:TEXT",
                path.display()
            )
        })?;
        head.set_conditioning(lm, &lm.tokenizer()?.encode(text)?)?;
    }
    if head.config.vocab_size != lm.dims().vocab {
        bail!(
            "twist {} has {} outputs, the model's vocabulary has {}",
            path.display(),
            head.config.vocab_size,
            lm.dims().vocab
        );
    }
    Ok(head)
}
