//! [`HttpLm`] as smc-core's [`LanguageModel`]: a session keeps each particle's output tokens
//! and the server its lineage lives on, and asks for one row per distinct prefix at each step.

use std::collections::{HashMap, VecDeque};

use smc_core::SmcError;
use smc_core::batch::LogTable;
use smc_core::model::{DecodeSession, LanguageModel, NextToken, StepOutput};

use crate::{HttpError, HttpLm};

fn backend_error(lm: &HttpLm, e: HttpError) -> SmcError {
    SmcError::backend(
        format!(
            "{} next-token log-probabilities from {}",
            lm.options().protocol,
            lm.options().urls.join(", ")
        ),
        e,
    )
}

impl LanguageModel for HttpLm {
    type Session<'a> = HttpSession<'a>;

    fn vocab_size(&self) -> usize {
        self.options().vocab_size
    }

    fn start(&self, prompt: &[u32], num_particles: usize) -> smc_core::Result<HttpSession<'_>> {
        let v = self.options().vocab_size;
        if let Some((i, &tok)) = prompt.iter().enumerate().find(|&(_, &t)| t as usize >= v) {
            return Err(SmcError::InvalidConfig {
                field: "prompt token",
                expected: format!("< vocabulary size {v}"),
                found: format!("{tok} at position {i}"),
            });
        }
        Ok(HttpSession {
            lm: self,
            prompt: prompt.to_vec(),
            outputs: vec![Vec::new(); num_particles],
            servers: vec![None; num_particles],
            ahead: vec![VecDeque::new(); num_particles],
            ahead_now: 1,
        })
    }

    /// The rows a session returns for these tokens, fetched all at once (every context is
    /// known in advance), each with the forced token's own log p0 added when it is outside
    /// the top N (looked up in the whole vocabulary's answer): the base proposal's weights of
    /// given sequences then see p0 wherever it is positive.
    fn teacher_forced(
        &self,
        prompt: &[u32],
        sequences: &[Vec<u32>],
    ) -> smc_core::Result<Vec<StepOutput>> {
        let horizon = sequences.first().map_or(0, Vec::len);
        let v = self.options().vocab_size;
        if sequences.iter().any(|s| s.len() != horizon) {
            return Err(SmcError::InvalidConfig {
                field: "teacher-forced sequences",
                expected: format!("all of length {horizon}"),
                found: "sequences of different lengths".into(),
            });
        }
        if let Some(&tok) = sequences.iter().flatten().find(|&&t| t as usize >= v) {
            return Err(SmcError::InvalidConfig {
                field: "teacher-forced token",
                expected: format!("< vocabulary size {v}"),
                found: tok.to_string(),
            });
        }
        let jobs: Vec<(usize, usize)> = (0..horizon)
            .flat_map(|t| (0..sequences.len()).map(move |k| (t, k)))
            .collect();
        let context = |(t, k): (usize, usize)| [prompt, &sequences[k][..t]].concat();
        let rows = self
            .run_many(&vec![None; jobs.len()], |server, j| {
                let (t, k) = jobs[j];
                let ctx = context(jobs[j]);
                let mut row = self.ask(server, &ctx)?;
                let tok = sequences[k][t];
                if !row.iter().any(|e| e.0 == tok) {
                    row.push((tok, self.log_prob_on(server, &ctx, tok)?));
                }
                Ok(row)
            })
            .map_err(|e| backend_error(self, e))?;
        let mut tables = vec![LogTable::filled(sequences.len(), v, f64::NEG_INFINITY); horizon];
        for (&(t, k), (row, _)) in jobs.iter().zip(rows) {
            let out = tables[t].row_mut(k);
            for (tok, lp) in row {
                out[tok as usize] = lp;
            }
        }
        Ok(tables
            .into_iter()
            .map(|log_probs| StepOutput {
                log_probs,
                hidden: None,
            })
            .collect())
    }
}

/// A request seed for particle `p` from a step's seed (splitmix64), inside llama-server's
/// range (u32, without its "random" value u32::MAX).
fn request_seed(seed: u64, p: usize) -> u32 {
    let mut z = seed ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(u32::MAX)) as u32
}

