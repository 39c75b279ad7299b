//! Probe: how much a last-step twist exp(w log p0(c_1 | prompt, v)) buys on KL(sigma||q).
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
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let v = lm.dims().vocab;
    let mut rng = rng_from_seed(999);
    let pairs = joint_ancestral(&lm, &prompt, 10, 5, n, &mut rng)?;
    let mut firsts: Vec<u32> = pairs.iter().map(|p| p.conditioning.as_ref().unwrap()[0]).collect();
    firsts.sort();
    firsts.dedup();
    eprintln!("{} distinct c1", firsts.len());
    let t0 = std::time::Instant::now();
    // Step-T rows of each pair, and the candidate set: the top 64 tokens of each plus s*_T.
    let mut rows = Vec::new();
    let mut cands: Vec<u32> = Vec::new();
    for p in &pairs {
        let out = lm.teacher_forced(&prompt, std::slice::from_ref(&p.tokens))?;
        let t = p.tokens.len();
        let lp = out[t - 1].log_probs.row(0).to_vec();
        let mut idx: Vec<usize> = (0..v).collect();
        idx.sort_by(|a, b| lp[*b].partial_cmp(&lp[*a]).unwrap());
        let top: Vec<u32> = idx[..64].iter().map(|&u| u as u32).collect();
        cands.extend(&top);
        cands.push(p.tokens[t - 1]);
        rows.push((lp, top));
    }
    cands.sort();
    cands.dedup();
    eprintln!("{} candidates, rows in {:.0}s", cands.len(), t0.elapsed().as_secs_f64());
    let nf = firsts.len();
    let mut f = std::collections::HashMap::new();
    for part in cands.chunks(256) {
        let seqs: Vec<Vec<u32>> = part.iter().map(|&u| vec![u, 0]).collect();
        let out = lm.teacher_forced(&prompt, &seqs)?;
        for (r, &u) in part.iter().enumerate() {
            let row = out[1].log_probs.row(r);
            f.insert(u, firsts.iter().map(|&c1| row[c1 as usize]).collect::<Vec<f64>>());
        }
    }
    let _ = nf;
    eprintln!("table in {:.0}s", t0.elapsed().as_secs_f64());
    let ws = [0.25, 0.5, 0.75, 1.0, 1.5];
    let mut gains = vec![Vec::new(); ws.len()];
    for (p, (lp, top)) in pairs.iter().zip(&rows) {
        let c1 = p.conditioning.as_ref().unwrap()[0];
        let j = firsts.binary_search(&c1).unwrap();
        let t = p.tokens.len();
        let s = p.tokens[t - 1];
        let mut set = top.clone();
        if !set.contains(&s) {
            set.push(s);
        }
        // Outside the set psi = exp(w fbar), fbar the p0-weighted mean of f over the set.
        let mass: f64 = set.iter().map(|&u| lp[u as usize].exp()).sum();
        let fbar: f64 = set.iter().map(|&u| lp[u as usize].exp() * f[&u][j]).sum::<f64>() / mass;
        for (i, &w) in ws.iter().enumerate() {
            let mut terms: Vec<f64> = set.iter().map(|&u| lp[u as usize] + w * (f[&u][j] - fbar)).collect();
            terms.push((1.0 - mass).max(1e-300).ln());
            let logq = lp[s as usize] + w * (f[&s][j] - fbar) - lse(&terms);
            gains[i].push(lp[s as usize] - logq);
        }
    }
    for (i, w) in ws.iter().enumerate() {
        let g = &gains[i];
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let sd = (g.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (g.len() - 1) as f64).sqrt();
        println!("w {w}: log p0(s_T) - log q_T(s_T) mean {m:.3} se {:.3} (n {})", sd / (g.len() as f64).sqrt(), g.len());
    }
    Ok(())
}
