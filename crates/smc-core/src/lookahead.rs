//! A final twist that runs the base model on candidate last tokens: for a continuation
//! potential phi(s) = p0(c | prompt, s) (infilling), the twisted proposal's last step wants
//! psi_T(s_<T, v) = phi(s_<T, v), which is exact for any token the model is run on. Running it
//! on all V tokens is V passes per particle, so only each particle's top N tokens under p0 are
//! scored (with a mass P, only the likeliest of them holding P of p0's probability); every
//! other token gets the log of the p0-weighted mean of phi over those scored. The proposal
//! stays normalised with full support, and its weights stay exact: only its distance to sigma
//! depends on N. Steps before T are left to an inner twist (a learned head) or to p0.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::batch::{LogTable, TokenBuffer};
use crate::error::{Result, SmcError};
use crate::logspace::log_sum_exp;
use crate::model::{DecodeSession, LanguageModel, Potential, Twist, TwistInput};

/// Candidate sequences scored per call, so that memory stays bounded however many particles
/// and candidates there are (the default scoring returns a row of V log probabilities per
/// sequence and position: 64 x 15 x 49152 f64 is 380 MB on SmolLM2).
const SCORE_CHUNK: usize = 64;

/// Branched (particle, candidate) rows decoded at once, for the same reason: each step
/// returns a row of V log-probabilities per row.
const BRANCH_ROWS: usize = 128;

/// psi_T(s_<T, v) = p0(c | prompt, s_<T, v) on each particle's top `candidates` tokens, the
/// p0-weighted mean of those elsewhere; an inner twist (or none: psi = 1) before T.
pub struct FinalLookahead<'a, L: LanguageModel> {
    lm: &'a L,
    continuation: Vec<u32>,
    candidates: usize,
    /// Score only the likeliest of the N tokens that together hold this much of p0's mass.
    mass: Option<f64>,
    inner: Option<&'a dyn Twist>,
    /// Wall time of the final step's scoring so far, in nanoseconds: the model runs here, not
    /// through the caller's model wrapper, so a run's timing asks for it (`seconds`).
    elapsed_ns: AtomicU64,
    /// The last final step's scores: its prompt, and log p0(c | prompt, s) for each scored
    /// sequence s (prefix and candidate), which `potential()` reuses.
    scored: Mutex<Scored>,
}

/// The sequences one final step scored, for the prompt it ran on.
#[derive(Default)]
struct Scored {
    prompt: Vec<u32>,
    log_phi: HashMap<Vec<u32>, f64>,
}

impl<'a, L: LanguageModel> FinalLookahead<'a, L> {
    /// The lookahead for continuation tokens `continuation` (at least one) over the top
    /// `candidates` tokens (at least one; more than V means all of them).
    pub fn new(
        lm: &'a L,
        continuation: Vec<u32>,
        candidates: usize,
        inner: Option<&'a dyn Twist>,
    ) -> Result<Self> {
        if continuation.is_empty() {
            return Err(SmcError::config(
                "lookahead continuation",
                "at least one token",
                "none",
            ));
        }
        if let Some(&c) = continuation
            .iter()
            .find(|&&c| c as usize >= lm.vocab_size())
        {
            return Err(SmcError::config(
                "lookahead continuation token",
                format!("< vocabulary size {}", lm.vocab_size()),
                c,
            ));
        }
        if candidates == 0 {
            return Err(SmcError::config("lookahead candidates", ">= 1", 0));
        }
        Ok(Self {
            lm,
            continuation,
            candidates: candidates.min(lm.vocab_size()),
            mass: None,
            inner,
            elapsed_ns: AtomicU64::new(0),
            scored: Mutex::new(Scored::default()),
        })
    }

    /// Scores, of each prefix's top N tokens, only the likeliest that together hold at least
    /// `mass` of p0's next-token probability (at least one token): fewer candidates where p0
    /// is peaked. `mass` must lie in (0, 1].
    pub fn with_mass(mut self, mass: f64) -> Result<Self> {
        if !(mass > 0.0 && mass <= 1.0) {
            return Err(SmcError::config("lookahead mass", "in (0, 1]", mass));
        }
        self.mass = Some(mass);
        Ok(self)
    }

