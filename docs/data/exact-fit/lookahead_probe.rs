//! Probe: what a lookahead twist psi_t(s_<t, v) = p0(c | prompt, s_<t, v)^alpha_t (the base
//! model run on each candidate v followed by the continuation c) buys on infilling's
//! KL(sigma||q), over exact joint pairs (s*, c). Candidates: each step's top N tokens under p0
//! and s*_t; outside them psi is the p0-weighted mean over them (in log space).
use burn::tensor::Device;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::model::LanguageModel;
use smc_core::smc::rng_from_seed;

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(40, |s| s.parse().unwrap());
    let top_n: usize = args.next().map_or(32, |s| s.parse().unwrap());
    let (horizon, m) = (10usize, 5usize);
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let v = lm.dims().vocab;
    let mut rng = rng_from_seed(4242);
    let pairs = joint_ancestral(&lm, &prompt, horizon, m, n, &mut rng)?;
    let t0 = std::time::Instant::now();
    // Variants: (name, alpha_t for t = 1..=T).
    let ramp = |k: usize, a: f64| -> Vec<f64> {
        (1..=horizon)
            .map(|t| if t == horizon { 1.0 } else if t + k >= horizon { a } else { 0.0 })
            .collect()
    };
    let flat = |a: f64| -> Vec<f64> {
        (1..=horizon).map(|t| if t == horizon { 1.0 } else { a }).collect()
    };
    let variants: Vec<(&str, Vec<f64>)> = vec![
        ("last step only (alpha_T = 1)", flat(0.0)),
        ("alpha 0.1 before T", flat(0.1)),
        ("alpha 0.25 before T", flat(0.25)),
        ("alpha 0.5 before T", flat(0.5)),
        ("alpha 0.5 at T-1 only", ramp(1, 0.5)),
        ("alpha 0.25 at T-3..T-1", ramp(3, 0.25)),
    ];
    // gain[variant][pair] = log p0(s*) - log q(s*); per step sums kept for the last step.
    let mut gains = vec![vec![0.0f64; pairs.len()]; variants.len()];
    let mut last = vec![vec![0.0f64; pairs.len()]; variants.len()];
    let mut outside = 0usize;
    for (pi, p) in pairs.iter().enumerate() {
        let s = &p.tokens;
        let c = p.conditioning.as_ref().unwrap();
        let rows = lm.teacher_forced(&prompt, std::slice::from_ref(s))?;
        for t in 1..=horizon {
            let lp = rows[t - 1].log_probs.row(0).to_vec();
            let mut idx: Vec<usize> = (0..v).collect();
            idx.select_nth_unstable_by(top_n, |a, b| lp[*b].partial_cmp(&lp[*a]).unwrap());
            let mut set: Vec<u32> = idx[..top_n].iter().map(|&u| u as u32).collect();
            let st = s[t - 1];
            if !set.contains(&st) {
                set.push(st);
                outside += 1;
            }
            let seqs: Vec<Vec<u32>> = set
                .iter()
                .map(|&u| {
                    let mut q = s[..t - 1].to_vec();
                    q.push(u);
                    q.extend(c);
                    q
                })
                .collect();
            let out = lm.teacher_forced(&prompt, &seqs)?;
            let f: Vec<f64> = (0..set.len())
                .map(|r| (0..m).map(|j| out[t + j].log_probs.row(r)[c[j] as usize]).sum())
                .collect();
            let mass: f64 = set.iter().map(|&u| lp[u as usize].exp()).sum();
            let fbar: f64 = set
                .iter()
                .zip(&f)
                .map(|(&u, fu)| lp[u as usize].exp() * fu)
                .sum::<f64>()
                / mass;
            let k = set.iter().position(|&u| u == st).unwrap();
            for (vi, (_, alphas)) in variants.iter().enumerate() {
                let a = alphas[t - 1];
                let mut terms: Vec<f64> = set
                    .iter()
                    .zip(&f)
                    .map(|(&u, fu)| lp[u as usize] + a * (fu - fbar))
                    .collect();
                terms.push((1.0 - mass).max(1e-300).ln());
                let g = -(a * (f[k] - fbar) - lse(&terms));
                gains[vi][pi] += g;
                if t == horizon {
                    last[vi][pi] = g;
                }
            }
        }
        if pi % 10 == 9 {
            eprintln!("{} pairs in {:.0}s", pi + 1, t0.elapsed().as_secs_f64());
        }
    }
    eprintln!(
        "{} pairs, top {top_n}, s*_t outside the top in {outside} of {} steps, {:.0}s",
        pairs.len(),
        pairs.len() * horizon,
        t0.elapsed().as_secs_f64()
    );
    let ms = |g: &[f64]| {
        let k = g.len() as f64;
        let mean = g.iter().sum::<f64>() / k;
        let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
        (mean, sd / k.sqrt())
    };
    for (vi, (name, _)) in variants.iter().enumerate() {
        let (gm, gs) = ms(&gains[vi]);
        let (lm_, ls) = ms(&last[vi]);
        println!(
            "{name}: log p0(s*) - log q(s*) mean {gm:.3} (se {gs:.3}); last step alone {lm_:.3} (se {ls:.3})"
        );
    }
    Ok(())
}
