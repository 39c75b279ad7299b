//! The one seeding scheme: every seed that a program derives from another comes from
//! [`derive`](fn@derive)`(master, label, index)`.
//!
//! # Why
//!
//! Seeds made by arithmetic on a master seed (`seed + 1000`, `seed + i`, `seed ^ 0xC7`) collide:
//! task i's second run (`seed + i + 1`) is task i+1's first, so two computations that should be
//! independent replay the same random numbers. [`derive`](fn@derive) instead hashes the master seed, a
//! label naming the purpose, and an index (run, exact sample, update, task) into a new 64-bit
//! seed; the driver RNG ([`crate::smc::rng_from_seed`]) then expands it.
//!
//! # Why streams do not overlap
//!
//! - For a fixed master seed and label, `index -> derive(master, label, index)` is a bijection
//!   of u64 (a composition of the SplitMix64 finaliser, which is a bijection, with
//!   `x + index * odd constant`), so distinct indices never share a seed.
//! - For a fixed label and index, `master -> derive(master, label, index)` is a bijection, so
//!   distinct master seeds never share a seed either.
//! - Distinct labels, or seeds with (master, index) both changed, collide only by chance:
//!   about 2^-64 per pair, as for independent random seeds.
//! - Two distinct seeds give Xoshiro256++ states drawn through SplitMix64 from different
//!   points: the probability that their streams of n draws overlap is about n^2 / 2^256.
//!
//! [`SmcConfig::seed`](crate::smc::SmcConfig::seed) is used as given: a single run is not
//! re-seeded, so its sample paths for a seed never change. Only callers that make many seeds
//! from one derive them here.
//!
//! # Stability
//!
//! The label is hashed with 64-bit FNV-1a over its UTF-8 bytes and mixed with the SplitMix64
//! finaliser (Steele, Lea and Flood 2014): fixed arithmetic on u64, the same on every platform
//! and Rust version (std's `DefaultHasher` is not: its output may change between releases).
//! A test pins values of [`derive`](fn@derive).
//!
//! # Labels
//!
//! Every label in use is a constant of [`label`], so that this page lists them all:
//!
//! | label | master | index | stream |
//! |---|---|---|---|
//! | [`label::BOUNDS_K`] | bounds seed | K | the master of the runs at K in `Sampler::bounds_over_k` |
//! | [`label::LOWER_SIS`], [`label::LOWER_SMC`] | bounds or evaluation seed | run r | lower-bound run r |
//! | [`label::UPPER`] | upper-bound seed | exact sample i | the conditional run around exact sample i |
//! | [`label::UPPER_SIS`], [`label::UPPER_SMC`] | evaluation seed | 0 | the upper-bound seed of each method |
//! | [`label::F_Q`] | evaluation seed | 0 | the draws from q for F_q |
//! | [`label::GIBBS_SWEEP`] | particle Gibbs seed | sweep i | sweep i's conditional SMC |
//! | [`label::GIBBS_PICK`] | particle Gibbs seed | sweep i | the draw of sweep i's next state |
//! | [`label::UPDATE`] | training seed | update i (1-based, counted from the start of the run) | update i's samples |
//! | [`label::SIXO_NEGATIVES`] | update seed | 0 | SIXO's negatives from p0 |
//! | [`label::CSMC_POSITIVES`] | update seed | 0 | CTL's conditional-SMC positives |
//! | [`label::CSMC_NEGATIVES`] | update seed | 0 | CTL's negatives from q beside them |
//! | [`label::CSMC_PICK`] | update seed | 0 | the particle Gibbs step's next reference |
//! | [`label::EXACT_REPLAY`] | update seed | 0 | the exact samples replayed as CTL's positives |
//! | [`label::CHAIN_START`] | training seed | 0, 1 | the draws from q that a chain's start is picked among (0), and the pick (1) |
//! | [`label::INFILLING_PAIR`] | training seed | update i | update i's exact pair (s*, c) |
//! | [`label::EVAL_PAIRS`] | evaluation seed | 0 | the evaluation's exact pairs (s*, c) |
//! | [`label::EVAL_TASK`] | evaluation seed | task i | the evaluation plan's master seed for task i |
//!
//! For the command-line programs (crate `apps`), from the seed the user gives:
//!
//! | label | index | stream |
//! |---|---|---|
//! | [`label::APP_TRAIN`] | seed number r of a reproduction (0 for one run) | the training master seed |
//! | [`label::APP_EVAL`] | r | the evaluation plan's master seed |
//! | [`label::APP_EXACT`] | r | the collection of exact samples |
//! | [`label::APP_TASK`] | r | the draw of a fixed task (e.g. an infilling pair) |
//! | [`label::APP_EXACT_CHAIN`] | r | the particle Gibbs chain that makes more exact samples |
//! | [`label::APP_REPLAY_POOL`] | 0 | a reproduction's pool of exact samples shared by its seeds |
//! | [`label::APP_HEAD_INIT`] | method index (r * methods + m in a reproduction) | a twist head's initial weights |
//! | [`label::APP_TWIST_NOISE`] | 0 | the perturbation of a demo's twist |
//! | [`label::APP_FIT`] | r * 2 + parameterisation (0 identity, 1 log-sigmoid) | the shuffles of a head's fit to exact samples |