    /// Each prefix's candidates, likeliest first: the top N tokens of its p0 row, cut where
    /// they reach the mass (if one is set).
    fn candidate_set(&self, row: &[f64]) -> Vec<usize> {
        let v = row.len();
        let mut idx: Vec<usize> = (0..v).collect();
        let by_prob = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]);
        if self.candidates < v {
            idx.select_nth_unstable_by(self.candidates, by_prob);
            idx.truncate(self.candidates);
        }
        if let Some(mass) = self.mass {
            idx.sort_unstable_by(by_prob);
            let mut held = 0.0;
            let keep = idx
                .iter()
                .position(|&u| {
                    held += row[u].exp();
                    held >= mass
                })
                .map_or(idx.len(), |i| i + 1);
            idx.truncate(keep);
        }
        idx
    }

    /// The candidates scored per prefix: the N asked for, at most V.
    pub fn candidates(&self) -> usize {
        self.candidates
    }

    /// The potential phi(s) = p0(c | prompt, s) for this lookahead's continuation c, reusing
    /// the values its last final step computed for the candidates: a particle that drew a
    /// scored token needs no second pass (its weight's phi / psi_T is then exactly 1). Other
    /// sequences are scored afresh (`LanguageModel::score_continuation`), as an infilling
    /// potential scores them.
    pub fn potential(&self) -> ContinuationPotential<'_, 'a, L> {
        ContinuationPotential { look: self }
    }

    /// Wall-clock seconds spent at the final step so far (decoding the prefixes and scoring
    /// their candidates; the inner twist's steps are not counted).
    pub fn seconds(&self) -> f64 {
        self.elapsed_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// A session of one particle per prefix that has decoded it, and p0's next-token
    /// log-probabilities after each (normalised).
    fn decode_prefixes(
        &self,
        prompt: &[u32],
        prefixes: &TokenBuffer,
    ) -> Result<(L::Session<'a>, Vec<Vec<f64>>)> {
        let k = prefixes.num_particles();
        let mut session = self.lm.start(prompt, k)?;
        // Room for the candidate and the continuation too, so that branches never grow.
        session.reserve(prefixes.len() + 1 + self.continuation.len())?;
        for pos in 0..prefixes.len() {
            let column: Vec<u32> = prefixes.iter().map(|row| row[pos]).collect();
            session.push(&column)?;
        }
        let out = session.next_log_probs()?;
        let rows = (0..k)
            .map(|p| {
                let row = out.log_probs.row(p);
                let lz = log_sum_exp(row);
                row.iter().map(|x| x - lz).collect()
            })
            .collect();
        Ok((session, rows))
    }

    /// log p0(c | prompt, s_<T, u) for each particle's candidates u (`sets[p]`), flattened,
    /// by branching the decoded prefixes: only the candidate and c are decoded, so a prefix is
    /// run once, not once per candidate. `None` where the session cannot branch.
    fn score_branched(
        &self,
        session: &L::Session<'a>,
        sets: &[Vec<usize>],
    ) -> Result<Option<Vec<f64>>> {
        // (particle, candidate) rows in order, so that the scores come out flattened as the
        // sets are, and a branch never holds more than BRANCH_ROWS rows however large N is.
        let rows: Vec<(usize, u32)> = sets
            .iter()
            .enumerate()
            .flat_map(|(p, set)| set.iter().map(move |&u| (p, u as u32)))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(BRANCH_ROWS) {
            let parents: Vec<usize> = chunk.iter().map(|&(p, _)| p).collect();
            let Some(mut branch) = session.branch(&parents)? else {
                return Ok(None);
            };
            let first: Vec<u32> = chunk.iter().map(|&(_, u)| u).collect();
            branch.push(&first)?;
            let mut totals = vec![0.0; parents.len()];
            for (j, &c) in self.continuation.iter().enumerate() {
                if j > 0 {
                    branch.push(&vec![self.continuation[j - 1]; parents.len()])?;
                }
                let step = branch.next_log_probs()?;
                for (r, total) in totals.iter_mut().enumerate() {
                    let row = step.log_probs.row(r);
                    *total += row[c as usize] - log_sum_exp(row);
                }
            }
            out.extend(totals);
        }
        Ok(Some(out))
    }

    /// log p0(c | prompt, s) for each sequence s (all of one length), in chunks: the
    /// scoring for sessions that cannot branch.
    fn score(&self, prompt: &[u32], sequences: Vec<Vec<u32>>) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(sequences.len());
        for chunk in sequences.chunks(SCORE_CHUNK) {
            out.extend(
                self.lm
                    .score_continuation(prompt, chunk, &self.continuation)?,
            );
        }
        Ok(out)
    }
}

