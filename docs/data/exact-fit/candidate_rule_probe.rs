//! Probe: which candidate set for the exact final twist gives the most KL(sigma||q) per
//! candidate scored? Fixed top N against the smallest set holding p0 mass p (capped).
//! Statistic as in lookahead_probe2.rs: log p0(s*_T) - log q_T(s*_T) over exact pairs.
use burn::tensor::Device;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::model::LanguageModel;
use smc_core::smc::rng_from_seed;

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(150, |s| s.parse().unwrap());
    let (horizon, m, big) = (10usize, 5usize, 64usize);
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let v = lm.dims().vocab;
    let mut rng = rng_from_seed(777);
    let pairs = joint_ancestral(&lm, &prompt, horizon, m, n, &mut rng)?;
    let t0 = std::time::Instant::now();
    // Rules: ("top", N) or ("mass", p x 100, cap).
    let mut rules: Vec<(String, Box<dyn Fn(&[f64]) -> usize>)> = Vec::new();
    for nn in [4usize, 8, 16, 32, 64] {
        rules.push((format!("top {nn}"), Box::new(move |_: &[f64]| nn)));
    }
    for (p, cap) in [
        (0.5, 16usize),
        (0.7, 16),
        (0.8, 16),
        (0.9, 16),
        (0.8, 32),
        (0.9, 32),
        (0.95, 64),
    ] {
        rules.push((
            format!("mass {p} cap {cap}"),
            Box::new(move |cum: &[f64]| {
                let k = cum
                    .iter()
                    .position(|&c| c >= p)
                    .map_or(cum.len(), |i| i + 1);
                k.min(cap).max(1)
            }),
        ));
    }
    let mut gains = vec![Vec::new(); rules.len()];
    let mut sizes = vec![0usize; rules.len()];
    for p in &pairs {
        let s = &p.tokens;
        let c = p.conditioning.as_ref().unwrap();
        let rows = lm.teacher_forced(&prompt, std::slice::from_ref(s))?;
        let lp = rows[horizon - 1].log_probs.row(0).to_vec();
        let lz = lse(&lp);
        let lp: Vec<f64> = lp.iter().map(|x| x - lz).collect();
        let mut idx: Vec<usize> = (0..v).collect();
        idx.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]));
        idx.truncate(big);
        let mut cum = Vec::new();
        let mut acc = 0.0;
        for &u in &idx {
            acc += lp[u].exp();
            cum.push(acc);
        }
        let seqs: Vec<Vec<u32>> = idx
            .iter()
            .map(|&u| {
                let mut q = s[..horizon - 1].to_vec();
                q.push(u as u32);
                q
            })
            .collect();
        let mut f = Vec::new();
        for ch in seqs.chunks(32) {
            f.extend(lm.score_continuation(&prompt, ch, c)?);
        }
        let st = s[horizon - 1] as usize;
        for (ri, (_, rule)) in rules.iter().enumerate() {
            let nn = rule(&cum);
            sizes[ri] += nn;
            let set = &idx[..nn];
            let fs = &f[..nn];
            let k = set.iter().position(|&u| u == st);
            let mass_terms: Vec<f64> = set.iter().map(|&u| lp[u]).collect();
            let lmass = lse(&mass_terms);
            let rest = (1.0 - lmass.exp()).max(1e-300).ln();
            let terms: Vec<f64> = set.iter().zip(fs).map(|(&u, fu)| lp[u] + fu).collect();
            let fb = lse(&terms) - lmass;
            let psi_s = k.map_or(fb, |k| fs[k]);
            let mut all = terms.clone();
            all.push(rest + fb);
            gains[ri].push(-psi_s + lse(&all));
        }
    }
    eprintln!(
        "{} pairs in {:.0}s",
        pairs.len(),
        t0.elapsed().as_secs_f64()
    );
    for (i, g) in gains.iter().enumerate() {
        let k = g.len() as f64;
        let mean = g.iter().sum::<f64>() / k;
        let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
        println!(
            "{:>20}: dKL(sigma||q) last step {mean:+.3} (se {:.3}); mean set size {:.1}",
            rules[i].0,
            sd / k.sqrt(),
            sizes[i] as f64 / k
        );
    }
    Ok(())
}
