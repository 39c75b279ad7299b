//! Probe: an embedding head fitted to exact infilling pairs, reading the hidden states of the
//! base model shown c ("...c" and a blank line before the prompt) instead of its plain ones;
//! held-out log p0(s) - log q(s) (= ΔKL(sigma||q) against p0) per epoch.
use burn::tensor::Device;
use lm_burn::heads::{HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::model::LanguageModel;
use smc_core::smc::rng_from_seed;
use twist_learn::exact_fit::{ExactExample, FitConfig, exact_examples, exact_fit_log_ratio_summary};
use twist_learn::{AdamConfig, HeadTrainable, Parameterization};
use lm_burn::heads::CondEncoding;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n_train: usize = args.get(1).map_or(1000, |s| s.parse().unwrap());
    let n_test: usize = 200;
    let epochs: usize = args.get(2).map_or(4, |s| s.parse().unwrap());
    let lrs: Vec<f64> = args.get(3).map_or(vec![1e-6, 3e-6, 1e-5], |s| s.split(',').map(|x| x.parse().unwrap()).collect());
    let variants: Vec<String> = args.get(4).map_or(vec!["prompted".into(), "plain".into()], |s| s.split(',').map(String::from).collect());
    let batch = 16;
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let tok = lm.tokenizer()?;
    let prompt = tok.encode("Once upon a time, there was a")?;
    let t0 = std::time::Instant::now();
    let mut rng = rng_from_seed(12345);
    let mut pairs = Vec::new();
    while pairs.len() < n_train + n_test {
        let n = (n_train + n_test - pairs.len()).min(64);
        pairs.extend(joint_ancestral(&lm, &prompt, 10, 5, n, &mut rng)?);
    }
    eprintln!("{} pairs in {:.1}s", pairs.len(), t0.elapsed().as_secs_f64());
    let samples: Vec<(Vec<u32>, Option<Vec<u32>>)> =
        pairs.iter().map(|p| (p.tokens.clone(), None)).collect();
    let t0 = std::time::Instant::now();
    let plain = exact_examples(&lm, &prompt, &samples, CondEncoding::Last, 64)?;
    eprintln!("examples in {:.1}s", t0.elapsed().as_secs_f64());
    let t0 = std::time::Instant::now();
    let (head_t, mid_t) = (tok.encode("...")?, tok.encode("\n\n")?);
    let mut prompted = plain.clone();
    for (e, p) in prompted.iter_mut().zip(&pairs) {
        let mut pc = head_t.clone();
        pc.extend(p.conditioning.as_ref().unwrap());
        pc.extend(&mid_t);
        pc.extend(&prompt);
        let out = lm.teacher_forced(&pc, std::slice::from_ref(&p.tokens))?;
        e.hidden.clear();
        for step in &out {
            e.hidden.extend_from_slice(step.hidden.as_ref().unwrap().row(0));
        }
    }
    eprintln!("prompted hidden states in {:.1}s", t0.elapsed().as_secs_f64());
    for var in &variants {
        let ex: &[ExactExample] = if var == "prompted" { &prompted } else { &plain };
        for &lr in &lrs {
            let (train, test) = ex.split_at(n_train);
            let ad = device.clone().autodiff();
            let cfg = HeadConfig::for_model(&lm, HeadKind::Embedding, None);
            let head = TwistHead::new(&lm, cfg, 7, &ad)?;
            let mut tw = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
            let (m, se) = exact_fit_log_ratio_summary(&tw, test)?;
            println!("{var} lr {lr} epoch 0: held-out {m:.3} ({se:.3})");
            for ep in 1..=epochs {
                let t0 = std::time::Instant::now();
                let l = twist_learn::exact_fit::fit_exact(&mut tw, train, &FitConfig { epochs: 1, batch, learning_rate: lr, seed: ep as u64 })?;
                let (m, se) = exact_fit_log_ratio_summary(&tw, test)?;
                let (mt, _) = exact_fit_log_ratio_summary(&tw, &train[..200.min(train.len())])?;
                println!("{var} lr {lr} epoch {ep}: train loss {:.3} train-gap {mt:.3} held-out {m:.3} ({se:.3}) {:.1}s", l[0], t0.elapsed().as_secs_f64());
            }
        }
    }
    Ok(())
}
