//! LayerNorm of a residual sum in one pass over memory: `out = LayerNorm(x + residual) * gamma + beta` per row
//! (BERT's `*SelfOutput` / `*Output` blocks; onnxruntime's `SkipLayerNormalization`).
//!
//! torch runs the add and the norm as two kernels: the sum is written out, read back for the statistics and read
//! a third time for the normalisation, each pass over a fresh 3 MB tensor at BERT-base batch 8. Here each row
//! (768 floats, 3 KiB: it stays in L1) is summed into `out`, its mean and variance taken from that L1 copy, and
//! normalised in place. The statistics are the two-pass ones torch uses (mean, then the mean of squared
//! deviations), summed in 16 independent lanes so that the wider ISA copies vectorise them; the result differs
//! from torch's only by float32 rounding. Rows are split over the kernel pool.
use crate::cpu;
use crate::error::{KernelError, Result};
use crate::pool::{self, PAR_MIN};
use crate::simd::multiversion;
use rayon::prelude::*;

/// Lanes of the per-row sums (a multiple of every ISA's f32 vector width).
const LANES: usize = 16;

/// `out[r] = (h - mean(h)) / sqrt(var(h) + eps) * gamma + beta` with `h = x[r] + residual[r]`, for every row `r`
/// of `cols` values (`x`, `residual` and `out` are row-major `[rows, cols]`; `gamma` and `beta` have `cols`
/// values). `var` is the biased variance, as in torch's `layer_norm`.
pub fn skip_layer_norm(
    x: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    let cols = gamma.len();
    if cols == 0 {
        return Err(KernelError::Empty { arg: "gamma" });
    }
    if beta.len() != cols {
        return Err(KernelError::Mismatch { what: format!("beta has {} values, gamma {cols}", beta.len()) });
    }
    if x.len() % cols != 0 {
        return Err(KernelError::Mismatch {
            what: format!("x has {} values, not a whole number of rows of {cols} (the length of gamma)", x.len()),
        });
    }
    for (name, len) in [("residual", residual.len()), ("out", out.len())] {
        if len != x.len() {
            return Err(KernelError::Mismatch { what: format!("{name} has {len} values, x has {}", x.len()) });
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::Invalid { what: format!("eps must be finite and >= 0, got {eps}") });
    }
    let isa = cpu::active();
    let job = |x: &[f32], r: &[f32], o: &mut [f32]| {
        for ((x, r), o) in x.chunks_exact(cols).zip(r.chunks_exact(cols)).zip(o.chunks_exact_mut(cols)) {
            skip_norm_row(isa, x, r, gamma, beta, eps, o);
        }
    };
    if x.len() < PAR_MIN || pool::num_threads() == 1 {
        job(x, residual, out);
        return Ok(());
    }
    let c = pool::chunk_len(x.len(), cols).max(cols);
    pool::install(|| {
        out.par_chunks_mut(c).zip(x.par_chunks(c)).zip(residual.par_chunks(c)).for_each(|((o, x), r)| job(x, r, o))
    });
    Ok(())
}

multiversion! {
    fn skip_norm_row(x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) = skip_norm_row_body;
}

/// Sum of `f(i)` over `0..n` in [`LANES`] independent lanes (vectorisable without reassociating floats).
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let full = n - n % LANES;
    for base in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    for (l, i) in (full..n).enumerate() {
        acc[l] += f(i);
    }
    acc.iter().sum()
}

#[inline(always)]
fn skip_norm_row_body(x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = out.len();
    let (x, r, gamma, beta) = (&x[..n], &r[..n], &gamma[..n], &beta[..n]);
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
        *o = a + b;
    }
    let mean = lane_sum(n, |i| out[i]) / n as f32;
    let var = lane_sum(n, |i| {
        let d = out[i] - mean;
        d * d
    }) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((o, &g), &b) in out.iter_mut().zip(gamma).zip(beta) {
        *o = (*o - mean) * rstd * g + b;
    }
}
