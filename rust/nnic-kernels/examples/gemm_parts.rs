//! The int8 linear layer at BERT-base's shapes (M = 1024 rows: batch 8 × seq 128), stage by stage, against the
//! VNNI peak: `cargo run --release -p nnic-kernels --example gemm_parts [M] [KxN ...]` (shapes after M replace
//! BERT-base's four, with no activation: e.g. `128 4096x4096`).
//!
//! Peak: 24 independent `vpdpbusd` chains on registers (no loads), one thread's CPU time. Each shape: one thread
//! (thread CPU time: other processes' load does not enter it), the stages of `gemm::profile::stage_seconds`
//! (quantize + pack, product, the epilogue on each finished block) and the whole `int8_linear` (whose VNNI tiles
//! apply the epilogue in registers, its row panels packed as the first tasks of the GEMM's region) against the same
//! with the epilogue on blocks and against the same with the activations packed in a region of their own first, in
//! the same rounds (and the ratios); then two threads (wall). Minimum of [`ROUNDS`] calls each; the product's GMAC/s
//! and its % of the one-thread peak (× threads). Activations per token, asymmetric, as `quantization_speedup` quantizes them
//! (7-bit with `REDUCE_RANGE=1`).
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::gemm::profile::{
    int8_linear_block_epilogue, int8_linear_packed_first, stage_seconds, vnni_peak, STAGES,
};
use nnic_kernels::gemm::{int8_linear, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use std::time::Instant;

/// Interleaved rounds per shape and thread count (the minimum of each is printed).
const ROUNDS: usize = 11;

fn main() {
    let m: usize = std::env::args().nth(1).map(|v| v.parse().expect("M must be an integer")).unwrap_or(1024);
    let path = Path::active();
    let start = Instant::now();
    let wall = || start.elapsed().as_secs_f64();
    let cpu = || thread_cpu().unwrap_or_else(|| start.elapsed().as_secs_f64());
    let peak = (0..5)
        .map(|_| {
            let t = cpu();
            let macs = vnni_peak(20_000_000 / 24).unwrap_or(0) as f64;
            macs / (cpu() - t)
        })
        .fold(0.0, f64::max);
    println!("path {}; VNNI peak (registers only, one thread): {:.1} GMAC/s", path.name(), peak / 1e9);
    let mut shapes = vec![(768, 2304, Activation::Identity, "QKV"), (768, 768, Activation::Identity, "attention out"),
                          (768, 3072, Activation::Gelu, "MLP up + GELU"), (3072, 768, Activation::Identity, "MLP down")];
    let given: Vec<(usize, usize, Activation, &str)> = std::env::args()
        .skip(2)
        .map(|v| {
            let (k, n) = v.split_once('x').expect("shapes are KxN");
            (k.parse().expect("K must be an integer"), n.parse().expect("N must be an integer"), Activation::Identity, "given")
        })
        .collect();
    if !given.is_empty() {
        shapes = given;
    }
    // As `quantization_speedup` quantizes them; `REDUCE_RANGE=1`: with 7-bit codes (`reduce_range`).
    let reduce_range = std::env::var("REDUCE_RANGE").is_ok_and(|v| v == "1");
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range };
    for (k, n, activation, what) in shapes {
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 7919 + 13) % 255) as i8).collect();
        let scale: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-6).collect();
        let pw = PackedLinear::new(&w, n, k, &scale, &[]).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
        let mut out = vec![0.0f32; m * n];
        let macs = (m * k * n) as f64;
        for threads in [1, 2] {
            pool::set_num_threads(threads).unwrap();
            let clock: &(dyn Fn() -> f64 + Sync) = if threads == 1 { &cpu } else { &wall };
            let mut best = [f64::INFINITY; 6];
            for _ in 0..ROUNDS {
                let s = stage_seconds(path, &x, m, &pw, act, activation, &mut out, clock).unwrap();
                let t = clock();
                int8_linear_block_epilogue(path, &x, m, &pw, act, activation, &mut out).unwrap();
                let blocks = clock() - t;
                let t = clock();
                int8_linear(path, &x, m, &pw, None, act, activation, &mut out).unwrap();
                let whole = clock() - t;
                let t = clock();
                int8_linear_packed_first(path, &x, m, &pw, act, activation, &mut out).unwrap();
                let first = clock() - t;
                for (b, v) in best.iter_mut().zip(s.iter().chain([whole, blocks, first].iter())) {
                    *b = b.min(*v);
                }
            }
            let parts: Vec<String> = STAGES.iter().zip(best).map(|(s, t)| format!("{s} {:.3}", t * 1e3)).collect();
            println!(
                "{m}x{k}x{n} {what}, {threads} thread{} ({}): {} ms; whole {:.3} ms (epilogue on blocks: {:.3}, {:.3}x; \
                 packed first: {:.3}, {:.3}x); product {:.1} GMAC/s = {:.0} % of peak",
                if threads == 1 { "" } else { "s" },
                if threads == 1 { "CPU" } else { "wall" },
                parts.join(", "),
                best[3] * 1e3,
                best[4] * 1e3,
                best[4] / best[3],
                best[5] * 1e3,
                best[5] / best[3],
                macs / best[1] / 1e9,
                100.0 * macs / best[1] / (peak * threads as f64)
            );
        }
    }
}
