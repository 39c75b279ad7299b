//! Small enumerable problems shared by the integration tests.
#![allow(dead_code)]

use smc_core::prelude::*;

/// A problem: a tabular LM, a prompt, a horizon and a potential.
pub struct Problem {
    pub name: &'static str,
    pub lm: TabularLm,
    pub prompt: Vec<u32>,
    pub horizon: usize,
    pub potential: Box<dyn Potential>,
}

impl Problem {
    pub fn exact(&self) -> Enumeration {
        Enumeration::new(
            &self.lm,
            &self.prompt,
            self.horizon,
            self.potential.as_ref(),
        )
        .unwrap()
    }
}

/// A smooth potential: log phi = 0.9 * #(token 0) - 1.3 * [last token = 1].
pub fn smooth_potential() -> Box<dyn Potential> {
    Box::new(FnPotential::new("smooth", |_: &[u32], s: &[u32]| {
        0.9 * s.iter().filter(|&&x| x == 0).count() as f64
            - 1.3 * f64::from(u8::from(s.last() == Some(&1)))
    }))
}

/// A hard constraint: the output contains two consecutive 2s (with the 1e-16 floor).
pub fn indicator_potential() -> Box<dyn Potential> {
    Box::new(FnPotential::new("contains 2 2", |_: &[u32], s: &[u32]| {
        log_indicator(s.windows(2).any(|w| w == [2, 2]))
    }))
}

/// A classifier-like potential with phi in (0, 1]: p(class | s) = sigmoid(sum of scores).
pub fn classifier_potential() -> Box<dyn Potential> {
    Box::new(FnPotential::new("classifier", |_: &[u32], s: &[u32]| {
        let score: f64 = s
            .iter()
            .map(|&x| [1.2, -0.8, 0.3, -1.5][x as usize % 4])
            .sum();
        smc_core::logspace::log_sigmoid(score - 1.0)
    }))
}

/// The problems the exactness tests sweep over.
pub fn problems() -> Vec<Problem> {
    vec![
        Problem {
            name: "V3 order1 T4 smooth",
            lm: TabularLm::random(3, 1, 1.0, 11),
            prompt: vec![],
            horizon: 4,
            potential: smooth_potential(),
        },
        Problem {
            name: "V4 order2 T3 indicator",
            lm: TabularLm::random(4, 2, 1.5, 12),
            prompt: vec![1, 3],
            horizon: 3,
            potential: indicator_potential(),
        },
        Problem {
            name: "V3 order2 T5 classifier",
            lm: TabularLm::random(3, 2, 2.0, 13),
            prompt: vec![2],
            horizon: 5,
            potential: classifier_potential(),
        },
        Problem {
            name: "V2 order3 T1 smooth",
            lm: TabularLm::random(2, 3, 1.0, 14),
            prompt: vec![0, 1, 1, 0],
            horizon: 1,
            potential: smooth_potential(),
        },
    ]
}
