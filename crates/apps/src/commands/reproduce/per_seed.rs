//! The per-seed table of `tsmc reproduce`: every sampler's paired differences against p0, seed
//! by seed.

use super::records::Row;

/// The paired differences of every seed, so that a reader sees whether an interval that
/// crosses zero comes from one seed or from all of them.
pub(super) fn per_seed_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "\nPer seed (the Δ columns' paired differences, in seed order; below zero = better than \
         p0):\n\n| sampler | ΔKL(q‖σ) by seed | ΔKL(σ‖q) by seed | seeds below zero (q‖σ, σ‖q) |\n|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.sampler != "p0") {
        let list = |f: &dyn Fn(&(u64, f64, f64)) -> f64| {
            r.delta_per_seed
                .iter()
                .map(|d| format!("{:.2}", f(d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let below = |f: &dyn Fn(&(u64, f64, f64)) -> f64| {
            r.delta_per_seed.iter().filter(|d| f(d) < 0.0).count()
        };
        let n = r.delta_per_seed.len();
        s.push_str(&format!(
            "| {} | {} | {} | {}/{n}, {}/{n} |\n",
            r.sampler,
            list(&|d| d.1),
            list(&|d| d.2),
            below(&|d| d.1),
            below(&|d| d.2),
        ));
    }
    s
}
