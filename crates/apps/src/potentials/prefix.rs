//! Hard potentials checked at every token: `keyword:`, `regex:`, `json-schema:` and `lark:`
//! potentials become prefix constraints (exact twists), so SMC only proposes continuations
//! that can still satisfy them, instead of discarding nearly every particle at the end.

use anyhow::Result;
use lm_burn::BurnLm;
use smc_core::constraint::Constraint;
use smc_core::model::{Potential, UnitPotential};

use super::PotentialSpec;
use crate::constraints::grammar::without_assertions;
use crate::constraints::{AllOf, ConstraintSpec, GrammarConstraints};

/// How a potential can be checked prefix by prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum PrefixCheck {
    /// Not a hard constraint on the text (classifiers, infilling, judge, none).
    None,
    /// A constraint with exactly the potential's language: phi becomes 1.
    Exact(ConstraintSpec),
    /// A constraint whose language contains the potential's (a regex with word boundaries):
    /// its masks prune, and phi stays to make the final check exact.
    Superset(ConstraintSpec),
}

impl PotentialSpec {
    /// How this potential is checked at every token.
    pub fn prefix_check(&self) -> PrefixCheck {
        match self {
            PotentialSpec::Keyword(w) => PrefixCheck::Exact(ConstraintSpec::Keyword(w.clone())),
            PotentialSpec::Regex(p) if without_assertions(p) == *p => {
                PrefixCheck::Exact(ConstraintSpec::Search(p.clone()))
            }
            PotentialSpec::Regex(p) => PrefixCheck::Superset(ConstraintSpec::Search(p.clone())),
            PotentialSpec::Grammar(c) => PrefixCheck::Exact(c.clone()),
            _ => PrefixCheck::None,
        }
    }
}

/// What a run targets: phi, and the constraint that every prefix must satisfy.
pub struct Targets<'a> {
    /// The potential (phi = 1 where a constraint took over exactly).
    pub potential: Box<dyn Potential + 'a>,
    /// The intersection of the given constraint and the potential's prefix check.
    pub constraint: Option<Box<dyn Constraint>>,
    /// What the user should know about how the potential is checked.
    pub note: Option<String>,
}

impl<'a> Targets<'a> {
    /// `potential` with its prefix check, intersected with `constraint`, for `lm`.
    pub fn build(
        potential: &PotentialSpec,
        constraint: Option<&ConstraintSpec>,
        lm: &'a BurnLm,
    ) -> Result<Self> {
        let grammars = GrammarConstraints::new(lm);
        let mut parts: Vec<Box<dyn Constraint>> = Vec::new();
        if let Some(c) = constraint {
            parts.push(c.build(lm, &grammars)?);
        }
        let (phi, note): (Box<dyn Potential + 'a>, _) = match potential.prefix_check() {
            PrefixCheck::None => (potential.build(lm)?, None),
            PrefixCheck::Exact(c) => {
                parts.push(c.build(lm, &grammars)?);
                (
                    Box::new(UnitPotential),
                    Some(format!("potential {potential} is checked at every token")),
                )
            }
            PrefixCheck::Superset(c) => match c.build(lm, &grammars) {
                Ok(built) => {
                    parts.push(built);
                    (
                        potential.build(lm)?,
                        Some(format!(
                            "potential {potential}: tokens are pruned by {c} without its word \
                             boundaries and anchors, and complete outputs are checked exactly"
                        )),
                    )
                }
                Err(e) => (
                    potential.build(lm)?,
                    Some(format!(
                        "potential {potential} is checked on complete outputs only ({e:#})"
                    )),
                ),
            },
        };
        let constraint = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Box::new(AllOf::new(parts)) as Box<dyn Constraint>),
        };
        Ok(Self {
            potential: phi,
            constraint,
            note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_potentials_have_prefix_checks() {
        let check = |s: &str| s.parse::<PotentialSpec>().unwrap().prefix_check();
        assert_eq!(
            check("keyword:Dragon"),
            PrefixCheck::Exact(ConstraintSpec::Keyword("Dragon".into()))
        );
        assert_eq!(
            check("regex:dragon|king"),
            PrefixCheck::Exact(ConstraintSpec::Search("dragon|king".into()))
        );
        assert!(matches!(
            check(r"regex:(?i)\b(dragon|king)\b"),
            PrefixCheck::Superset(_)
        ));
        assert_eq!(check("toxicity:beta=1"), PrefixCheck::None);
        assert_eq!(check("none"), PrefixCheck::None);
    }
}
