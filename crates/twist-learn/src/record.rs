//! Keeping what the sampling pass computed, so that an update does not run the frozen base
//! model a second time: a [`Recorder`] wraps the language model ([`Recorder::lm`]) and the
//! trainable twist ([`Recorder::twist`]) of one sampling run and stores, per step, the base
//! model's output (log p0 rows and hidden states) and the twist's raw outputs. Resampling
//! moves particles; the recorder keeps the ancestor indices and, when the run is over, gathers
//! every step's rows along each final particle's own lineage ([`Recorder::take`]), so the
//! rows of step t belong to the prefix s_{<t} of the final sequence, exactly what a
//! teacher-forced pass over the final sequences would compute (up to float rounding between
//! a cached decoding step and a full forward pass).

use std::cell::RefCell;

use smc_core::batch::{HiddenStates, LogTable};
use smc_core::model::{DecodeSession, LanguageModel, StepOutput, Twist, TwistInput};
use smc_core::{Result, SmcError};

use crate::batch::{RecordedStep, TrainableTwist};

fn mismatch(field: &'static str, expected: usize, found: usize) -> SmcError {
    SmcError::InvalidConfig {
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// What a run did, in order.
#[derive(Debug)]
enum Event {
    /// A step's output (index into `steps`).
    Step(usize),
    /// Particle k continued from old particle `ancestors[k]`.
    Reorder(Vec<usize>),
}

#[derive(Debug, Default)]
struct Recording {
    steps: Vec<RecordedStep>,
    events: Vec<Event>,
}

/// Records one sampling run (see the module docs). Not thread-safe: a run is sequential.
#[derive(Debug, Default)]
pub struct Recorder {
    state: RefCell<Recording>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// `lm`, recording every session it starts (starting one drops the previous records).
    pub fn lm<'r, L: LanguageModel>(&'r self, lm: &'r L) -> RecordingLm<'r, L> {
        RecordingLm { lm, rec: self }
    }

    /// `twist`, recording its raw outputs at every step where the run evaluates it; its log
    /// psi is the parameterisation of those raw outputs, as for every trainable twist.
    pub fn twist<'r, W: TrainableTwist + ?Sized>(&'r self, twist: &'r W) -> RecordingTwist<'r, W> {
        RecordingTwist { twist, rec: self }
    }

    /// The recorded steps, each with one row per final particle: the rows of that particle's
    /// ancestor at the step. Empties the recorder.
    pub fn take(&self) -> Result<Vec<RecordedStep>> {
        let Recording { steps, events } = std::mem::take(&mut *self.state.borrow_mut());
        let Some(k) = steps.last().map(RecordedStep::rows) else {
            return Ok(Vec::new());
        };
        // Walk back from the end: pos[k] is final particle k's position at the time of the
        // event being undone.
        let mut pos: Vec<usize> = (0..k).collect();
        let mut lineage: Vec<Option<Vec<usize>>> = vec![None; steps.len()];
        for event in events.iter().rev() {
            match event {
                Event::Reorder(ancestors) => {
                    for p in &mut pos {
                        *p = *ancestors
                            .get(*p)
                            .ok_or_else(|| mismatch("ancestor index", ancestors.len(), *p))?;
                    }
                }
                Event::Step(i) => lineage[*i] = Some(pos.clone()),
            }
        }
        steps
            .into_iter()
            .zip(lineage)
            .map(|(step, rows)| {
                let rows = rows.expect("every step has its event");
                if rows.iter().all(|&r| r < step.rows()) {
                    Ok(gather_step(step, &rows))
                } else {
                    Err(mismatch("particles at every step", k, step.rows()))
                }
            })
            .collect()
    }

    fn push_step(&self, output: StepOutput) {
        let mut s = self.state.borrow_mut();
        let i = s.steps.len();
        s.steps.push(RecordedStep { output, raw: None });
        s.events.push(Event::Step(i));
    }

    fn push_reorder(&self, ancestors: &[usize]) {
        self.state
            .borrow_mut()
            .events
            .push(Event::Reorder(ancestors.to_vec()));
    }

    fn push_raw(&self, raw: LogTable) -> Result<()> {
        let mut s = self.state.borrow_mut();
        let Some(step) = s.steps.last_mut() else {
            return Err(SmcError::InvalidConfig {
                field: "recorded twist outputs",
                expected: "after the model's output of the same step".into(),
                found: "before any step".into(),
            });
        };
        if step.raw.is_some() || raw.rows() != step.rows() {
            return Err(SmcError::InvalidConfig {
                field: "recorded twist outputs",
                expected: format!("one table of {} rows per step", step.rows()),
                found: format!("a second table, or {} rows", raw.rows()),
            });
        }
        step.raw = Some(raw);
        Ok(())
    }

    fn reset(&self) {
        *self.state.borrow_mut() = Recording::default();
    }
}

fn gather_table(t: &LogTable, rows: &[usize]) -> LogTable {
    let mut data = Vec::with_capacity(rows.len() * t.cols());
    for &r in rows {
        data.extend_from_slice(t.row(r));
    }
    LogTable::from_vec(rows.len(), t.cols(), data).expect("shape")
}

fn gather_step(step: RecordedStep, rows: &[usize]) -> RecordedStep {
    let identity = rows.len() == step.rows() && rows.iter().enumerate().all(|(i, &r)| i == r);
    if identity {
        return step;
    }
    let hidden = step.output.hidden.map(|h| {
        let mut data = Vec::with_capacity(rows.len() * h.dim);
        for &r in rows {
            data.extend_from_slice(h.row(r));
        }
        HiddenStates {
            rows: rows.len(),
            dim: h.dim,
            data,
        }
    });
    RecordedStep {
        output: StepOutput {
            log_probs: gather_table(&step.output.log_probs, rows),
            hidden,
        },
        raw: step.raw.map(|r| gather_table(&r, rows)),
    }
}

/// A language model whose sessions record their outputs in a [`Recorder`].
pub struct RecordingLm<'r, L> {
    lm: &'r L,
    rec: &'r Recorder,
}

impl<L: LanguageModel> LanguageModel for RecordingLm<'_, L> {
    type Session<'a>
        = RecordingSession<'a, L::Session<'a>>
    where
        Self: 'a;

    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> Result<Self::Session<'_>> {
        self.rec.reset();
        Ok(RecordingSession {
            inner: self.lm.start(prompt, num_particles)?,
            rec: self.rec,
        })
    }

    fn teacher_forced(&self, prompt: &[u32], sequences: &[Vec<u32>]) -> Result<Vec<StepOutput>> {
        self.lm.teacher_forced(prompt, sequences)
    }
}

