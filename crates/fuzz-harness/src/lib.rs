//! # fuzz-harness
//!
//! Test-only support for the fuzz targets in the crates' `tests/fuzz.rs` (stable Rust,
//! proptest): each target mutates known-good inputs (our tiny reference models, checkpoints,
//! JSONL files, command lines) and checks that the reader returns `Ok` or a clear error, never a
//! panic, an abort, a hang or an allocation beyond a budget.
//!
//! - [`alloc`]: [`BudgetAllocator`], the fuzz binaries' `#[global_allocator]`: a single
//!   allocation over [`alloc::MAX_ALLOCATION`] (or live memory over [`alloc::MAX_LIVE`]) aborts
//!   the binary with a message naming the target and the folder holding the case's input;
//! - [`runner`]: [`fuzz`], which runs a target for `TSMC_FUZZ_CASES` cases (a short default in
//!   the test suite; `cargo xtask fuzz` sets 100,000) under a watchdog that aborts on a case
//!   running longer than `TSMC_FUZZ_HANG_SECS`;
//! - [`bytes`]: byte-level mutations (flips, interesting integers, inserts, deletes, copies,
//!   truncation) with a focus region and the integer fields of a binary format;
//! - [`json`]: JSON-aware mutations (a node set to an interesting value, removed or repeated).

pub mod alloc;
pub mod bytes;
pub mod json;
pub mod runner;

pub use alloc::BudgetAllocator;
pub use runner::{Case, fuzz};

/// Re-exported so that the targets use the harness's proptest.
pub use proptest;