impl<L: LanguageModel> Twist for FinalLookahead<'_, L> {
    fn name(&self) -> &str {
        "final lookahead"
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        let v = self.lm.vocab_size();
        let k = input.prefixes.num_particles();
        if input.step < input.horizon {
            return match self.inner {
                Some(tw) => tw.log_psi(input),
                None => Ok(LogTable::filled(k, v, 0.0)),
            };
        }
        let started = Instant::now();
        let table = self.final_step(input, v, k);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_add(ns, Ordering::Relaxed);
        table
    }
}

impl<L: LanguageModel> FinalLookahead<'_, L> {
    /// log psi_T for every particle: the exact final twist on its candidates.
    fn final_step(&self, input: &TwistInput<'_>, v: usize, k: usize) -> Result<LogTable> {
        // Resampled particles share prefixes, and a prefix's row of psi depends on it alone:
        // each distinct prefix is decoded and scored once.
        let (unique, of_particle) = distinct_rows(input.prefixes);
        let prefixes = TokenBuffer::from_rows(&unique);
        let (session, rows) = self.decode_prefixes(input.prompt, &prefixes)?;
        let sets: Vec<Vec<usize>> = rows.iter().map(|row| self.candidate_set(row)).collect();
        let scores = match self.score_branched(&session, &sets)? {
            Some(scores) => scores,
            None => {
                drop(session);
                let sequences = sets
                    .iter()
                    .zip(&unique)
                    .flat_map(|(set, prefix)| {
                        set.iter().map(move |&u| {
                            let mut s = prefix.clone();
                            s.push(u as u32);
                            s
                        })
                    })
                    .collect();
                self.score(input.prompt, sequences)?
            }
        };
        self.remember(input.prompt, &unique, &sets, &scores);
        let mut distinct = Vec::with_capacity(unique.len());
        let mut start = 0;
        for (row, set) in rows.iter().zip(&sets) {
            let f = &scores[start..start + set.len()];
            start += set.len();
            // Outside the set: log of the p0-weighted mean of phi over the set, an estimate
            // of E_p0[phi | s_<T] (the mean of log phi lies below it by Jensen's gap, which is
            // many nats when phi spans orders of magnitude, and starves the tokens outside).
            let terms: Vec<f64> = set.iter().zip(f).map(|(&u, &fu)| row[u] + fu).collect();
            let mass: Vec<f64> = set.iter().map(|&u| row[u]).collect();
            let (num, den) = (log_sum_exp(&terms), log_sum_exp(&mass));
            let fallback = if num.is_finite() && den.is_finite() {
                num - den
            } else {
                0.0
            };
            let mut psi = vec![fallback; v];
            for (&u, &fu) in set.iter().zip(f) {
                psi[u] = fu;
            }
            distinct.push(psi);
        }
        let mut table = Vec::with_capacity(k * v);
        for &d in &of_particle {
            table.extend_from_slice(&distinct[d]);
        }
        LogTable::from_vec(k, v, table).ok_or_else(|| {
            SmcError::config("lookahead table", format!("{k} x {v}"), "another shape")
        })
    }
}

