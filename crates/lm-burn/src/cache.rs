//! KV caches for particle decoding: the prompt's keys and values computed once and shared by
//! all particles, and a preallocated per-particle cache for the generated tokens, written with
//! `slice_assign` (never grown with `cat`) and reordered by copying only the rows that change.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rayon::prelude::*;

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys [batch, kv heads, positions, head dim].
    pub k: Tensor<4>,
    /// Values, same shape.
    pub v: Tensor<4>,
}

/// The prompt's keys and values, batch 1, shared by every particle.
#[derive(Debug, Clone)]
pub struct PromptCache {
    /// One entry per layer, each [1, Hkv, P, hd].
    pub layers: Vec<LayerKv>,
    /// Prompt length P.
    pub len: usize,
}

/// The generated tokens' keys and values, one row per particle.
#[derive(Debug)]
pub struct ParticleCache {
    layers: Vec<LayerKv>,
    particles: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    device: Device,
}

impl ParticleCache {
    /// An empty cache of `capacity` positions for `particles` rows.
    pub fn new(
        num_layers: usize,
        particles: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Self {
        let zeros = || Tensor::<4>::zeros([particles, kv_heads, capacity, head_dim], device);
        Self {
            layers: (0..num_layers)
                .map(|_| LayerKv {
                    k: zeros(),
                    v: zeros(),
                })
                .collect(),
            particles,
            kv_heads,
            head_dim,
            capacity,
            len: 0,
            device: device.clone(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of particles.
    pub fn particles(&self) -> usize {
        self.particles
    }

    /// Makes room for one more position, doubling the buffers when full (amortised O(1)).
    pub fn reserve_one(&mut self) {
        if self.len < self.capacity {
            return;
        }
        let new_cap = (self.capacity * 2).max(8);
        let (k, h, d, len) = (self.particles, self.kv_heads, self.head_dim, self.len);
        for layer in &mut self.layers {
            let device = layer.k.device();
            for t in [&mut layer.k, &mut layer.v] {
                let bigger = Tensor::<4>::zeros([k, h, new_cap, d], &device);
                let old = t.clone().slice([0..k, 0..h, 0..len, 0..d]);
                *t = bigger.slice_assign([0..k, 0..h, 0..len, 0..d], old);
            }
        }
        self.capacity = new_cap;
    }

    /// Writes the new position's keys and values ([K, Hkv, 1, hd]) of `layer` at index `len`
    /// and returns views of positions 0..=len. Call [`ParticleCache::advance`] after the last
    /// layer.
    pub fn write(
        &mut self,
        layer: usize,
        k_new: Tensor<4>,
        v_new: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (k, h, d, t) = (self.particles, self.kv_heads, self.head_dim, self.len);
        let entry = &mut self.layers[layer];
        entry
            .k
            .inplace(|x| x.slice_assign([0..k, 0..h, t..t + 1, 0..d], k_new));
        entry
            .v
            .inplace(|x| x.slice_assign([0..k, 0..h, t..t + 1, 0..d], v_new));
        (
            entry.k.clone().slice([0..k, 0..h, 0..t + 1, 0..d]),
            entry.v.clone().slice([0..k, 0..h, 0..t + 1, 0..d]),
        )
    }

    /// Marks the position written by [`ParticleCache::write`] as cached.
    pub fn advance(&mut self) {
        self.len += 1;
    }

    /// Reorders the particles: row k becomes old row `ancestors[k]`. Only rows whose ancestor
    /// differs from themselves are copied, in place.
    pub fn reorder(&mut self, ancestors: &[usize]) {
        let changed: Vec<usize> = (0..self.particles).filter(|&k| ancestors[k] != k).collect();
        if changed.is_empty() || self.len == 0 {
            return;
        }
        let moves: Vec<(usize, usize)> = changed.iter().map(|&k| (k, ancestors[k])).collect();
        let len = self.len;
        // The CPU path copies only the cached positions, one tensor per task; a tensor it
        // cannot take (another backend) comes back and goes through burn's select below.
        let mut pending = Vec::new();
        for layer in &mut self.layers {
            for t in [&mut layer.k, &mut layer.v] {
                pending.push(t);
            }
        }
        let declined: Vec<&mut Tensor<4>> = pending
            .into_par_iter()
            .filter_map(|t| (!crate::cpu::reorder_cache_rows(t, &moves, len)).then_some(t))
            .collect();
        if declined.is_empty() {
            return;
        }
        let idx = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &self.device)
        };
        let src = idx(moves.iter().map(|&(_, s)| s as i64).collect());
        let dst = idx(moves.iter().map(|&(d, _)| d as i64).collect());
        let row = self.kv_heads * self.capacity * self.head_dim;
        let shape = [self.particles, self.kv_heads, self.capacity, self.head_dim];
        for t in declined {
            let rows = t
                .clone()
                .reshape([self.particles, row])
                .select(0, src.clone());
            t.inplace(|x| {
                x.reshape([shape[0], row])
                    .select_assign(0, dst.clone(), rows, IndexingUpdateOp::Assign)
                    .reshape(shape)
            });
        }
    }
}
