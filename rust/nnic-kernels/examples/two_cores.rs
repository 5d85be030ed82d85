//! Whether a core runs as fast while the other core works too: `cargo run --release -p nnic-kernels --example
//! two_cores [rounds]` (default 200).
//!
//! Per round: `vpdpbusd` on registers ([`vnni_peak`], no memory) on one thread, then on two threads started
//! together; then `int8_linear` at 128 × 4096 × 2048 (half of a 4096-output layer, its own weights per thread, one
//! thread each) alone and on two threads together. Counted only where a thread ran undisturbed (wall time within 1 %
//! of its CPU time, and for the pairs, both threads and within a few % of each other's wall time: they ran side by
//! side): on a machine shared with other processes the others are the rounds in which another process took a core.
//! A lower rate per thread with both cores busy would be a clock that drops, a core shared with the other virtual
//! CPU on the host, or the memory; equal rates leave the loss of a two-thread GEMM to its own scheduling.
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::gemm::profile::vnni_peak;
use nnic_kernels::gemm::{int8_linear, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use std::sync::{Barrier, Mutex};
use std::time::Instant;

/// `(CPU seconds, wall seconds)` of `f` on this thread.
fn timed(f: impl FnOnce()) -> (f64, f64) {
    let (cpu, wall) = (thread_cpu().unwrap_or(0.0), Instant::now());
    f();
    (thread_cpu().unwrap_or(0.0) - cpu, wall.elapsed().as_secs_f64())
}

/// `f(0)` and `f(1)` on two threads released together.
fn side_by_side(f: &(dyn Fn(usize) -> (f64, f64) + Sync)) -> [(f64, f64); 2] {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let h = [0, 1].map(|i| {
            let start = &start;
            s.spawn(move || {
                start.wait();
                f(i)
            })
        });
        h.map(|h| h.join().unwrap())
    })
}

fn undisturbed(t: (f64, f64)) -> bool {
    t.1 < t.0 * 1.01 + 10e-6
}

fn together(t: [(f64, f64); 2], slack: f64) -> Option<f64> {
    (undisturbed(t[0]) && undisturbed(t[1]) && (t[0].1 - t[1].1).abs() < slack * t[0].1).then(|| t[0].0.max(t[1].0))
}

fn report(what: &str, work: f64, v: &mut [f64]) {
    if v.is_empty() {
        println!("{what}: no undisturbed round");
        return;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    println!("{what}: {} undisturbed rounds, G/s per thread best {:.1} median {:.1}", v.len(), work / v[0] / 1e9,
             work / v[v.len() / 2] / 1e9);
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|v| v.parse().expect("rounds is an integer")).unwrap_or(200);
    let iters = 8_000_000 / 24;
    let macs = (iters * 24 * 64) as f64;
    let (m, k, n) = (128, 4096, 2048);
    let path = Path::active();
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
    let layer = |seed: usize| {
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 7919 + 13 + seed) % 255) as i8).collect();
        PackedLinear::new(&w, n, k, &vec![0.001; n], &[]).unwrap()
    };
    let layers = [layer(1), layer(2)];
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
    let outs = [0, 1].map(|_| Mutex::new(vec![0.0f32; m * n]));
    pool::set_num_threads(1).unwrap();
    let gemm = |i: usize| {
        let mut out = outs[i].lock().unwrap();
        timed(|| int8_linear(path, &x, m, &layers[i], None, act, Activation::Identity, &mut out).unwrap())
    };
    let (mut alu1, mut alu2, mut gemm1, mut gemm2) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = timed(|| {
            vnni_peak(iters);
        });
        if undisturbed(t) {
            alu1.push(t.0);
        }
        alu2.extend(together(side_by_side(&|_| timed(|| {
            vnni_peak(iters);
        })), 0.02));
        let t = gemm(0);
        if undisturbed(t) {
            gemm1.push(t.0);
        }
        gemm2.extend(together(side_by_side(&gemm), 0.05));
    }
    report("vpdpbusd on registers, one thread (GMAC/s)", macs, &mut alu1);
    report("vpdpbusd on registers, two threads together", macs, &mut alu2);
    report("int8_linear 128x4096x2048, one thread (GMAC/s)", (m * k * n) as f64, &mut gemm1);
    report("int8_linear 128x4096x2048, two threads together", (m * k * n) as f64, &mut gemm2);
}
