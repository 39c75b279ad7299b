//! Probe: the base model's last layer, copied and retrained as a conditional twist. The frozen
//! model runs its first L - 1 layers on "...c" + blank line + prompt + s (the model shown c);
//! a trainable copy of layer L (initialised at the base weights) and the frozen final norm and
//! output embedding give logits Lt; log psi_t = Lt - Lf with Lf the same at the initial
//! weights, so q = p0 at the start. Fitted by maximum likelihood of q to exact pairs (s*, c);
//! held-out log p0(s) - log q(s) (= ΔKL(sigma||q) against p0) per epoch.
//!
//! Online: every training pair is fresh and used once; log p0 is recomputed from stored
//! hidden states so that memory grows by about 100 kB a pair. Held-out curve over pairs seen.
//!
//! Args: n_train lr eval_every_steps
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use lm_burn::gguf::GgufModel;
use lm_burn::llama::{Llama, LlamaConfig};
use lm_burn::ops::{AttentionWindow, apply_rope, causal_attention, linear, rms_norm, rope_tables};
use lm_burn::weights::Loader;
use lm_burn::{BurnLm, WeightFormat};
use smc_bounds::joint_ancestral;
use smc_core::smc::rng_from_seed;

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
    /// Plain final-norm hidden states [T, d] (log p0 = log_softmax(h0 E), recomputed).
    h0: Vec<f32>,
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
    let _ = v;
    let h0 = tensor2(
        ex.iter().flat_map(|e| e.h0.iter().copied()).collect(),
        [b * t, d],
        dev,
    );
    let lp0 = log_softmax(h0.matmul(fz.e.clone()), 1);
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
    let n_train: usize = args.get(1).map_or(20000, |s| s.parse().unwrap());
    let n_test: usize = 200;
    let lr: f64 = args.get(2).map_or(3e-5, |s| s.parse().unwrap());
    let eval_every: usize = args.get(3).map_or(125, |s| s.parse().unwrap());
    let n_layers: usize = 1;
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
    let e: Tensor<2> = loader.tensor("model.embed_tokens.weight", [cfg.vocab_size, cfg.hidden_size])?;
    let fz = Frozen { cfg: cfg.clone(), norm: norm.clone(), e: e.transpose() };
    let norm_flex: Tensor<1> = Loader::new(&gguf, &device).tensor("model.norm.weight", [cfg.hidden_size])?;
    // Evaluations run on the plain device: forward passes through tracked parameters that are
    // never followed by a backward pass keep their graphs (gigabytes over a run).
    let e_flex: Tensor<2> = Loader::new(&gguf, &device).tensor("model.embed_tokens.weight", [cfg.vocab_size, cfg.hidden_size])?;
    let fzp = Frozen { cfg: cfg.clone(), norm: norm_flex.clone(), e: e_flex.transpose() };
    let first = cfg.num_layers - n_layers;
    let d = cfg.hidden_size;
    let (head_t, mid_t) = (tok.encode("...")?, tok.encode("\n\n")?);
    let init = Top { blocks: (first..cfg.num_layers).map(|i| load_block(&mut loader, &cfg, i)).collect::<Result<_, _>>()? }.valid();

    let t0 = std::time::Instant::now();
    // Held-out pairs first, from their own stream, so the test set does not depend on n_train.
    let mut ex_all: Vec<Vec<Ex>> = Vec::new();
    let mut dims = (0, 0);
    for (stream, n_total) in [(777u64, n_test), (12345u64, n_train)] {
        let mut rng = rng_from_seed(stream);
        let mut ex: Vec<Ex> = Vec::with_capacity(n_total);
        while ex.len() < n_total {
            let n = (n_total - ex.len()).min(64);
            let pairs = joint_ancestral(&lm, &prompt, tt, 5, n, &mut rng)?;
            let plain: Vec<u32> = pairs.iter().flat_map(|p| prompt.iter().chain(&p.tokens[..tt - 1]).copied()).collect();
            let shown: Vec<u32> = pairs
                .iter()
                .flat_map(|p| {
                    head_t.iter().chain(p.conditioning.as_ref().unwrap()).chain(&mid_t).chain(&prompt).chain(&p.tokens[..tt - 1]).copied()
                })
                .collect();
            let (sp, s) = (plain.len() / n, shown.len() / n);
            assert_eq!(shown.len(), s * n, "shown sequences differ in length");
            let pp = sp - (tt - 1);
            let p = s - (tt - 1);
            dims = (s, p);
            let h0 = rms_norm(base.residual_stream(&plain, n, cfg.num_layers)?, &norm_flex, cfg.rms_norm_eps)
                .slice([0..n, pp - 1..pp - 1 + tt, 0..d]);
            let h0: Vec<f32> = h0.into_data().to_vec().unwrap();
            let r: Vec<f32> = base.residual_stream(&shown, n, first)?.into_data().to_vec().unwrap();
            let x = Tensor::<3>::from_data(TensorData::new(r.clone(), [n, s, d]), &device);
            let hf: Vec<f32> = top_hidden(&init, &fzp, x, p, tt, &device).into_data().to_vec().unwrap();
            for (i, pr) in pairs.iter().enumerate() {
                ex.push(Ex {
                    tokens: pr.tokens[..tt].to_vec(),
                    resid: r[i * s * d..(i + 1) * s * d].to_vec(),
                    h0: h0[i * tt * d..(i + 1) * tt * d].to_vec(),
                    hf: hf[i * tt * d..(i + 1) * tt * d].to_vec(),
                });
            }
            if ex.len() % 2048 < 64 {
                eprintln!("stream {stream}: {} pairs, {:.0}s", ex.len(), t0.elapsed().as_secs_f64());
            }
        }
        ex_all.push(ex);
    }
    let (s, p) = dims;
    let train = ex_all.pop().unwrap();
    let test = ex_all.pop().unwrap();
    eprintln!("{} train + {} held-out pairs in {:.1}s", train.len(), test.len(), t0.elapsed().as_secs_f64());
    let mut top = Top { blocks: (first..cfg.num_layers).map(|i| load_block(&mut loader, &cfg, i)).collect::<Result<_, _>>()? };
    let mut optim = AdamConfig::new().init();
    let (m, se) = summary(&top.valid(), &fzp, &test, s, p, tt, &device);
    println!("online lr {lr} pairs 0: held-out {m:.3} ({se:.3})");
    let t0 = std::time::Instant::now();
    let mut tot = 0.0;
    let mut seen = 0;
    for (step, part) in train.chunks(batch).enumerate() {
        let refs: Vec<&Ex> = part.iter().collect();
        let (loss, _) = batch_eval(&top, &fz, &refs, s, p, tt, &ad);
        tot += f64::from(loss.clone().into_scalar::<f32>()) * refs.len() as f64;
        seen += refs.len();
        let grads = GradientsParams::from_grads(loss.backward(), &top);
        top = optim.step(lr, top, grads);
        if (step + 1) % eval_every == 0 || seen == train.len() {
            let (m, se) = summary(&top.valid(), &fzp, &test, s, p, tt, &device);
            let recent = &train[seen.saturating_sub(200)..seen];
            let (mt, _) = summary(&top.valid(), &fzp, recent, s, p, tt, &device);
            println!("online lr {lr} pairs {seen}: train nll {:.3} recent-train-gap {mt:.3} held-out {m:.3} ({se:.3}) {:.0}s", tot / seen as f64, t0.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
