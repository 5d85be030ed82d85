//! Where the two-thread int8 GEMV (M = 1) loses to a plain two-thread read of its weights: start, stream or join;
//! and, with `ONE=1`, where one thread's GEMV loses to the plain read.
//! `cargo run --release -p nnic-kernels --example gemv_split [rounds] [k] [n]` (default 200 rounds, 4096 × 4096).
//!
//! Cold weights as in `gemv_stream` (enough copies that every call streams from DRAM, all on 2 MiB pages: `SMAPS=1`
//! prints each mapping's share; `PLAIN_FIRST=1` allocates the plain copies before the packed ones). Per round, the
//! cases in a random order (no case always follows the same one), each on the next copy, two threads:
//! - `read halves`: a plain 64-byte-load sum (`prefetcht1` 4 KiB ahead, as the tile), the caller its first half, the
//!   partner the second;
//! - `read blocks`: the same sum, both threads taking 1 MiB blocks in turn from one counter (the GEMV's partition
//!   at 4096²: 16 blocks of 256 columns);
//! - `gemv`: `int8_linear` on the kernel pool (this process has no OpenMP team: nnic's helpers). `M=rows` runs it
//!   at that many activation rows.
//!
//! The read's partner polls for as long as the GEMM helpers do after each job ([`team::spin`]), then parks, so both
//! start alike. Per call, in µs after the start: when the other thread arrived, when the caller ran out of work, when
//! the last thread did, when the parallel part ended, and when the call returned (for `gemv` from
//! [`par::pool_stats`]: the helper's arrival, the caller's end of tasks, `last_done`, the region; `last_done` can
//! miss the helper's last task, which ends by the region's end). Printed: medians over all calls, over the
//! undisturbed ones (no thread of this process waited on a run queue, `/proc/self/task/*/schedstat`; a helper woken
//! after the call is counted later), and over the shared ones (each thread did 30-70 % of the work: both had a CPU),
//! with GB/s of weight bytes, and how often the other thread was absent or over 100 µs late.
mod common;