/// K particles decoding over HTTP: each particle's output tokens and its lineage's server;
/// every step sends one request per distinct prefix (the server's prompt cache makes the
/// shared prompt and the lineage's own earlier tokens cheap).
#[derive(Debug)]
pub struct HttpSession<'a> {
    lm: &'a HttpLm,
    prompt: Vec<u32>,
    outputs: Vec<Vec<u32>>,
    /// The server that answered each particle's last request (none before the first).
    servers: Vec<Option<usize>>,
    /// Tokens the server drew ahead for each particle, with their log p0: fresh draws from p0
    /// given the particle's prefix, handed out one per step.
    ahead: Vec<VecDeque<(u32, f64)>>,
    /// Tokens per draw request now: 1 after a resampling that copied particles (copies drop
    /// what was drawn ahead, so long requests would be wasted), doubling at each step up to
    /// the option's `draw_ahead`.
    ahead_now: usize,
}

impl HttpSession<'_> {
    /// The particles' output tokens so far.
    pub fn outputs(&self) -> &[Vec<u32>] {
        &self.outputs
    }

    /// The index (in [`HttpLm::servers`]) of the server that answered each particle's last
    /// request; `None` before the first step.
    pub fn servers(&self) -> &[Option<usize>] {
        &self.servers
    }
}

