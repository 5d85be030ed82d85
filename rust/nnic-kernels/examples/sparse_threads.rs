//! Why sparse products do or do not scale to two threads, without Python:
//! `cargo run --release --example sparse_threads [calls] [case prefix]` (batch 1), with `BATCHED=1` (batch 16 and
//! 128: the calling thread's CPU time at one and two threads), or `TRANSPOSE=1` (the batched kernels' input
//! transposition, row by row against column blocks).
//!
//! For each layout (4096x4096: 90 % CSR, 70 % bitmask, 2:4, 90 % int8 VNNI) it prints, as thread CPU time per call
//! (not inflated by other processes while a thread waits for a core):
//! - `alone`: one thread, one call after another;
//! - `pair`: two threads each running their own one-thread calls at the same time on the same weight: what one
//!   core gets from the memory system when the other streams too (the ceiling of a two-thread split);
//! - `split`: the calling thread's CPU time and the wall time of one two-thread call;
//! - with `PROBE=1` instead: what bounds the batch-1 kernels, as loops of one instruction kind over the real
//!   weights (not products): the 90 % weight's 16-lane gathers alone (no values, no FMA), and the bitmask
//!   expansions alone (mask move + `vexpandps` per 16 inputs, mask move + `vpexpandb` per 64), in cycles per
//!   stored value and per block, beside the kernels themselves;
//!
//! and, for each, core clock cycles per stored value (N:M: per slot, padding included): thread CPU time times the
//! core clock, which is measured first (a chain of dependent integer adds, one cycle each); for `split`, wall
//! time times the clock times two threads, so a perfect split costs what `alone` costs. It also prints the
//! density from which batch-1 products read the bitmask instead of gathering (`sparse::bitmask_break_even`).
mod common;

use common::Rng;
use nnic_kernels::gemm::ActQuant;
use nnic_kernels::pool;
use nnic_kernels::sparse::{self, csr, nm, Index, SparseLinear, Values};
use std::time::Instant;

fn thread_cpu() -> f64 {
    nnic_kernels::clock::thread_cpu().expect("a thread CPU clock (Linux)")
}

fn csr(rng: &mut Rng, n: usize, k: usize, density: f64, int8: bool) -> SparseLinear {
    let stride = k.div_ceil(8);
    let mut bits = vec![0u8; n * stride];
    let mut count = 0;
    for r in 0..n {
        for c in 0..k {
            if (rng.next() % 10_000) as f64 / 10_000.0 < density {
                bits[r * stride + c / 8] |= 1 << (c % 8);
                count += 1;
            }
        }
    }
    let v = if int8 { Values::I8((0..count).map(|_| (rng.next() % 255) as i8).collect()) } else { Values::F32((0..count).map(|_| rng.f()).collect()) };
    let s = if int8 { vec![0.01; n] } else { vec![] };
    csr::from_bitmask(n, k, &bits, v, s).unwrap()
}

fn two_four(rng: &mut Rng, rows: usize, k: usize) -> SparseLinear {
    let (len, bytes) = nm::row_sizes(k, 2, 4);
    let mut idx = vec![0u8; rows * bytes];
    for r in 0..rows {
        for slot in 0..len {
            let p = (slot % 2) as u8 * 2 + (rng.next() % 2) as u8;
            idx[r * bytes + slot / 2] |= p << ((slot & 1) * 4);
        }
    }
    nm::from_parts(rows, k, 2, 4, idx, Values::F32((0..rows * len).map(|_| rng.f()).collect()), vec![]).unwrap()
}