use common::{run_queue_wait_ns, Rng};
use nnic_kernels::gemm::{int8_linear, par, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::huge::HugeBuf;
use nnic_kernels::{pool, team};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const BLOCK: usize = 1 << 20;

/// Sum of `b` as wrapping u64 words with 64-byte loads and `prefetcht1` 4 KiB ahead, as the GEMV tile reads.
fn byte_sum(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present.
        return unsafe { byte_sum_avx512(b) };
    }
    b.chunks_exact(8).fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(c.try_into().unwrap())))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn byte_sum_avx512(b: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [_mm512_setzero_si512(); 4];
        let p = b.as_ptr();
        let blocks = b.len() / 256;
        for i in 0..blocks {
            let q = p.add(i * 256);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(4096 + 64 * l) as *const i8);
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

/// The GEMV tile's loop (`vnni_small::<1>` in `src/gemm/micro.rs`) on any buffer laid out as the packed weights
/// (32-column panels, each all of K in groups of 4 bytes per column; `a`: one activation row of K bytes): 64-byte
/// loads, `vpdpbusd` against broadcast activations, two accumulator sets, `prefetcht1` 4 KiB ahead, one call per
/// panel. Variants `V`: 0 as the tile; 1 an xor and an add for each `vpdpbusd`; 2 fixed activations (no broadcast
/// loads: not a product, a probe); 3 four groups a step, their activations from one 16-byte load, shuffled.
fn tile_like<const V: u8>(b: &[u8], a: &[u8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        let panel = a.len() * 32;
        for (p, o) in b.chunks_exact(panel).zip(out.chunks_exact_mut(32)) {
            // SAFETY: AVX-512 VNNI is present; `p` holds `a.len() / 4` groups of 128 bytes, `o` 32 values.
            unsafe { tile_panel::<V>(p, a, o) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline(never)]
unsafe fn tile_panel<const V: u8>(b: &[u8], a: &[u8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    unsafe {
        let (mut s0, mut s1, mut t0, mut t1) =
            (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
        let kg = a.len() / 4;
        let (bp0, ap) = (b.as_ptr(), a.as_ptr());
        let mut g = 0;
        while V == 3 && g + 4 <= kg {
            let bp = bp0.add(g * 128);
            let bv: [__m512i; 8] = std::array::from_fn(|l| _mm512_loadu_si512(bp.add(64 * l) as *const __m512i));
            for l in 0..8 {
                _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(4096 + 64 * l) as *const i8);
            }
            let a4 = _mm512_broadcast_i32x4(_mm_loadu_si128(ap.add(g * 4) as *const __m128i));
            let (a0, a1) = (_mm512_shuffle_epi32::<0x00>(a4), _mm512_shuffle_epi32::<0x55>(a4));
            let (a2, a3) = (_mm512_shuffle_epi32::<0xAA>(a4), _mm512_shuffle_epi32::<0xFF>(a4));
            s0 = _mm512_dpbusd_epi32(s0, a0, bv[0]);
            s1 = _mm512_dpbusd_epi32(s1, a0, bv[1]);
            t0 = _mm512_dpbusd_epi32(t0, a1, bv[2]);
            t1 = _mm512_dpbusd_epi32(t1, a1, bv[3]);
            s0 = _mm512_dpbusd_epi32(s0, a2, bv[4]);
            s1 = _mm512_dpbusd_epi32(s1, a2, bv[5]);
            t0 = _mm512_dpbusd_epi32(t0, a3, bv[6]);
            t1 = _mm512_dpbusd_epi32(t1, a3, bv[7]);
            g += 4;
        }
        while g + 2 <= kg {
            let bp = bp0.add(g * 128);
            let b0 = _mm512_loadu_si512(bp as *const __m512i);
            let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
            let b2 = _mm512_loadu_si512(bp.add(128) as *const __m512i);
            let b3 = _mm512_loadu_si512(bp.add(192) as *const __m512i);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(4096 + 64 * l) as *const i8);
            }
            let (a0, a1) = if V == 2 {
                (_mm512_set1_epi32(0x01020304), _mm512_set1_epi32(0x05060708))
            } else {
                (
                    _mm512_set1_epi32((ap.add(g * 4) as *const i32).read_unaligned()),
                    _mm512_set1_epi32((ap.add(g * 4 + 4) as *const i32).read_unaligned()),
                )
            };
            if V == 1 {
                s0 = _mm512_add_epi32(s0, _mm512_xor_si512(a0, b0));
                s1 = _mm512_add_epi32(s1, _mm512_xor_si512(a0, b1));
                t0 = _mm512_add_epi32(t0, _mm512_xor_si512(a1, b2));
                t1 = _mm512_add_epi32(t1, _mm512_xor_si512(a1, b3));
            } else {
                s0 = _mm512_dpbusd_epi32(s0, a0, b0);
                s1 = _mm512_dpbusd_epi32(s1, a0, b1);
                t0 = _mm512_dpbusd_epi32(t0, a1, b2);
                t1 = _mm512_dpbusd_epi32(t1, a1, b3);
            }
            g += 2;
        }
        _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, _mm512_add_epi32(s0, t0));
        _mm512_storeu_si512(out.as_mut_ptr().add(16) as *mut __m512i, _mm512_add_epi32(s1, t1));
    }
}

/// A random order of `0..n` for one round (so that no case always follows the same other case: the one after the
/// plain read measured 3-5 % slower whichever it was).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.next() as usize % (i + 1));
    }
    v
}