impl DecodeSession for HttpSession<'_> {
    fn num_particles(&self) -> usize {
        self.outputs.len()
    }

    fn next_log_probs(&mut self) -> smc_core::Result<StepOutput> {
        let k = self.outputs.len();
        let v = self.lm.options().vocab_size;
        // One request per distinct prefix.
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let mut representatives = Vec::new();
        let which: Vec<usize> = self
            .outputs
            .iter()
            .enumerate()
            .map(|(p, out)| {
                *index.entry(out.as_slice()).or_insert_with(|| {
                    representatives.push(p);
                    representatives.len() - 1
                })
            })
            .collect();
        let contexts: Vec<Vec<u32>> = representatives
            .iter()
            .map(|&p| [self.prompt.as_slice(), &self.outputs[p]].concat())
            .collect();
        let preferred: Vec<Option<usize>> =
            representatives.iter().map(|&p| self.servers[p]).collect();
        let rows = self
            .lm
            .fetch_many(&contexts, &preferred)
            .map_err(|e| backend_error(self.lm, e))?;
        let mut table = LogTable::filled(k, v, f64::NEG_INFINITY);
        for (p, &u) in which.iter().enumerate() {
            let (entries, server) = &rows[u];
            self.servers[p] = Some(*server);
            let row = table.row_mut(p);
            for &(tok, lp) in entries {
                row[tok as usize] = lp;
            }
        }
        Ok(StepOutput {
            log_probs: table,
            hidden: None,
        })
    }

    fn push(&mut self, tokens: &[u32]) -> smc_core::Result<()> {
        let v = self.lm.options().vocab_size;
        if tokens.len() != self.outputs.len() {
            return Err(SmcError::Shape {
                component: "tokens pushed to the HTTP session".into(),
                step: self.outputs.first().map_or(0, Vec::len) + 1,
                expected: self.outputs.len(),
                found: tokens.len(),
            });
        }
        if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(SmcError::InvalidConfig {
                field: "pushed token",
                expected: format!("< vocabulary size {v}"),
                found: tok.to_string(),
            });
        }
        for ((out, &tok), ahead) in self.outputs.iter_mut().zip(tokens).zip(&mut self.ahead) {
            out.push(tok);
            // The token drawn ahead was used: the rest follow it. Another token (a reference,
            // a finished particle's end token) makes them draws for another prefix.
            if ahead.front().is_some_and(|&(t, _)| t == tok) {
                ahead.pop_front();
            } else {
                ahead.clear();
            }
        }
        Ok(())
    }

    fn reorder(&mut self, ancestors: &[usize]) -> smc_core::Result<()> {
        let k = self.outputs.len();
        if ancestors.len() != k {
            return Err(SmcError::Shape {
                component: "ancestors of the HTTP session".into(),
                step: self.outputs.first().map_or(0, Vec::len),
                expected: k,
                found: ancestors.len(),
            });
        }
        if let Some(&a) = ancestors.iter().find(|&&a| a >= k) {
            return Err(SmcError::InvalidConfig {
                field: "ancestor index",
                expected: format!("< number of particles {k}"),
                found: a.to_string(),
            });
        }
        self.outputs = ancestors.iter().map(|&a| self.outputs[a].clone()).collect();
        // Copies follow their ancestor's server, where its prefix is cached.
        self.servers = ancestors.iter().map(|&a| self.servers[a]).collect();
        // The tokens drawn ahead for a particle go to one copy only: two copies holding them
        // would continue identically instead of independently. (Resampling never looked at
        // them, so they are still fresh draws for that copy.)
        let mut taken = vec![false; k];
        if ancestors
            .iter()
            .any(|&a| std::mem::replace(&mut taken[a], true))
        {
            self.ahead_now = 1;
        }
        taken.iter_mut().for_each(|t| *t = false);
        let mut old = std::mem::take(&mut self.ahead);
        self.ahead = ancestors
            .iter()
            .map(|&a| {
                if std::mem::replace(&mut taken[a], true) {
                    VecDeque::new()
                } else {
                    std::mem::take(&mut old[a])
                }
            })
            .collect();
        Ok(())
    }

    /// The rows are p0 on the top N only: smc-core's base proposal renormalises them and
    /// weighs by their mass.
    fn log_probs_normalised(&self) -> bool {
        false
    }

    /// Unless [`HttpLmOptions::draw_ahead`](crate::HttpLmOptions::draw_ahead) is 0.
    fn draws_from_p0(&self) -> bool {
        self.lm.options().draw_ahead > 0
    }

    /// Particles with tokens drawn ahead take the next one; the others send one request each
    /// (never shared between particles with one prefix: their draws must be independent) for
    /// min(tokens per request now, `remaining`) tokens, to their lineage's server; a given
    /// token is looked up (top N, else the whole vocabulary). Tokens per request start at 1
    /// and double at each step up to `draw_ahead`, back to 1 after a resampling that copies
    /// particles.
    fn draw_from_p0(
        &mut self,
        next: &[NextToken],
        remaining: usize,
        seed: u64,
    ) -> smc_core::Result<Vec<Option<(u32, f64)>>> {
        let k = self.outputs.len();
        if next.len() != k {
            return Err(SmcError::Shape {
                component: "draws asked of the HTTP session".into(),
                step: self.outputs.first().map_or(0, Vec::len) + 1,
                expected: k,
                found: next.len(),
            });
        }
        let v = self.lm.options().vocab_size;
        let most = self.lm.options().draw_ahead;
        let count = self.ahead_now.min(most).min(remaining).max(1);
        self.ahead_now = (self.ahead_now * 2).min(most.max(1));
        let jobs: Vec<usize> = (0..k)
            .filter(|&p| match next[p] {
                NextToken::Draw => self.ahead[p].is_empty(),
                NextToken::Given(_) => true,
                NextToken::Skip => false,
            })
            .collect();
        if let Some(&tok) = next.iter().find_map(|n| match n {
            NextToken::Given(t) if *t as usize >= v => Some(t),
            _ => None,
        }) {
            return Err(SmcError::InvalidConfig {
                field: "given token",
                expected: format!("< vocabulary size {v}"),
                found: tok.to_string(),
            });
        }
        let preferred: Vec<Option<usize>> = jobs.iter().map(|&p| self.servers[p]).collect();
        let (lm, prompt, outputs) = (self.lm, &self.prompt, &self.outputs);
        let answers = lm
            .run_many(&preferred, |server, j| {
                let p = jobs[j];
                let context = [prompt.as_slice(), &outputs[p]].concat();
                match next[p] {
                    NextToken::Given(tok) => {
                        Ok(vec![(tok, lm.log_prob_on(server, &context, tok)?)])
                    }
                    _ => lm.draw_on(server, &context, count, request_seed(seed, p)),
                }
            })
            .map_err(|e| backend_error(lm, e))?;
        let mut given = vec![None; k];
        for (&p, (tokens, server)) in jobs.iter().zip(answers) {
            self.servers[p] = Some(server);
            match next[p] {
                NextToken::Given(_) => given[p] = tokens.first().copied(),
                _ => self.ahead[p] = tokens.into(),
            }
        }
        Ok((0..k)
            .map(|p| match next[p] {
                NextToken::Skip => None,
                NextToken::Given(_) => given[p],
                NextToken::Draw => self.ahead[p].front().copied(),
            })
            .collect())
    }
}
