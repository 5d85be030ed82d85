//! Shared helpers of the integration tests: a tiny PRNG, ISA switching and sort-based references.
#![allow(dead_code)]
use nnic_kernels::cpu::{self, Isa};
use std::sync::Mutex;

static ISA_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` once per ISA this CPU supports, with that ISA active (serialised across test threads).
pub fn for_each_isa(mut f: impl FnMut(Isa)) {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for isa in cpu::supported() {
        cpu::set_isa(Some(isa)).unwrap();
        f(isa);
    }
    cpu::set_isa(None).unwrap();
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Roughly normal floats (sum of uniforms), scaled.
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32).sum();
        (s - 2.0) * scale
    }
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
    /// Small integer-valued floats: many ties, both signs, ±0.0.
    pub fn ties(&mut self, n: usize, levels: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = (self.next_u64() % levels) as f32;
                if self.next_u64().is_multiple_of(2) { -v } else { v }
            })
            .collect()
    }
}

/// k-th smallest |x| by a full sort (1-based).
pub fn kth_ref(x: &[f32], k: usize) -> f32 {
    let mut a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    a.sort_by(|a, b| a.partial_cmp(b).unwrap());
    a[k - 1]
}

/// Keep-mask by a stable sort of |x|: the first k indices are pruned.
pub fn mask_ref(x: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].abs().partial_cmp(&x[b].abs()).unwrap());
    let mut keep = vec![true; x.len()];
    for &i in &idx[..k] {
        keep[i] = false;
    }
    keep
}
