//! `tsmc sample`: SMC from a prompt on a language model with a potential; JSONL output.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use smc_core::feynman_kac::{Resampling, StepRecord};
use smc_core::lookahead::FinalLookahead;
use smc_core::prelude::*;
use smc_core::smc::AtMaxTokens;

use crate::boundaries::Boundary;
use crate::constraints::ConstraintSpec;
use crate::jsonl::JsonlWriter;
use crate::model::BackendRecord;
use crate::potentials::{PotentialSpec, Targets};
use crate::progress::WithProgress;
use crate::setup::{ModelSource, load_any, load_twist};

mod timing;
use timing::Timing;

/// The validated settings of `tsmc sample`.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// The model: run here or served over HTTP.
    pub model: ModelSource,
    /// The prompt (non-empty).
    pub prompt: String,
    /// The potential.
    pub potential: PotentialSpec,
    /// A prefix constraint on every token (an exact twist: masked proposal, allowed mass in the
    /// weight).
    pub constraint: Option<ConstraintSpec>,
    /// How long outputs are.
    pub length: Length,
    /// Resample only particles at this boundary.
    pub boundaries: Option<Boundary>,
    /// A potential scoring prefixes, used as a twist on the targets, and its stride.
    pub prefix_twist: Option<(PotentialSpec, usize)>,
    /// Particles K (at least 1).
    pub particles: usize,
    /// A twist head checkpoint: twisted SMC with its twisted proposal.
    pub twist: Option<PathBuf>,
    /// The exact final twist's candidates per particle (infilling, fixed length only).
    pub lookahead: Option<usize>,
    /// With `lookahead`: score only the likeliest candidates holding this much of p0's mass.
    pub lookahead_mass: Option<f64>,
    /// Resampling (criterion `never` for SIS).
    pub resampling: Resampling,
    /// The sampler's name in outputs ("smc" or "sis").
    pub method: &'static str,
    /// Seed of the sampler.
    pub seed: u64,
    /// JSONL output.
    pub out: Option<PathBuf>,
    /// How many particles to print.
    pub show: usize,
}

/// How long a run's outputs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Exactly T tokens (the paper's tasks).
    Exactly(usize),
    /// At most this many, ending at the model's end-of-sequence token.
    AtMost(usize, AtMaxTokens),
}

impl Length {
    /// T, or the maximum.
    pub fn tokens(self) -> usize {
        match self {
            Length::Exactly(t) | Length::AtMost(t, _) => t,
        }
    }

    /// The most tokens pushed through the model (the forced end token included).
    fn steps(self) -> usize {
        match self {
            Length::AtMost(t, AtMaxTokens::ForceEnd) => t + 1,
            _ => self.tokens(),
        }
    }
}

#[derive(Serialize)]
struct ParticleRecord<'a> {
    r#type: &'static str,
    particle: usize,
    text: &'a str,
    tokens: &'a [u32],
    length: usize,
    finished: bool,
    log_weight: f64,
    weight: f64,
    log_p0: f64,
    log_phi: f64,
}

#[derive(Serialize)]
struct RunRecord<'a> {
    r#type: &'static str,
    model: &'a str,
    backend: BackendRecord,
    prompt: &'a str,
    prompt_tokens: &'a [u32],
    potential: &'a str,
    constraint: Option<String>,
    method: &'a str,
    num_particles: usize,
    num_tokens: usize,
    /// The maximum length and the rule there, with variable-length outputs.
    max_tokens: Option<usize>,
    at_max: Option<AtMaxTokens>,
    end_tokens: &'a [u32],
    resample_at: Option<String>,
    prefix_twist: Option<String>,
    prefix_stride: Option<usize>,
    /// The twist head's checkpoint, and the exact final twist's candidates per particle.
    twist: Option<String>,
    lookahead: Option<usize>,
    lookahead_mass: Option<f64>,
    num_finished: usize,
    seed: u64,
    resampling: Resampling,
    log_z_hat: f64,
    final_ess: f64,
    steps: &'a [StepRecord],
    ancestors: &'a [Vec<usize>],
    timing: Timing,
}

