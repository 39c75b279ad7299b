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

/// A constrained problem: the target is p0(s | prompt) phi(s) 1[s accepted] / Z.
pub struct ConstrainedProblem {
    pub name: &'static str,
    pub lm: TabularLm,
    pub prompt: Vec<u32>,
    pub horizon: usize,
    pub constraint: Box<dyn Constraint>,
    /// phi (None: phi = 1, the target is p0 restricted to the constraint).
    pub potential: Option<Box<dyn Potential>>,
}

impl ConstrainedProblem {
    /// phi alone (without the indicator), as the drivers take it.
    pub fn phi(&self) -> &dyn Potential {
        self.potential.as_deref().unwrap_or(&UnitPotential)
    }

    /// Enumeration of the constrained target phi × 1[accepted]: Z = E_{p0}[phi 1[accepted]].
    pub fn exact(&self) -> Enumeration {
        let target = ConstrainedPotential::new(
            self.constraint.as_ref(),
            self.potential.as_deref(),
            self.lm.vocab(),
        );
        Enumeration::new(&self.lm, &self.prompt, self.horizon, &target).unwrap()
    }

    /// Enumeration of phi without the constraint (its psi* is a learned-looking twist with no
    /// zeros: the constraint's zeros must come from the constraint).
    pub fn exact_unconstrained(&self) -> Enumeration {
        Enumeration::new(&self.lm, &self.prompt, self.horizon, self.phi()).unwrap()
    }
}

/// V = 3: an even number of 0s and never two 1s in a row. State 2 * parity + [last was 1].
pub fn parity_dfa() -> DfaConstraint {
    let mut transitions = vec![None; 4 * 3];
    for q in 0..4u32 {
        let (parity, last_one) = (q / 2, q % 2);
        transitions[q as usize * 3] = Some((parity ^ 1) * 2);
        transitions[q as usize * 3 + 1] = (last_one == 0).then_some(parity * 2 + 1);
        transitions[q as usize * 3 + 2] = Some(parity * 2);
    }
    DfaConstraint::new(
        "even 0s, no 1 1",
        3,
        0,
        transitions,
        vec![true, true, false, false],
    )
    .unwrap()
}

/// At least `n` tokens equal to 2 (count capped at n), vocabulary `vocab`.
pub fn count_twos_dfa(vocab: usize, n: u32) -> DfaConstraint {
    let states = n as usize + 1;
    let mut transitions = vec![None; states * vocab];
    for q in 0..states as u32 {
        for v in 0..vocab as u32 {
            let next = if v == 2 { (q + 1).min(n) } else { q };
            transitions[q as usize * vocab + v as usize] = Some(next);
        }
    }
    let accepting = (0..states).map(|q| q == n as usize).collect();
    DfaConstraint::new(format!("at least {n} 2s"), vocab, 0, transitions, accepting).unwrap()
}

/// A DFA whose masks are a superset of the viable tokens: every token with a transition is
/// allowed, whatever the remaining length (the final acceptance removes the rest). Tests that
/// a loose mask keeps the weights exact.
pub struct LooseDfa(pub DfaConstraint);

impl PrefixAutomaton for LooseDfa {
    type State = smc_core::constraint::DfaState;

    fn name(&self) -> &str {
        "loose DFA"
    }
    fn initial(
        &self,
        prompt: &[u32],
        horizon: usize,
        vocab: usize,
    ) -> smc_core::Result<Self::State> {
        self.0.initial(prompt, horizon, vocab)
    }
    fn allowed(
        &self,
        state: &Self::State,
        _remaining: usize,
        mask: &mut TokenMask,
    ) -> smc_core::Result<()> {
        mask.fill(false);
        for v in 0..mask.len() as u32 {
            if self.0.next(state.state(), v).is_some() {
                mask.insert(v);
            }
        }
        Ok(())
    }
    fn advance(&self, state: &Self::State, token: u32) -> smc_core::Result<Option<Self::State>> {
        self.0.advance(state, token)
    }
    fn accepts(&self, state: &Self::State) -> bool {
        PrefixAutomaton::accepts(&self.0, state)
    }
}

/// The constrained problems the constraint tests sweep over.
pub fn constrained_problems() -> Vec<ConstrainedProblem> {
    vec![
        ConstrainedProblem {
            name: "V3 order1 T4 parity DFA x smooth",
            lm: TabularLm::random(3, 1, 1.0, 21),
            prompt: vec![],
            horizon: 4,
            constraint: Box::new(parity_dfa()),
            potential: Some(smooth_potential()),
        },
        ConstrainedProblem {
            name: "V3 order2 T4 at least two 2s",
            lm: TabularLm::random(3, 2, 1.5, 22),
            prompt: vec![1],
            horizon: 4,
            constraint: Box::new(count_twos_dfa(3, 2)),
            potential: None,
        },
        ConstrainedProblem {
            name: "V4 order2 T3 no token 1 x classifier",
            lm: TabularLm::random(4, 2, 1.0, 23),
            prompt: vec![0, 3],
            horizon: 3,
            constraint: Box::new(TokenSetConstraint::forbidding("no token 1", 4, [1]).unwrap()),
            potential: Some(classifier_potential()),
        },
        ConstrainedProblem {
            name: "V3 order1 T4 loose DFA at least two 2s x smooth",
            lm: TabularLm::random(3, 1, 1.2, 24),
            prompt: vec![],
            horizon: 4,
            constraint: Box::new(LooseDfa(count_twos_dfa(3, 2))),
            potential: Some(smooth_potential()),
        },
    ]
}
