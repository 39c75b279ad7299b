//! Probe: a twisted proposal q_t ∝ p0^(1-λ) p_c^λ, where p_c is the base model with c shown
//! before the prompt. Per-step gain log p0(s*_t) - log q_t(s*_t) over held-out joint pairs.
use burn::tensor::Device;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::model::LanguageModel;
use smc_core::smc::rng_from_seed;

fn lse(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}
fn norm(x: &[f64]) -> Vec<f64> {
    let z = lse(x);
    x.iter().map(|v| v - z).collect()
}

/// For one step: log q(s) at each λ, q ∝ exp((1-λ) a + λ b).
fn logq(a: &[f64], b: &[f64], s: usize, lam: f64) -> f64 {
    let mix: Vec<f64> = a.iter().zip(b).map(|(x, y)| (1.0 - lam) * x + lam * y).collect();
    mix[s] - lse(&mix)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(100, |s| s.parse().unwrap());
    let seed: u64 = std::env::args().nth(2).map_or(999, |s| s.parse().unwrap());
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let tok = lm.tokenizer()?;
    let prompt = tok.encode("Once upon a time, there was a")?;
    let mut rng = rng_from_seed(seed);
    let pairs = joint_ancestral(&lm, &prompt, 10, 5, n, &mut rng)?;
    let t0 = std::time::Instant::now();
    let seqs: Vec<Vec<u32>> = pairs.iter().map(|p| p.tokens.clone()).collect();
    let base = lm.teacher_forced(&prompt, &seqs)?;
    let templates: Vec<(&str, &str, &str)> = vec![
        ("c-nl", "", "\n\n"),
        ("ends-with", "The story below continues with the words \"", "\".\n\n"),
        ("tail", "...", "\n\n"),
        // Second run (the log's second half): two chat templates, `tail` again.
        ("chat-contains", "<|im_start|>user\nWrite a short story that begins with \"Once upon a time, there was a\" and contains the words \"", "\".<|im_end|>\n<|im_start|>assistant\n"),
        ("chat-continues", "<|im_start|>user\nWrite the opening of a story. Its first sentence is followed, a few words later, by \"", "\".<|im_end|>\n<|im_start|>assistant\n"),
    ];
    let lams = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0];
    for (name, head, mid) in templates {
        // gains[l][t] over pairs
        let mut gains = vec![vec![Vec::new(); 10]; lams.len()];
        for (i, p) in pairs.iter().enumerate() {
            let c = p.conditioning.as_ref().unwrap();
            let mut pc: Vec<u32> = tok.encode(head)?;
            pc.extend(c);
            pc.extend(tok.encode(mid)?);
            pc.extend(&prompt);
            let out = lm.teacher_forced(&pc, std::slice::from_ref(&p.tokens))?;
            for t in 0..10 {
                let a = norm(base[t].log_probs.row(i));
                let b = norm(out[t].log_probs.row(0));
                let s = p.tokens[t] as usize;
                for (l, &lam) in lams.iter().enumerate() {
                    gains[l][t].push(a[s] - logq(&a, &b, s, lam));
                }
            }
        }
        println!("template {name} ({:.0}s)", t0.elapsed().as_secs_f64());
        for (l, lam) in lams.iter().enumerate() {
            let per: Vec<(f64, f64)> = gains[l]
                .iter()
                .map(|g| {
                    let m = g.iter().sum::<f64>() / g.len() as f64;
                    let sd = (g.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (g.len() - 1) as f64).sqrt();
                    (m, sd / (g.len() as f64).sqrt())
                })
                .collect();
            let tot: Vec<f64> = (0..n).map(|i| (0..10).map(|t| gains[l][t][i]).sum()).collect();
            let m = tot.iter().sum::<f64>() / n as f64;
            let sd = (tot.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
            let steps: Vec<String> = per.iter().map(|(m, _)| format!("{m:+.2}")).collect();
            println!("  λ {lam}: total {m:+.3} (se {:.3}); steps {}", sd / (n as f64).sqrt(), steps.join(" "));
        }
    }
    Ok(())
}
