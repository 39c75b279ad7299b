//! The wgpu backend matches the CPU backend on the tiny models (run by
//! `cargo xtask check-backends`, which builds with `--features wgpu`; on a machine without a
//! GPU it uses Mesa's software Vulkan through wgpu's CPU adapter).
#![cfg(feature = "wgpu")]

mod common;

use common::reference_dir;
use lm_burn::{Backend, BurnLm, default_device};

#[test]
fn wgpu_logits_match_the_cpu_backend_on_every_tiny_model() {
    let backend: Backend = std::env::var("TSMC_WGPU_BACKEND")
        .unwrap_or_else(|_| "wgpu-cpu".into())
        .parse()
        .unwrap();
    let gpu = backend.device().unwrap();
    let ids = [5u32, 17, 250, 3, 99, 42, 7, 311, 128, 64, 12, 200];
    for name in ["llama", "llama-tied", "qwen2", "gpt2", "gpt-neo"] {
        let dir = reference_dir().join("tiny-models").join(name);
        let cpu = BurnLm::from_hf_dir(&dir, &default_device())
            .unwrap()
            .forward_logits(&ids)
            .unwrap();
        let wgpu = BurnLm::from_hf_dir(&dir, &gpu)
            .unwrap()
            .forward_logits(&ids)
            .unwrap();
        let diff = cpu
            .iter()
            .zip(&wgpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{name}: max |cpu - wgpu| = {diff}");
    }
}
