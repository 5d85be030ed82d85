//! Activation quantization for int8 sparse layers, with the int8 GEMM's exact formulas
//! ([`crate::gemm::act_qparams`]): u8 codes `q = clamp(round_half_even(x / s) + z, 0, qmax)` with one scale and
//! zero point per row. The integer kernels take `q` as it is (and subtract `z · Σ codes` per row); the float
//! kernels take the centred codes `q - z` as floats (exact integers). Either way the epilogue multiplies by
//! `s_a · s_w` once. The loops are multiversioned, so rounding is one vector instruction, not a libm call.
use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use crate::gemm::{par, ActQuant, RowCode};

/// u8 codes `[m, k]`, one activation scale and zero point per row.
pub struct Quantized {
    pub q: Vec<u8>,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
}

impl Quantized {
    /// The centred codes `q - z` as floats, `[m, k]`.
    pub fn centred(&self, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.q.len()];
        let isa = cpu::active();
        for (i, &z) in self.zero.iter().enumerate() {
            centre_row(isa, &self.q[i * k..(i + 1) * k], z as f32, &mut out[i * k..(i + 1) * k]);
        }
        out
    }
}

#[inline(always)]
fn min_max_body(x: &[f32]) -> (f32, f32, bool) {
    // independent lanes and plain comparisons, so that LLVM vectorizes; `bad` flags NaN / infinity
    let (mut lo, mut hi, mut bad) = ([0f32; 16], [0f32; 16], [false; 16]);
    let mut chunks = x.chunks_exact(16);
    for c in chunks.by_ref() {
        for e in 0..16 {
            let v = c[e];
            lo[e] = if v < lo[e] { v } else { lo[e] };
            hi[e] = if v > hi[e] { v } else { hi[e] };
            bad[e] |= !v.is_finite();
        }
    }
    let mut out = (0f32, 0f32, false);
    for e in 0..16 {
        out = (out.0.min(lo[e]), out.1.max(hi[e]), out.2 | bad[e]);
    }
    for &v in chunks.remainder() {
        out = (out.0.min(v), out.1.max(v), out.2 | !v.is_finite());
    }
    out
}
crate::simd::multiversion!(fn min_max(x: &[f32]) -> (f32, f32, bool) = min_max_body;);

#[inline(always)]
fn quant_row_body(x: &[f32], code: RowCode, q: &mut [u8]) {
    for (o, &v) in q.iter_mut().zip(x) {
        *o = code.of(v);
    }
}
crate::simd::multiversion!(fn quant_row(x: &[f32], code: RowCode, q: &mut [u8]) = quant_row_body;);

#[inline(always)]
fn centre_row_body(q: &[u8], z: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(q) {
        *o = v as f32 - z;
    }
}
crate::simd::multiversion!(fn centre_row(q: &[u8], z: f32, out: &mut [f32]) = centre_row_body;);

/// A pointer to per-row results that tasks write one row each.
struct Rows<T>(*mut T);
// SAFETY: every task writes only its own rows.
unsafe impl<T> Sync for Rows<T> {}

/// Quantizes `x[m, k]` as `act` says (dynamic per row or per tensor, or static); non-finite inputs are an error.
/// Rows are spread over `threads` (from 2¹⁶ elements on): this runs on the caller before any product task, and
/// at 128 × 3072 serially it was a tenth of a two-thread sparse int8 product.
pub fn fake_quant(x: &[f32], m: usize, k: usize, act: ActQuant, threads: usize) -> Result<Quantized> {
    act.check()?;
    assert!(x.len() >= m * k, "fake_quant: x has {} elements, expected {m} x {k}", x.len());
    let isa: Isa = cpu::active();
    let threads = if m * k < super::PAR_MIN_WORK { 1 } else { threads };
    let mut ranges = vec![(0f32, 0f32, false); m];
    let rp = Rows(ranges.as_mut_ptr());
    // SAFETY: task i writes ranges[i] only (i < m).
    par::for_each(m, threads, &|i| unsafe { *{ &rp }.0.add(i) = min_max(isa, &x[i * k..(i + 1) * k]) });
    if ranges.iter().any(|r| r.2) {
        let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(KernelError::Invalid {
            what: format!("x contains a non-finite value ({}) at flat index {i}: int8 activations need finite inputs", x[i]),
        });
    }
    let params: Vec<(f32, i32)> = match act {
        ActQuant::Static { scale, zero_point } => vec![(scale, zero_point); m],
        ActQuant::DynamicPerTensor { .. } => {
            let (lo, hi) = ranges.iter().fold((0f32, 0f32), |(lo, hi), r| (lo.min(r.0), hi.max(r.1)));
            vec![act.params(lo, hi); m]
        }
        ActQuant::DynamicPerRow { .. } => ranges.iter().map(|r| act.params(r.0, r.1)).collect(),
    };
    let mut q = vec![0u8; m * k];
    let qp = Rows(q.as_mut_ptr());
    par::for_each(m, threads, &|i| {
        let (s, z) = params[i];
        // SAFETY: task i writes row i of q (k codes from i · k, inside its m · k) only.
        let row = unsafe { std::slice::from_raw_parts_mut({ &qp }.0.add(i * k), k) };
        quant_row(isa, &x[i * k..(i + 1) * k], RowCode::new(s, z, act.qmax()), row);
    });
    Ok(Quantized { q, scale: params.iter().map(|p| p.0).collect(), zero: params.iter().map(|p| p.1).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_on_two_threads_equals_one_thread() {
        let (m, k) = (130, 1000); // above the parallel threshold
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0 + (i / k) as f32 * 0.01).collect();
        for act in [ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }, ActQuant::DynamicPerTensor { symmetric: true, reduce_range: false }] {
            let (a, b) = (fake_quant(&x, m, k, act, 1).unwrap(), fake_quant(&x, m, k, act, 2).unwrap());
            assert_eq!((a.q, a.scale, a.zero), (b.q, b.scale, b.zero));
        }
        let mut bad = x.clone();
        bad[77 * k + 3] = f32::NAN;
        let err = fake_quant(&bad, m, k, ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }, 2).err().expect("NaN rejected").to_string();
        assert!(err.contains(&format!("flat index {}", 77 * k + 3)), "{err}");
    }
}