/// The labels of every derived stream (see the module documentation for what each seeds).
pub mod label {
    /// The master seed of the bounds at one K (`Sampler::bounds_over_k`).
    pub const BOUNDS_K: &str = "smc-bounds/bounds-at-k";
    /// Lower-bound runs of SIS.
    pub const LOWER_SIS: &str = "smc-bounds/lower/sis";
    /// Lower-bound runs of SMC.
    pub const LOWER_SMC: &str = "smc-bounds/lower/smc";
    /// The conditional run around exact sample i.
    pub const UPPER: &str = "smc-bounds/upper";
    /// The upper-bound seed of SIS in an evaluation.
    pub const UPPER_SIS: &str = "smc-bounds/upper/sis";
    /// The upper-bound seed of conditional SMC in an evaluation.
    pub const UPPER_SMC: &str = "smc-bounds/upper/smc";
    /// The draws from q for F_q.
    pub const F_Q: &str = "smc-bounds/f-q";
    /// Sweep i of particle Gibbs.
    pub const GIBBS_SWEEP: &str = "smc-bounds/particle-gibbs/sweep";
    /// The draw of sweep i's next state.
    pub const GIBBS_PICK: &str = "smc-bounds/particle-gibbs/pick";
    /// Training update i.
    pub const UPDATE: &str = "twist-learn/update";
    /// SIXO's negatives within an update.
    pub const SIXO_NEGATIVES: &str = "twist-learn/sixo-negatives";
    /// CTL's conditional-SMC positives within an update.
    pub const CSMC_POSITIVES: &str = "twist-learn/csmc-positives";
    /// CTL's negatives from q within a conditional-SMC update.
    pub const CSMC_NEGATIVES: &str = "twist-learn/csmc-negatives";
    /// The next reference of a conditional-SMC update.
    pub const CSMC_PICK: &str = "twist-learn/csmc-pick";
    /// Which exact samples an update of CTL with replayed positives takes.
    pub const EXACT_REPLAY: &str = "twist-learn/exact-replay";
    /// The draws that pick a particle Gibbs chain's start.
    pub const CHAIN_START: &str = "twist-learn/chain-start";
    /// The exact pair (s*, c) of infilling update i.
    pub const INFILLING_PAIR: &str = "twist-learn/infilling-pair";
    /// The exact pairs of an infilling evaluation.
    pub const EVAL_PAIRS: &str = "twist-learn/eval-pairs";
    /// The evaluation plan's master seed for infilling task i.
    pub const EVAL_TASK: &str = "twist-learn/eval-task";
    /// A program's training master seed.
    pub const APP_TRAIN: &str = "apps/train";
    /// A program's evaluation master seed.
    pub const APP_EVAL: &str = "apps/eval";
    /// A program's collection of exact samples.
    pub const APP_EXACT: &str = "apps/exact";
    /// A program's draw of a fixed task.
    pub const APP_TASK: &str = "apps/task";
    /// A program's particle Gibbs chain of exact samples.
    pub const APP_EXACT_CHAIN: &str = "apps/exact-chain";
    /// A reproduction's pool of exact samples for CTL to replay, shared by its seeds.
    pub const APP_REPLAY_POOL: &str = "apps/replay-pool";
    /// A twist head's initial weights.
    pub const APP_HEAD_INIT: &str = "apps/head-init";
    /// The perturbation of a demo's twist.
    pub const APP_TWIST_NOISE: &str = "apps/twist-noise";
    /// The shuffles of a head's maximum-likelihood fit to exact samples.
    pub const APP_FIT: &str = "apps/fit";
}

