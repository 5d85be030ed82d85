//! The int4 GEMV tile's own speed: `cargo run --release --example int4_gemv [rounds]`.
//!
//! `int4_linear` at M = 1 (`M=rows`: that many) on one thread, timed in thread CPU time, for a weight that fits L2 (512 × 1024) and one
//! that fits only L3 (4096 × 4096), groups of `G` (default 32), float16 scales (`F32=1`: float32), on the active
//! path (`TILE=avx2` or `TILE=scalar`: that path's tile): what the tile costs per group of one 32-column panel
//! when the weights are near, without Python's call or DRAM in the way.
//! Each round times `WORK / (n · k)` calls (default 2e8 weights); printed per shape: the best and median call,
//! GB/s of packed bytes and nanoseconds per group-panel (1 group × 32 columns), and a hash of the output bits, so
//! that two builds (say, before and after a change to the tile) can be compared for identical results and, run
//! alternately, for speed (best of many short rounds is what a shared machine's noise leaves intact).
mod common;

use common::Rng;
use nnic_kernels::gemm::int4::{int4_linear, GroupScales, PackedInt4};
use nnic_kernels::gemm::{ActQuant, Path};

fn main() {
    nnic_kernels::pool::set_num_threads(1).expect("one thread");
    let rounds: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(9);
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (g, work, half, m) = (env("G", 32), env("WORK", 200_000_000), std::env::var("F32").is_err(), env("M", 1));
    let path = std::env::var("TILE").map_or(Ok(Path::active()), |name| Path::parse(&name)).expect("a GEMM path name");
    let mut rng = Rng(1);
    for (n, k) in [(512usize, 1024usize), (4096, 4096)] {
        let q: Vec<i8> = (0..n * k).map(|_| (rng.next() % 16) as i8 - 8).collect();
        let s16: Vec<u16> = (0..n * k.div_ceil(g)).map(|_| 0x2000 + (rng.next() % 1024) as u16).collect();
        let s32: Vec<f32> = s16.iter().map(|&h| nnic_kernels::half::f16_to_f32(h)).collect();
        let w = if half {
            PackedInt4::new(&q, n, k, GroupScales::F16(&s16), &[], g).expect("valid weight")
        } else {
            PackedInt4::new(&q, n, k, &s32, &[], g).expect("valid weight")
        };
        let x: Vec<f32> = (0..m * k).map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0).collect();
        let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
        let mut out = vec![0f32; m * n];
        let reps = (work / (n * k)).max(10);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t0 = nnic_kernels::clock::thread_cpu().expect("thread clock");
            for _ in 0..reps {
                int4_linear(path, &x, m, &w, None, act, &mut out).expect("valid call");
            }
            times.push((nnic_kernels::clock::thread_cpu().expect("thread clock") - t0) / reps as f64);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let (best, med) = (times[0], times[times.len() / 2]);
        let hash = out.iter().fold(0u64, |h, v| h.wrapping_mul(31).wrapping_add(v.to_bits() as u64));
        let group_panels = n.div_ceil(32) * k.div_ceil(g);
        println!(
            "{m}x{n}x{k} g{g} {}: best {:.2} us, median {:.2} us, {:.1} GB/s, {:.2} ns per group-panel; output hash {hash:016x}",
            path.name(),
            best * 1e6,
            med * 1e6,
            w.nbytes() as f64 / med / 1e9,
            med * 1e9 / group_panels as f64
        );
    }
}
