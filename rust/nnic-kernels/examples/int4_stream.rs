//! Where a cold int4 GEMV's time goes beside its bytes: `cargo run --release --example int4_stream [rounds]`.
//!
//! 4096 × 4096 (`N=`, `K=`), groups of 32, 8-bit double-quantized scales (`GroupScales::U8`, the smallest format),
//! one thread in thread CPU time (`THREADS=2`: wall time). Enough packed copies that every call reads a copy no
//! call touched for ~100 MB (each streams from DRAM, as a decoder's layer does). Per round, interleaved (order
//! reversed every other round), one call of each case on the next copy:
//! - `int8`: `int8_linear` (nnic int8, 16.8 MB): the baseline;
//! - `int4`: `int4_linear` (8.95 MB);
//! - `read`: a plain sum of the same int4 copy's bytes (64-byte loads, no software prefetch): the stream's ceiling
//!   on this core;
//! - `loop`: the int4 tile's inner loop for one row (the whole-byte `vpdpbusd` pair, the activation broadcast, the
//!   group end with the 8-bit scale codes) run over the same bytes in the same order, without the call around it
//!   (activation quantization, the per-block ending): what the tile's instructions cost on a stream;
//! - `work8`: 8 `vpdpbusd` per 64-byte line of the same bytes (4× the tile's per line): whether compute per byte
//!   slows a stream at all.
//!
//! Printed: the 25th percentile and median per call, GB/s of packed bytes, and the ratios (int8 ÷ int4 is the
//! issue's row; int4 ÷ read is what the call loses against its own bytes). What it showed is in
//! `docs/performance/low-bit.md` ("where the cold int4 GEMV loses against its own bytes").
mod common;

use common::Rng;
use nnic_kernels::gemm::int4::{int4_linear, GroupScales, PackedInt4};
use nnic_kernels::gemm::{int8_linear, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use nnic_kernels::prefetch::Resident;
use std::time::Instant;

/// Group size the `loop` case's layout arithmetic assumes.
const G: usize = 32;

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q) as usize]
}

/// Sum of `b` as 64-bit words, 64-byte loads, four accumulators: a plain read.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [_mm512_setzero_si512(); 4];
        for q in b.chunks_exact(256) {
            for (l, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(q.as_ptr().add(64 * l) as *const __m512i));
            }
        }
        let t = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
        _mm512_reduce_add_epi64(t) as u64
    }
}

/// 8 `vpdpbusd` per 64-byte line of `b` (32 independent accumulators).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn work8(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); 4]; 8];
        let av = _mm512_set1_epi32(0x0102_0304);
        for q in b.chunks_exact(256) {
            for l in 0..4 {
                let x = _mm512_loadu_si512(q.as_ptr().add(64 * l) as *const __m512i);
                for a in acc.iter_mut() {
                    a[l] = _mm512_dpbusd_epi32(a[l], x, av);
                }
            }
        }
        let mut t = _mm512_setzero_si512();
        for a in acc.iter().flatten() {
            t = _mm512_add_epi32(t, *a);
        }
        _mm512_reduce_add_epi32(t) as u32 as u64
    }
}

/// The one-row VNNI tile's work on one panel of 8-bit-scale groups of 32 (`gemm::int4_micro`: pairs of groups
/// behind their scale line; whole-byte sums `P`, `Q` in two chains; at each group end `P - Q` and `Q >> 4` times
/// the widened codes into two float accumulators), activations `a` (4 bytes per quad row) and zero-point terms
/// `na` per group. Returns the 32 sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_loop(groups: usize, a: &[u8], na: &[i32], b: &[u8]) -> [f32; 32] {
    use std::arch::x86_64::*;
    let stride = 64 + 2 * G * 16;
    assert!(a.len() >= groups * G && na.len() >= groups && b.len() >= groups.div_ceil(2) * 64 + groups * G * 16);
    unsafe {
        let hi = _mm512_set1_epi8(0xF0u8 as i8);
        let mut fv = [_mm512_setzero_ps(); 2];
        let mut ap = a.as_ptr();
        for (g, &nag) in na[..groups].iter().enumerate() {
            let (at, so) = ((g / 2) * stride + (g % 2) * G * 16 + 64, (g / 2) * stride + (g % 2) * 32);
            if g % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().add(so) as *const i8);
            }
            let zl = _mm512_set1_epi32(nag);
            let zh16 = _mm512_slli_epi32::<4>(zl);
            let mut s = [_mm512_add_epi32(zl, zh16), _mm512_setzero_si512()];
            let mut t = [zh16, _mm512_setzero_si512()];
            let mut bp = b.as_ptr().add(at);
            for _ in 0..G / 8 {
                for c in 0..2 {
                    let x = _mm512_loadu_si512(bp as *const __m512i);
                    let av = _mm512_set1_epi32((ap as *const i32).read_unaligned());
                    s[c] = _mm512_dpbusd_epi32(s[c], x, av);
                    t[c] = _mm512_dpbusd_epi32(t[c], _mm512_and_si512(x, hi), av);
                    ap = ap.add(4);
                    bp = bp.add(64);
                }
            }
            let sp = b.as_ptr().add(so);
            let s0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(sp as *const __m128i)));
            let s1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(sp.add(16) as *const __m128i)));
            let (p, q) = (_mm512_add_epi32(s[0], s[1]), _mm512_add_epi32(t[0], t[1]));
            fv[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(p, q)), s0, fv[0]);
            fv[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32::<4>(q)), s1, fv[1]);
        }
        let mut f = [0f32; 32];
        _mm512_storeu_ps(f.as_mut_ptr(), fv[0]);
        _mm512_storeu_ps(f.as_mut_ptr().add(16), fv[1]);
        f
    }
}

