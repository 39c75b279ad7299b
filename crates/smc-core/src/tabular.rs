//! Enumerable models: a tabular language model over a handful of tokens, tabular twists, and
//! exact enumeration of Z, sigma, the optimal twists psi* and the KL divergences of any proposal.
//!
//! Exactness tests of every estimator in the workspace run against these.

use rand::{RngExt, SeedableRng};

use crate::batch::{LogTable, TokenBuffer, gather};
use crate::error::{Result, SmcError};
use crate::logspace::{log_sum_exp, log_sum_exp_sum};
use crate::model::{
    DecodeSession, LanguageModel, Potential, StepOutput, Twist, TwistInput, checked_log_phi,
};
use crate::smc::Proposal;

/// An order-n Markov language model given by explicit next-token tables: the next token depends
/// on the last `order` tokens of prompt + output (positions before the start read as a start
/// symbol).
#[derive(Debug, Clone, PartialEq)]
pub struct TabularLm {
    vocab: usize,
    order: usize,
    /// `(V+1)^order x V` normalised log-probabilities; context digit V is the start symbol.
    log_probs: Vec<f64>,
}

impl TabularLm {
    /// Builds the model from a `(V+1)^order x V` table of log-probabilities (rows are
    /// normalised here). Contexts are numbered in base V+1, oldest token most significant, the
    /// start symbol being digit V.
    pub fn from_log_probs(vocab: usize, order: usize, mut log_probs: Vec<f64>) -> Result<Self> {
        if vocab == 0 {
            return Err(SmcError::config("vocabulary size", ">= 1", 0));
        }
        let contexts = (vocab + 1).pow(order as u32);
        if log_probs.len() != contexts * vocab {
            return Err(SmcError::config(
                "tabular log-probability table length",
                format!("(V+1)^order * V = {}", contexts * vocab),
                log_probs.len(),
            ));
        }
        for (c, row) in log_probs.chunks_mut(vocab).enumerate() {
            let lse = log_sum_exp(row);
            if !lse.is_finite() {
                return Err(SmcError::config(
                    "tabular log-probability row",
                    "finite with some positive probability",
                    format!("context {c}: log-sum-exp {lse}"),
                ));
            }
            row.iter_mut().for_each(|x| *x -= lse);
        }
        Ok(Self {
            vocab,
            order,
            log_probs,
        })
    }

    /// A random model: logits `sharpness * N(0, 1)` per context and token.
    /// The number of log-probabilities a table of this shape holds, (V + 1)^order x V, or
    /// `None` when it does not fit in a `usize` (check it before [`TabularLm::random`] with
    /// sizes from a user).
    pub fn table_len(vocab: usize, order: usize) -> Option<usize> {
        u32::try_from(order)
            .ok()
            .and_then(|o| vocab.checked_add(1)?.checked_pow(o))
            .and_then(|c| c.checked_mul(vocab))
    }

