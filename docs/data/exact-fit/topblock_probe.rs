//! Probe: the base model's last layer, copied and retrained as a conditional twist. The frozen
//! model runs its first L - 1 layers on "...c" + blank line + prompt + s (the model shown c);
//! a trainable copy of layer L (initialised at the base weights) and the frozen final norm and
//! output embedding give logits Lt; log psi_t = Lt - Lf with Lf the same at the initial
//! weights, so q = p0 at the start. Fitted by maximum likelihood of q to exact pairs (s*, c);
//! held-out log p0(s) - log q(s) (= ΔKL(sigma||q) against p0) per epoch.
//!
//! Its evaluations run through the tracked parameters without a backward pass, which keeps
//! their autodiff graphs: the 6000-pair run was killed for memory in its third epoch.
//! `topblock_online_probe.rs` evaluates on the plain device (`Module::valid`) instead.
//!
//! Args: n_train epochs lrs(comma) variants(comma: tail,none) [layers_trained=1]
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use lm_burn::gguf::GgufModel;
use lm_burn::heads::CondEncoding;
use lm_burn::llama::{Llama, LlamaConfig};
use lm_burn::ops::{AttentionWindow, apply_rope, causal_attention, linear, rms_norm, rope_tables};
use lm_burn::weights::Loader;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::smc::rng_from_seed;
use twist_learn::exact_fit::exact_examples;

#[derive(Module, Debug)]
struct Block {
    input_norm: Param<Tensor<1>>,
    wq: Param<Tensor<2>>,
    wk: Param<Tensor<2>>,
    wv: Param<Tensor<2>>,
    wo: Param<Tensor<2>>,
    post_norm: Param<Tensor<1>>,
    w_gate: Param<Tensor<2>>,
    w_up: Param<Tensor<2>>,
    w_down: Param<Tensor<2>>,
}

#[derive(Module, Debug)]
struct Top {
    blocks: Vec<Block>,
}

struct Frozen {
    cfg: LlamaConfig,
    norm: Tensor<1>,
    /// [d, V]
    e: Tensor<2>,
}

fn load_block(loader: &mut Loader<'_>, c: &LlamaConfig, i: usize) -> lm_burn::Result<Block> {
    let p = format!("model.layers.{i}");
    let (d, qo, kvo) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let m = |t: Tensor<2>| Param::from_tensor(t);
    Ok(Block {
        input_norm: Param::from_tensor(loader.tensor(&format!("{p}.input_layernorm.weight"), [d])?),
        wq: m(loader.linear(&format!("{p}.self_attn.q_proj.weight"), qo, d)?),
        wk: m(loader.linear(&format!("{p}.self_attn.k_proj.weight"), kvo, d)?),
        wv: m(loader.linear(&format!("{p}.self_attn.v_proj.weight"), kvo, d)?),
        wo: m(loader.linear(&format!("{p}.self_attn.o_proj.weight"), d, qo)?),
        post_norm: Param::from_tensor(
            loader.tensor(&format!("{p}.post_attention_layernorm.weight"), [d])?,
        ),
        w_gate: m(loader.linear(&format!("{p}.mlp.gate_proj.weight"), c.intermediate_size, d)?),
        w_up: m(loader.linear(&format!("{p}.mlp.up_proj.weight"), c.intermediate_size, d)?),
        w_down: m(loader.linear(&format!("{p}.mlp.down_proj.weight"), d, c.intermediate_size)?),
    })
}

fn block_forward(
    b: &Block,
    c: &LlamaConfig,
    h: Tensor<3>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
) -> Tensor<3> {
    let [bs, s, d] = h.dims();
    let (hq, hkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let x = rms_norm(h.clone(), &b.input_norm.val(), c.rms_norm_eps);
    let heads = |w: &Param<Tensor<2>>, n| {
        linear(x.clone(), &w.val(), None)
            .reshape([bs, s, n, hd])
            .swap_dims(1, 2)
    };
    let q = apply_rope(heads(&b.wq, hq), cos, sin);
    let k = apply_rope(heads(&b.wk, hkv), cos, sin);
    let v = heads(&b.wv, hkv);
    let att = causal_attention(q, k, v, 1.0 / (hd as f64).sqrt(), AttentionWindow::Global);
    let att = att.swap_dims(1, 2).reshape([bs, s, hq * hd]);
    let h = h + linear(att, &b.wo.val(), None);
    let x = rms_norm(h.clone(), &b.post_norm.val(), c.rms_norm_eps);
    let g = silu(linear(x.clone(), &b.w_gate.val(), None));
    let u = linear(x, &b.w_up.val(), None);
    let _ = d;
    h + linear(g * u, &b.w_down.val(), None)
}

/// Final-norm hidden states [B*T, d] at the positions predicting s_1..s_T.
fn top_hidden(top: &Top, fz: &Frozen, x: Tensor<3>, p: usize, t: usize, dev: &Device) -> Tensor<2> {
    let [bs, s, d] = x.dims();
    let (cos, sin) = rope_tables(0..s, fz.cfg.head_dim, fz.cfg.rope_theta, dev);
    let mut h = x;
    for b in &top.blocks {
        h = block_forward(b, &fz.cfg, h, &cos, &sin);
    }
    let h = rms_norm(h, &fz.norm, fz.cfg.rms_norm_eps);
    h.slice([0..bs, p - 1..p - 1 + t, 0..d])
        .reshape([bs * t, d])
}

struct Ex {
    tokens: Vec<u32>,
    resid: Vec<f32>,
    log_p0: std::rc::Rc<Vec<f32>>,
    hf: Vec<f32>,
}

fn tensor2(v: Vec<f32>, shape: [usize; 2], dev: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), dev)
}

