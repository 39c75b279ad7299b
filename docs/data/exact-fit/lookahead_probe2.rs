//! Probe (corrected): the exact final twist psi_T(s_<T, v) = p0(c | prompt, s_<T, v) on the
//! top N tokens under p0 only (the exact sample s*_T is NOT added to the set), with two values
//! for the tokens outside: the p0-weighted mean of log phi, or of phi, over the set.
//! Statistic: log p0(s*_T) - log q_T(s*_T), whose mean over exact pairs is dKL(sigma||q).
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
    let n: usize = std::env::args().nth(1).map_or(200, |s| s.parse().unwrap());
    let (horizon, m, big) = (10usize, 5usize, 32usize);
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let v = lm.dims().vocab;
    let mut rng = rng_from_seed(4242);
    let pairs = joint_ancestral(&lm, &prompt, horizon, m, n, &mut rng)?;
    let t0 = std::time::Instant::now();
    // [N = 16, 32] x [log-mean, mean] fallback.
    let mut gains = vec![Vec::new(); 4];
    let mut inside = [0usize; 2];
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
        let seqs: Vec<Vec<u32>> = idx
            .iter()
            .map(|&u| {
                let mut q = s[..horizon - 1].to_vec();
                q.push(u as u32);
                q
            })
            .collect();
        let f = lm.score_continuation(&prompt, &seqs, c)?;
        let st = s[horizon - 1] as usize;
        for (ni, &nn) in [16usize, 32].iter().enumerate() {
            let set = &idx[..nn];
            let fs = &f[..nn];
            let k = set.iter().position(|&u| u == st);
            inside[ni] += usize::from(k.is_some());
            let mass_terms: Vec<f64> = set.iter().map(|&u| lp[u]).collect();
            let lmass = lse(&mass_terms);
            let rest = (1.0 - lmass.exp()).max(1e-300).ln();
            let logmean = set.iter().zip(fs).map(|(&u, fu)| lp[u].exp() * fu).sum::<f64>()
                / lmass.exp();
            let terms: Vec<f64> = set.iter().zip(fs).map(|(&u, fu)| lp[u] + fu).collect();
            let mean = lse(&terms) - lmass;
            for (fi, fb) in [logmean, mean].iter().enumerate() {
                let psi_s = k.map_or(*fb, |k| fs[k]);
                let mut all = terms.clone();
                all.push(rest + fb);
                gains[ni * 2 + fi].push(-psi_s + lse(&all));
            }
        }
    }
    eprintln!("{} pairs in {:.0}s", pairs.len(), t0.elapsed().as_secs_f64());
    let names = ["top 16, log-mean", "top 16, mean", "top 32, log-mean", "top 32, mean"];
    for (i, g) in gains.iter().enumerate() {
        let k = g.len() as f64;
        let mean = g.iter().sum::<f64>() / k;
        let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
        let max = g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{}: dKL(sigma||q) last step mean {mean:.3} (se {:.3}), largest single pair {max:.2}; s*_T in the set {} of {}",
            names[i],
            sd / k.sqrt(),
            inside[i / 2],
            g.len()
        );
    }
    Ok(())
}
