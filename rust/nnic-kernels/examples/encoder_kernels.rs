//! Times the encoder kernels at BERT-base shapes on one thread, on every ISA or the one named:
//! `cargo run --release --example encoder_kernels [scalar|avx2|avx512]`. The kernel pool has one thread, so the
//! attention runs on the calling thread (its CPU time is measured); the skip LayerNorm's rows run on the pool's.
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::attention::{attention, Operand, Shape};
use nnic_kernels::norm::skip_layer_norm;
use nnic_kernels::{cpu, pool};
use std::time::Instant;

/// Minimum seconds of `n` calls: thread CPU time where Linux reports it, else wall time.
fn best_of(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let now = || thread_cpu().unwrap_or_else(|| start.elapsed().as_secs_f64());
    (0..n).map(|_| {
        let t = now();
        f();
        now() - t
    }).fold(f64::INFINITY, f64::min)
}

fn main() {
    pool::set_num_threads(1).unwrap();
    let (batch, seq, heads, head_dim) = (8, 128, 12, 64);
    let hid = heads * head_dim;
    let qkv: Vec<f32> = (0..batch * seq * 3 * hid).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut out = vec![0.0f32; batch * seq * hid];
    let only = std::env::args().nth(1).map(|n| cpu::Isa::parse(&n).unwrap());
    for isa in cpu::supported().into_iter().filter(|i| only.is_none_or(|o| o == *i)) {
        cpu::set_isa(Some(isa)).unwrap();
        let s = Shape { batch, seq, heads, head_dim };
        let op = |offset| Operand { data: &qkv, offset, row_stride: 3 * hid };
        let t = best_of(5, || attention(op(0), op(hid), op(2 * hid), s, 0.125, None, &mut out).unwrap());
        let macs = 2.0 * (batch * heads * seq * seq * head_dim) as f64;
        println!("{isa:?}: attention {batch}x{seq}, {heads} heads of {head_dim}: {:.2} ms, {:.1} GMAC/s", t * 1e3, macs / t / 1e9);
        let (x, r) = (&qkv[..batch * seq * hid], &qkv[batch * seq * hid..2 * batch * seq * hid]);
        let g = vec![1.0f32; hid];
        let t = best_of(9, || skip_layer_norm(x, r, &g, &g, 1e-12, &mut out).unwrap());
        println!("{isa:?}: skip_layer_norm {}x{hid}: {:.3} ms", batch * seq, t * 1e3);
    }
}
