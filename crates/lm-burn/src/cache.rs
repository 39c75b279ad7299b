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
    /// Empty until the first position is written, so that [`ParticleCache::reserve`] can size
    /// the buffers before anything is allocated.
    layers: Vec<LayerKv>,
    num_layers: usize,
    particles: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions the allocated buffers hold (0 before the first write).
    capacity: usize,
    /// Positions the first allocation will hold.
    planned: usize,
    len: usize,
    device: Device,
}

impl ParticleCache {
    /// An empty cache for `particles` rows that will first hold `capacity` positions. Nothing
    /// is allocated until the first position is written.
    pub fn new(
        num_layers: usize,
        particles: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Self {
        Self {
            layers: Vec::new(),
            num_layers,
            particles,
            kv_heads,
            head_dim,
            capacity: 0,
            planned: capacity.max(1),
            len: 0,
            device: device.clone(),
        }
    }

    /// Positions the buffers hold (or will hold at their first allocation).
    pub fn capacity(&self) -> usize {
        if self.layers.is_empty() {
            self.planned
        } else {
            self.capacity
        }
    }

    /// Makes room for `more` positions beyond those cached, so that a session that knows how
    /// many tokens it will generate allocates exactly that once instead of doubling (at
    /// K = 256 and T = 20 doubling held 32 positions, 141 MiB more than needed on the default
    /// model). Before the first write it only sets the size of the first allocation.
    pub fn reserve(&mut self, more: usize) {
        let need = self.len.saturating_add(more);
        if self.layers.is_empty() {
            self.planned = need.max(1);
        } else if need > self.capacity {
            self.grow_to(need);
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

    /// Makes room for one more position: the first call allocates the planned capacity, later
    /// ones double the buffers when full (amortised O(1)).
    pub fn reserve_one(&mut self) {
        if self.layers.is_empty() {
            let (k, h, d, cap) = (self.particles, self.kv_heads, self.head_dim, self.planned);
            let zeros = || Tensor::<4>::zeros([k, h, cap, d], &self.device);
            self.layers = (0..self.num_layers)
                .map(|_| LayerKv {
                    k: zeros(),
                    v: zeros(),
                })
                .collect();
            self.capacity = cap;
            return;
        }
        if self.len < self.capacity {
            return;
        }
        self.grow_to((self.capacity * 2).max(8));
    }

    fn grow_to(&mut self, new_cap: usize) {
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

    /// A cache of `parents.dims()[0]` rows, row j a copy of this cache's row `parents[j]`
    /// (the caller checks the indices), with the same capacity.
    pub fn branch(&self, parents: &Tensor<1, Int>) -> Self {
        let (n, idx) = (parents.dims()[0], parents);
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| LayerKv {
                    k: l.k.clone().select(0, idx.clone()),
                    v: l.v.clone().select(0, idx.clone()),
                })
                .collect(),
            particles: n,
            device: self.device.clone(),
            ..*self
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(particles: usize, value: f32) -> Tensor<4> {
        Tensor::<4>::full([particles, 1, 1, 2], value, &crate::default_device())
    }

    fn write_position(cache: &mut ParticleCache, value: f32) {
        cache.reserve_one();
        let p = cache.particles();
        for layer in 0..2 {
            cache.write(layer, kv(p, value), kv(p, -value));
        }
        cache.advance();
    }

    fn cached_keys(cache: &mut ParticleCache) -> Vec<f32> {
        let p = cache.particles();
        cache
            .write(0, kv(p, 0.0), kv(p, 0.0))
            .0
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn a_reservation_before_the_first_write_sizes_the_only_allocation() {
        let mut cache = ParticleCache::new(2, 3, 1, 2, 32, &crate::default_device());
        assert_eq!(cache.capacity(), 32);
        cache.reserve(20);
        assert_eq!(cache.capacity(), 20);
        for t in 0..20 {
            write_position(&mut cache, t as f32);
            assert_eq!(cache.capacity(), 20);
        }
        // Past the reservation the buffers double, keeping what was cached.
        write_position(&mut cache, 20.0);
        assert_eq!(cache.capacity(), 40);
        cache.reserve_one();
        let keys = cached_keys(&mut cache);
        let firsts: Vec<f32> = keys.chunks(2).take(21).map(|c| c[0]).collect();
        assert_eq!(firsts, (0..21).map(|t| t as f32).collect::<Vec<_>>());
    }

    #[test]
    fn a_reservation_after_writes_grows_to_exactly_what_it_asks() {
        let mut cache = ParticleCache::new(2, 2, 1, 2, 4, &crate::default_device());
        for t in 0..3 {
            write_position(&mut cache, t as f32 + 1.0);
        }
        assert_eq!(cache.capacity(), 4);
        cache.reserve(1);
        assert_eq!(cache.capacity(), 4, "room already there");
        cache.reserve(7);
        assert_eq!(cache.capacity(), 10);
        cache.reserve_one();
        let keys = cached_keys(&mut cache);
        // Particle 0, positions 0..3 kept; position 3 is the probe just written (0).
        let firsts: Vec<f32> = keys.chunks(2).take(4).map(|c| c[0]).collect();
        assert_eq!(firsts, vec![1.0, 2.0, 3.0, 0.0]);
    }

    #[test]
    fn a_reservation_of_nothing_still_allocates_one_position() {
        let mut cache = ParticleCache::new(2, 1, 1, 2, 8, &crate::default_device());
        cache.reserve(0);
        assert_eq!(cache.capacity(), 1);
        write_position(&mut cache, 1.0);
        write_position(&mut cache, 2.0);
        assert_eq!(cache.capacity(), 8);
        assert_eq!(cache.len(), 2);
    }
}
