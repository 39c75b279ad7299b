//! Twist training as the commands use it: fresh or resumed heads, the choice of CTL's
//! positives, and the training progress bar. Shared by `tsmc train` and `tsmc reproduce`.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use lm_burn::heads::{BiasGate, CondEncoding, HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, Device};
use smc_core::model::Potential;
use twist_learn::{
    AdamConfig, BiasOptimizer, HeadTrainable, Parameterization, TrainConfig, TrainRecord,
};

/// A head's maximum-likelihood fit to exact samples before training (`--fit-epochs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSettings {
    /// Passes over the exact samples.
    pub epochs: usize,
    /// Adam's rate.
    pub lr: f64,
}

/// Exact samples per Adam step of a fit.
pub const FIT_BATCH: usize = 8;

/// Fits `twist` to the exact samples `pool` by maximum likelihood of its twisted proposal
/// (twist_learn::exact_fit): one base-model pass over the pool, then `fit.epochs` epochs of
/// Adam in batches of [`FIT_BATCH`], shuffled from `seed`.
pub fn fit_to_exact(
    lm: &BurnLm,
    prompt: &[u32],
    twist: &mut HeadTrainable,
    pool: &[Vec<u32>],
    fit: FitSettings,
    seed: u64,
) -> Result<()> {
    let samples: Vec<(Vec<u32>, Option<Vec<u32>>)> =
        pool.iter().map(|s| (s.clone(), None)).collect();
    let examples =
        twist_learn::exact_fit::exact_examples(lm, prompt, &samples, CondEncoding::Last, 64)?;
    let cfg = twist_learn::exact_fit::FitConfig {
        epochs: fit.epochs,
        batch: FIT_BATCH,
        learning_rate: fit.lr,
        seed,
    };
    twist_learn::exact_fit::fit_exact(twist, &examples, &cfg)?;
    Ok(())
}

/// The shape and initialisation of a fresh head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadChoice {
    /// Linear, MLP or through the output embedding.
    pub kind: HeadKind,
    /// Embedding heads: the rank of A (`None`: full).
    pub rank: Option<usize>,
    /// Start the output layer at zero (q = p0) instead of the spec's initialisation.
    pub zero_output: bool,
    /// Embedding heads: the per-token bias's own learning rate (`None`: the common one).
    pub bias_lr: Option<f64>,
    /// Embedding heads: how the bias is stepped at its own rate.
    pub bias_optimizer: BiasOptimizer,
    /// Embedding heads: the bias scaled by a learned gate of the input (`None`: not gated).
    pub bias_gate: Option<BiasGate>,
    /// The gate's own Adam rate (`None`: the common one).
    pub gate_lr: Option<f64>,
    /// Conditional heads: how c becomes h_c (`None`: [`CondEncoding::Last`] for a fresh head,
    /// the checkpoint's for a resumed one).
    pub cond_encoding: Option<CondEncoding>,
}

impl HeadChoice {
    /// The head configuration for `lm`, conditional when `conditioning` is given.
    pub fn config(&self, lm: &BurnLm, conditioning: Option<Vec<u32>>) -> HeadConfig {
        let mut config = HeadConfig::for_model(lm, self.kind, conditioning);
        config.zero_output = self.zero_output;
        config.rank = self.rank;
        config.bias_gate = self.bias_gate;
        config.cond_encoding = self.cond_encoding.unwrap_or_default();
        config
    }

    /// The conditioning encoding, as the command line spells it (`last` when not given).
    pub fn cond_encoding_name(&self) -> &'static str {
        self.cond_encoding.unwrap_or_default().name()
    }

    /// The bias gate, as the command line spells it.
    pub fn bias_gate_name(&self) -> &'static str {
        match self.bias_gate {
            None => "none",
            Some(BiasGate::Sigmoid) => "sigmoid",
            Some(BiasGate::Linear) => "linear",
        }
    }

    /// How the per-token bias is stepped, as the command line spells it.
    pub fn bias_optim_name(&self) -> &'static str {
        match self.bias_optimizer {
            BiasOptimizer::Adam => "adam",
            BiasOptimizer::Sgd => "sgd",
        }
    }

    /// The name of the initialisation, as the command line spells it.
    pub fn init_name(&self) -> &'static str {
        if self.kind == HeadKind::Embedding {
            "zero"
        } else if self.zero_output {
            "zero-output"
        } else {
            "xavier"
        }
    }

    /// The name of the head kind, as the command line spells it.
    pub fn kind_name(&self) -> String {
        match (self.kind, self.rank) {
            (HeadKind::Linear, _) => "linear".into(),
            (HeadKind::Mlp, _) => "mlp".into(),
            (HeadKind::Embedding, None) => "embedding".into(),
            (HeadKind::Embedding, Some(r)) => format!("low-rank:{r}"),
        }
    }
}

/// CTL's positives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positives {
    /// Draws from q weighted by sigma~/q (the one-sample form).
    Sis,
    /// Conditional SMC around a particle Gibbs chain carried across updates.
    Gibbs,
    /// Exact samples of sigma replayed, drawn uniformly with replacement, weight 1/K each.
    Exact,
    /// Conditional SMC around one replayed exact sample per update; its K final particles,
    /// weighted, are the positives.
    ExactCsmc,
}

impl Positives {
    /// The name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Positives::Sis => "sis",
            Positives::Gibbs => "gibbs",
            Positives::Exact => "exact",
            Positives::ExactCsmc => "exact-csmc",
        }
    }
}

/// The lower-case name of a method, as the command line spells it.
pub fn method_name(method: twist_learn::Method) -> String {
    format!("{method:?}").to_lowercase()
}