    /// A random table (see [`TabularLm::table_len`] for its size).
    pub fn random(vocab: usize, order: usize, sharpness: f64, seed: u64) -> Self {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let contexts = (vocab + 1).pow(order as u32);
        let logits = (0..contexts * vocab)
            .map(|_| sharpness * standard_normal(&mut rng))
            .collect();
        Self::from_log_probs(vocab.max(1), order, logits).expect("valid random table")
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Context length.
    pub fn order(&self) -> usize {
        self.order
    }

    fn num_contexts(&self) -> usize {
        (self.vocab + 1).pow(self.order as u32)
    }

    fn advance(&self, context: usize, token: u32) -> usize {
        if self.order == 0 {
            0
        } else {
            (context * (self.vocab + 1) + token as usize) % self.num_contexts()
        }
    }

    fn start_context(&self, prompt: &[u32]) -> Result<usize> {
        // All start symbols, then the prompt tokens.
        let mut ctx = 0;
        for _ in 0..self.order {
            ctx = ctx * (self.vocab + 1) + self.vocab;
        }
        for (i, &tok) in prompt.iter().enumerate() {
            if tok as usize >= self.vocab {
                return Err(SmcError::config(
                    "prompt token",
                    format!("< vocabulary size {}", self.vocab),
                    format!("{tok} at position {i}"),
                ));
            }
            ctx = self.advance(ctx, tok);
        }
        Ok(ctx)
    }

    /// The next-token log-probabilities after `context` tokens (prompt followed by output).
    pub fn next_log_probs(&self, context: &[u32]) -> Result<&[f64]> {
        let c = self.start_context(context)?;
        Ok(&self.log_probs[c * self.vocab..(c + 1) * self.vocab])
    }
}

/// A standard normal draw by Box–Muller (keeps the crate free of a distributions dependency).
pub(crate) fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Decoding state of a [`TabularLm`]: one context index per particle.
#[derive(Debug, Clone)]
pub struct TabularSession<'a> {
    lm: &'a TabularLm,
    contexts: Vec<usize>,
}

impl LanguageModel for TabularLm {
    type Session<'a> = TabularSession<'a>;

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> Result<TabularSession<'_>> {
        let ctx = self.start_context(prompt)?;
        Ok(TabularSession {
            lm: self,
            contexts: vec![ctx; num_particles],
        })
    }
}

impl DecodeSession for TabularSession<'_> {
    fn num_particles(&self) -> usize {
        self.contexts.len()
    }

    fn next_log_probs(&mut self) -> Result<StepOutput> {
        let v = self.lm.vocab;
        let mut data = Vec::with_capacity(self.contexts.len() * v);
        for &c in &self.contexts {
            data.extend_from_slice(&self.lm.log_probs[c * v..(c + 1) * v]);
        }
        Ok(StepOutput {
            log_probs: LogTable::from_vec(self.contexts.len(), v, data).expect("shape"),
            hidden: None,
        })
    }

    fn push(&mut self, tokens: &[u32]) -> Result<()> {
        for (c, &tok) in self.contexts.iter_mut().zip(tokens) {
            if tok as usize >= self.lm.vocab {
                return Err(SmcError::config(
                    "token",
                    format!("< vocabulary size {}", self.lm.vocab),
                    tok,
                ));
            }
            *c = self.lm.advance(*c, tok);
        }
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> Result<()> {
        gather(&mut self.contexts, ancestors);
        Ok(())
    }

    fn branch(&self, parents: &[usize]) -> Result<Option<Self>> {
        let k = self.contexts.len();
        if parents.is_empty() {
            return Err(SmcError::config("branch parents", "at least one", "none"));
        }
        if let Some(&a) = parents.iter().find(|&&a| a >= k) {
            return Err(SmcError::config(
                "branch parent",
                format!("< {k} particles"),
                a,
            ));
        }
        Ok(Some(TabularSession {
            lm: self.lm,
            contexts: parents.iter().map(|&a| self.contexts[a]).collect(),
        }))
    }
}

/// The index of a sequence in base V, first token most significant.
fn sequence_index(tokens: &[u32], vocab: usize) -> usize {
    tokens.iter().fold(0, |acc, &t| acc * vocab + t as usize)
}

/// A twist given by explicit tables: log psi_t(s_{1:t}) for every t = 1..=T and every
/// s_{1:t} in V^t (so T must be small).
#[derive(Debug, Clone, PartialEq)]
pub struct TabularTwist {
    vocab: usize,
    /// `tables[t-1][index(s_{1:t})] = log psi_t(s_{1:t})`, V^t entries.
    tables: Vec<Vec<f64>>,
}

impl TabularTwist {
    /// A twist from a function of the prefix s_{1:t} (t = its length) to log psi_t.
    pub fn from_fn(vocab: usize, horizon: usize, f: impl Fn(&[u32]) -> f64) -> Self {
        let tables = (1..=horizon)
            .map(|t| {
                (0..vocab.pow(t as u32))
                    .map(|i| f(&decode_index(i, vocab, t)))
                    .collect()
            })
            .collect();
        Self { vocab, tables }
    }