/// Per example, sum_t log p0(s_t) - log q(s_t); and the loss tensor (mean NLL of q).
fn batch_eval(
    top: &Top,
    fz: &Frozen,
    ex: &[&Ex],
    s: usize,
    p: usize,
    t: usize,
    dev: &Device,
) -> (Tensor<1>, Vec<f64>) {
    let (d, v) = (fz.cfg.hidden_size, fz.cfg.vocab_size);
    let b = ex.len();
    let x = Tensor::<3>::from_data(
        TensorData::new(
            ex.iter()
                .flat_map(|e| e.resid.iter().copied())
                .collect::<Vec<_>>(),
            [b, s, d],
        ),
        dev,
    );
    let ht = top_hidden(top, fz, x, p, t, dev);
    let hf = tensor2(
        ex.iter().flat_map(|e| e.hf.iter().copied()).collect(),
        [b * t, d],
        dev,
    );
    let lp0 = tensor2(
        ex.iter().flat_map(|e| e.log_p0.iter().copied()).collect(),
        [b * t, v],
        dev,
    );
    let logits = lp0.clone() + ht.matmul(fz.e.clone()) - hf.matmul(fz.e.clone());
    let logq = log_softmax(logits, 1);
    let ids: Vec<i64> = ex
        .iter()
        .flat_map(|e| e.tokens.iter().map(|&x| x as i64))
        .collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(ids, [b * t, 1]), dev);
    let lq = logq.gather(1, idx.clone()).reshape([b * t]);
    let l0 = lp0.gather(1, idx).reshape([b * t]);
    let gap: Vec<f32> = (l0 - lq.clone()).into_data().to_vec().unwrap();
    let per: Vec<f64> = gap
        .chunks(t)
        .map(|c| c.iter().map(|&x| f64::from(x)).sum())
        .collect();
    (lq.sum().neg() / b as f64, per)
}

