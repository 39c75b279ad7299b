//! Probe: an exact two-token lookahead at step T-1 of infilling. For each candidate v of the
//! top N1 tokens, psi_{T-1}(v) = log of the p0-weighted mean, over v's top N2 next tokens w, of
//! phi(s_<T-1, v, w) = p0(c | prompt, s_<T-1, v, w); the log of the p0-weighted mean of
//! exp(psi) over the N1 elsewhere. Statistic: log p0(s*_{T-1}) - log q_{T-1}(s*_{T-1}) over
//! exact pairs, i.e. the step's share of dKL(sigma||q) against p0.
use burn::tensor::Device;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::model::{DecodeSession, LanguageModel};
use smc_core::smc::rng_from_seed;

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn norm(row: &[f64]) -> Vec<f64> {
    let z = lse(row);
    row.iter().map(|x| x - z).collect()
}

fn top(row: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
    idx.truncate(n);
    idx
}

/// log of the p0-weighted mean of exp(f) over `set` (p0 log-probs `lp`).
fn log_mean(lp: &[f64], set: &[usize], f: &[f64]) -> f64 {
    let num: Vec<f64> = set.iter().zip(f).map(|(&u, fu)| lp[u] + fu).collect();
    let den: Vec<f64> = set.iter().map(|&u| lp[u]).collect();
    lse(&num) - lse(&den)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(100, |s| s.parse().unwrap());
    let (horizon, m, n1, n2s) = (10usize, 5usize, 16usize, [2usize, 4, 8, 16]);
    let n2max = *n2s.iter().max().unwrap();
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let mut rng = rng_from_seed(31337);
    let pairs = joint_ancestral(&lm, &prompt, horizon, m, n, &mut rng)?;
    let t0 = std::time::Instant::now();
    let mut gains = vec![Vec::new(); n2s.len()];
    let mut inside = 0;
    for p in &pairs {
        let s = &p.tokens;
        let c = p.conditioning.as_ref().unwrap();
        let mut sess = lm.start(&prompt, 1)?;
        sess.reserve(horizon + m + 1)?;
        for &t in &s[..horizon - 2] {
            sess.push(&[t])?;
        }
        let lp1 = norm(sess.next_log_probs()?.log_probs.row(0));
        let set1 = top(&lp1, n1);
        // Branch into the N1 candidates v and read p0(w | ..., v).
        let mut b1 = sess.branch(&vec![0; n1])?.expect("branch");
        b1.push(&set1.iter().map(|&u| u as u32).collect::<Vec<_>>())?;
        let out = b1.next_log_probs()?;
        let lp2: Vec<Vec<f64>> = (0..n1).map(|r| norm(out.log_probs.row(r))).collect();
        let set2: Vec<Vec<usize>> = lp2.iter().map(|r| top(r, n2max)).collect();
        // phi(v, w) for the top n2max w of each v, on branches of b1.
        let mut phi = vec![vec![0.0; n2max]; n1];
        let rows: Vec<(usize, usize)> = (0..n1).flat_map(|i| (0..n2max).map(move |j| (i, j))).collect();
        for chunk in rows.chunks(128) {
            let parents: Vec<usize> = chunk.iter().map(|&(i, _)| i).collect();
            let mut b2 = b1.branch(&parents)?.expect("branch");
            b2.push(&chunk.iter().map(|&(i, j)| set2[i][j] as u32).collect::<Vec<_>>())?;
            let mut tot = vec![0.0; chunk.len()];
            for (k, &ct) in c.iter().enumerate() {
                if k > 0 {
                    b2.push(&vec![c[k - 1]; chunk.len()])?;
                }
                let o = b2.next_log_probs()?;
                for (r, t) in tot.iter_mut().enumerate() {
                    let row = o.log_probs.row(r);
                    *t += row[ct as usize] - lse(row);
                }
            }
            for (&(i, j), t) in chunk.iter().zip(tot) {
                phi[i][j] = t;
            }
        }
        let st = s[horizon - 2] as usize;
        let k = set1.iter().position(|&u| u == st);
        inside += usize::from(k.is_some());
        for (gi, &n2) in n2s.iter().enumerate() {
            let psi: Vec<f64> = (0..n1)
                .map(|i| log_mean(&lp2[i], &set2[i][..n2], &phi[i][..n2]))
                .collect();
            let fb = log_mean(&lp1, &set1, &psi);
            let mass1: Vec<f64> = set1.iter().map(|&u| lp1[u]).collect();
            let rest = (1.0 - lse(&mass1).exp()).max(1e-300).ln();
            let mut all: Vec<f64> = set1.iter().zip(&psi).map(|(&u, f)| lp1[u] + f).collect();
            all.push(rest + fb);
            let psi_s = k.map_or(fb, |k| psi[k]);
            gains[gi].push(-psi_s + lse(&all));
        }
    }
    eprintln!("{} pairs in {:.0}s; s*_(T-1) among the {n1} candidates in {inside}", pairs.len(), t0.elapsed().as_secs_f64());
    for (gi, g) in gains.iter().enumerate() {
        let k = g.len() as f64;
        let mean = g.iter().sum::<f64>() / k;
        let sd = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
        let max = g.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        println!("N1 {n1}, N2 {}: step T-1 dKL(sigma||q) {mean:+.3} (se {:.3}), worst pair {max:+.2}", n2s[gi], sd / k.sqrt());
    }
    Ok(())
}
