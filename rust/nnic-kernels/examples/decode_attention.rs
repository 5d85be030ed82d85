//! Times one query token's attention (`decoder::decode_attention`) at LLaMA-1B's shape on every ISA:
//! `cargo run --release --example decode_attention -p nnic-kernels [positions] [isa]`.
use nnic_kernels::cpu;
use nnic_kernels::decoder::{decode_attention, StepShape};
use std::time::Instant;

fn main() {
    let pos: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(180);
    let shape = StepShape { batch: 1, heads: 32, kv_heads: 4, head_dim: 64, capacity: pos + 1 };
    let qkv: Vec<f32> = (0..shape.qkv_width()).map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5).collect();
    let (cos, sin) = (vec![1.0f32; 64], vec![0.0f32; 64]);
    let cache = shape.kv_heads * shape.capacity * shape.head_dim;
    let mut k: Vec<f32> = (0..cache).map(|i| ((i * 104_729) % 1009) as f32 / 1009.0 - 0.5).collect();
    let mut v = k.clone();
    let mut out = vec![0.0f32; shape.heads * shape.head_dim];
    let only = std::env::args().nth(2);
    for isa in cpu::supported().into_iter().filter(|i| only.as_deref().is_none_or(|o| o == i.name())) {
        cpu::set_isa(Some(isa)).expect("supported");
        let mut best = f64::INFINITY;
        for _ in 0..20000 {
            let t = Instant::now();
            decode_attention(&qkv, &cos, &sin, &mut k, &mut v, shape, pos, 0.125, &mut out).expect("valid shape");
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{:8} {pos} positions: {:.1} us (best of 20000)", isa.name(), best * 1e6);
    }
}