/// With `ONE=1`: one thread, thread CPU time, cases in a random order per round, each on the next cold copy: the
/// plain read, the tile's loop (and its variants) on the plain copies and on the packed weights' own bytes, the
/// exact s8 product and the GEMV. `ONE=2`: the GEMV alone (for a profiler).
fn one_thread(plain: &[HugeBuf<u8>], packed: &[PackedLinear], x: &[f32], k: usize, rounds: usize) {
    pool::set_num_threads(1).unwrap();
    let a: Vec<u8> = (0..k).map(|i| (i % 251) as u8).collect();
    let xa: Vec<i8> = (0..k).map(|i| (i % 251) as i8).collect();
    let (n, path) = (plain[0].len() / k, Path::active());
    let (mut out, mut o32) = (vec![0f32; n], vec![0i32; n]);
    let names = [
        "read",
        "tile loop on the plain copy",
        "  same, xor + add for vpdpbusd",
        "  same, no broadcast loads",
        "  same, one 16-byte load per 4",
        "tile loop on the packed bytes",
        "matmul_i8 (exact s8 product)",
        "gemv (int8_linear)",
    ];
    let mut t: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
    let (mut next, mut sink, mut rng) = (0, 0u64, Rng(0x2545_f491_4f6c_dd1d));
    let only_gemv = std::env::var("ONE").is_ok_and(|v| v == "2");
    for _ in 0..rounds {
        for c in shuffled(names.len(), &mut rng).into_iter().filter(|&c| !only_gemv || c == 7) {
            let i = next % plain.len();
            next += 1;
            let c0 = nnic_kernels::clock::thread_cpu().unwrap();
            match c {
                0 => sink = sink.wrapping_add(byte_sum(&plain[i])),
                1 => tile_like::<0>(&plain[i], &a, &mut o32),
                2 => tile_like::<1>(&plain[i], &a, &mut o32),
                3 => tile_like::<2>(&plain[i], &a, &mut o32),
                4 => tile_like::<3>(&plain[i], &a, &mut o32),
                5 => {
                    let d = packed[i].packed().data_bytes();
                    // SAFETY: i8 and u8 have one size and alignment; the tile reads the bytes as u8 alike.
                    tile_like::<0>(unsafe { std::slice::from_raw_parts(d.as_ptr() as *const u8, d.len()) }, &a, &mut o32)
                }
                6 => nnic_kernels::gemm::matmul_i8(path, &xa, 1, packed[i].packed(), &mut o32).unwrap(),
                _ => {
                    let act = ActQuant::DynamicPerRow { symmetric: true, reduce_range: false };
                    int8_linear(path, x, 1, &packed[i], None, act, Activation::Identity, &mut out).unwrap()
                }
            }
            t[c].push(((nnic_kernels::clock::thread_cpu().unwrap() - c0) * 1e9) as u64);
        }
    }
    std::hint::black_box((sink, &o32));
    for (c, name) in names.iter().enumerate().filter(|(c, _)| !t[*c].is_empty()) {
        let m = median(&t[c]);
        println!("  1 thread, thread CPU: {name:30} {m:7.1} us  {:5.1} GB/s", plain[0].len() as f64 / m / 1e3);
    }
}

/// One two-thread read: the buffer, how it is split, and what each thread reports.
struct Read {
    base: usize,
    len: usize,
    blocks: bool,
    next: AtomicUsize,
    start: Instant,
    /// The partner's arrival and end, ns after `start` (0: not yet), and its sum.
    arrived: AtomicU64,
    ended: AtomicU64,
    sum: AtomicU64,
    /// Bytes the partner read.
    partner_bytes: AtomicUsize,
}

impl Read {
    /// The part of one thread (`first`: the caller) until no work is left; returns its sum.
    fn part(&self, first: bool) -> u64 {
        // SAFETY: the caller keeps the buffer alive until the partner reports its end.
        let b = unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len) };
        if !self.blocks {
            let half = self.len / 2 / 64 * 64;
            if !first {
                self.partner_bytes.store(self.len - half, Ordering::Relaxed);
            }
            return byte_sum(if first { &b[..half] } else { &b[half..] });
        }
        let mut s = 0u64;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) * BLOCK;
            if i >= self.len {
                return s;
            }
            let block = &b[i..(i + BLOCK).min(self.len)];
            if !first {
                self.partner_bytes.fetch_add(block.len(), Ordering::Relaxed);
            }
            s = s.wrapping_add(byte_sum(block));
        }
    }
}

/// A partner thread that runs the second part of a [`Read`]: it polls for the GEMM helpers' spin bound after each
/// job, then parks.
struct Partner {
    job: Arc<(AtomicU64, Mutex<Option<Arc<Read>>>)>,
    thread: std::thread::Thread,
}

