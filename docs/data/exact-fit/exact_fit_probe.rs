//! Probe: fit a conditional embedding head to exact infilling pairs, report held-out
//! log p0(s) - log q(s) (KL(sigma||q) - KL(sigma||p0)) per epoch.
use burn::tensor::Device;
use lm_burn::heads::{CondEncoding, HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::smc::rng_from_seed;
use twist_learn::exact_fit::{ExactExample, FitConfig, exact_examples, exact_fit_log_ratio_summary};
use twist_learn::{AdamConfig, HeadTrainable, Parameterization};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n_train: usize = args.get(1).map_or(500, |s| s.parse().unwrap());
    let n_test: usize = 200;
    let epochs: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let lrs: Vec<f64> = args.get(3).map_or(vec![1e-6], |s| s.split(',').map(|x| x.parse().unwrap()).collect());
    let encs: Vec<String> = args.get(4).map_or(vec!["first".into()], |s| s.split(',').map(String::from).collect());
    let batch: usize = args.get(5).map_or(16, |s| s.parse().unwrap());
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let t0 = std::time::Instant::now();
    let mut rng = rng_from_seed(12345);
    let mut pairs = Vec::new();
    while pairs.len() < n_train + n_test {
        let n = (n_train + n_test - pairs.len()).min(64);
        pairs.extend(joint_ancestral(&lm, &prompt, 10, 5, n, &mut rng)?);
    }
    eprintln!("{} pairs in {:.1}s", pairs.len(), t0.elapsed().as_secs_f64());
    let samples: Vec<(Vec<u32>, Option<Vec<u32>>)> =
        pairs.iter().map(|p| (p.tokens.clone(), p.conditioning.clone())).collect();
    let t0 = std::time::Instant::now();
    let base = exact_examples(&lm, &prompt, &samples, CondEncoding::MeanEmbedding, 64)?;
    eprintln!("examples in {:.1}s", t0.elapsed().as_secs_f64());
    for enc in &encs { for &lr in &lrs {
        let mut ex: Vec<ExactExample> = base.clone();
        for (e, (_, c)) in ex.iter_mut().zip(&samples) {
            let c = c.as_ref().unwrap();
            e.cond = Some(match enc.as_str() {
                "first" => lm.mean_output_embedding(&c[..1])?,
                "first2" => lm.mean_output_embedding(&c[..2])?,
                "last" => lm.encode_last_hidden(c)?,
                "mean-hidden" => lm.encode_mean_hidden(c)?,
                "mean-embedding" => lm.mean_output_embedding(c)?,
                "zero" => vec![0.0; lm.dims().hidden],
                _ => return Err("enc".into()),
            });
        }
        let (train, test) = ex.split_at(n_train);
        let ad = device.clone().autodiff();
        let mut cfg = HeadConfig::for_model(&lm, HeadKind::Embedding, Some(samples[0].1.clone().unwrap()));
        cfg.cond_encoding = CondEncoding::MeanEmbedding;
        let head = TwistHead::new(&lm, cfg, 7, &ad)?;
        let mut tw = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
        let (m, se) = exact_fit_log_ratio_summary(&tw, test)?;
        println!("{enc} lr {lr} epoch 0: held-out {m:.3} ({se:.3})");
        for ep in 1..=epochs {
            let t0 = std::time::Instant::now();
            let l = twist_learn::exact_fit::fit_exact(&mut tw, train, &FitConfig { epochs: 1, batch, learning_rate: lr, seed: ep as u64 })?;
            let (m, se) = exact_fit_log_ratio_summary(&tw, test)?;
            let (mt, _) = exact_fit_log_ratio_summary(&tw, &train[..200.min(train.len())])?;
            println!("{enc} lr {lr} epoch {ep}: train loss {:.3} train-gap {mt:.3} held-out {m:.3} ({se:.3}) {:.1}s", l[0], t0.elapsed().as_secs_f64());
        }
    } }
    Ok(())
}