    /// The constant twist psi = 1 (log psi = 0).
    pub fn constant(vocab: usize, horizon: usize) -> Self {
        Self::from_fn(vocab, horizon, |_| 0.0)
    }

    /// Twist tables from raw per-step vectors (`tables[t-1]` has V^t entries).
    pub fn from_tables(vocab: usize, tables: Vec<Vec<f64>>) -> Result<Self> {
        for (i, tab) in tables.iter().enumerate() {
            let expected = vocab.pow(i as u32 + 1);
            if tab.len() != expected {
                return Err(SmcError::config(
                    "tabular twist table length",
                    format!("V^t = {expected} at t = {}", i + 1),
                    tab.len(),
                ));
            }
        }
        Ok(Self { vocab, tables })
    }

    /// This twist with independent N(0, noise^2) perturbations added to every log psi
    /// (an imperfect twist for tests).
    pub fn perturbed(&self, noise: f64, seed: u64) -> Self {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let tables = self
            .tables
            .iter()
            .map(|tab| {
                tab.iter()
                    .map(|&x| x + noise * standard_normal(&mut rng))
                    .collect()
            })
            .collect();
        Self {
            vocab: self.vocab,
            tables,
        }
    }

    /// Number of steps covered.
    pub fn horizon(&self) -> usize {
        self.tables.len()
    }

    /// log psi_t for all s_{1:t} (V^t entries).
    pub fn table(&self, t: usize) -> &[f64] {
        &self.tables[t - 1]
    }

    /// log psi_t for all s_{1:t}, mutable (for training).
    pub fn table_mut(&mut self, t: usize) -> &mut [f64] {
        &mut self.tables[t - 1]
    }

    /// log psi_t(s_{1:t}).
    pub fn log_psi_of(&self, prefix: &[u32]) -> f64 {
        self.tables[prefix.len() - 1][sequence_index(prefix, self.vocab)]
    }
}

impl Twist for TabularTwist {
    fn name(&self) -> &str {
        "tabular twist"
    }

    fn log_psi(&self, input: &TwistInput<'_>) -> Result<LogTable> {
        let t = input.step;
        if t == 0 || t > self.tables.len() {
            return Err(SmcError::config(
                "tabular twist step",
                format!("in 1..={}", self.tables.len()),
                t,
            ));
        }
        let v = self.vocab;
        let k = input.prefixes.num_particles();
        let mut data = Vec::with_capacity(k * v);
        for row in input.prefixes.iter() {
            let base = sequence_index(row, v) * v;
            data.extend_from_slice(&self.tables[t - 1][base..base + v]);
        }
        Ok(LogTable::from_vec(k, v, data).expect("shape"))
    }
}

/// The sequence with index `i` in base V, `len` tokens, first token most significant.
pub fn decode_index(mut i: usize, vocab: usize, len: usize) -> Vec<u32> {
    let mut out = vec![0u32; len];
    for slot in out.iter_mut().rev() {
        *slot = (i % vocab) as u32;
        i /= vocab;
    }
    out
}

/// Largest number of sequences [`Enumeration`] accepts.
pub const MAX_ENUMERATED_SEQUENCES: usize = 1 << 22;

/// Exact quantities of a target sigma ∝ p0(s | prompt) phi(s) over all V^T outputs.
#[derive(Debug, Clone)]
pub struct Enumeration {
    vocab: usize,
    horizon: usize,
    /// `cond[t-1][index(s_{1:t-1}) * V + v] = log p0(v | prompt, s_{1:t-1})`.
    cond: Vec<Vec<f64>>,
    log_p0: Vec<f64>,
    log_phi: Vec<f64>,
    log_z: f64,
    /// `log_psi_star[t-1][index(s_{1:t})]`, t = 1..=T (psi*_T = phi).
    log_psi_star: Vec<Vec<f64>>,
}

