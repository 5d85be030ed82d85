//! Where one thread's attention time goes at BERT-base's shape (batch 8, seq 128, 12 heads of 64, one fused QKV
//! buffer), per stage and per ISA path: milliseconds per call, GMAC/s of the two products, ns per exponential.
//!
//!     cargo run --release -p nnic-kernels --example attention_parts [-- ROUNDS [BATCH SEQ HEADS HEAD_DIM]]
//!
//! CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`; wall time off Linux), summed per stage over the (sequence, head) pairs;
//! the ISAs run in interleaved rounds and each number is the median over rounds. The whole kernel (which also
//! prefetches each thread's next pair): `examples/encoder_kernels.rs`, and `python bench/encoder_profile.py
//! --attention` (one thread and two).
mod common;

use common::Rng;
use nnic_kernels::attention::profile::{stage_seconds, STAGES};
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::attention::{Operand, Products, Shape};
use std::time::Instant;
use nnic_kernels::cpu;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("arguments are integers")).collect();
    let rounds = args.first().copied().unwrap_or(15);
    let [batch, seq, heads, head_dim] = match args.get(1..5) {
        Some(s) => [s[0], s[1], s[2], s[3]],
        None => [8, 128, 12, 64],
    };
    let shape = Shape { batch, seq, heads, head_dim };
    let hidden = heads * head_dim;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let qkv: Vec<f32> = (0..batch * seq * 3 * hidden).map(|_| rng.f()).collect();
    let op = |part: usize| Operand { data: &qkv, offset: part * hidden, row_stride: 3 * hidden };
    let mut out = vec![0.0f32; batch * seq * hidden];
    let scale = 1.0 / (head_dim as f32).sqrt();
    let start = Instant::now();
    let clock = || thread_cpu().unwrap_or_else(|| start.elapsed().as_secs_f64());
    // every ISA with float32 products, and AVX-512 with bfloat16 ones where the CPU has them
    let mut isas: Vec<(cpu::Isa, Products)> = cpu::supported().into_iter().map(|i| (i, Products::F32)).collect();
    if Products::bf16_on(cpu::Isa::Avx512) {
        isas.push((cpu::Isa::Avx512, Products::Bf16));
    }
    let mut times = vec![vec![[0.0f64; 5]; rounds]; isas.len()];
    for r in 0..rounds + 1 {
        for (i, &(isa, products)) in isas.iter().enumerate() {
            let t = stage_seconds(isa, products, op(0), op(1), op(2), shape, scale, &mut out, clock);
            if r > 0 {
                times[i][r - 1] = t; // round 0 warms up
            }
        }
    }
    let macs = (batch * heads * seq * seq * head_dim) as f64; // per product
    let exps = (batch * heads * seq * seq) as f64;
    println!("attention stages, one thread (its CPU time), {shape:?}, {rounds} interleaved rounds, median ms per call");
    print!("{:12}", "isa");
    for s in STAGES {
        print!(" {s:>15}");
    }
    println!(" {:>9} {:>11} {:>9} {:>10}", "total", "QK^T GMAC/s", "PV GMAC/s", "ns per exp");
    for (i, (isa, products)) in isas.iter().enumerate() {
        let med = |f: &dyn Fn(&[f64; 5]) -> f64| {
            let mut v: Vec<f64> = times[i].iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        print!("{:12}", format!("{}{}", isa.name(), if *products == Products::Bf16 { " bf16" } else { "" }));
        for s in 0..5 {
            print!(" {:>15.3}", med(&|t| t[s]) * 1e3);
        }
        let total = med(&|t| t.iter().sum());
        println!(" {:>9.3} {:>11.1} {:>9.1} {:>10.3}", total * 1e3, macs / med(&|t| t[1]) / 1e9,
                 macs / med(&|t| t[3]) / 1e9, med(&|t| t[2]) / exps * 1e9);
    }
}