/// A decoding session that records its outputs and reorderings.
pub struct RecordingSession<'r, S> {
    inner: S,
    rec: &'r Recorder,
}

impl<S: DecodeSession> DecodeSession for RecordingSession<'_, S> {
    fn num_particles(&self) -> usize {
        self.inner.num_particles()
    }

    fn next_log_probs(&mut self) -> Result<StepOutput> {
        let out = self.inner.next_log_probs()?;
        self.rec.push_step(out.clone());
        Ok(out)
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        self.inner.push(tokens)
    }

    fn reserve(&mut self, tokens: usize) -> Result<()> {
        self.inner.reserve(tokens)
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.rec.push_reorder(ancestors);
        self.inner.reorder(ancestors)
    }

    fn log_probs_normalised(&self) -> bool {
        self.inner.log_probs_normalised()
    }
}

/// A trainable twist whose raw outputs are recorded in a [`Recorder`].
pub struct RecordingTwist<'r, W: ?Sized> {
    twist: &'r W,
    rec: &'r Recorder,
}

impl<W: TrainableTwist + ?Sized> Twist for RecordingTwist<'_, W> {
    fn name(&self) -> &str {
        self.twist.name()
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        let raw = self.twist.raw(input)?;
        let log_psi = self.twist.parameterization().apply(raw.clone());
        self.rec.push_raw(raw)?;
        Ok(log_psi)
    }
}