fn summary(
    top: &Top,
    fz: &Frozen,
    ex: &[Ex],
    s: usize,
    p: usize,
    t: usize,
    dev: &Device,
) -> (f64, f64) {
    let mut all = Vec::new();
    for ch in ex.chunks(16) {
        let refs: Vec<&Ex> = ch.iter().collect();
        all.extend(batch_eval(top, fz, &refs, s, p, t, dev).1);
    }
    let n = all.len() as f64;
    let m = all.iter().sum::<f64>() / n;
    let var = all.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n_train: usize = args.get(1).map_or(1000, |s| s.parse().unwrap());
    let n_test: usize = 200;
    let epochs: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let lrs: Vec<f64> = args.get(3).map_or(vec![1e-5, 3e-5], |s| {
        s.split(',').map(|x| x.parse().unwrap()).collect()
    });
    let variants: Vec<String> = args.get(4).map_or(vec!["tail".into()], |s| {
        s.split(',').map(String::from).collect()
    });
    let n_layers: usize = args.get(5).map_or(1, |s| s.parse().unwrap());
    let (tt, batch) = (10usize, 16usize);
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let lm = BurnLm::load("default", &device)?.with_weight_format(WeightFormat::Bf16)?;
    let tok = lm.tokenizer()?;
    let prompt = tok.encode("Once upon a time, there was a")?;
    let path = lm_burn::default_model::ensure_default_model()?;
    let gguf = GgufModel::open(&path)?;
    let cfg = LlamaConfig::from_json(&gguf.config()?)?;
    let base = Llama::load(cfg.clone(), &mut Loader::new(&gguf, &device))?;
    let mut loader = Loader::new(&gguf, &ad);
    let norm = loader.tensor("model.norm.weight", [cfg.hidden_size])?;
    let e: Tensor<2> = loader.tensor(
        "model.embed_tokens.weight",
        [cfg.vocab_size, cfg.hidden_size],
    )?;
    let fz = Frozen {
        cfg: cfg.clone(),
        norm,
        e: e.transpose(),
    };
    let first = cfg.num_layers - n_layers;

    let t0 = std::time::Instant::now();
    let mut rng = rng_from_seed(12345);
    let mut pairs = Vec::new();
    while pairs.len() < n_train + n_test {
        let n = (n_train + n_test - pairs.len()).min(64);
        pairs.extend(joint_ancestral(&lm, &prompt, tt, 5, n, &mut rng)?);
    }
    eprintln!(
        "{} pairs in {:.1}s",
        pairs.len(),
        t0.elapsed().as_secs_f64()
    );
    let samples: Vec<(Vec<u32>, Option<Vec<u32>>)> =
        pairs.iter().map(|p| (p.tokens.clone(), None)).collect();
    let t0 = std::time::Instant::now();
    let plain = exact_examples(&lm, &prompt, &samples, CondEncoding::Last, 64)?;
    eprintln!("examples in {:.1}s", t0.elapsed().as_secs_f64());
    // Shared, not cloned per variant: 6000 pairs hold 12 GB of log p0 rows.
    let plain: Vec<(Vec<u32>, std::rc::Rc<Vec<f32>>)> = plain
        .into_iter()
        .map(|e| (e.tokens, std::rc::Rc::new(e.log_p0)))
        .collect();
    let (head_t, mid_t) = (tok.encode("...")?, tok.encode("\n\n")?);
    for var in &variants {
        let t0 = std::time::Instant::now();
        let seqs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| {
                let mut x = Vec::new();
                if var == "tail" {
                    x.extend(&head_t);
                    x.extend(p.conditioning.as_ref().unwrap());
                    x.extend(&mid_t);
                }
                x.extend(&prompt);
                x.extend(&p.tokens[..tt - 1]);
                x
            })
            .collect();
        let s = seqs[0].len();
        assert!(
            seqs.iter().all(|x| x.len() == s),
            "sequences differ in length"
        );
        let p = s - (tt - 1);
        let mut ex: Vec<Ex> = Vec::with_capacity(seqs.len());
        for (ch, pl) in seqs.chunks(32).zip(plain.chunks(32)) {
            let flat: Vec<u32> = ch.iter().flatten().copied().collect();
            let r: Vec<f32> = base
                .residual_stream(&flat, ch.len(), first)?
                .into_data()
                .to_vec()
                .unwrap();
            for (i, e) in pl.iter().enumerate() {
                let d = cfg.hidden_size;
                ex.push(Ex {
                    tokens: e.0.clone(),
                    resid: r[i * s * d..(i + 1) * s * d].to_vec(),
                    log_p0: e.1.clone(),
                    hf: Vec::new(),
                });
            }
        }
        eprintln!(
            "{var}: residuals ({s} positions) in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        // Lf: the top at its initial weights.
        let init = Top {
            blocks: (first..cfg.num_layers)
                .map(|i| load_block(&mut loader, &cfg, i))
                .collect::<Result<_, _>>()?,
        };
        for i in (0..ex.len()).step_by(16) {
            let j = (i + 16).min(ex.len());
            let x = Tensor::<3>::from_data(
                TensorData::new(
                    ex[i..j]
                        .iter()
                        .flat_map(|e| e.resid.iter().copied())
                        .collect::<Vec<_>>(),
                    [j - i, s, cfg.hidden_size],
                ),
                &ad,
            );
            let h: Vec<f32> = top_hidden(&init, &fz, x, p, tt, &ad)
                .into_data()
                .to_vec()
                .unwrap();
            for (k, e) in ex[i..j].iter_mut().enumerate() {
                e.hf = h[k * tt * cfg.hidden_size..(k + 1) * tt * cfg.hidden_size].to_vec();
            }
        }
        let (train, test) = ex.split_at(n_train);
        for &lr in &lrs {
            let mut top = Top {
                blocks: (first..cfg.num_layers)
                    .map(|i| load_block(&mut loader, &cfg, i))
                    .collect::<Result<_, _>>()?,
            };
            let mut optim = AdamConfig::new().init();
            let (m, se) = summary(&top, &fz, test, s, p, tt, &ad);
            println!("{var} L{n_layers} lr {lr} epoch 0: held-out {m:.3} ({se:.3})");
            let mut order: Vec<usize> = (0..train.len()).collect();
            for ep in 1..=epochs {
                let t0 = std::time::Instant::now();
                use rand::seq::SliceRandom;
                order.shuffle(&mut rng);
                let mut tot = 0.0;
                for part in order.chunks(batch) {
                    let refs: Vec<&Ex> = part.iter().map(|&i| &train[i]).collect();
                    let (loss, _) = batch_eval(&top, &fz, &refs, s, p, tt, &ad);
                    tot += f64::from(loss.clone().into_scalar::<f32>()) * refs.len() as f64;
                    let grads = GradientsParams::from_grads(loss.backward(), &top);
                    top = optim.step(lr, top, grads);
                }
                let (m, se) = summary(&top, &fz, test, s, p, tt, &ad);
                let (mt, _) = summary(&top, &fz, &train[..200.min(train.len())], s, p, tt, &ad);
                println!(
                    "{var} L{n_layers} lr {lr} epoch {ep}: train nll {:.3} train-gap {mt:.3} held-out {m:.3} ({se:.3}) {:.1}s",
                    tot / train.len() as f64,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