/// Every prefix of length `len` as a token buffer (index order).
fn all_prefixes(vocab: usize, len: usize) -> TokenBuffer {
    let n = vocab.pow(len as u32);
    let mut buf = TokenBuffer::new(n, len);
    for pos in 0..len {
        let stride = vocab.pow((len - 1 - pos) as u32);
        let col: Vec<u32> = (0..n).map(|i| ((i / stride) % vocab) as u32).collect();
        buf.push(&col);
    }
    buf
}

/// Calls `f(t, prefixes, step output)` with every prefix s_{1:t-1}, t = 1..=T, decoded by `lm`.
fn for_each_level<L: LanguageModel>(
    lm: &L,
    prompt: &[u32],
    horizon: usize,
    mut f: impl FnMut(usize, &TokenBuffer, &StepOutput) -> Result<()>,
) -> Result<()> {
    let vocab = lm.vocab_size();
    for t in 1..=horizon {
        let prefixes = all_prefixes(vocab, t - 1);
        let mut session = lm.start(prompt, prefixes.num_particles())?;
        for pos in 0..t - 1 {
            let col: Vec<u32> = prefixes.iter().map(|row| row[pos]).collect();
            session.push(&col)?;
        }
        let out = session.next_log_probs()?;
        f(t, &prefixes, &out)?;
    }
    Ok(())
}

impl Enumeration {
    /// Enumerates all V^T outputs of `lm` after `prompt` and evaluates `potential` on them.
    pub fn new<L: LanguageModel>(
        lm: &L,
        prompt: &[u32],
        horizon: usize,
        potential: &dyn Potential,
    ) -> Result<Self> {
        let vocab = lm.vocab_size();
        // checked: V^T for T = 64 and V = 4 already overflows u128, and a wrapped value would
        // pass the limit.
        let n = u32::try_from(horizon)
            .ok()
            .and_then(|t| (vocab as u128).checked_pow(t));
        if horizon == 0 || n.is_none_or(|n| n > MAX_ENUMERATED_SEQUENCES as u128) {
            return Err(SmcError::config(
                "enumeration size V^T",
                format!("between 1 and {MAX_ENUMERATED_SEQUENCES} with T >= 1"),
                format!("V = {vocab}, T = {horizon}"),
            ));
        }
        let mut cond = Vec::with_capacity(horizon);
        for_each_level(lm, prompt, horizon, |_, _, out| {
            cond.push(out.log_probs.as_slice().to_vec());
            Ok(())
        })?;
        // log p0 of every complete sequence: prefix sums level by level.
        let mut log_p0 = vec![0.0];
        for level in &cond {
            log_p0 = log_p0
                .iter()
                .enumerate()
                .flat_map(|(i, &lp)| (0..vocab).map(move |v| lp + level[i * vocab + v]))
                .collect();
        }
        let log_phi = checked_log_phi(potential, prompt, &all_prefixes(vocab, horizon), horizon)?;
        // Backward recursion: psi*_t(s_{1:t}) = sum_v p0(v | s_{1:t}) psi*_{t+1}(s_{1:t}, v).
        let mut log_psi_star = vec![Vec::new(); horizon];
        log_psi_star[horizon - 1] = log_phi.clone();
        for t in (1..horizon).rev() {
            let next = &log_psi_star[t];
            let level = &cond[t];
            let m = vocab.pow(t as u32);
            log_psi_star[t - 1] = (0..m)
                .map(|i| {
                    let r = i * vocab..(i + 1) * vocab;
                    log_sum_exp_sum(&level[r.clone()], &next[r])
                })
                .collect();
        }
        let log_z = log_sum_exp_sum(&cond[0], &log_psi_star[0]);
        Ok(Self {
            vocab,
            horizon,
            cond,
            log_p0,
            log_phi,
            log_z,
            log_psi_star,
        })
    }

