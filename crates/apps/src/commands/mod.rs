//! The commands, one module each. Each takes its validated settings type (built by the `cli`
//! layer) and never sees the parser; commands do not import each other: what two of them share
//! lives in the crate's library modules (`setup`, `training`, `jsonl`, `potentials`, `presets`).

pub mod bounds;
pub mod demo;
pub mod exact;
pub mod report;
pub mod reproduce;
pub mod sample;
pub mod train;