/// The SplitMix64 finaliser: a bijection of u64 with full avalanche.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a of a label's UTF-8 bytes (stable: fixed constants, no platform dependence).
pub const fn hash_label(label: &str) -> u64 {
    let bytes = label.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// The golden-ratio increment of SplitMix64 (odd, so `index * GAMMA` is a bijection).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The seed of stream `index` of purpose `label` under `master` (see the module documentation
/// for the guarantees and the labels in use).
pub const fn derive(master: u64, label: &str, index: u64) -> u64 {
    let keyed = mix64(master ^ mix64(hash_label(label)));
    mix64(keyed.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// `n` seeds of one purpose: `derive(master, label, 0..n)`.
pub fn derive_many(master: u64, label: &str, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| derive(master, label, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn derive_is_stable_across_platforms_and_versions() {
        // Pinned values: a change here changes every derived stream of every program.
        assert_eq!(hash_label(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_label("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix64(0), 0);
        assert_eq!(derive(0, label::UPDATE, 0), PINNED[0]);
        assert_eq!(derive(42, label::UPDATE, 7), PINNED[1]);
        assert_eq!(derive(u64::MAX, label::F_Q, u64::MAX), PINNED[2]);
    }

    /// Computed independently (a Python transcription of the definition).
    const PINNED: [u64; 3] = [
        0x70c1_3e56_9ef4_1f3f,
        0x2096_a057_0c9b_71dd,
        0xa707_fa19_3bfb_01ee,
    ];

    #[test]
    fn distinct_labels_indices_and_masters_give_distinct_seeds() {
        let labels = [
            label::BOUNDS_K,
            label::LOWER_SIS,
            label::LOWER_SMC,
            label::UPPER,
            label::UPPER_SIS,
            label::UPPER_SMC,
            label::F_Q,
            label::GIBBS_SWEEP,
            label::GIBBS_PICK,
            label::UPDATE,
            label::SIXO_NEGATIVES,
            label::CSMC_POSITIVES,
            label::CSMC_NEGATIVES,
            label::CSMC_PICK,
            label::EXACT_REPLAY,
            label::CHAIN_START,
            label::INFILLING_PAIR,
            label::EVAL_PAIRS,
            label::EVAL_TASK,
            label::APP_TRAIN,
            label::APP_EVAL,
            label::APP_EXACT,
            label::APP_TASK,
            label::APP_EXACT_CHAIN,
            label::APP_REPLAY_POOL,
            label::APP_HEAD_INIT,
            label::APP_TWIST_NOISE,
            label::APP_FIT,
        ];
        assert_eq!(
            labels.iter().collect::<HashSet<_>>().len(),
            labels.len(),
            "labels are unique"
        );
        let mut seen = HashSet::new();
        // Neighbouring masters and indices: exactly the pattern `seed + i` made collide.
        for master in 0..20u64 {
            for l in labels {
                for index in 0..50u64 {
                    assert!(
                        seen.insert(derive(master, l, index)),
                        "collision at ({master}, {l}, {index})"
                    );
                }
            }
        }
        // A derived seed is not the master nor a small offset of it.
        for master in 0..100u64 {
            let d = derive(master, label::UPDATE, 1);
            assert!(d.abs_diff(master) > 1_000_000);
        }
        assert_eq!(
            derive_many(9, label::F_Q, 3),
            vec![
                derive(9, label::F_Q, 0),
                derive(9, label::F_Q, 1),
                derive(9, label::F_Q, 2)
            ]
        );
    }

    #[test]
    fn derived_seeds_look_uniform_bit_by_bit() {
        // Each bit of derive(m, label, i) over 4096 indices is set about half the time
        // (binomial sd 32; bound 4.5 sd).
        let seeds = derive_many(3, label::LOWER_SMC, 4096);
        for bit in 0..64 {
            let ones = seeds.iter().filter(|&&s| s >> bit & 1 == 1).count() as f64;
            assert!((ones - 2048.0).abs() < 4.5 * 32.0, "bit {bit}: {ones}");
        }
    }
}
