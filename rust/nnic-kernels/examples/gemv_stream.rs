//! How close the int8 GEMV (M = 1) comes to a plain read of its weights:
//! `cargo run --release --example gemv_stream [rounds] [k] [n]` (4096 × 4096 by default).
//!
//! The weights live in enough copies (over 400 MB) that each call reads a copy no call touched in the last 250 MB,
//! so every call streams from DRAM as a model's layer does (the L3 of the machines this ran on holds up to 260 MB);
//! the plain copies that the read cases sum are on 2 MiB pages where the OS gives them, as `PackedLinear` keeps
//! its weights (`nnic_kernels::huge`). Per round, interleaved, one call of each case on the next copy:
//! - `read 1t`: one thread sums a copy as 64-bit words (64-byte loads, four accumulators, `prefetcht1` 4 KiB
//!   ahead as the GEMV tile does): one core's stream;
//! - `read 2t`: the same on two threads, each its contiguous half (the partner polls for 200 µs after each job,
//!   so it is awake when the next round's read starts): the ceiling of a two-thread GEMV;
//! - `gemv 1t` / `gemv 2t`: `int8_linear` (f32 in and out, per-token activations) on one / two threads of the
//!   kernel pool (this process has no OpenMP team: the two-thread call runs on nnic's own helpers);
//! - `i32 2t`: the exact s8 product (`matmul_i8`), no float epilogue.
//!
//! Printed: the median wall time per call, GB/s of weight bytes, and each case against `read` on as many
//! threads. Report the load average beside the numbers (other processes share the memory bus). `CLOCK=cpu` times
//! every case in process CPU time instead (all threads: a loaded machine's descheduling does not enter it, a
//! stalled load does).
//!
//! With `PROBE=1` instead: one thread's read rate with software prefetch of each hint (`prefetcht0/t1/t2/nta`)
//! and distance, in thread CPU time: what the GEMV tile's prefetch (`GEMV_AHEAD` in `src/gemm/micro.rs`) was
//! chosen from. `PF=bytes` sets the read cases' prefetch distance (default 4096, 0: none). `M=rows` runs the
//! GEMM cases with that many activation rows (default 1): at M = 16 the product's compute (0.57 ms at the 2-core
//! VNNI peak for 4096²) and the weight stream (~0.6 ms from DRAM) are about equal, and this shows which one it
//! is held to.
mod common;

use common::Rng;
use nnic_kernels::gemm::{int8_linear, matmul_i8, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::huge::HugeBuf;
use nnic_kernels::pool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Sum of `b` as wrapping u64 words: 64-byte AVX-512 loads, four independent accumulators, and `prefetcht1`
/// [`pf`] bytes ahead (as the GEMV tile), so that it reads at the memory system's speed.
fn byte_sum(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present.
        return unsafe { byte_sum_avx512(b) };
    }
    b.chunks_exact(8).fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap())))
}

/// Prefetch distance of the read probe, bytes (`PF` in the environment; 0: none).
fn pf() -> usize {
    static P: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *P.get_or_init(|| std::env::var("PF").ok().and_then(|v| v.parse().ok()).unwrap_or(4096))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn byte_sum_avx512(b: &[u8]) -> u64 {
    unsafe { byte_sum_hint::<{ std::arch::x86_64::_MM_HINT_T1 }>(b, pf()) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn byte_sum_hint<const H: i32>(b: &[u8], d: usize) -> u64 {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [_mm512_setzero_si512(); 4];
        let p = b.as_ptr();
        let blocks = b.len() / 256;
        for i in 0..blocks {
            let q = p.add(i * 256);
            if d > 0 {
                for l in 0..4 {
                    _mm_prefetch::<H>(q.wrapping_add(d + 64 * l) as *const i8);
                }
            }
            for (l, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(q.add(64 * l) as *const __m512i));
            }
        }
        let t = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        let rest = b[blocks * 256..].chunks_exact(8).fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap())));
        (_mm512_reduce_add_epi64(t) as u64).wrapping_add(rest)
    }
}

