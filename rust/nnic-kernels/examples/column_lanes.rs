//! The int8 linear layer on column lanes against the column blocks before them, in the same rounds of one process:
//! `cargo run --release -p nnic-kernels --example column_lanes [rounds] [M K N]` (default 40 rounds, 128 4096 4096).
//!
//! Per round, in alternating order, one `int8_linear` call (f32 in and out, per-token asymmetric activations) with
//! [`set_column_lanes`] off (`blocks`) and one with it on (`lanes`), on one packed copy (`FLUSH=1`: a 64 MiB write
//! before every call, so that the weights come from DRAM as in `bench/gemm.py`'s rounds). One thread: thread CPU
//! time. Two threads (the kernel pool): wall time, over all calls and over the undisturbed ones, those in which no
//! thread of this process waited on a run queue for more than 50 µs (`/proc/self/task/*/schedstat`): on a machine
//! shared with other processes these are the calls that ran with both cores free, i.e. what a quiet machine gives.
//! `THREADS=2` skips the one-thread rounds. Printed: best and median per setting, and `blocks` ÷ `lanes`.
mod common;

use common::run_queue_wait_ns;
use nnic_kernels::clock::thread_cpu;
use nnic_kernels::gemm::{int8_linear, set_column_lanes, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::pool;
use std::time::Instant;

/// The best and the median of `v` (sorted in place), in milliseconds.
fn best_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0] * 1e3, v[v.len() / 2] * 1e3)
}

fn line(what: &str, t: &mut [Vec<f64>; 2]) -> String {
    if t.iter().any(|v| v.is_empty()) {
        return format!("{what}: none");
    }
    let (b0, m0) = best_median(&mut t[0]);
    let (b1, m1) = best_median(&mut t[1]);
    format!(
        "{what}: blocks {} calls, best {b0:.3} median {m0:.3} ms; lanes {} calls, best {b1:.3} median {m1:.3} ms; \
         blocks / lanes best {:.3} median {:.3}",
        t[0].len(),
        t[1].len(),
        b0 / b1,
        m0 / m1
    )
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().expect("arguments are integers")).collect();
    let rounds = args.first().copied().unwrap_or(40);
    let (m, k, n) = match args[..] {
        [_, m, k, n] => (m, k, n),
        _ => (128, 4096, 4096),
    };
    let flush = std::env::var("FLUSH").is_ok();
    let counts: Vec<usize> = if std::env::var("THREADS").is_ok_and(|v| v == "2") { vec![2] } else { vec![1, 2] };
    let path = Path::active();
    let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 7919 + 13) % 255) as i8).collect();
    let scale: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-6).collect();
    let pw = PackedLinear::new(&w, n, k, &scale, &[]).unwrap();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut out = vec![0.0f32; m * n];
    let mut sweep = vec![0u8; 64 << 20];
    for threads in counts {
        pool::set_num_threads(threads).unwrap();
        let (mut all, mut undisturbed) = ([vec![], vec![]], [vec![], vec![]]);
        for r in 0..rounds {
            for lanes in if r % 2 == 0 { [false, true] } else { [true, false] } {
                if flush {
                    sweep.iter_mut().for_each(|v| *v = v.wrapping_add(1));
                }
                set_column_lanes(lanes);
                let waited = run_queue_wait_ns();
                let (cpu, wall) = (thread_cpu().unwrap_or(0.0), Instant::now());
                int8_linear(path, &x, m, &pw, None, act, Activation::Identity, &mut out).unwrap();
                let t = if threads == 1 { thread_cpu().unwrap_or(0.0) - cpu } else { wall.elapsed().as_secs_f64() };
                all[lanes as usize].push(t);
                if run_queue_wait_ns() - waited < 50_000 {
                    undisturbed[lanes as usize].push(t);
                }
            }
        }
        set_column_lanes(true);
        let clock = if threads == 1 { "thread CPU time" } else { "wall" };
        println!("{m}x{k}x{n}, {threads} thread(s), {clock}, {}", line("all calls", &mut all));
        if threads > 1 {
            println!("{m}x{k}x{n}, {threads} threads, {clock}, {}", line("undisturbed calls", &mut undisturbed));
        }
    }
}
