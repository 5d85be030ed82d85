//! The int8 linear layer at small M (4096 × 4096, M = 4 … 32): how close it comes to the VNNI peak with its
//! weights hot and to the weight stream with them cold:
//! `cargo run --release -p nnic-kernels --example small_m [rounds] [M ...]` (default 15 rounds, M = 4 8 16 24 32).
//!
//! Per M and round, interleaved, for each of the two tilings of 13-28 rows (`two`: two or three row panels of the
//! 12-row tile, as before the tall tile; `tall`: [`set_tall_tile`]), in alternating order: one `int8_linear` call (f32
//! in and out, per-token asymmetric activations, as `quantization_speedup` quantizes them) on one packed copy called
//! over and over (`hot`: the 16.8 MB sit in the 32 MiB L3) and one on the next of enough copies (over 250 MB) that each
//! call streams its weights from DRAM (`cold`), as a model's layers do. Outside 13-28 rows both settings run the same
//! code: their ratio shows the noise. One thread, thread CPU time (other processes' load does not enter it; a stalled
//! load does). `THREADS=2`: two threads of the kernel pool, wall time (then the load average decides; report it), or
//! with `CLOCK=cpu` the process's CPU time (both threads' time added up: what a thread spends stalled on the memory
//! counts, time waiting for a core does not). Printed: medians [10th percentiles] per call, the product's GMAC/s and
//! the weight bytes' GB/s (cold) of the medians, and `two` ÷ `tall` (above 1: the tall tile is faster).
use nnic_kernels::clock::{process_cpu, thread_cpu};
use nnic_kernels::gemm::{int8_linear, set_tall_tile, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use std::time::Instant;

/// The median and the 10th percentile: under load the low percentile is the rounds in which the cores were free.
fn median_p10(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() / 10])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|v| v.parse().expect("rounds must be an integer")).unwrap_or(15);
    let ms: Vec<usize> = args.map(|v| v.parse().expect("M must be an integer")).collect();
    let ms = if ms.is_empty() { vec![4, 8, 16, 24, 32] } else { ms };
    let threads: usize = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    pool::set_num_threads(threads).unwrap();
    let (k, n) = (4096, 4096);
    let path = Path::active();
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 7919 + 13) % 255) as i8).collect();
    let scale: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-6).collect();
    let copies = 250_000_000 / (n * k) + 1;
    let packed: Vec<PackedLinear> = (0..copies).map(|_| PackedLinear::new(&w, n, k, &scale, &[]).unwrap()).collect();
    let start = Instant::now();
    let process = std::env::var("CLOCK").is_ok_and(|v| v == "cpu");
    let clock = || {
        let cpu = match (threads, process) {
            (1, _) => thread_cpu(),
            (_, true) => process_cpu(),
            _ => None,
        };
        cpu.unwrap_or_else(|| start.elapsed().as_secs_f64())
    };
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
    println!(
        "int8_linear {k}x{n}, path {}, {threads} thread(s) ({}), {copies} copies, {rounds} rounds: medians [p10], us",
        path.name(),
        match (threads, process) {
            (1, _) => "thread CPU time",
            (_, true) => "process CPU time",
            _ => "wall",
        }
    );
    let mut next = 1;
    for m in ms {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut out = vec![0.0f32; m * n];
        let mut call = |w: &PackedLinear| {
            let t = clock();
            int8_linear(path, &x, m, w, None, act, Activation::Identity, &mut out).unwrap();
            clock() - t
        };
        call(&packed[0]);
        // [two, tall] × [hot, cold]
        let mut t: [[Vec<f64>; 2]; 2] = Default::default();
        for round in 0..rounds {
            for v in [round % 2, 1 - round % 2] {
                set_tall_tile(v == 1);
                t[v][0].push(call(&packed[0]));
                t[v][1].push(call(&packed[next]));
                next = next % (copies - 1) + 1;
            }
        }
        set_tall_tile(true);
        let [[th, tc], [nh, nc]] = t.map(|v| v.map(median_p10));
        let macs = (m * k * n) as f64;
        let gmacs = |s: f64| macs / s / 1e9;
        let us = |s: (f64, f64)| format!("{:7.1} [{:7.1}]", s.0 * 1e6, s.1 * 1e6);
        println!(
            "M = {m:2}: hot two {} tall {} us ({:5.1} / {:5.1} GMAC/s, {:.3}x [{:.3}x]); cold two {} tall {} us \
             ({:5.1} / {:5.1} GMAC/s, {:4.1} / {:4.1} GB/s, {:.3}x [{:.3}x])",
            us(th),
            us(nh),
            gmacs(th.0),
            gmacs(nh.0),
            th.0 / nh.0,
            th.1 / nh.1,
            us(tc),
            us(nc),
            gmacs(tc.0),
            gmacs(nc.0),
            (n * k) as f64 / tc.0 / 1e9,
            (n * k) as f64 / nc.0 / 1e9,
            tc.0 / nc.0,
            tc.1 / nc.1
        );
    }
}
