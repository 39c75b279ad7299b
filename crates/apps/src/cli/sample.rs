//! `tsmc sample` arguments.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use smc_core::feynman_kac::Resampling;
use smc_core::resampling::Criterion;
use smc_core::smc::AtMaxTokens;

use super::groups::{ModelArgs, PromptArgs, SchemeArg, at_least};
use super::serving::{ServingArgs, read_files};
use crate::boundaries::Boundary;
use crate::commands::sample::{Length, SampleSettings};
use crate::constraints::ConstraintSpec;
use crate::potentials::PotentialSpec;
use crate::setup::ModelSource;

/// Arguments of `tsmc sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The potential: keyword:WORD, regex:PATTERN, json-schema:FILE, lark:FILE, toxicity:...,
    /// sentiment:..., infilling:TEXT, judge:QUESTION or none. keyword, regex, json-schema and
    /// lark are checked at every token (a prefix constraint: only continuations that can
    /// still satisfy them are proposed, weighed by their p0 mass); use them with --max-tokens
    /// so that outputs end once they are complete.
    #[arg(long, default_value = r"regex:(?i)\b(dragon|princess|castle|king)\b")]
    potential: PotentialSpec,
    /// A constraint on every generated token, applied as an exact twist (the proposal draws
    /// only allowed tokens and the weight gains the allowed p0 mass): no-chars:SET forbids
    /// tokens containing a character of SET; regex:PATTERN (the whole output matches),
    /// search:PATTERN (it contains a match), keyword:WORD, json-schema:FILE and lark:FILE
    /// (llguidance's Lark dialect) constrain the output's text. Use with --potential none for
    /// p0 under the constraint.
    #[arg(long)]
    constraint: Option<ConstraintSpec>,
    /// A potential that scores partial text (a classifier such as toxicity:beta=1 or
    /// sentiment:positive:beta=1), used as a twist on the intermediate targets: SMC resamples
    /// towards prefixes it already likes; the target and log Zhat's meaning do not change. It
    /// must be positive on every prefix (beta forms, not thresholds or keywords).
    #[arg(long, value_name = "SPEC")]
    prefix_twist: Option<PotentialSpec>,
    /// Score prefixes with --prefix-twist every N tokens.
    #[arg(long, default_value_t = 1, requires = "prefix_twist")]
    prefix_stride: usize,
    /// Number of output tokens T (every output has exactly T; see --max-tokens).
    #[arg(long, short = 't', default_value_t = 15)]
    tokens: usize,
    /// Variable-length outputs of at most this many tokens: a particle ends at the model's
    /// end-of-sequence token (allowed under a constraint exactly when it accepts).
    #[arg(long, conflicts_with = "tokens")]
    max_tokens: Option<usize>,
    /// With --max-tokens: what happens to an output still running at the maximum: truncate
    /// (it stops there, unfinished) or force-end (an end token is forced and the weight gains
    /// its p0 probability, so only outputs that end in time count).
    #[arg(long, value_enum, default_value_t = AtMaxArg::Truncate, requires = "max_tokens")]
    at_max: AtMaxArg,
    /// Resample only particles at a boundary (word, sentence or newline; finished particles
    /// count as at one), among themselves: never mid-word. log Zhat stays unbiased.
    #[arg(long, value_enum)]
    resample_at: Option<BoundaryArg>,
    /// Number of particles K.
    #[arg(long, short = 'k', default_value_t = 64)]
    particles: usize,
    /// A twist head checkpoint (from `tsmc train`): twisted SMC with its twisted proposal. A
    /// conditional head is conditioned on the continuation of an `infilling:TEXT` potential.
    #[arg(long)]
    twist: Option<PathBuf>,
    /// With an `infilling:TEXT` potential and --tokens T: an exact final twist. The proposal's
    /// last token is drawn from sigma's own conditional, the model run on TEXT after each of a
    /// particle's top N tokens (the p0-weighted mean of phi over them for every other token).
    /// Steps before T use --twist, or p0. About N x (1 + TEXT's tokens) more particle-tokens
    /// at the last step.
    #[arg(long, value_name = "N", conflicts_with = "max_tokens")]
    lookahead: Option<usize>,
    /// With --lookahead: of a particle's top N tokens, score only the likeliest that hold this
    /// much of p0's probability: fewer candidates where p0 is sure (docs/algorithms.md).
    #[arg(long, value_name = "P", requires = "lookahead")]
    lookahead_mass: Option<f64>,
    /// Sampler: smc (resampling by --criterion; twisted when --twist or --lookahead is given)
    /// or sis.
    #[arg(long, value_enum, default_value_t = SamplerArg::Smc)]
    method: SamplerArg,
    /// Resampling scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::Multinomial)]
    scheme: SchemeArg,
    /// Resampling criterion: always, never, ess:FRACTION or every:N.
    #[arg(long, default_value = "ess:0.5")]
    criterion: Criterion,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the particles and the run summary as JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many particles to print, heaviest first.
    #[arg(long, default_value_t = 5)]
    show: usize,
    // Last: its help heading holds for every argument after it.
    #[command(flatten)]
    serving: ServingArgs,
}