    /// log Z = log E_{p0}(phi).
    pub fn log_z(&self) -> f64 {
        self.log_z
    }

    /// Number of enumerated sequences V^T.
    pub fn len(&self) -> usize {
        self.log_p0.len()
    }

    /// Always false (T >= 1).
    pub fn is_empty(&self) -> bool {
        self.log_p0.is_empty()
    }

    /// The sequence with index `i`.
    pub fn sequence(&self, i: usize) -> Vec<u32> {
        decode_index(i, self.vocab, self.horizon)
    }

    /// The index of a sequence of T tokens.
    pub fn index_of(&self, tokens: &[u32]) -> usize {
        sequence_index(tokens, self.vocab)
    }

    /// log p0 of every sequence, by index.
    pub fn log_p0(&self) -> &[f64] {
        &self.log_p0
    }

    /// log phi of every sequence, by index.
    pub fn log_phi(&self) -> &[f64] {
        &self.log_phi
    }

    /// log sigma of every sequence, by index.
    pub fn log_sigma(&self) -> Vec<f64> {
        self.log_p0
            .iter()
            .zip(&self.log_phi)
            .map(|(a, b)| a + b - self.log_z)
            .collect()
    }

    /// sigma of every sequence, by index.
    pub fn sigma(&self) -> Vec<f64> {
        self.log_sigma().into_iter().map(f64::exp).collect()
    }

    /// The optimal twists psi*_t(s_{1:t}) = E_{p0}[phi | s_{1:t}], t = 1..=T (psi*_T = phi).
    pub fn optimal_twist(&self) -> TabularTwist {
        TabularTwist {
            vocab: self.vocab,
            tables: self.log_psi_star.clone(),
        }
    }

    /// The marginal sigma(s_{1:t}) of every prefix of length t, by index.
    pub fn marginal(&self, t: usize) -> Vec<f64> {
        // sigma(s_{1:t}) = p0(s_{1:t}) psi*_t(s_{1:t}) / Z.
        let mut log_p0_prefix = vec![0.0];
        for level in &self.cond[..t] {
            log_p0_prefix = log_p0_prefix
                .iter()
                .enumerate()
                .flat_map(|(i, &lp)| (0..self.vocab).map(move |v| lp + level[i * self.vocab + v]))
                .collect();
        }
        log_p0_prefix
            .iter()
            .zip(&self.log_psi_star[t - 1])
            .map(|(a, b)| (a + b - self.log_z).exp())
            .collect()
    }

    /// log q(s) of every sequence under the proposal defined by `lm`, `twist` and `proposal`
    /// (the twist-induced proposal, not the SMC output).
    pub fn proposal_log_q<L: LanguageModel>(
        &self,
        lm: &L,
        prompt: &[u32],
        twist: Option<&dyn Twist>,
        proposal: Proposal,
    ) -> Result<Vec<f64>> {
        let v = self.vocab;
        let mut cond_q: Vec<Vec<f64>> = Vec::with_capacity(self.horizon);
        for_each_level(lm, prompt, self.horizon, |t, prefixes, out| {
            let k = prefixes.num_particles();
            let psi = match (twist, proposal) {
                (Some(tw), Proposal::Twisted) => Some(tw.log_psi(&TwistInput {
                    step: t,
                    horizon: self.horizon,
                    prompt,
                    prefixes,
                    hidden: out.hidden.as_ref(),
                })?),
                _ => None,
            };
            let mut level = Vec::with_capacity(k * v);
            for p in 0..k {
                let row = out.log_probs.row(p);
                match &psi {
                    Some(tab) => {
                        let lz = log_sum_exp_sum(row, tab.row(p));
                        level.extend(row.iter().zip(tab.row(p)).map(|(a, b)| a + b - lz));
                    }
                    None => {
                        let lz = log_sum_exp(row);
                        level.extend(row.iter().map(|a| a - lz));
                    }
                }
            }
            cond_q.push(level);
            Ok(())
        })?;
        let mut log_q = vec![0.0];
        for level in &cond_q {
            log_q = log_q
                .iter()
                .enumerate()
                .flat_map(|(i, &lq)| (0..v).map(move |x| lq + level[i * v + x]))
                .collect();
        }
        Ok(log_q)
    }

