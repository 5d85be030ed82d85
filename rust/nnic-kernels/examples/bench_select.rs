//! Quick timing of the radix select without Python: `cargo run --release --example bench_select [n] [threads]`.
mod common;

use common::Rng;
use nnic_kernels::{pool, select};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse::<f64>().expect("number") as usize).collect();
    let n = args.first().copied().unwrap_or(10_000_000);
    pool::set_num_threads(args.get(1).copied().unwrap_or(1)).expect("threads");
    if let Ok(isa) = std::env::var("NNIC_KERNEL_ISA") {
        nnic_kernels::cpu::set_isa(Some(nnic_kernels::Isa::parse(&isa).expect("isa"))).expect("supported");
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let x: Vec<f32> = (0..n)
        .map(|_| {
            let s = rng.next();
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * ((s & 0xff) as f32 / 64.0)
        })
        .collect();
    let mut times = Vec::new();
    let mut t = 0.0;
    for _ in 0..15 {
        let start = Instant::now();
        t = select::kth_smallest_abs(&x, n as u64 / 2).expect("select");
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut read = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        std::hint::black_box(nnic_kernels::reduce::abs_max(&x, nnic_kernels::Layout::per_tensor(n)).expect("no NaN"));
        read.push(start.elapsed().as_secs_f64() * 1e3);
    }
    read.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "n {n} threshold {t} median {:.2} ms min {:.2} ms (one read pass, abs_max: median {:.2} min {:.2} ms)",
        times[times.len() / 2],
        times[0],
        read[read.len() / 2],
        read[0]
    );
}
