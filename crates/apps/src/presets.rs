//! Task presets that mirror the paper's experiments (spec §6): prompt, T, potential (with its
//! beta or threshold), how exact target samples are drawn, and the methods compared. The paper
//! ran them on TinyStories-33M and gpt2-medium with K = 100-1000 and 2^11 updates; here they run
//! on the default model, and `tsmc reproduce` sizes K, T and the number of updates for a CPU
//! (docs/reproduction.md).

use anyhow::{Result, bail};

/// How exact target samples are drawn for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExactMethod {
    /// Rejection sampling from p0 (hard constraints, classifier thresholds).
    Rejection,
    /// Class rejection: keep s ~ p0 when a class drawn from p(c | s) is the target (beta = 1).
    ClassRejection,
    /// Joint ancestral draws of T + m tokens (infilling).
    JointAncestral,
}

/// One task of the paper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// What the task samples.
    pub summary: &'static str,
    /// The prompt s0.
    pub prompt: &'static str,
    /// Output tokens T in the paper.
    pub tokens: usize,
    /// Conditioning tokens m (infilling only).
    pub cond_tokens: Option<usize>,
    /// The potential as `tsmc sample --potential` reads it (empty for infilling, whose
    /// potential is p0(c | s0, s) for each drawn c).
    pub potential: &'static str,
    /// How exact samples are drawn.
    pub exact: ExactMethod,
    /// Twist-learning methods the paper compares on this task.
    pub methods: &'static [&'static str],
    /// The paper's base model for the task.
    pub paper_model: &'static str,
}

const STORY: &str = "Once upon a time, there was a";
const ALL_METHODS: &[&str] = &["ctl", "rl", "sixo", "fudge", "dpg"];

/// The presets.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "toxicity-threshold",
        summary: "stories the toxicity classifier flags (indicator of p(toxic) > 0.5)",
        prompt: STORY,
        tokens: 10,
        cond_tokens: None,
        potential: "toxicity:threshold=0.5",
        exact: ExactMethod::Rejection,
        methods: ALL_METHODS,
        paper_model: "TinyStories-33M",
    },
    Preset {
        name: "toxicity",
        summary: "stories weighted by p(toxic | s) (beta = 1)",
        prompt: STORY,
        tokens: 20,
        cond_tokens: None,
        potential: "toxicity:beta=1",
        exact: ExactMethod::ClassRejection,
        methods: ALL_METHODS,
        paper_model: "TinyStories-33M",
    },
    Preset {
        name: "sentiment",
        summary: "reviews weighted by p(negative | s) (beta = 1; the paper: p(1 star | s))",
        prompt: "I bought this",
        tokens: 10,
        cond_tokens: None,
        potential: "sentiment:negative:beta=1",
        exact: ExactMethod::ClassRejection,
        methods: ALL_METHODS,
        paper_model: "gpt2-medium",
    },
    Preset {
        name: "infilling",
        summary: "T tokens that lead into m given conditioning tokens (conditional twists)",
        prompt: STORY,
        tokens: 15,
        cond_tokens: Some(10),
        potential: "",
        exact: ExactMethod::JointAncestral,
        methods: &["ctl"],
        paper_model: "TinyStories-33M",
    },
    Preset {
        name: "infilling-short",
        summary: "two tokens that lead into one given token",
        prompt: STORY,
        tokens: 2,
        cond_tokens: Some(1),
        potential: "",
        exact: ExactMethod::JointAncestral,
        methods: &["ctl"],
        paper_model: "TinyStories-33M",
    },
];

/// The preset called `name`, or an error listing the names.
pub fn preset(name: &str) -> Result<&'static Preset> {
    match PRESETS.iter().find(|p| p.name == name) {
        Some(p) => Ok(p),
        None => bail!(
            "unknown task {name:?}: expected one of {}",
            PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A table of the presets for `tsmc tasks`.
pub fn describe() -> String {
    let mut out = String::from(
        "task                T   m   potential                  exact samples    methods           paper model\n",
    );
    for p in PRESETS {
        out.push_str(&format!(
            "{:<19} {:<3} {:<3} {:<26} {:<16} {:<17} {}\n    {}; prompt {:?}\n",
            p.name,
            p.tokens,
            p.cond_tokens.map_or("-".to_string(), |m| m.to_string()),
            if p.potential.is_empty() {
                "p0(c | s0, s)"
            } else {
                p.potential
            },
            match p.exact {
                ExactMethod::Rejection => "rejection",
                ExactMethod::ClassRejection => "class rejection",
                ExactMethod::JointAncestral => "joint ancestral",
            },
            p.methods.join(","),
            p.paper_model,
            p.summary,
            p.prompt,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_found_by_name_and_unknown_names_are_errors() {
        for p in PRESETS {
            assert_eq!(preset(p.name).unwrap().name, p.name);
            assert_eq!(p.potential.is_empty(), p.cond_tokens.is_some());
        }
        let err = preset("toxic").unwrap_err().to_string();
        assert!(err.contains("toxicity-threshold"), "{err}");
        assert!(describe().lines().count() > PRESETS.len());
    }
}