/// The exact final twist of an infilling potential (`--lookahead N`), around the head if any.
fn lookahead<'a>(
    args: &SampleSettings,
    local: Option<&'a lm_burn::BurnLm>,
    tokenizer: &lm_burn::tokenizer::Tokenizer,
    inner: Option<&'a dyn Twist>,
) -> Result<Option<FinalLookahead<'a, lm_burn::BurnLm>>> {
    let (Some(n), PotentialSpec::Infilling(text)) = (args.lookahead, &args.potential) else {
        return Ok(None);
    };
    // The settings refuse --lookahead with a served model.
    let Some(local) = local else {
        bail!("--lookahead needs a local model");
    };
    let c = tokenizer.encode(text)?;
    let look = FinalLookahead::new(local, c, n, inner)?;
    Ok(Some(match args.lookahead_mass {
        Some(p) => look.with_mass(p)?,
        None => look,
    }))
}

/// exp(-log_z) in words, e.g. "3.2e12".
fn rejection_cost(log_z: f64) -> String {
    let log10 = -log_z / std::f64::consts::LN_10;
    if log10 < 6.0 {
        format!("{:.0}", (-log_z).exp())
    } else {
        let exponent = log10.floor();
        format!("{:.1}e{exponent}", 10f64.powf(log10 - exponent))
    }
}

