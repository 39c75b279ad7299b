//! A session whose rows are p0 on a subset of the vocabulary (a serving engine's top N, `-inf`
//! elsewhere, rows not summing to one): the base proposal samples the renormalised row and its
//! weight carries the row's mass, so that SMC is exact for the target restricted to the subset.

mod common;

use common::{problems, smooth_potential};
use smc_core::prelude::*;

/// p0 restricted to the `n` most likely next tokens of every context, not renormalised.
struct TopN<'a> {
    lm: &'a TabularLm,
    n: usize,
}

struct TopNSession<'a> {
    inner: <TabularLm as LanguageModel>::Session<'a>,
    n: usize,
}

impl LanguageModel for TopN<'_> {
    type Session<'a>
        = TopNSession<'a>
    where
        Self: 'a;

    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> Result<TopNSession<'_>> {
        Ok(TopNSession {
            inner: self.lm.start(prompt, num_particles)?,
            n: self.n,
        })
    }
}

impl DecodeSession for TopNSession<'_> {
    fn num_particles(&self) -> usize {
        self.inner.num_particles()
    }

    fn next_log_probs(&mut self) -> Result<StepOutput> {
        let mut out = self.inner.next_log_probs()?;
        for k in 0..out.log_probs.rows() {
            let row = out.log_probs.row_mut(k);
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &v in &order[self.n..] {
                row[v] = f64::NEG_INFINITY;
            }
        }
        Ok(out)
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        self.inner.push(tokens)
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        self.inner.reorder(ancestors)
    }

    fn log_probs_normalised(&self) -> bool {
        false
    }
}

#[test]
fn base_proposal_weight_times_proposal_is_p0_times_phi_on_a_truncated_table() {
    for problem in problems() {
        let v = problem.lm.vocab();
        let truncated = TopN {
            lm: &problem.lm,
            n: v - 1,
        };
        let psi = problem.exact().optimal_twist().perturbed(0.3, 5);
        for twist in [None, Some(&psi as &dyn Twist)] {
            for seed in 0..10 {
                let cfg = SmcConfig::sis(16, problem.horizon, Proposal::Base).with_seed(seed);
                let out = run_smc(
                    &truncated,
                    twist,
                    problem.potential.as_ref(),
                    &problem.prompt,
                    &cfg,
                )
                .unwrap();
                for k in 0..16 {
                    let expected = out.log_p0[k] + out.log_phi[k] - out.log_q[k];
                    assert!(
                        (out.log_w[k] - expected).abs() < 1e-12,
                        "{}: twist {} seed {seed} particle {k}: log w {} vs log p0 + log phi - log q {}",
                        problem.name,
                        twist.is_some(),
                        out.log_w[k],
                        expected
                    );
                }
            }
        }
    }
}

#[test]
fn bootstrap_smc_on_a_truncated_table_is_unbiased_for_the_truncated_normaliser() {
    // Z_N = sum over outputs whose every token is in its context's top N of p0 * phi,
    // enumerated through the truncated model itself (rows with -inf entries).
    let lm = TabularLm::random(4, 1, 1.0, 21);
    let truncated = TopN { lm: &lm, n: 2 };
    let phi = smooth_potential();
    let (prompt, horizon) = (vec![1], 3);
    let z_n = Enumeration::new(&truncated, &prompt, horizon, phi.as_ref())
        .unwrap()
        .log_z()
        .exp();
    let z = Enumeration::new(&lm, &prompt, horizon, phi.as_ref())
        .unwrap()
        .log_z()
        .exp();
    assert!(
        z_n < 0.9 * z,
        "the truncation must matter: Z_N {z_n}, Z {z}"
    );
    // 400 runs; |mean(Zhat / Z_N) - 1| <= 4 standard errors (a false alarm about 6e-5 of the
    // time for a normal mean; the seeds are fixed, so the test is deterministic).
    let runs = 400;
    let ratios: Vec<f64> = (0..runs)
        .map(|seed| {
            let cfg = SmcConfig::bootstrap(4, horizon).with_seed(seed);
            let out = run_smc(&truncated, None, phi.as_ref(), &prompt, &cfg).unwrap();
            out.log_z_hat.exp() / z_n
        })
        .collect();
    let n = runs as f64;
    let mean = ratios.iter().sum::<f64>() / n;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    assert!(
        (mean - 1.0).abs() <= 4.0 * se,
        "mean Zhat / Z_N = {mean} (SE {se}); Z_N = {z_n}, Z = {z}"
    );
}
