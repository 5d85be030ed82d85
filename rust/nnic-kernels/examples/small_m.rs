//! The int8 linear layer at small M (4096 × 4096, M = 4 … 32): how close it comes to the VNNI peak with its
//! weights hot and to the weight stream with them cold:
//! `cargo run --release -p nnic-kernels --example small_m [rounds] [M ...]` (default 15 rounds, M = 4 8 16 24 32).
//!
//! Per M and round, interleaved: one `int8_linear` call (f32 in and out, per-token asymmetric activations, as
//! `quantization_speedup` quantizes them) on one packed copy called over and over (`hot`: the 16.8 MB sit in the
//! 32 MiB L3 after the first call) and one on the next of enough copies (over 250 MB) that each call streams its
//! weights from DRAM (`cold`), as a model's layers do. One thread, thread CPU time (other processes' load does not
//! enter it; a stalled load does). `THREADS=2`: two threads of the kernel pool, wall time (then the load average
//! decides; report it). Printed: median and minimum per call, the product's GMAC/s (of the median) and the weight
//! bytes' GB/s. Compare builds by running their binaries alternately.
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::gemm::{int8_linear, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use std::time::Instant;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
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
    let clock = || {
        if threads == 1 {
            thread_cpu().unwrap_or_else(|| start.elapsed().as_secs_f64())
        } else {
            start.elapsed().as_secs_f64()
        }
    };
    let act = ActQuant::DynamicPerRow { symmetric: false };
    println!(
        "int8_linear {k}x{n}, path {}, {threads} thread(s) ({}), {copies} copies, {rounds} rounds: median / min us",
        path.name(),
        if threads == 1 { "thread CPU time" } else { "wall" }
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
        let (mut hot, mut cold) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            hot.push(call(&packed[0]));
            cold.push(call(&packed[next]));
            next = next % (copies - 1) + 1;
        }
        let ((hm, hmin), (cm, cmin)) = (stats(hot), stats(cold));
        let macs = (m * k * n) as f64;
        println!(
            "M = {m:2}: hot {:7.1} / {:7.1} ({:5.1} GMAC/s), cold {:7.1} / {:7.1} ({:5.1} GMAC/s, {:4.1} GB/s)",
            hm * 1e6,
            hmin * 1e6,
            macs / hm / 1e9,
            cm * 1e6,
            cmin * 1e6,
            macs / cm / 1e9,
            (n * k) as f64 / cm / 1e9
        );
    }
}