impl Partner {
    fn start() -> Partner {
        let job: Arc<(AtomicU64, Mutex<Option<Arc<Read>>>)> = Arc::new((AtomicU64::new(0), Mutex::new(None)));
        let j = job.clone();
        let handle = std::thread::spawn(move || {
            let (mut seen, mut idle) = (0, Instant::now());
            loop {
                let g = j.0.load(Ordering::Acquire);
                if g == seen {
                    if idle.elapsed() > team::spin() {
                        std::thread::park();
                    } else {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                seen = g;
                let Some(r) = j.1.lock().unwrap().clone() else { return };
                r.arrived.store(r.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let s = r.part(false);
                r.sum.store(s, Ordering::Relaxed);
                r.ended.store(r.start.elapsed().as_nanos() as u64, Ordering::Release);
                idle = Instant::now();
            }
        });
        Partner { job, thread: handle.thread().clone() }
    }

    /// Reads `b` on two threads; returns the sum and [arrival, caller's end, partner's end, return] in ns, and the
    /// partner's share of the bytes (per mille).
    fn read(&self, b: &[u8], blocks: bool) -> (u64, [u64; 4], u64) {
        let r = Arc::new(Read {
            base: b.as_ptr() as usize,
            len: b.len(),
            blocks,
            next: AtomicUsize::new(0),
            start: Instant::now(),
            arrived: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            partner_bytes: AtomicUsize::new(0),
        });
        *self.job.1.lock().unwrap() = Some(r.clone());
        self.job.0.fetch_add(1, Ordering::Release);
        self.thread.unpark();
        let mine = r.part(true);
        let caller_end = r.start.elapsed().as_nanos() as u64;
        while r.ended.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let ret = r.start.elapsed().as_nanos() as u64;
        let s = mine.wrapping_add(r.sum.load(Ordering::Relaxed));
        let share = (r.partner_bytes.load(Ordering::Relaxed) * 1000 / b.len()) as u64;
        (s, [r.arrived.load(Ordering::Relaxed), caller_end, r.ended.load(Ordering::Relaxed), ret], share)
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        *self.job.1.lock().unwrap() = None;
        self.job.0.fetch_add(1, Ordering::Release);
        self.thread.unpark();
    }
}

fn median(v: &[u64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).map_or(f64::NAN, |&x| x as f64 / 1e3)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments")).collect();
    let rounds = args.first().copied().unwrap_or(200);
    let (k, n) = (args.get(1).copied().unwrap_or(4096), args.get(2).copied().unwrap_or(4096));
    let bytes = k * n;
    let copies = (420_000_000 / bytes).max(2);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let w: Vec<i8> = (0..bytes).map(|_| rng.next() as i8).collect();
    let scale: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-6).collect();
    // PLAIN_FIRST=1: the plain copies are allocated first (whether the order of allocation, i.e. where the pages
    // lie, moves the rates)
    let plain_first = std::env::var("PLAIN_FIRST").is_ok_and(|v| v == "1");
    let early: Vec<PackedLinear> = if plain_first { Vec::new() } else { (0..copies).map(|_| PackedLinear::new(&w, n, k, &scale, &[]).unwrap()).collect() };
    let plain: Vec<HugeBuf<u8>> = (0..copies)
        .map(|_| {
            let mut b = HugeBuf::<u8>::zeroed(bytes);
            b.iter_mut().zip(&w).for_each(|(d, &v)| *d = v as u8);
            b
        })
        .collect();
    let packed: Vec<PackedLinear> = if plain_first { (0..copies).map(|_| PackedLinear::new(&w, n, k, &scale, &[]).unwrap()).collect() } else { early };
    let huge_kb = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("AnonHugePages"))?.split_whitespace().nth(1)?.parse::<u64>().ok());
    println!("on 2 MiB pages: {} MB of the {:.0} MB of weights and copies", huge_kb.map_or(-1, |v| v as i64 / 1024), 2.0 * (copies * bytes) as f64 / 1e6);
    if std::env::var("SMAPS").is_ok() {
        // each copy's mapping: its size and how much of it is on 2 MiB pages, in the order of the addresses
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut size = 0;
        for l in smaps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.first() {
                Some(&"Size:") => size = f[1].parse::<u64>().unwrap_or(0),
                Some(&"AnonHugePages:") if size >= 16384 => print!("{}/{} ", f[1].parse::<u64>().unwrap_or(0) / 1024, size / 1024),
                _ => {}
            }
        }
        println!("(MB on 2 MiB pages / MB per mapping)");
        println!("packed at {:p}..., plain at {:p}...", packed[0].packed() as *const _, plain[0].as_ptr());
    }
    let x: Vec<f32> = (0..k).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    if std::env::var("ONE").is_ok_and(|v| v == "1" || v == "2") {
        one_thread(&plain, &packed, &x, k, rounds);
        return;
    }
    // M=rows: the GEMM cases at that many activation rows (the same streamed tiles up to 24)
    let m: usize = std::env::var("M").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut out = vec![0f32; m * n];
    let path = Path::active();
    let act = ActQuant::DynamicPerRow { symmetric: true, reduce_range: false };
    pool::set_num_threads(2).unwrap();
    int8_linear(path, &x, m, &packed[0], None, act, Activation::Identity, &mut out).unwrap();
    let partner = Partner::start();
    let cases = ["read halves", "read blocks", "gemv"];
    // per case: [arrival, caller's end, last end, return, the other thread's share of the work in per mille] per
    // call, and whether the call was undisturbed
    let mut rows: Vec<Vec<([u64; 6], bool)>> = vec![Vec::new(); cases.len()];
    let (mut sink, mut next, mut order) = (0u64, 0usize, Rng(0x2545_f491_4f6c_dd1d));
    team::reset_stats();
    for round in 0..rounds + 2 {
        for c in shuffled(cases.len(), &mut order) {
            let i = next % copies;
            next += 1;
            let waited = run_queue_wait_ns();
            let t = match c {
                0 | 1 => {
                    let (s, t, share) = partner.read(&plain[i], c == 1);
                    sink = sink.wrapping_add(s);
                    [t[0], t[1], t[1].max(t[2]), t[3], share, t[3]]
                }
                _ => {
                    let before = par::pool_stats();
                    let t0 = Instant::now();
                    int8_linear(path, &x, m, &packed[i], None, act, Activation::Identity, &mut out).unwrap();
                    let ret = t0.elapsed().as_nanos() as u64;
                    let a = par::pool_stats();
                    let region = a.region_ns - before.region_ns;
                    let caller_end = region - (a.wait_ns - before.wait_ns);
                    let last_end = region - (a.tail_ns - before.tail_ns);
                    let share = (a.tasks_by_team - before.tasks_by_team) * 1000 / (a.tasks - before.tasks).max(1);
                    [a.arrival_ns - before.arrival_ns, caller_end, last_end, ret, share, region]
                }
            };
            let quiet = run_queue_wait_ns() == waited;
            if round >= 2 {
                rows[c].push((t, quiet));
            }
        }
    }
    std::hint::black_box(sink);
    let ts = team::stats();
    println!(
        "GEMV (M = {m}) {k}x{n} int8, {:.1} MB of weights, {copies} copies, 2 threads, {rounds} rounds; gemv helpers took \
         {} jobs spinning, {} parked",
        bytes as f64 / 1e6,
        ts.taken_spinning,
        ts.taken_parked
    );
    println!("medians, us after the start: other thread arrived / caller out of work / last thread out of work / region ended / returned");
    for (c, name) in cases.iter().enumerate() {
        for (what, keep) in [("all", 0), ("undisturbed", 1), ("shared", 2)] {
            // shared: both threads took 30-70 % of the work (the other thread got a CPU of its own in time)
            let shared = |t: &[u64; 6]| (300..=700).contains(&t[4]);
            let sel: Vec<[u64; 6]> = rows[c]
                .iter()
                .filter(|(t, q)| keep == 0 || (keep == 1 && *q) || (keep == 2 && shared(t)))
                .map(|(t, _)| *t)
                .collect();
            if sel.is_empty() {
                continue;
            }
            let col = |j: usize| median(&sel.iter().map(|t| t[j]).collect::<Vec<_>>());
            let ret = col(3);
            let mut r: Vec<u64> = sel.iter().map(|t| t[3]).collect();
            r.sort_unstable();
            let late = sel.iter().filter(|t| t[0] == 0 || t[0] > 100_000).count();
            println!(
                "  {name:11} {what:11} {:4} calls: {:7.1} {:7.1} {:7.1} {:7.1} {:7.1}  ({:5.1} GB/s; best {:6.1} p90 {:6.1}; \
                 other thread's share {:4.1} %, absent or over 100 us late in {late})",
                sel.len(),
                col(0),
                col(1),
                col(2),
                col(5),
                ret,
                bytes as f64 / ret / 1e3,
                r[0] as f64 / 1e3,
                r[r.len() * 9 / 10] as f64 / 1e3,
                col(4) * 100.0, // per mille, read through `median`'s ns-to-us scale
            );
        }
    }
}
