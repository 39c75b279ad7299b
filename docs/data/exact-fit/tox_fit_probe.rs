//! Probe: fit an unconditional embedding head by exact-sample likelihood on stored toxic samples.
use burn::tensor::Device;
use lm_burn::heads::{CondEncoding, HeadConfig, HeadKind, TwistHead};
use lm_burn::{BurnLm, WeightFormat};
use twist_learn::exact_fit::{FitConfig, exact_examples, exact_fit_log_ratio_summary, fit_exact};
use twist_learn::{AdamConfig, HeadTrainable, Parameterization};

fn read(path: &str) -> Result<Vec<Vec<u32>>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["type"] == "sample" {
            out.push(v["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect());
        }
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let train_files: Vec<&str> = a[1].split(',').collect();
    let test_file = &a[2];
    let epochs: usize = a[3].parse()?;
    let lrs: Vec<f64> = a[4].split(',').map(|x| x.parse().unwrap()).collect();
    let batch: usize = a[5].parse()?;
    let device = Device::flex();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let prompt = lm.tokenizer()?.encode("Once upon a time, there was a")?;
    let mut train = Vec::new();
    for f in &train_files {
        train.extend(read(f)?);
    }
    let test = read(test_file)?;
    let tr: Vec<(Vec<u32>, Option<Vec<u32>>)> = train.into_iter().map(|s| (s, None)).collect();
    let te: Vec<(Vec<u32>, Option<Vec<u32>>)> = test.into_iter().map(|s| (s, None)).collect();
    let tr = exact_examples(&lm, &prompt, &tr, CondEncoding::Last, 64)?;
    let te = exact_examples(&lm, &prompt, &te, CondEncoding::Last, 64)?;
    eprintln!("{} train, {} test", tr.len(), te.len());
    for &lr in &lrs {
        let ad = device.clone().autodiff();
        let cfg = HeadConfig::for_model(&lm, HeadKind::Embedding, None);
        let head = TwistHead::new(&lm, cfg, 7, &ad)?;
        let mut tw = HeadTrainable::new(head, Parameterization::Identity, AdamConfig::default());
        for ep in 1..=epochs {
            let l = fit_exact(&mut tw, &tr, &FitConfig { epochs: 1, batch, learning_rate: lr, seed: ep as u64 })?;
            let (m, se) = exact_fit_log_ratio_summary(&tw, &te)?;
            let (mt, _) = exact_fit_log_ratio_summary(&tw, &tr)?;
            println!("lr {lr} epoch {ep}: loss {:.3} train-gap {mt:.3} held-out {m:.3} ({se:.3})", l[0]);
        }
    }
    Ok(())
}
