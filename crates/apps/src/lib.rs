//! # tsmc-apps
//!
//! The `tsmc` command line as a library: the applications' potentials ([`potentials`]), task
//! presets ([`presets`]), and the commands ([`commands`]), each run from validated settings.
//! Layers, top to bottom, with no import going upwards:
//! - [`cli`]: clap types only (argument groups flattened into commands, typed choices), parsed
//!   and validated once into settings;
//! - [`commands`]: one module per command, taking its settings;
//! - library modules shared by commands: [`constraints`] (prefix constraints), [`setup`] (model, prompt, twist loading), [`model`] (a local or served model behind one `LanguageModel`), [`training`]
//!   (heads, positives, progress), [`jsonl`] (every reader and writer of our JSONL files),
//!   [`output`] (the one rule that keeps an output from destroying an input),
//!   [`progress`], [`potentials`], [`presets`], [`signals`] (SIGINT/SIGTERM remove this
//!   process's temporaries; SIGPIPE ends quietly), [`svg`] (charts).

pub mod boundaries;
pub mod cli;
pub mod commands;
pub mod constraints;
pub mod jsonl;
pub mod model;
pub mod output;
pub mod potentials;
pub mod presets;
pub mod progress;
pub mod setup;
pub mod signals;
pub mod svg;
pub mod training;