/// Runs `tsmc sample`.
pub fn run(args: &SampleSettings) -> Result<()> {
    // Create the output first so that an unwritable path fails before minutes of sampling.
    let writer = args.out.as_deref().map(JsonlWriter::create).transpose()?;
    let loaded = load_any(&args.model, &args.prompt)?;
    loaded.check_size(args.particles, args.length.steps())?;
    let (lm, prompt, text) = (&loaded.lm, &loaded.prompt, &loaded.text);
    let name = lm.name();
    let tokenizer = &text.tokenizer;
    // Grammars compile against the vocabulary before any sampling.
    let targets = Targets::build(&args.potential, args.constraint.as_ref(), text, lm.local())?;
    if let Some(note) = &targets.note {
        eprintln!("note: {note}");
    }
    let conditioning = match &args.potential {
        PotentialSpec::Infilling(text) => Some(text.as_str()),
        _ => None,
    };
    let head = match (args.twist.as_deref(), lm.local(), &loaded.device) {
        (None, ..) => None,
        (Some(path), Some(local), Some(device)) => {
            Some(load_twist(path, local, device, conditioning)?)
        }
        (Some(path), ..) => bail!(
            "--twist {}: a twist head reads the model's hidden states, which a served model \
             (--model http://...) does not return: use a local --model",
            path.display()
        ),
    };
    let look = lookahead(
        args,
        lm.local(),
        tokenizer,
        head.as_ref().map(|h| h as &dyn Twist),
    )?;
    let twist = match &look {
        Some(l) => Some(l as &dyn Twist),
        None => head.as_ref().map(|h| h as &dyn Twist),
    };
    // The lookahead's final step has already scored phi for the candidates drawn.
    let reused = look.as_ref().map(FinalLookahead::potential);
    let potential: &dyn Potential = match &reused {
        Some(p) => p,
        None => targets.potential.as_ref(),
    };
    let config = SmcConfig {
        num_particles: args.particles,
        horizon: args.length.tokens(),
        proposal: if twist.is_some() {
            Proposal::Twisted
        } else {
            Proposal::Base
        },
        resampling: args.resampling,
        seed: args.seed,
    };
    let with_bar = WithProgress::new(
        lm,
        args.length.steps() as u64,
        &format!("{} x {} particles", args.method, args.particles),
    );
    let started = Instant::now();
    let end = match args.length {
        Length::Exactly(_) => None,
        Length::AtMost(_, at_max) => {
            if text.eos_tokens.is_empty() {
                bail!(
                    "--max-tokens: {} declares no end-of-sequence token; use --tokens for outputs of a fixed length",
                    text.name
                );
            }
            Some(EndOfSequence::new(text.eos_tokens.clone(), at_max)?)
        }
    };
    let boundaries = args
        .boundaries
        .map(|b| b.mask_for(tokenizer, text.vocab, &text.name))
        .transpose()?;
    let mut options = RunOptions::twist(twist);
    options.constraint = targets.constraint.as_deref();
    options.end = end.as_ref();
    options.boundaries = boundaries.as_ref();
    let prefix = args
        .prefix_twist
        .as_ref()
        .map(|(spec, stride)| spec.build_with(text, lm.local()).map(|p| (p, *stride)))
        .transpose()?;
    if let Some((p, stride)) = &prefix {
        options = options.with_prefix_twist(p.as_ref(), *stride);
    }
    let out = run_smc_with(&with_bar, potential, &options, prompt, &config).map_err(|e| match (
        &e,
        args.length,
    ) {
        (SmcError::Constraint { .. }, Length::Exactly(t)) => anyhow!(
            "{e}\nhint: every output has exactly T = {t} tokens; --max-tokens N lets outputs \
                 end at the end-of-sequence token once the constraint accepts them"
        ),
        _ => anyhow!(e),
    })?;
    let timing = Timing::new(
        started.elapsed().as_secs_f64(),
        with_bar.times(),
        look.as_ref().map(FinalLookahead::seconds),
        args.particles,
        out.steps.len(),
        lm.local().is_none(),
    );
    with_bar.finish();

    let weights = out.weights();
    let texts: Vec<String> = out
        .tokens
        .iter()
        .map(|t| tokenizer.decode(t))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let final_ess = ess(&out.log_w);
    let num_finished = out.finished.iter().filter(|&&f| f).count();
    let length = match args.length {
        Length::Exactly(t) => format!("T = {t}"),
        Length::AtMost(t, _) => format!("at most {t} tokens, {num_finished} finished"),
    };
    println!(
        "model {}{} | potential {}{}{} | K = {}, {} | log Zhat = {:.4} | final ESS = {:.1} | {} resampling(s)",
        name,
        match lm.local().map(|l| l.weight_format()) {
            Some(w) if w != lm_burn::WeightFormat::F32 => format!(" | weights {w}"),
            _ => String::new(),
        },
        args.potential,
        targets
            .constraint
            .as_ref()
            .map_or(String::new(), |c| format!(" | constraint {}", c.name())),
        args.twist
            .as_ref()
            .map_or(String::new(), |p| format!(" | twist {}", p.display()))
            + &look.as_ref().map_or(String::new(), |l| format!(
                " | final lookahead over {} tokens{}",
                l.candidates(),
                args.lookahead_mass
                    .map_or(String::new(), |p| format!(" holding {p} of p0"))
            )),
        args.particles,
        length,
        out.log_z_hat,
        final_ess,
        out.num_resamplings()
    );
    if targets.constraint.is_some() && out.log_z_hat < -1.0 {
        // Zhat estimates the constraint's p0 mass (times E[phi]): what plain sampling from p0
        // with rejection would pay for each accepted output.
        println!(
            "log Zhat = {:.2}: rejection sampling from p0 would accept about 1 output in {}",
            out.log_z_hat,
            rejection_cost(out.log_z_hat)
        );
    }
    println!("{timing}");
    for &k in order.iter().take(args.show) {
        println!(
            "  w = {:.3}  log phi = {:>7.2}  {}{}",
            weights[k], out.log_phi[k], args.prompt, texts[k]
        );
    }
    if let Some(mut w) = writer {
        for &k in &order {
            w.write(&ParticleRecord {
                r#type: "particle",
                particle: k,
                text: &texts[k],
                tokens: &out.tokens[k],
                length: out.lengths[k],
                finished: out.finished[k],
                log_weight: out.log_w[k],
                weight: weights[k],
                log_p0: out.log_p0[k],
                log_phi: out.log_phi[k],
            })?;
        }
        w.write(&RunRecord {
            r#type: "run",
            model: &name,
            backend: BackendRecord::of(lm, text, loaded.tokenizer_check),
            prompt: &args.prompt,
            prompt_tokens: prompt,
            potential: &args.potential.to_string(),
            constraint: targets.constraint.as_ref().map(|c| c.name().to_string()),
            method: args.method,
            num_particles: args.particles,
            num_tokens: args.length.tokens(),
            max_tokens: matches!(args.length, Length::AtMost(..)).then(|| args.length.tokens()),
            at_max: match args.length {
                Length::AtMost(_, a) => Some(a),
                Length::Exactly(_) => None,
            },
            end_tokens: end.as_ref().map_or(&[], |e| e.tokens()),
            resample_at: args.boundaries.map(|b| b.to_string()),
            prefix_twist: prefix.as_ref().map(|(p, _)| p.name().to_string()),
            prefix_stride: args.prefix_twist.as_ref().map(|(_, s)| *s),
            twist: args.twist.as_ref().map(|p| p.display().to_string()),
            lookahead: look.as_ref().map(FinalLookahead::candidates),
            lookahead_mass: args.lookahead_mass,
            num_finished,
            seed: args.seed,
            resampling: config.resampling,
            log_z_hat: out.log_z_hat,
            final_ess,
            steps: &out.steps,
            ancestors: &out.ancestors,
            timing,
        })?;
        w.finish()?;
        if let Some(p) = &args.out {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