/// Trains `twist` with `cfg.method`, CTL's positives as chosen (`pool`: the exact samples
/// that [`Positives::Exact`] and [`Positives::ExactCsmc`] replay; unused otherwise); the callback's errors (for example a
/// failed write of the curve) end the run and come back as they were.
#[allow(clippy::too_many_arguments)]
pub fn train_with<W: twist_learn::TrainableTwist>(
    positives: Positives,
    pool: &[Vec<u32>],
    lm: &BurnLm,
    twist: &mut W,
    potential: &dyn Potential,
    prompt: &[u32],
    cfg: &TrainConfig,
    on_step: impl FnMut(usize, &W, f64) -> Result<()>,
) -> Result<Vec<TrainRecord>> {
    match positives {
        Positives::Gibbs => {
            twist_learn::train_ctl_particle_gibbs(lm, twist, potential, prompt, cfg, None, on_step)
        }
        Positives::Sis => twist_learn::train(lm, twist, potential, prompt, cfg, on_step),
        Positives::Exact | Positives::ExactCsmc => {
            let form = if positives == Positives::Exact {
                twist_learn::ReplayForm::Direct
            } else {
                twist_learn::ReplayForm::Csmc
            };
            twist_learn::train_ctl_replay(lm, twist, potential, prompt, cfg, pool, form, on_step)
        }
    }
}

/// A head for `lm`: fresh (from `choice`, `conditioning` and the user's `seed`, through its own
/// derived stream) or resumed from a checkpoint (head and Adam's state). Returns it with the checkpoint's metadata (null when
/// fresh) and the update count it starts from; `steps` more updates must keep the count in range.
#[allow(clippy::too_many_arguments)]
pub fn fresh_or_resumed_head(
    resume: Option<&Path>,
    steps: usize,
    lm: &BurnLm,
    choice: HeadChoice,
    conditioning: Option<Vec<u32>>,
    seed: u64,
    param: Parameterization,
    device: &Device,
) -> Result<(HeadTrainable, serde_json::Value, usize)> {
    Ok(match resume {
        Some(path) => {
            let (t, meta) = HeadTrainable::resume(path, device, param, AdamConfig::default())
                .with_context(|| format!("resuming from {}", path.display()))?;
            // The checkpoint, not --head, says which head is resumed: the bias rate needs the
            // per-token bias of an embedding head.
            let kind = t.head().config.kind;
            if choice.bias_lr.is_some() && kind != HeadKind::Embedding {
                anyhow::bail!(
                    "--bias-lr is for the per-token bias of an embedding head, but {} holds a {:?} head",
                    path.display(),
                    kind
                );
            }
            let gate = t.head().config.bias_gate;
            if choice.bias_gate.is_some() && choice.bias_gate != gate {
                anyhow::bail!(
                    "--bias-gate {} does not match {}, whose head has bias gate {}",
                    choice.bias_gate_name(),
                    path.display(),
                    HeadChoice {
                        bias_gate: gate,
                        ..choice
                    }
                    .bias_gate_name()
                );
            }
            if let Some(encoding) = choice.cond_encoding {
                let config = &t.head().config;
                if config.conditioning.is_none() {
                    anyhow::bail!(
                        "--cond-encoding is for conditional (infilling) heads, but {} holds an \
                         unconditional head",
                        path.display()
                    );
                }
                if config.cond_encoding != encoding {
                    anyhow::bail!(
                        "--cond-encoding {} does not match {}, whose head encodes c by {}",
                        encoding.name(),
                        path.display(),
                        config.cond_encoding.name()
                    );
                }
            }
            let mut t = t
                .with_bias_lr(choice.bias_lr)
                .with_bias_optimizer(choice.bias_optimizer)
                .with_gate_lr(choice.gate_lr);
            t.head_mut()
                .attach_base_model(lm)
                .with_context(|| format!("resuming from {}", path.display()))?;
            let step = resumed_step(path, &meta, steps)?;
            (t, meta, step)
        }
        None if choice.cond_encoding.is_some() && conditioning.is_none() => anyhow::bail!(
            "--cond-encoding is for conditional (infilling) heads; this task's head is not \
             conditional"
        ),
        None => (
            HeadTrainable::new(
                TwistHead::new(
                    lm,
                    choice.config(lm, conditioning),
                    smc_core::seed::derive(seed, smc_core::seed::label::APP_HEAD_INIT, 0),
                    device,
                )?,
                param,
                AdamConfig::default(),
            )
            .with_bias_lr(choice.bias_lr)
            .with_bias_optimizer(choice.bias_optimizer)
            .with_gate_lr(choice.gate_lr),
            serde_json::Value::Null,
            0,
        ),
    })
}

/// The update count a checkpoint's metadata records (`step`), checked: a count that is missing,
/// not an integer, or that `steps` more updates would carry past the largest count is an error
/// rather than a wrap to 0 or a silent restart at 0.
pub fn resumed_step(path: &Path, meta: &serde_json::Value, steps: usize) -> Result<usize> {
    let step = meta["step"]
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .with_context(|| {
            format!(
                "{}: metadata field `step` must be the update count (a non-negative integer), found {}",
                path.display(),
                meta["step"]
            )
        })?;
    if step.checked_add(steps).is_none_or(|end| end > MAX_STEP) {
        anyhow::bail!(
            "{}: metadata field `step` is {step}: {steps} more updates would pass the largest update count {MAX_STEP}",
            path.display()
        );
    }
    Ok(step)
}

/// The largest update count a run may reach (seeds and schedules are derived from counts; far
/// beyond any real run, well inside every integer type that carries it).
pub const MAX_STEP: usize = 1 << 48;

/// The progress bar of a training run (current loss, elapsed and remaining time).
pub fn train_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("train {pos}/{len} [{bar:30}] loss {msg} {elapsed}/{eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}
