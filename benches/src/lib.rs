//! Criterion benchmarks of tsmc; run with `cargo xtask bench`.
