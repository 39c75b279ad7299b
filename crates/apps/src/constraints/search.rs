//! "The output contains a match" (a keyword, a regex search) as a deterministic automaton over
//! token ids, so that masks know the remaining steps: with r tokens left, a particle that has
//! not matched yet may only take tokens after which a match is still reachable within r.
//! llguidance's masks cannot count steps, so under them nearly every particle of a short run
//! would reach the end without a match and die; this automaton makes the keyword appear in
//! time.
//!
//! The automaton is a byte DFA (regex-automata) of `.* (?:PATTERN) .*` over raw bytes, lifted
//! to tokens by running each token's bytes through it; states reachable from the start by
//! tokens become the token automaton's states. Zero-width assertions (`\b`, `^`, ...) are
//! dropped first, which only enlarges the language (the caller keeps the exact potential then).

use std::collections::HashMap;

use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, MatchKind};
use smc_core::constraint::DfaConstraint;
use smc_grammar::{TokenBytes, TokenPiece};

use super::grammar::without_assertions;

/// Most token-automaton states built (each costs a pass over the vocabulary): larger
/// patterns fall back to llguidance's step-blind masks.
const MAX_STATES: usize = 256;

/// The token automaton of "contains a match of `pattern`" (assertions dropped), or `None`
/// when the pattern's DFA is too large.
pub fn search_automaton(
    name: &str,
    pattern: &str,
    tokens: &TokenBytes,
) -> anyhow::Result<Option<DfaConstraint>> {
    let full = format!("(?s-u:.)*(?:{})(?s-u:.)*", without_assertions(pattern));
    let dfa = match dense::Builder::new()
        .syntax(syntax::Config::new().utf8(false))
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::All)
                .dfa_size_limit(Some(8 << 20))
                .determinize_size_limit(Some(8 << 20)),
        )
        .build(&full)
    {
        Ok(dfa) => dfa,
        Err(_) => return Ok(None),
    };
    let start = dfa.start_state(&start::Config::new().anchored(Anchored::Yes))?;
    let vocab = tokens.len();
    let bytes: Vec<Option<&[u8]>> = (0..vocab as u32)
        .map(|id| match tokens.piece(id) {
            Some(TokenPiece::Bytes(b)) => Some(b.as_slice()),
            // Special tokens count as their text, as the complete-output check decodes them.
            Some(TokenPiece::Special(s)) => Some(s.as_bytes()),
            _ => None,
        })
        .collect();
    let mut index: HashMap<StateID, u32> = HashMap::from([(start, 0)]);
    let mut states = vec![start];
    let mut transitions: Vec<Option<u32>> = Vec::new();
    let mut next = 0;
    while next < states.len() {
        let q = states[next];
        next += 1;
        for b in &bytes {
            let Some(b) = b else {
                transitions.push(None);
                continue;
            };
            let s = b.iter().fold(q, |s, &byte| dfa.next_state(s, byte));
            if dfa.is_dead_state(s) {
                transitions.push(None);
                continue;
            }
            let id = *index.entry(s).or_insert_with(|| {
                states.push(s);
                (states.len() - 1) as u32
            });
            transitions.push(Some(id));
        }
        if states.len() > MAX_STATES {
            return Ok(None);
        }
    }
    let accepting = states
        .iter()
        .map(|&s| dfa.is_match_state(dfa.next_eoi_state(s)))
        .collect();
    Ok(Some(DfaConstraint::new(
        name,
        vocab,
        0,
        transitions,
        accepting,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smc_core::constraint::{Constraint, TokenMask};

    /// Tokens "a", "b", "ab", "x", "<e>" (special, the end token).
    fn vocab() -> TokenBytes {
        let mut pieces: Vec<TokenPiece> = ["a", "b", "ab", "x"]
            .iter()
            .map(|t| TokenPiece::Bytes(t.as_bytes().to_vec()))
            .collect();
        pieces.push(TokenPiece::Special("<e>".into()));
        TokenBytes::new(pieces, vec![4]).unwrap()
    }

    #[test]
    fn masks_force_a_match_within_the_remaining_steps() {
        let c = search_automaton("search:ab", "ab", &vocab())
            .unwrap()
            .unwrap();
        assert!(c.accepts_sequence(&[3, 0, 1]));
        assert!(c.accepts_sequence(&[2, 3]));
        assert!(!c.accepts_sequence(&[1, 0, 3]));
        // Exactly 2 tokens: from the start, "ab" then anything, or "a" then "b" / "ab", or
        // anything then "ab": every text token is viable.
        let mut s = c.start(&[], 1, 2, 5).unwrap();
        let mut mask = TokenMask::none(5);
        s.allowed(0, &mut mask).unwrap();
        assert_eq!(mask.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        // After "x", one token left: only "ab".
        s.push(&[3]).unwrap();
        s.allowed(0, &mut mask).unwrap();
        assert_eq!(mask.iter().collect::<Vec<_>>(), vec![2]);
        // Word boundaries are dropped: a superset.
        let c = search_automaton("search", r"\bab\b", &vocab())
            .unwrap()
            .unwrap();
        assert!(c.accepts_sequence(&[3, 2]));
    }
}
