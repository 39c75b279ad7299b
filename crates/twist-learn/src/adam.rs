//! Adam in f64 for host-side parameters (the tabular twist), PyTorch's update rule.

use serde::{Deserialize, Serialize};

/// Adam's hyper-parameters (reference: 0.9, 0.999, 1e-8).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam state for a list of parameter groups.
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    steps: Vec<u64>,
}

impl Adam {
    /// State for groups of the given sizes.
    pub fn new(config: AdamConfig, sizes: Vec<usize>) -> Self {
        Self {
            config,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            steps: vec![0; sizes.len()],
        }
    }

    /// One bias-corrected step on group `g`.
    pub fn step(&mut self, g: usize, params: &mut [f64], grad: &[f64], lr: f64) {
        let c = self.config;
        self.steps[g] += 1;
        let t = self.steps[g] as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (((p, &gr), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m[g])
            .zip(&mut self.v[g])
        {
            *m = c.beta1 * *m + (1.0 - c.beta1) * gr;
            *v = c.beta2 * *v + (1.0 - c.beta2) * gr * gr;
            *p -= lr * (*m / bc1) / ((*v / bc2).sqrt() + c.eps);
        }
    }
}