impl<'a, L: LanguageModel> FinalLookahead<'a, L> {
    /// Keeps this final step's scores for `potential()`, in place of the last step's.
    fn remember(&self, prompt: &[u32], prefixes: &[Vec<u32>], sets: &[Vec<usize>], scores: &[f64]) {
        let mut log_phi = HashMap::with_capacity(scores.len());
        let mut flat = scores.iter();
        for (prefix, set) in prefixes.iter().zip(sets) {
            for (&u, &f) in set.iter().zip(&mut flat) {
                let mut s = prefix.clone();
                s.push(u as u32);
                log_phi.insert(s, f);
            }
        }
        // A poisoned lock only means another thread panicked mid-update; the cache is
        // replaced whole, so it is safe to take over.
        let mut scored = self.scored.lock().unwrap_or_else(|e| e.into_inner());
        *scored = Scored {
            prompt: prompt.to_vec(),
            log_phi,
        };
    }
}

/// phi(s) = p0(c | prompt, s) through a `FinalLookahead`: its last final step's scores where
/// it has them (`FinalLookahead::potential`).
pub struct ContinuationPotential<'l, 'a, L: LanguageModel> {
    look: &'l FinalLookahead<'a, L>,
}

impl<L: LanguageModel> Potential for ContinuationPotential<'_, '_, L> {
    fn name(&self) -> &str {
        "infilling (final lookahead's scores reused)"
    }

    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> Result<Vec<f64>> {
        let mut out = vec![0.0; sequences.num_particles()];
        let mut missing = Vec::new();
        {
            let scored = self.look.scored.lock().unwrap_or_else(|e| e.into_inner());
            let same_prompt = scored.prompt == prompt;
            for (i, row) in sequences.iter().enumerate() {
                match scored.log_phi.get(row).filter(|_| same_prompt) {
                    Some(&f) => out[i] = f,
                    None => missing.push(i),
                }
            }
        }
        if !missing.is_empty() {
            let rows = missing.iter().map(|&i| sequences.row(i).to_vec()).collect();
            for (&i, f) in missing.iter().zip(self.look.score(prompt, rows)?) {
                out[i] = f;
            }
        }
        Ok(out)
    }
}

