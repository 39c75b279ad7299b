//! [`HttpLm`] as smc-core's [`LanguageModel`]: a session keeps each particle's output tokens
//! and the server its lineage lives on, and asks for one row per distinct prefix at each step.

use std::collections::HashMap;

use smc_core::SmcError;
use smc_core::batch::LogTable;
use smc_core::model::{DecodeSession, LanguageModel, StepOutput};

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
        })
    }
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
        for (out, &tok) in self.outputs.iter_mut().zip(tokens) {
            out.push(tok);
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
        Ok(())
    }

    /// The rows are p0 on the top N only: smc-core's base proposal renormalises them and
    /// weighs by their mass.
    fn log_probs_normalised(&self) -> bool {
        false
    }
}