/// Core clock in GHz: 2^24 dependent one-cycle adds, thread CPU time, best of 15.
fn core_ghz() -> f64 {
    let n: u64 = 1 << 24;
    let best = (0..15)
        .map(|_| {
            let c0 = thread_cpu();
            let mut acc = 0u64;
            for i in 0..n {
                // SAFETY: one register add; the chain through `acc` makes each wait for the previous one.
                unsafe { std::arch::asm!("add {a}, {b}", a = inout(reg) acc, b = in(reg) i, options(pure, nomem, nostack)) };
            }
            std::hint::black_box(acc);
            thread_cpu() - c0
        })
        .fold(f64::INFINITY, f64::min);
    n as f64 / best / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// (thread CPU µs per call, wall µs per call), medians over `calls` single calls.
fn time_calls(w: &SparseLinear, x: &[f32], act: Option<ActQuant>, calls: usize) -> (f64, f64) {
    let mut out = vec![0f32; w.out_features()];
    let (mut c, mut t) = (Vec::new(), Vec::new());
    for _ in 0..calls {
        let (c0, t0) = (thread_cpu(), Instant::now());
        w.linear(x, 1, None, act, &mut out).unwrap();
        c.push((thread_cpu() - c0) * 1e6);
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    (median(c), median(t))
}


/// The gathers of a CSR weight alone: every row's column indices gathered from `x` 16 at a time and summed
/// (no values, no FMA, no tail), the kernel's loop with everything but the gathers taken out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn gathers_only(w: &SparseLinear, x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let Index::Csr { row_ptr, cols, .. } = w.index() else { return 0.0 };
    let mut acc = _mm512_setzero_ps();
    for r in 0..w.out_features() {
        let (a, b) = (row_ptr[r], row_ptr[r + 1]);
        let mut j = a;
        while j + 16 <= b {
            // SAFETY: 16 indices inside the row; every index < k = x.len().
            let i = unsafe { _mm512_cvtepu16_epi32(_mm256_loadu_si256(cols.as_ptr().add(j) as *const __m256i)) };
            acc = _mm512_add_ps(acc, unsafe { _mm512_i32gather_ps::<4>(i, x.as_ptr()) });
            j += 16;
        }
    }
    _mm512_reduce_add_ps(acc)
}

/// The expansions of a bitmask alone: per `lanes` inputs (16: `vexpandps`, 64: `vpexpandb`) one mask move and one
/// expansion of a fixed register, summed (no value loads, no products).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
unsafe fn expansions_only(bits: &[u8], lanes: usize) -> i32 {
    use std::arch::x86_64::*;
    let src = _mm512_set1_epi8(1);
    let mut acc = _mm512_setzero_si512();
    let words = bits.len() / 8;
    for i in 0..words {
        // SAFETY: i < bits.len() / 8.
        let word = unsafe { (bits.as_ptr() as *const u64).add(i).read_unaligned() };
        if lanes == 64 {
            acc = _mm512_add_epi32(acc, _mm512_maskz_expand_epi8(word, src));
        } else {
            for q in 0..4 {
                let m = (word >> (16 * q)) as u16;
                acc = _mm512_add_epi32(acc, _mm512_castps_si512(_mm512_maskz_expand_ps(m, _mm512_castsi512_ps(src))));
            }
        }
    }
    _mm512_reduce_add_epi32(acc)
}

/// `PROBE=1`: the instruction floors of the batch-1 kernels (see the module docs), one thread.
#[cfg(target_arch = "x86_64")]
fn probe(ghz: f64, cases: &[(&str, SparseLinear, Option<ActQuant>)], x: &[f32], calls: usize) {
    if nnic_kernels::cpu::active() != nnic_kernels::cpu::Isa::Avx512 || !nnic_kernels::cpu::has_vnni_vbmi2() {
        println!("PROBE needs AVX-512 with VBMI2");
        return;
    }
    pool::set_num_threads(1).unwrap();
    for (name, w, act) in cases {
        let Index::Csr { bits, .. } = w.index() else { continue };
        let lanes = if act.is_some() { 64 } else { 16 };
        let blocks = (w.out_features() * w.in_features()).div_ceil(lanes) as f64;
        let (mut kernel, mut gathers, mut expands) = (Vec::new(), Vec::new(), Vec::new());
        let mut out = vec![0f32; w.out_features()];
        for _ in 0..calls {
            let c0 = thread_cpu();
            w.linear(x, 1, None, *act, &mut out).unwrap();
            kernel.push(thread_cpu() - c0);
            let c0 = thread_cpu();
            // SAFETY: AVX-512 checked above; the weight's indices are < k.
            std::hint::black_box(unsafe { gathers_only(w, x) });
            gathers.push(thread_cpu() - c0);
            let c0 = thread_cpu();
            // SAFETY: AVX-512 with VBMI2 checked above.
            std::hint::black_box(unsafe { expansions_only(bits, lanes) });
            expands.push(thread_cpu() - c0);
        }
        let cyc = |v: Vec<f64>| median(v) * 1e9 * ghz;
        let (k, g, e) = (cyc(kernel), cyc(gathers), cyc(expands));
        let nnz = w.nnz() as f64;
        println!(
            "{name:12} kernel ({}) {:5.2} cyc/value = {:5.2} per {lanes}-input block | gathers alone {:5.2} cyc/value | mask move + expansion alone {:5.2} cyc/value = {:5.2} per {lanes}-input block",
            w.gemv_kernel(act.is_some()), k / nnz, k / blocks, g / nnz, e / nnz, e / blocks
        );
    }
}

fn main() {
    let calls: usize = std::env::args().nth(1).map_or(400, |a| a.parse().expect("calls"));
    let only = std::env::args().nth(2);
    if std::env::var("TRANSPOSE").is_ok() {
        // the batched kernels' transposition of x[m, k] into [k, W] tiles: row by row over all of k (as it was)
        // against 128-column blocks (as spmm.rs does it now, here on one thread), interleaved, thread CPU time
        let row_by_row = |x: &[f32], m: usize, k: usize, w: usize, xt: &mut [f32]| {
            for t in 0..m.div_ceil(w) {
                for i in 0..w.min(m - t * w) {
                    for c in 0..k {
                        xt[t * k * w + c * w + i] = x[(t * w + i) * k + c];
                    }
                }
            }
        };
        let blocked = |x: &[f32], m: usize, k: usize, w: usize, xt: &mut [f32]| {
            for t in 0..m.div_ceil(w) {
                for c0 in (0..k).step_by(128) {
                    for i in 0..w.min(m - t * w) {
                        for c in c0..(c0 + 128).min(k) {
                            xt[t * k * w + c * w + i] = x[(t * w + i) * k + c];
                        }
                    }
                }
            }
        };
        let mut rng = Rng(2);
        for (m, w) in [(16usize, 16usize), (128, 64)] {
            let x: Vec<f32> = (0..m * 4096).map(|_| rng.f()).collect();
            let mut xt = vec![0f32; m.div_ceil(w) * w * 4096];
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..31 {
                let c0 = thread_cpu();
                row_by_row(&x, m, 4096, w, &mut xt);
                a.push((thread_cpu() - c0) * 1e6);
                let c0 = thread_cpu();
                blocked(&x, m, 4096, w, std::hint::black_box(&mut xt));
                b.push((thread_cpu() - c0) * 1e6);
            }
            println!("transpose {m} x 4096 (W = {w}): row by row {:.0} us, 128-column blocks {:.0} us (one thread)", median(a), median(b));
        }
        return;
    }
    if std::env::var("BATCHED").is_ok() {
        let mut rng = Rng(1);
        let w = csr(&mut rng, 4096, 4096, 0.1, false);
        for m in [16usize, 128] {
            let x: Vec<f32> = (0..m * 4096).map(|_| rng.f()).collect();
            let mut out = vec![0f32; m * 4096];
            for th in [1, 2] {
                pool::set_num_threads(th).unwrap();
                let mut c = Vec::new();
                for _ in 0..20 {
                    let c0 = thread_cpu();
                    w.linear(&x, m, None, None, &mut out).unwrap();
                    c.push((thread_cpu() - c0) * 1e6);
                }
                println!("batch {m} threads {th}: caller cpu {:.0} us", median(c));
            }
        }
        return;
    }
    let ghz = core_ghz();
    let isa = nnic_kernels::cpu::active();
    println!(
        "core clock {ghz:.2} GHz (measured), ISA {}, batch-1 bitmask kernel from density {:.3}",
        isa.name(),
        sparse::bitmask_break_even(isa)
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let k = 4096;
    let x: Vec<f32> = (0..k).map(|_| rng.f()).collect();
    let act = Some(ActQuant::DynamicPerRow { symmetric: false, reduce_range: false });
    let cases: Vec<(&str, SparseLinear, Option<ActQuant>)> = vec![
        ("90% csr", csr(&mut rng, 4096, k, 0.1, false), None),
        ("70% bitmask", csr(&mut rng, 4096, k, 0.3, false), None),
        ("2:4", two_four(&mut rng, 4096, k), None),
        ("90% int8", csr(&mut rng, 4096, k, 0.1, true), act),
    ];
    if std::env::var("PROBE").is_ok() {
        #[cfg(target_arch = "x86_64")]
        probe(ghz, &cases, &x, calls.min(60));
        return;
    }
    for (name, w, act) in cases.iter().filter(|c| only.as_deref().is_none_or(|o| c.0.starts_with(o))) {
        pool::set_num_threads(1).unwrap();
        time_calls(w, &x, *act, 20);
        let alone = time_calls(w, &x, *act, calls);
        let pair: Vec<(f64, f64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2).map(|_| s.spawn(|| time_calls(w, &x, *act, calls))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        pool::set_num_threads(2).unwrap();
        time_calls(w, &x, *act, 20);
        let split = time_calls(w, &x, *act, calls);
        let mb = w.stream_bytes() as f64 / 1e6;
        let cyc = |us: f64| us * 1e3 * ghz / w.nnz() as f64;
        println!(
            "{name:12} {mb:5.2} MB  alone {:6.1} us ({:4.1} GB/s, {:4.2} cyc/value)  pair {:6.1} / {:6.1} us ({:4.1} GB/s each)  split: caller cpu {:6.1} us, wall {:6.1} us ({:4.1} GB/s, {:4.2} thread-cyc/value)",
            alone.0, mb * 1e3 / alone.0, cyc(alone.0), pair[0].0, pair[1].0, mb * 1e3 / pair[0].0.max(pair[1].0), split.0, split.1, mb * 1e3 / split.1, 2.0 * cyc(split.1)
        );
    }
}