fn main() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rounds: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(41);
    let (threads, n, k) = (env("THREADS", 1), env("N", 4096), env("K", 4096));
    let path = Path::active();
    #[cfg(target_arch = "x86_64")]
    let probes = path == Path::Vnni && k % G == 0 && n % 32 == 0;
    #[cfg(not(target_arch = "x86_64"))]
    let probes = false;
    pool::set_num_threads(threads).expect("thread count");
    let mut rng = Rng(1);
    let ng = k.div_ceil(G);
    let q: Vec<i8> = (0..n * k).map(|_| (rng.next() % 16) as i8 - 8).collect();
    let codes: Vec<u8> = (0..n * ng).map(|_| 1 + (rng.next() % 255) as u8).collect();
    let step: Vec<f32> = (0..n).map(|j| 1e-4 * (1 + j % 7) as f32).collect();
    let w8: Vec<i8> = (0..n * k).map(|_| rng.next() as i8).collect();
    let s8: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-6).collect();
    // Allocated in turn (the first allocations get the free 2 MiB pages: neither kind should get them all).
    let (c8, c4) = (10usize, 14usize);
    let (mut p8, mut p4) = (Vec::new(), Vec::new());
    for i in 0..c4 {
        if i < c8 {
            p8.push(PackedLinear::new(&w8, n, k, &s8, &[]).expect("int8 weight"));
        }
        p4.push(PackedInt4::new(&q, n, k, GroupScales::U8 { codes: &codes, step: &step }, &[], G).expect("int4 weight"));
    }
    let x: Vec<f32> = (0..k).map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0).collect();
    let a: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
    let na: Vec<i32> = (0..ng).map(|_| -((rng.next() % 4096) as i32)).collect();
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
    let mut out = vec![0f32; n];
    let mut cases = vec!["int8", "int4"];
    if probes && threads == 1 {
        cases.extend(["read", "loop", "work8"]);
    }
    let mut times = vec![Vec::new(); cases.len()];
    let (mut i8n, mut i4n) = (0usize, 0usize);
    let clock = || if threads == 1 { nnic_kernels::clock::thread_cpu().expect("thread clock") } else { 0.0 };
    let mut sink = 0u64;
    for round in 0..rounds + 2 {
        let order: Vec<usize> = if round % 2 == 0 { (0..cases.len()).collect() } else { (0..cases.len()).rev().collect() };
        for c in order {
            let (t0, c0) = (Instant::now(), clock());
            match cases[c] {
                "int8" => {
                    int8_linear(path, &x, 1, &p8[i8n % c8], None, act, Activation::Identity, &mut out).expect("call");
                    i8n += 1;
                }
                "int4" => {
                    int4_linear(path, &x, 1, &p4[i4n % c4], None, act, &mut out).expect("call");
                    i4n += 1;
                }
                probe => {
                    let w = &p4[i4n % c4];
                    i4n += 1;
                    #[cfg(target_arch = "x86_64")]
                    for r in w.regions() {
                        // SAFETY: VNNI (and so AVX-512F) checked in `probes`.
                        unsafe {
                            match probe {
                                "read" => sink = sink.wrapping_add(read(r)),
                                "work8" => sink = sink.wrapping_add(work8(r)),
                                _ => {
                                    for panel in r.chunks_exact(ng.div_ceil(2) * 64 + ng * G * 16) {
                                        sink = sink.wrapping_add(tile_loop(ng, &a, &na, panel)[0].to_bits() as u64);
                                    }
                                }
                            }
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (w, probe);
                }
            }
            let dt = if threads == 1 { clock() - c0 } else { t0.elapsed().as_secs_f64() };
            if round >= 2 {
                times[c].push(dt);
            }
        }
    }
    std::hint::black_box(sink);
    let bytes = |case: &str| if case == "int8" { p8[0].nbytes() } else { p4[0].nbytes() } as f64;
    println!(
        "cold GEMV {n}x{k}, int4 g{G} 8-bit scales ({:.2} MB) vs int8 ({:.2} MB), path {}, threads {threads} ({}), {rounds} \
         interleaved rounds: per call p25 / median",
        bytes("int4") / 1e6,
        bytes("int8") / 1e6,
        path.name(),
        if threads == 1 { "thread CPU time" } else { "wall time" }
    );
    let p25: Vec<f64> = times.iter().map(|t| percentile(t, 0.25)).collect();
    for (c, case) in cases.iter().enumerate() {
        println!(
            "  {case:6} {:8.1} / {:8.1} us  {:5.1} GB/s",
            p25[c] * 1e6,
            percentile(&times[c], 0.5) * 1e6,
            bytes(case) / p25[c] / 1e9
        );
    }
    print!("  int8 ÷ int4 {:.3} (p25)", p25[0] / p25[1]);
    if cases.len() > 2 {
        print!("; int4 ÷ read {:.3}, loop ÷ read {:.3}, work8 ÷ read {:.3}", p25[1] / p25[2], p25[3] / p25[2], p25[4] / p25[2]);
    }
    println!();
}