/// A partner thread that sums a slice when given one: it polls for 200 µs after each job (the next one of a
/// round comes within that), then parks, so that it leaves the core to the other cases.
struct Partner {
    job: Arc<(AtomicU64, AtomicUsize, AtomicUsize, AtomicU64)>, // generation, ptr, len, result+done
    thread: std::thread::Thread,
}

impl Partner {
    fn start() -> Partner {
        let job = Arc::new((AtomicU64::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0)));
        let j = job.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = 0;
            let mut idle = Instant::now();
            loop {
                let g = j.0.load(Ordering::Acquire);
                if g == seen {
                    if idle.elapsed().as_micros() > 200 {
                        std::thread::park();
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                seen = g;
                if g == u64::MAX {
                    return;
                }
                // SAFETY: the caller keeps the slice alive until `done` is set.
                let s = unsafe { std::slice::from_raw_parts(j.1.load(Ordering::Relaxed) as *const u8, j.2.load(Ordering::Relaxed)) };
                let r = byte_sum(s);
                j.3.store(r | 1, Ordering::Release);
                idle = Instant::now();
            }
        });
        Partner { job, thread: handle.thread().clone() }
    }

    /// Sums `b`: the first half here, the second on the partner.
    fn sum2(&self, b: &[u8]) -> u64 {
        let half = b.len() / 2 / 64 * 64;
        let j = &self.job;
        j.3.store(0, Ordering::Relaxed);
        j.1.store(b[half..].as_ptr() as usize, Ordering::Relaxed);
        j.2.store(b.len() - half, Ordering::Relaxed);
        j.0.fetch_add(1, Ordering::Release);
        self.thread.unpark();
        let mine = byte_sum(&b[..half]);
        loop {
            let r = j.3.load(Ordering::Acquire);
            if r != 0 {
                return mine.wrapping_add(r);
            }
            std::hint::spin_loop();
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.job.0.store(u64::MAX, Ordering::Release);
        self.thread.unpark();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments")).collect();
    let rounds = args.first().copied().unwrap_or(31);
    let (k, n) = (args.get(1).copied().unwrap_or(4096), args.get(2).copied().unwrap_or(4096));
    let bytes = k * n;
    let copies = (420_000_000 / bytes).max(2);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w: Vec<i8> = (0..bytes).map(|_| rng.next() as i8).collect();
    let scale: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-6).collect();
    let packed: Vec<PackedLinear> = (0..copies).map(|_| PackedLinear::new(&w, n, k, &scale, &[]).unwrap()).collect();
    // On 2 MiB pages like the packed weights (see `nnic_kernels::huge`), so that the read is the GEMV's ceiling.
    let plain: Vec<HugeBuf<u8>> = (0..copies)
        .map(|_| {
            let mut b = HugeBuf::<u8>::zeroed(bytes);
            b.iter_mut().zip(&w).for_each(|(d, &v)| *d = v as u8);
            b
        })
        .collect();
    let m: usize = std::env::var("M").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let xa: Vec<i8> = (0..m * k).map(|i| (i % 251) as i8).collect();
    let mut out = vec![0f32; m * n];
    let mut out_i = vec![0i32; m * n];
    let path = Path::active();
    let act = ActQuant::DynamicPerRow { symmetric: true, reduce_range: false };
    if std::env::var("PROBE").is_ok_and(|v| v == "1") {
        probe_prefetch(&plain, rounds);
        return;
    }
    let cpu = std::env::var("CLOCK").is_ok_and(|v| v == "cpu");
    let partner = Partner::start();
    let cases = ["read 1t", "read 2t", "gemv 1t", "gemv 2t", "i32 2t"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut sink = 0u64;
    let mut next = 0usize;
    for round in 0..rounds + 2 {
        for (c, name) in cases.iter().enumerate() {
            let i = next % copies;
            next += 1;
            let threads = if name.ends_with("2t") { 2 } else { 1 };
            if pool::num_threads() != threads && name.starts_with(['g', 'i']) {
                pool::set_num_threads(threads).unwrap();
                // a new pool starts a new helper: one untimed call first, so that it is running
                int8_linear(path, &x, m, &packed[0], None, act, Activation::Identity, &mut out).unwrap();
            }
            let (t0, c0) = (Instant::now(), process_cpu());
            match *name {
                "read 1t" => sink = sink.wrapping_add(byte_sum(&plain[i])),
                "read 2t" => sink = sink.wrapping_add(partner.sum2(&plain[i])),
                "gemv 1t" | "gemv 2t" => {
                    int8_linear(path, &x, m, &packed[i], None, act, Activation::Identity, &mut out).unwrap()
                }
                _ => matmul_i8(path, &xa, m, packed[i].packed(), &mut out_i).unwrap(),
            }
            let dt = if cpu { process_cpu() - c0 } else { t0.elapsed().as_secs_f64() };
            if round >= 2 {
                times[c].push(dt);
            }
        }
    }
    std::hint::black_box(sink);
    println!("GEMV (M = {m}) {k}x{n} int8 ({:.1} MB of weights, {copies} copies), path {}, medians of {rounds} rounds", bytes as f64 / 1e6, path.name());
    let med: Vec<f64> = times.into_iter().map(median).collect();
    for (c, name) in cases.iter().enumerate() {
        let base = if name.ends_with("2t") { med[1] } else { med[0] };
        println!(
            "  {name:8} {:8.1} us  {:5.1} GB/s  {:5.1} % of read",
            med[c] * 1e6,
            bytes as f64 / med[c] / 1e9,
            100.0 * base / med[c]
        );
    }
}

/// With `PROBE=1`: one thread's read rate with software prefetch of each hint and distance, interleaved rounds,
/// thread CPU time (what the GEMV tile's prefetch should use).
fn probe_prefetch(plain: &[HugeBuf<u8>], rounds: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_NTA, _MM_HINT_T0, _MM_HINT_T1, _MM_HINT_T2};
        type F = unsafe fn(&[u8], usize) -> u64;
        let cases: [(&str, F, usize); 10] = [
            ("none", byte_sum_hint::<_MM_HINT_T0>, 0),
            ("T0 1K", byte_sum_hint::<_MM_HINT_T0>, 1024),
            ("T0 2K", byte_sum_hint::<_MM_HINT_T0>, 2048),
            ("T0 4K", byte_sum_hint::<_MM_HINT_T0>, 4096),
            ("T0 8K", byte_sum_hint::<_MM_HINT_T0>, 8192),
            ("T1 4K", byte_sum_hint::<_MM_HINT_T1>, 4096),
            ("T1 8K", byte_sum_hint::<_MM_HINT_T1>, 8192),
            ("T2 8K", byte_sum_hint::<_MM_HINT_T2>, 8192),
            ("T2 16K", byte_sum_hint::<_MM_HINT_T2>, 16384),
            ("NTA 2K", byte_sum_hint::<_MM_HINT_NTA>, 2048),
        ];
        let mut times = vec![Vec::new(); cases.len()];
        let mut next = 0;
        let mut sink = 0u64;
        for _ in 0..rounds {
            for (c, (_, f, d)) in cases.iter().enumerate() {
                let b = &plain[next % plain.len()];
                next += 1;
                let t0 = thread_cpu();
                // SAFETY: AVX-512F is present on the machines this probe is for (checked below).
                sink = sink.wrapping_add(unsafe { f(b, *d) });
                times[c].push(thread_cpu() - t0);
            }
        }
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        std::hint::black_box(sink);
        let bytes = plain[0].len() as f64;
        println!("one thread's read of {:.1} MB, software prefetch hint and distance, thread CPU time, medians of {rounds}", bytes / 1e6);
        for (c, (name, _, _)) in cases.iter().enumerate() {
            let t = median(times[c].clone());
            println!("  {name:7} {:8.1} us  {:5.1} GB/s", t * 1e6, bytes / t / 1e9);
        }
    }
}

fn thread_cpu() -> f64 {
    nnic_kernels::clock::thread_cpu().expect("a thread CPU clock (Linux)")
}

/// Seconds of CPU this process has used (all threads; `CLOCK=cpu` times the cases with it: what a loaded machine's
/// descheduling does not inflate).
fn process_cpu() -> f64 {
    nnic_kernels::clock::process_cpu().expect("a process CPU clock (Linux)")
}