/// The distinct rows of `prefixes`, in order of first appearance, and each particle's index
/// among them.
fn distinct_rows(prefixes: &TokenBuffer) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut index: HashMap<&[u32], usize> = HashMap::new();
    let mut unique = Vec::new();
    let of_particle = prefixes
        .iter()
        .map(|row| {
            *index.entry(row).or_insert_with(|| {
                unique.push(row.to_vec());
                unique.len() - 1
            })
        })
        .collect();
    (unique, of_particle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FnPotential;
    use crate::smc::Proposal;
    use crate::tabular::{Enumeration, TabularLm};

    /// log p0(c | prompt, s) by the table, token by token.
    fn log_phi(lm: &TabularLm, prompt: &[u32], s: &[u32], c: &[u32]) -> f64 {
        let mut ctx: Vec<u32> = prompt.iter().chain(s).copied().collect();
        let mut total = 0.0;
        for &t in c {
            total += lm.next_log_probs(&ctx).unwrap()[t as usize];
            ctx.push(t);
        }
        total
    }

    /// The twist's input at the final step T = `horizon`.
    fn final_step<'a>(
        prompt: &'a [u32],
        prefixes: &'a TokenBuffer,
        horizon: usize,
    ) -> TwistInput<'a> {
        TwistInput {
            step: horizon,
            horizon,
            prompt,
            prefixes,
            hidden: None,
        }
    }

    /// Twisted SMC with K particles, resampling by `scheme` after every step.
    fn twisted_smc(
        num_particles: usize,
        horizon: usize,
        scheme: crate::resampling::Scheme,
        seed: u64,
    ) -> crate::smc::SmcConfig {
        crate::smc::SmcConfig {
            num_particles,
            horizon,
            proposal: Proposal::Twisted,
            resampling: crate::feynman_kac::Resampling {
                scheme,
                criterion: crate::resampling::Criterion::Always,
            },
            seed,
        }
    }

    #[test]
    fn with_every_token_and_the_optimal_inner_twist_q_is_sigma() {
        use crate::resampling::Scheme;
        use crate::smc::run_smc;
        let lm = TabularLm::random(4, 2, 1.5, 7);
        let (prompt, c, horizon) = (vec![1u32, 3], vec![2u32, 0], 3);
        let phi = FnPotential::new("continuation", |pr: &[u32], s: &[u32]| {
            log_phi(&lm, pr, s, &c)
        });
        let e = Enumeration::new(&lm, &prompt, horizon, &phi).unwrap();
        let optimal = e.optimal_twist();
        let look = FinalLookahead::new(&lm, c.clone(), 4, Some(&optimal)).unwrap();
        let log_q = e
            .proposal_log_q(&lm, &prompt, Some(&look), Proposal::Twisted)
            .unwrap();
        assert!(
            e.kl_sigma_q(&log_q).abs() < 1e-10,
            "{}",
            e.kl_sigma_q(&log_q)
        );
        assert!(e.kl_q_sigma(&log_q).abs() < 1e-10);
        // SMC through the reused scores: phi / psi_T is exactly 1 and every final weight is
        // Z, so log Zhat = log Z at every seed.
        for seed in 0..5 {
            let config = twisted_smc(8, horizon, Scheme::Systematic, seed);
            let out = run_smc(&lm, Some(&look), &look.potential(), &prompt, &config).unwrap();
            assert!(
                (out.log_z_hat - e.log_z()).abs() < 1e-10,
                "seed {seed}: {} vs {}",
                out.log_z_hat,
                e.log_z()
            );
        }

        // Without an inner twist the last step alone is exact: KL(σ‖q) falls below p0's.
        let alone = FinalLookahead::new(&lm, c.clone(), 4, None).unwrap();
        let log_q = e
            .proposal_log_q(&lm, &prompt, Some(&alone), Proposal::Twisted)
            .unwrap();
        let log_p0 = e
            .proposal_log_q(&lm, &prompt, None, Proposal::Twisted)
            .unwrap();
        assert!(e.kl_sigma_q(&log_q) < e.kl_sigma_q(&log_p0) - 1e-3);
    }

    #[test]
    fn outside_the_candidates_psi_is_the_p0_weighted_mean_of_phi() {
        let lm = TabularLm::random(5, 1, 2.0, 3);
        let (prompt, c) = (vec![0u32], vec![4u32]);
        let look = FinalLookahead::new(&lm, c.clone(), 2, None).unwrap();
        let prefixes = TokenBuffer::from_rows(&[vec![1, 2], vec![3, 3]]);
        let input = final_step(&prompt, &prefixes, 3);
        let tab = look.log_psi(&input).unwrap();
        for p in 0..2 {
            let prefix = prefixes.row(p);
            let ctx: Vec<u32> = prompt.iter().chain(prefix).copied().collect();
            let row = lm.next_log_probs(&ctx).unwrap();
            let mut order: Vec<usize> = (0..5).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
            let f = |u: usize| {
                let mut s = prefix.to_vec();
                s.push(u as u32);
                log_phi(&lm, &prompt, &s, &c)
            };
            let (a, b) = (order[0], order[1]);
            let (wa, wb) = (row[a].exp(), row[b].exp());
            let mean = ((wa * f(a).exp() + wb * f(b).exp()) / (wa + wb)).ln();
            for u in 0..5 {
                let want = if u == a || u == b { f(u) } else { mean };
                assert!(
                    (tab.row(p)[u] - want).abs() < 1e-12,
                    "particle {p} token {u}"
                );
            }
        }
        // Before T: psi = 1 without an inner twist.
        let early = TwistInput { step: 2, ..input };
        assert!(
            look.log_psi(&early)
                .unwrap()
                .as_slice()
                .iter()
                .all(|&x| x == 0.0)
        );
    }

    #[test]
    fn branched_scores_equal_scores_from_the_prompt() {
        let lm = TabularLm::random(5, 2, 2.0, 11);
        let (prompt, c) = (vec![0u32, 2], vec![4u32, 1, 3]);
        // 60 particles x 5 candidates: three branches of at most BRANCH_ROWS rows, one of
        // them splitting a particle's candidates.
        let look = FinalLookahead::new(&lm, c.clone(), 5, None).unwrap();
        let rows: Vec<Vec<u32>> = (0..60u32).map(|i| vec![i % 5, (i / 5) % 5]).collect();
        let prefixes = TokenBuffer::from_rows(&rows);
        let (session, _) = look.decode_prefixes(&prompt, &prefixes).unwrap();
        let sets: Vec<Vec<usize>> = (0..60).map(|i| vec![i % 5, 4, 0, 1, 3]).collect();
        let got = look.score_branched(&session, &sets).unwrap().unwrap();
        let seqs = rows
            .iter()
            .zip(&sets)
            .flat_map(|(r, set)| set.iter().map(move |&u| [&r[..], &[u as u32]].concat()))
            .collect::<Vec<_>>();
        let want = look.score(&prompt, seqs.clone()).unwrap();
        assert_eq!(got.len(), 300);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-12, "row {i}: {g} vs {w}");
            assert!((g - log_phi(&lm, &prompt, &seqs[i], &c)).abs() < 1e-12);
        }
    }

    #[test]
    fn with_a_mass_only_the_likeliest_tokens_holding_it_are_scored() {
        let lm = TabularLm::random(6, 2, 1.0, 21);
        let (prompt, c) = (vec![2u32], vec![5u32, 1]);
        let prefixes = TokenBuffer::from_rows(&[vec![0, 4], vec![3, 1], vec![5, 5]]);
        let input = final_step(&prompt, &prefixes, 3);
        for (n, mass) in [(6, 0.5), (6, 0.9), (3, 0.99), (4, 1.0)] {
            let look = FinalLookahead::new(&lm, c.clone(), n, None)
                .unwrap()
                .with_mass(mass)
                .unwrap();
            let tab = look.log_psi(&input).unwrap();
            for p in 0..3 {
                let prefix = prefixes.row(p);
                let ctx: Vec<u32> = prompt.iter().chain(prefix).copied().collect();
                let row = lm.next_log_probs(&ctx).unwrap();
                let mut order: Vec<usize> = (0..6).collect();
                order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
                let mut set = Vec::new();
                let mut held = 0.0;
                for &u in order.iter().take(n) {
                    set.push(u);
                    held += row[u].exp();
                    if held >= mass {
                        break;
                    }
                }
                let f = |u: usize| {
                    let mut s = prefix.to_vec();
                    s.push(u as u32);
                    log_phi(&lm, &prompt, &s, &c)
                };
                let w: f64 = set.iter().map(|&u| row[u].exp()).sum();
                let mean = (set.iter().map(|&u| row[u].exp() * f(u).exp()).sum::<f64>() / w).ln();
                for u in 0..6 {
                    let want = if set.contains(&u) { f(u) } else { mean };
                    assert!(
                        (tab.row(p)[u] - want).abs() < 1e-12,
                        "N {n} mass {mass} particle {p} token {u}"
                    );
                }
            }
        }
        let look = || FinalLookahead::new(&lm, c.clone(), 2, None).unwrap();
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(look().with_mass(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn particles_that_share_a_prefix_get_its_row() {
        let lm = TabularLm::random(5, 2, 2.0, 5);
        let (prompt, c) = (vec![1u32], vec![3u32, 0]);
        let look = FinalLookahead::new(&lm, c, 2, None).unwrap();
        let table = |rows: &[Vec<u32>]| {
            let prefixes = TokenBuffer::from_rows(rows);
            look.log_psi(&final_step(&prompt, &prefixes, 3)).unwrap()
        };
        let (a, b) = (vec![1u32, 2], vec![3u32, 3]);
        // Only the final step is timed; the steps before it are the inner twist's.
        let early = TokenBuffer::from_rows(std::slice::from_ref(&a));
        let before = TwistInput {
            step: 2,
            ..final_step(&prompt, &early, 3)
        };
        look.log_psi(&before).unwrap();
        assert_eq!(look.seconds(), 0.0);
        let mixed = table(&[a.clone(), b.clone(), a.clone(), a.clone()]);
        let (only_a, only_b) = (table(&[a]), table(&[b]));
        for (p, want) in [(0, &only_a), (1, &only_b), (2, &only_a), (3, &only_a)] {
            assert_eq!(mixed.row(p), want.row(0), "particle {p}");
        }
        assert!(look.seconds() > 0.0);
        // At T = 1 every particle has the empty prefix.
        let first = TokenBuffer::from_rows(&[vec![], vec![]]);
        let input = final_step(&prompt, &first, 1);
        let t = look.log_psi(&input).unwrap();
        let one = TokenBuffer::from_rows(&[vec![]]);
        let alone = look
            .log_psi(&TwistInput {
                prefixes: &one,
                ..input
            })
            .unwrap();
        assert_eq!(t.row(0), alone.row(0));
        assert_eq!(t.row(1), alone.row(0));
    }

    #[test]
    fn the_potential_reuses_the_final_steps_scores_and_scores_the_rest() {
        let lm = TabularLm::random(5, 2, 2.0, 11);
        let (prompt, c) = (vec![2u32], vec![4u32, 1]);
        let look = FinalLookahead::new(&lm, c.clone(), 2, None).unwrap();
        let prefixes = TokenBuffer::from_rows(&[vec![0u32, 3], vec![1, 1]]);
        let input = final_step(&prompt, &prefixes, 3);
        look.log_psi(&input).unwrap();
        // Two prefixes times two candidates kept, keyed by prefix and candidate.
        let kept: Vec<Vec<u32>> = {
            let scored = look.scored.lock().unwrap();
            assert_eq!(scored.prompt, prompt);
            scored.log_phi.keys().cloned().collect()
        };
        assert_eq!(kept.len(), 4);
        // Kept sequences, sequences outside the candidates and another prompt all get phi.
        let mut rows = kept.clone();
        rows.extend((0..5u32).map(|v| vec![0, 3, v]));
        let phi = look.potential();
        for pr in [prompt.clone(), vec![3u32, 0]] {
            let got = phi.log_phi(&pr, &TokenBuffer::from_rows(&rows)).unwrap();
            for (row, g) in rows.iter().zip(got) {
                let want = log_phi(&lm, &pr, row, &c);
                assert!((g - want).abs() < 1e-12, "{pr:?} {row:?}: {g} vs {want}");
            }
        }
    }

    /// With 2 of 5 tokens scored, p0 before T and the reused scores as phi, Zhat stays
    /// unbiased: over 4000 runs its mean is within 4 standard errors of the enumerated Z.
    #[test]
    fn zhat_is_unbiased_with_few_candidates_and_the_reused_scores() {
        use crate::resampling::Scheme;
        use crate::smc::run_smc;
        let lm = TabularLm::random(5, 2, 1.0, 21);
        let (prompt, c, horizon) = (vec![3u32], vec![1u32, 4], 3);
        let phi = FnPotential::new("continuation", |pr: &[u32], s: &[u32]| {
            log_phi(&lm, pr, s, &c)
        });
        let z = Enumeration::new(&lm, &prompt, horizon, &phi)
            .unwrap()
            .log_z()
            .exp();
        let look = FinalLookahead::new(&lm, c.clone(), 2, None).unwrap();
        let runs = 4000;
        let zhat: Vec<f64> = (0..runs)
            .map(|seed| {
                let config = twisted_smc(4, horizon, Scheme::Multinomial, seed);
                run_smc(&lm, Some(&look), &look.potential(), &prompt, &config)
                    .unwrap()
                    .log_z_hat
                    .exp()
            })
            .collect();
        let mean = zhat.iter().sum::<f64>() / runs as f64;
        let var = zhat.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (runs - 1) as f64;
        let zscore = (mean - z) / (var / runs as f64).sqrt();
        assert!(zscore.abs() < 4.0, "mean {mean} vs Z {z}: z = {zscore}");
    }

    #[test]
    fn bad_settings_are_errors() {
        let lm = TabularLm::random(3, 1, 1.0, 1);
        assert!(FinalLookahead::new(&lm, vec![], 2, None).is_err());
        assert!(FinalLookahead::new(&lm, vec![3], 2, None).is_err());
        assert!(FinalLookahead::new(&lm, vec![1], 0, None).is_err());
        // More candidates than tokens means all of them.
        let all = FinalLookahead::new(&lm, vec![1], 99, None).unwrap();
        assert_eq!(all.candidates(), 3);
    }
}