    /// Exact KL(q || sigma) of a proposal given by its log q per sequence.
    pub fn kl_q_sigma(&self, log_q: &[f64]) -> f64 {
        self.log_sigma()
            .iter()
            .zip(log_q)
            .filter(|(_, lq)| **lq > f64::NEG_INFINITY)
            .map(|(ls, lq)| lq.exp() * (lq - ls))
            .sum()
    }

    /// Exact KL(sigma || q) of a proposal given by its log q per sequence.
    pub fn kl_sigma_q(&self, log_q: &[f64]) -> f64 {
        self.log_sigma()
            .iter()
            .zip(log_q)
            .filter(|(ls, _)| **ls > f64::NEG_INFINITY)
            .map(|(ls, lq)| ls.exp() * (ls - lq))
            .sum()
    }

    /// Exact independent samples from sigma.
    pub fn sample_sigma(&self, n: usize, rng: &mut dyn rand::Rng) -> Vec<Vec<u32>> {
        let sigma = self.sigma();
        let mut cdf = Vec::with_capacity(sigma.len());
        let mut acc = 0.0;
        for p in &sigma {
            acc += p;
            cdf.push(acc);
        }
        (0..n)
            .map(|_| {
                let u = rng.random::<f64>() * acc;
                let i = cdf.partition_point(|&c| c <= u).min(sigma.len() - 1);
                self.sequence(i)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnitPotential;

    #[test]
    fn tabular_rows_are_normalised_and_depend_on_context() {
        let lm = TabularLm::random(3, 2, 1.5, 7);
        let a = lm.next_log_probs(&[0, 1]).unwrap();
        let b = lm.next_log_probs(&[1, 1]).unwrap();
        assert!((log_sum_exp(a)).abs() < 1e-12);
        assert_ne!(a, b);
        // Only the last `order` tokens matter.
        assert_eq!(lm.next_log_probs(&[2, 0, 1]).unwrap(), a);
    }

    #[test]
    fn enumeration_of_unit_potential_has_log_z_zero_and_sigma_equal_p0() {
        let lm = TabularLm::random(3, 2, 1.0, 3);
        let e = Enumeration::new(&lm, &[1], 4, &UnitPotential).unwrap();
        assert!(e.log_z().abs() < 1e-12);
        let total: f64 = e.sigma().iter().sum();
        assert!((total - 1.0).abs() < 1e-12);
        // sigma(s) = p0(s): compare with direct products of the table.
        let s = e.sequence(17);
        let mut lp = 0.0;
        let mut ctx = vec![1u32];
        for &tok in &s {
            lp += lm.next_log_probs(&ctx).unwrap()[tok as usize];
            ctx.push(tok);
        }
        assert!((e.log_p0()[17] - lp).abs() < 1e-12);
    }

    #[test]
    fn optimal_twist_marginals_sum_to_one_and_match_sigma() {
        let lm = TabularLm::random(3, 1, 1.0, 5);
        let phi = crate::model::FnPotential::new("sum", |_: &[u32], s: &[u32]| {
            s.iter().map(|&x| x as f64).sum::<f64>() * 0.7
        });
        let e = Enumeration::new(&lm, &[], 3, &phi).unwrap();
        let sigma = e.sigma();
        let m2 = e.marginal(2);
        assert!((m2.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for (i, &m) in m2.iter().enumerate() {
            let direct: f64 = (0..3).map(|v| sigma[i * 3 + v]).sum();
            assert!((m - direct).abs() < 1e-12);
        }
    }
}
