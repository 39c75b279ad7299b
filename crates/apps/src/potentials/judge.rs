//! A zero-shot judge built from the language model itself: log phi(s) is the log-probability of
//! a label word after a template that quotes the prompt and continuation.

use lm_burn::BurnLm;
use smc_core::batch::TokenBuffer;
use smc_core::model::Potential;

/// log phi(s) = log p0(label | template(prompt + s)).
pub struct JudgePotential<'a> {
    lm: &'a BurnLm,
    question: String,
    label: Vec<u32>,
    name: String,
}

impl<'a> JudgePotential<'a> {
    /// A judge asking `question` about the text, whose answer should be " yes".
    pub fn new(lm: &'a BurnLm, question: &str) -> anyhow::Result<Self> {
        let label = lm.tokenizer()?.encode(" yes")?;
        Ok(Self {
            lm,
            question: question.to_string(),
            label,
            name: format!("judge:{question}"),
        })
    }

    fn template(&self, text: &str) -> String {
        format!(
            "Text: \"{text}\"\nQuestion: {} Answer yes or no.\nAnswer:",
            self.question
        )
    }
}

impl Potential for JudgePotential<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn log_phi(&self, prompt: &[u32], sequences: &TokenBuffer) -> smc_core::Result<Vec<f64>> {
        let tok = self.lm.tokenizer()?;
        let mut prefixes = Vec::with_capacity(sequences.num_particles());
        for s in sequences.iter() {
            let ids: Vec<u32> = prompt.iter().chain(s).copied().collect();
            let text = tok.decode(&ids)?;
            prefixes.push(tok.encode(&self.template(&text))?);
        }
        let labels = vec![self.label.clone(); prefixes.len()];
        Ok(self.lm.score(&prefixes, &labels)?)
    }
}