/// The rule at --max-tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AtMaxArg {
    /// The output stops unfinished.
    Truncate,
    /// An end-of-sequence token is forced (weight times its p0 probability).
    ForceEnd,
}

impl From<AtMaxArg> for AtMaxTokens {
    fn from(a: AtMaxArg) -> Self {
        match a {
            AtMaxArg::Truncate => AtMaxTokens::Truncate,
            AtMaxArg::ForceEnd => AtMaxTokens::ForceEnd,
        }
    }
}

/// Boundaries for --resample-at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BoundaryArg {
    /// After a token ending in whitespace or punctuation.
    Word,
    /// After a token ending a sentence (. ! ?) or holding a newline.
    Sentence,
    /// After a token holding a newline.
    Newline,
}

impl From<BoundaryArg> for Boundary {
    fn from(b: BoundaryArg) -> Self {
        match b {
            BoundaryArg::Word => Boundary::Word,
            BoundaryArg::Sentence => Boundary::Sentence,
            BoundaryArg::Newline => Boundary::Newline,
        }
    }
}

/// SMC or SIS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Sequential Monte Carlo, resampling by the criterion.
    Smc,
    /// Sequential importance sampling (never resamples).
    Sis,
}

impl SampleArgs {
    /// Validates the arguments into settings.
    pub fn settings(self) -> Result<SampleSettings> {
        let Self {
            model,
            serving,
            prompt,
            potential,
            constraint,
            prefix_twist,
            prefix_stride,
            tokens,
            max_tokens,
            at_max,
            resample_at,
            particles,
            twist,
            lookahead,
            lookahead_mass,
            method,
            scheme,
            criterion,
            seed,
            out,
            show,
        } = self;
        let source = serving.source(model.clone())?;
        if lookahead.is_some() && matches!(source, ModelSource::Served(_)) {
            bail!(
                "--lookahead runs the model on candidate tokens, which a served model \
                 (--model http://...) does not allow: use a local --model"
            );
        }
        let read = read_files(&source, &model.model);
        let mut inputs: Vec<(&str, &std::path::Path)> =
            read.iter().map(|(o, p)| (*o, p.as_path())).collect();
        inputs.extend(twist.as_deref().map(|t| ("--twist", t)));
        if let Some(out) = &out {
            crate::output::check_outputs(&[("--out", out)], &inputs)?;
        }
        if lookahead.is_some() && !potential.is_infilling() {
            bail!(
                "--lookahead scores the continuation of an infilling:TEXT potential; \
                 --potential {potential} has none"
            );
        }
        if let Some(p) = lookahead_mass
            && !(p > 0.0 && p <= 1.0)
        {
            bail!("--lookahead-mass must lie in (0, 1], found {p}");
        }
        let (criterion, method) = match method {
            SamplerArg::Smc => (criterion, "smc"),
            SamplerArg::Sis => (Criterion::Never, "sis"),
        };
        Ok(SampleSettings {
            model: source,
            prompt: prompt.prompt()?,
            potential,
            constraint,
            length: match max_tokens {
                Some(m) => Length::AtMost(at_least("--max-tokens", m, 1)?, at_max.into()),
                None => Length::Exactly(at_least("--tokens", tokens, 1)?),
            },
            boundaries: resample_at.map(Boundary::from),
            prefix_twist: prefix_twist
                .map(|spec| {
                    Ok::<_, anyhow::Error>((spec, at_least("--prefix-stride", prefix_stride, 1)?))
                })
                .transpose()?,
            particles: at_least("--particles", particles, 1)?,
            twist,
            lookahead: lookahead
                .map(|n| at_least("--lookahead", n, 1))
                .transpose()?,
            lookahead_mass,
            resampling: Resampling {
                scheme: scheme.into(),
                criterion,
            },
            method,
            seed,
            out,
            show,
        })
    }
}
