//! Where a prepacked int8 linear layer's time goes (`examples/gemm_parts.rs` prints it), and the VNNI peak it is
//! measured against. Not part of the kernels' API: [`stage_seconds`] runs the same stages as [`super::int8_linear`]
//! one after another on the kernel pool, timing each on the caller's clock; [`vnni_peak`] runs `vpdpbusd` on
//! registers only (no loads), the ceiling of any int8 product on this core.
use super::act_pack::{self, ActQuant};
use super::driver::{drive, Block, Hooks};
use super::epilogue::{epilogue_f32, Activation};
use super::linear::{check_linear, finish_linear, PackedLinear};
use super::path::{isa_of, Path};
use crate::error::Result;
use crate::pool;

/// Stages of [`stage_seconds`], in order.
pub const STAGES: [&str; 3] = ["quantize + pack x", "product (i32)", "epilogue (f32)"];

/// Seconds of each of [`STAGES`] for one `int8_linear(path, x, m, w, None, act, activation)`, as told by `clock`
/// (which must be `Sync`: the epilogue runs on the pool's threads). The epilogue runs on each finished block
/// while it is in cache (as `int8_linear` did before its VNNI tiles applied it in registers; the non-VNNI paths
/// and K beyond one slice still do), and is timed block by block: with more than one thread, its summed time is
/// divided by the thread count (an estimate of its share of the wall time) and the product is the rest.
#[allow(clippy::too_many_arguments)]
pub fn stage_seconds(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
    clock: impl Fn() -> f64 + Sync,
) -> Result<[f64; 3]> {
    path.check()?;
    check_linear(m, w, None, act, out)?;
    let (k, n) = (w.in_features(), w.out_features());
    let b = w.packed();
    let t0 = clock();
    let pa = act_pack::pack_f32(path, path.mr_for(m), x, m, k, b.kp(), act, !w.zero_point().is_empty())?;
    let t1 = clock();
    let (colsum, zw) = (b.colsum(), w.zero_point());
    let scale = w.scale();
    let scale: Vec<f32> = if scale.len() == 1 { vec![scale[0]; n] } else { scale };
    let zw: Vec<i32> = if zw.len() == 1 { vec![zw[0]; n] } else { zw };
    let epilogue = std::sync::Mutex::new(0.0f64);
    // SAFETY: as in `finish_linear`: an f32 and an i32 have the same size and alignment.
    let c: &mut [i32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut i32, out.len()) };
    let finish = |blk: Block, c: *mut i32| {
        let t = clock();
        for i in blk.i0..blk.i1 {
            // SAFETY: row `i` of the block belongs to this task.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + blk.j0), blk.j1 - blk.j0) };
            let r = (k as i32).wrapping_mul(pa.zero[i]).wrapping_sub(pa.rowsum[i]);
            let zw = (!zw.is_empty()).then(|| &zw[blk.j0..blk.j1]);
            let cols = blk.j0..blk.j1;
            epilogue_f32(isa_of(path), row, &colsum[cols.clone()], pa.zero[i], zw, r, pa.scale[i], &scale[cols], None, activation);
        }
        *epilogue.lock().unwrap() += clock() - t;
    };
    drive(path, m, &pa, b, c, &finish, None, Hooks::default());
    let t2 = clock();
    act_pack::release(pa);
    let e = epilogue.into_inner().unwrap() / pool::num_threads() as f64;
    Ok([t1 - t0, t2 - t1 - e, e])
}

/// Multiply-adds done by `iters` rounds of 24 independent `vpdpbusd` on registers (64 MAC each), or `None` when
/// the CPU lacks AVX-512 VNNI. Time the call to get the peak rate of one core.
pub fn vnni_peak(iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if Path::Vnni.is_supported() {
        // SAFETY: the CPU has AVX-512F and VNNI (checked above).
        unsafe { x86::peak(iters) };
        return Some(iters as u64 * 24 * 64);
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 24 accumulator chains (as many as the 12 × 32 tile has), two multiplier registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn peak(iters: usize) {
        let a = _mm512_set1_epi32(0x0102_0304);
        let b = _mm512_set1_epi32(0x0101_0101);
        let mut s = [_mm512_setzero_si512(); 24];
        for _ in 0..iters {
            for v in s.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut t = _mm512_setzero_si512();
        for v in s {
            t = _mm512_add_epi32(t, v);
        }
        std::hint::black_box(t);
    }
}

/// `int8_linear(path, x, m, w, None, act, activation, out)` with the epilogue run as a pass over each finished
/// block instead of in the VNNI tiles' registers (what it did before the tiles could), the activations packed
/// before the GEMM's region: the baseline that `examples/gemm_parts.rs` times against in the same rounds.
pub fn int8_linear_block_epilogue(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
) -> Result<()> {
    packed_first(path, x, m, w, act, activation, out, false)
}

/// `int8_linear(path, x, m, w, None, act, activation, out)` with the activations quantized and packed in a parallel
/// region of their own before the GEMM's (what it did before the GEMM's region packed them as its first tasks):
/// the baseline that `examples/gemm_parts.rs` times against in the same rounds.
pub fn int8_linear_packed_first(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
) -> Result<()> {
    packed_first(path, x, m, w, act, activation, out, true)
}

/// The two baselines above: activations packed in a region before the GEMM's, the epilogue in the tiles' registers
/// (`in_tiles`) or as a pass over each finished block.
#[allow(clippy::too_many_arguments)]
fn packed_first(
    path: Path,
    x: &[f32],
    m: usize,
    w: &PackedLinear,
    act: ActQuant,
    activation: Activation,
    out: &mut [f32],
    in_tiles: bool,
) -> Result<()> {
    path.check()?;
    check_linear(m, w, None, act, out)?;
    let b = w.packed();
    let pa = act_pack::pack_f32(path, path.mr_for(m), x, m, w.in_features(), b.kp(), act, !w.zero_point().is_empty())?;
    finish_linear(path, m, pa, w, None, activation, out, in_tiles, None, None);
    Ok(())
}
