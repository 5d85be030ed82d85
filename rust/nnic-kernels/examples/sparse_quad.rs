//! Batched int8 sparse products against nnic's dense VNNI int8 GEMM, without Python:
//! `cargo run --release --example sparse_quad [rounds] [density]`.
//!
//! For BERT-base's shapes at 128 rows (M × K × N: 128×768×768, 128×768×3072, 128×3072×768) and a random
//! unstructured int8 weight (default density 0.1), it times `int8_linear` (dense, prepacked) and the sparse
//! layer (same codes, same per-token activation quantization) in interleaved rounds, and prints medians of
//! one-thread thread CPU time and of two-thread wall time, the ratio dense / sparse, the kernel the sparse
//! layer ran (`quad` or `tiled`) and the largest output difference (float rounding of the epilogue only).
//!
//! It also measures this core's `vpdpbusd` peak (16 independent register-only chains, one thread) and prints,
//! at one thread, the fraction of that peak each product reaches, counting the instructions it needs: dense
//! `m/16 · k/4 · n`, sparse `m/16 ·` (nonzero K-quads) — including everything around the products
//! (activation quantization, packing, epilogue), so it is the end-to-end efficiency of the call.
mod common;

use common::Rng;
use nnic_kernels::gemm::{int8_linear, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use nnic_kernels::sparse::{csr, SparseLinear, Values};
use std::time::Instant;

fn thread_cpu() -> f64 {
    nnic_kernels::clock::thread_cpu().expect("a thread CPU clock (Linux)")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `vpdpbusd` per second on one thread: 16 independent accumulators (5 cycles of latency each), register
/// operands only, thread CPU time; None without AVX-512 VNNI.
fn vpdpbusd_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni")) {
            return None;
        }
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn chains(iters: usize) -> i32 {
            use std::arch::x86_64::*;
            let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(-1));
            let mut acc = [_mm512_setzero_si512(); 16];
            for _ in 0..iters {
                for c in acc.iter_mut() {
                    *c = _mm512_dpbusd_epi32(*c, a, b);
                }
            }
            acc.iter().fold(0, |s, c| s.wrapping_add(_mm512_reduce_add_epi32(*c)))
        }
        let iters = 2_000_000;
        let mut best = 0f64;
        for _ in 0..5 {
            let t = thread_cpu();
            // SAFETY: the features were detected above.
            std::hint::black_box(unsafe { chains(iters) });
            best = best.max((16 * iters) as f64 / (thread_cpu() - t));
        }
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Nonzero K-quads (4 consecutive inputs of a row, any code nonzero) of a row-major `n × k` int8 weight.
fn nonzero_quads(dense: &[i8], n: usize, k: usize) -> usize {
    (0..n).map(|r| dense[r * k..(r + 1) * k].chunks(4).filter(|q| q.iter().any(|&c| c != 0)).count()).sum()
}

/// A random `n × k` int8 weight with `density` nonzeros: the sparse layer, the dense one of the same codes and
/// the weight's nonzero K-quads.
fn layer(rng: &mut Rng, n: usize, k: usize, density: f64) -> (SparseLinear, PackedLinear, usize) {
    let stride = k.div_ceil(8);
    let (mut bits, mut codes, mut dense) = (vec![0u8; n * stride], Vec::new(), vec![0i8; n * k]);
    for r in 0..n {
        for c in 0..k {
            if (rng.next() % 10_000) as f64 / 10_000.0 < density {
                let v = ((rng.next() % 254) as i32 - 127) as i8;
                bits[r * stride + c / 8] |= 1 << (c % 8);
                codes.push(v);
                dense[r * k + c] = v;
            }
        }
    }
    let scale: Vec<f32> = (0..n).map(|r| 0.01 + r as f32 * 1e-5).collect();
    let sparse = csr::from_bitmask(n, k, &bits, Values::I8(codes), scale.clone()).unwrap();
    (sparse, PackedLinear::new(&dense, n, k, &scale, &[]).unwrap(), nonzero_quads(&dense, n, k))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let density: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.1);
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!("density {density}, {rounds} interleaved rounds, medians; ratio = dense / sparse");
    let peak = vpdpbusd_peak();
    if let Some(p) = peak {
        println!("vpdpbusd peak, one thread: {:.2} G/s", p / 1e9);
    }
    for (m, k, n) in [(128usize, 768usize, 768usize), (128, 768, 3072), (128, 3072, 768)] {
        let (sp, de, quads) = layer(&mut rng, n, k, density);
        let groups = m.div_ceil(16) as f64;
        let (need_d, need_s) = (groups * (k.div_ceil(4) * n) as f64, groups * quads as f64);
        let x: Vec<f32> = (0..m * k).map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
        let (mut o_s, mut o_d) = (vec![0f32; m * n], vec![0f32; m * n]);
        let dense = |o: &mut [f32]| int8_linear(Path::active(), &x, m, &de, None, act, Activation::Identity, o).unwrap();
        let sparse = |o: &mut [f32]| sp.linear(&x, m, None, Some(act), o).unwrap();
        sparse(&mut o_s);
        dense(&mut o_d);
        let diff = o_s.iter().zip(&o_d).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let mag = o_d.iter().map(|v| v.abs()).fold(0f32, f32::max);
        for threads in [1usize, 2] {
            pool::set_num_threads(threads).unwrap();
            let (mut ts, mut td) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for (which, t) in [(0, &mut td), (1, &mut ts)] {
                    let (c0, w0) = (thread_cpu(), Instant::now());
                    if which == 0 { dense(&mut o_d) } else { sparse(&mut o_s) }
                    let dt = if threads == 1 { thread_cpu() - c0 } else { w0.elapsed().as_secs_f64() };
                    t.push(dt * 1e6);
                }
            }
            let (d, s) = (median(td), median(ts));
            println!(
                "{m}x{k}x{n} {threads} thread{} ({}): dense {d:8.1} µs  sparse {s:8.1} µs  ratio {:.2}  kernel {}  max diff {diff:.2e} of {mag:.2e}",
                if threads == 1 { " " } else { "s" },
                if threads == 1 { "thread CPU" } else { "wall" },
                d / s,
                sp.batched_kernel(true),
            );
            if let (Some(p), 1) = (peak, threads) {
                println!(
                    "    of the vpdpbusd peak: dense {:.0} %, sparse {:.0} % ({:.1} % of the quads nonzero: {:.2}x fewer instructions)",
                    100.0 * need_d / (d * 1e-6) / p,
                    100.0 * need_s / (s * 1e-6) / p,
                    100.0 * quads as f64 / (k.div_ceil(4) * n) as f64,
                    need_d / need_s,
                );
            }
        }
    }
}
