//! The paper's ordering on KL(σ‖q): CTL paired against every other sampler, seed by seed, and
//! whether "CTL best or tied" holds.

use serde::Serialize;
use smc_bounds::Estimate;

use super::records::Row;

/// The method the paper's ordering is about.
const CTL: &str = "ctl";
/// Rows that are not twist-learning methods: the base model, the fit every method starts
/// from, and samplers with the exact final lookahead twist (compared with CTL in the table,
/// left out of the verdict).
fn is_method(sampler: &str) -> bool {
    !(sampler == "p0" || sampler == "fit" || sampler.ends_with("lookahead"))
}

/// One sampler against CTL: X − CTL on each KL, paired by seed (p0's terms cancel), so above
/// zero = CTL better.
#[derive(Debug, Clone, Serialize)]
pub struct VsCtl {
    /// The other sampler.
    pub sampler: String,
    /// KL(σ‖q) of X minus CTL's, over seeds.
    pub kl_sigma_q: Estimate,
    /// KL(q‖σ) of X minus CTL's, over seeds.
    pub kl_q_sigma: Estimate,
    /// The KL(σ‖q) differences of each seed: (seed, X − CTL).
    pub per_seed: Vec<(u64, f64)>,
}

/// CTL against every other sampler, and the verdict on the paper's ordering.
#[derive(Debug, Clone, Serialize)]
pub struct Ordering {
    /// Every sampler but p0 and CTL.
    pub rows: Vec<VsCtl>,
    /// "best", "tied" or "not" (some method's KL(σ‖q) below CTL's, its interval clear of zero).
    pub verdict: &'static str,
}

/// The comparison, or `None` without a CTL row or another method to compare it with.
pub(super) fn ordering(rows: &[Row]) -> Option<Ordering> {
    let ctl = rows.iter().find(|r| r.sampler == CTL)?;
    let vs: Vec<VsCtl> = rows
        .iter()
        .filter(|r| r.sampler != CTL && r.sampler != "p0")
        .map(|x| {
            let pairs: Vec<(u64, f64, f64)> = x
                .delta_per_seed
                .iter()
                .filter_map(|&(seed, q, s)| {
                    ctl.delta_per_seed
                        .iter()
                        .find(|d| d.0 == seed)
                        .map(|&(_, cq, cs)| (seed, q - cq, s - cs))
                })
                .collect();
            let of = |f: fn(&(u64, f64, f64)) -> f64| {
                Estimate::from_values(&pairs.iter().map(f).collect::<Vec<_>>())
            };
            VsCtl {
                sampler: x.sampler.clone(),
                kl_sigma_q: of(|p| p.2),
                kl_q_sigma: of(|p| p.1),
                per_seed: pairs.iter().map(|&(seed, _, s)| (seed, s)).collect(),
            }
        })
        .collect();
    let methods: Vec<&VsCtl> = vs.iter().filter(|v| is_method(&v.sampler)).collect();
    if methods.is_empty() {
        return None;
    }
    let clear = |e: &Estimate, above: bool| {
        e.n >= 2 && e.ci95().is_finite() && {
            let h = e.ci95();
            if above {
                e.mean - h > 0.0
            } else {
                e.mean + h < 0.0
            }
        }
    };
    let verdict = if methods.iter().any(|v| clear(&v.kl_sigma_q, false)) {
        "not"
    } else if methods.iter().all(|v| clear(&v.kl_sigma_q, true)) {
        "best"
    } else {
        "tied"
    };
    Some(Ordering { rows: vs, verdict })
}

/// The markdown section: the paired table and one sentence on the ordering.
pub(super) fn ordering_markdown(o: &Ordering) -> String {
    let methods = o.rows.iter().filter(|v| is_method(&v.sampler)).count();
    let mut s = String::from(
        "\nCTL against each other sampler, paired by seed on the same exact samples (X − CTL; \
         above zero = CTL better; mean ± 95% Student t half-width over seeds):\n\n\
         | X | KL(σ‖q): X − CTL | by seed | KL(q‖σ): X − CTL |\n|---|---|---|---|\n",
    );
    for v in &o.rows {
        let by_seed = v
            .per_seed
            .iter()
            .map(|(_, d)| format!("{d:+.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "| {} | {} | {by_seed} | {} |\n",
            v.sampler,
            super::table::pm(&v.kl_sigma_q),
            super::table::pm(&v.kl_q_sigma),
        ));
    }
    let why = match o.verdict {
        "best" => format!(
            "holds, CTL best: every other method's KL(σ‖q) is above CTL's with its interval \
             clear of zero ({methods} separate 95% intervals, not corrected for the {methods} \
             comparisons)"
        ),
        "tied" => "holds as a tie: no method's KL(σ‖q) is below CTL's with its interval clear \
                   of zero, and not every one is above it"
            .to_string(),
        _ => "does not hold: a method's KL(σ‖q) is below CTL's with its interval clear of zero"
            .to_string(),
    };
    s.push_str(&format!(
        "\nThe paper's ordering on KL(σ‖q) (CTL best or tied) {why}. `fit` (what every method \
         starts from) and the lookahead samplers are not methods and are left out of this \
         verdict.\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sampler: &str, sigma_q: &[f64]) -> Row {
        let e = Estimate::from_values(sigma_q);
        Row {
            sampler: sampler.into(),
            kl_q_sigma: e,
            kl_sigma_q: e,
            f_q: e,
            g_q: e,
            delta_kl_q_sigma: e,
            delta_kl_sigma_q: e,
            delta_per_seed: sigma_q
                .iter()
                .enumerate()
                .map(|(i, &d)| (i as u64, 0.0, d))
                .collect(),
            train_seconds: 0.0,
        }
    }

    #[test]
    fn verdicts_follow_the_paired_intervals() {
        let p0 = row("p0", &[0.0, 0.0, 0.0]);
        let ctl = row("ctl", &[-1.0, -1.2, -0.9]);
        let worse = row("rl", &[0.0, -0.1, 0.1]);
        let same = row("sixo", &[-1.5, -0.5, -1.0]);
        let better = row("dpg", &[-2.0, -2.3, -1.9]);
        let fit_better = row("fit", &[-2.0, -2.3, -1.9]);

        let best = ordering(&[p0.clone(), ctl.clone(), worse.clone(), fit_better]).unwrap();
        assert_eq!(best.verdict, "best", "the fit is not a method");
        let rl = best.rows.iter().find(|v| v.sampler == "rl").unwrap();
        assert!((rl.kl_sigma_q.mean - 1.0333333333333332).abs() < 1e-12);
        assert_eq!(rl.per_seed.len(), 3);
        assert!(ordering_markdown(&best).contains("holds, CTL best"));

        let tied = ordering(&[p0.clone(), ctl.clone(), worse.clone(), same]).unwrap();
        assert_eq!(tied.verdict, "tied");
        let not = ordering(&[p0.clone(), ctl.clone(), worse, better]).unwrap();
        assert_eq!(not.verdict, "not");
        assert!(ordering_markdown(&not).contains("does not hold"));

        assert!(ordering(&[p0.clone(), ctl]).is_none(), "no other method");
        assert!(ordering(&[p0, row("rl", &[0.0, 0.1])]).is_none(), "no CTL");
    }

    #[test]
    fn one_seed_is_never_clear_of_zero() {
        let o = ordering(&[row("ctl", &[-1.0]), row("rl", &[3.0])]).unwrap();
        assert_eq!(o.verdict, "tied");
    }
}
