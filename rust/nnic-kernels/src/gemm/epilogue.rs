//! Epilogues: what runs on each finished output block of the i32 accumulator while it is in cache.
//! [`epilogue_int`] undoes the +128 activation shift of exact products; [`epilogue_f32`] applies the zero-point
//! compensation, activation and weight scales, the bias and an optional [`Activation`] (GELU after the first
//! Linear of a transformer's MLP, ReLU), writing float32: the activation costs no pass over the output of its
//! own. Both are multiversioned loops (see the crate's SIMD style), picked by the ISA of the GEMM path.
use super::path::{isa_of, Path};
use crate::error::{KernelError, Result};

/// An element-wise function applied to the float output in the epilogue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x/2 · (1 + erf(x/√2))`, the exact GELU (torch's default; erf as [`erf`]).
    Gelu,
}

impl Activation {
    /// Parses `"none"` / `"identity"`, `"relu"` or `"gelu"`.
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "none" | "identity" => Ok(Activation::Identity),
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            _ => Err(KernelError::Invalid {
                what: format!("activation must be 'none', 'relu' or 'gelu', got {name:?}"),
            }),
        }
    }
}

/// erf for float32: Eigen's rational approximation `x·P(x²)/Q(x²)` on [-4, 4] (erf is ±1 in float32 beyond;
/// max abs error 4e-7), branch-free so that the epilogue loop vectorizes.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.72614225801306e-10, 2.77068142495902e-08);
    p = x2.mul_add(p, -2.10102402082508e-06);
    p = x2.mul_add(p, -5.69250639462346e-05);
    p = x2.mul_add(p, -7.34990630326855e-04);
    p = x2.mul_add(p, -2.95459980854025e-03);
    p = x2.mul_add(p, -1.60960333262415e-02);
    let mut q = x2.mul_add(-1.45660718464996e-05, -2.13374055278905e-04);
    q = x2.mul_add(q, -1.68282697438203e-03);
    q = x2.mul_add(q, -7.37332916720468e-03);
    q = x2.mul_add(q, -1.42647390514189e-02);
    x * p / q
}

#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `max(x, 0)` that keeps a NaN NaN, as torch's `relu` does (a NaN bias must not come out as 0).
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

#[inline(always)]
fn activate(row: &mut [i32], act: Activation) {
    // The row holds f32 bit patterns by now; one loop per activation keeps each one vectorizable.
    match act {
        Activation::Identity => {}
        Activation::Relu => {
            for v in row.iter_mut() {
                let x = f32::from_bits(*v as u32);
                *v = relu(x).to_bits() as i32;
            }
        }
        Activation::Gelu => {
            for v in row.iter_mut() {
                *v = gelu(f32::from_bits(*v as u32)).to_bits() as i32;
            }
        }
    }
}

#[inline(always)]
fn epilogue_int_body(row: &mut [i32], colsum: &[i32], zero: i32) {
    for (v, &s) in row.iter_mut().zip(colsum) {
        *v = v.wrapping_sub(zero.wrapping_mul(s));
    }
}
crate::simd::multiversion!(fn epilogue_int_mv(row: &mut [i32], colsum: &[i32], zero: i32) = epilogue_int_body;);

pub(super) fn epilogue_int(path: Path, row: &mut [i32], colsum: &[i32], zero: i32) {
    epilogue_int_mv(isa_of(path), row, colsum, zero)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn epilogue_f32_body(
    row: &mut [i32],
    colsum: &[i32],
    za: i32,
    zw: Option<&[i32]>,
    r: i32,
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
) {
    let n = row.len();
    let (colsum, sw) = (&colsum[..n], &sw[..n]);
    if let Some(zw) = zw {
        let zw = &zw[..n];
        for j in 0..n {
            row[j] = row[j].wrapping_add(zw[j].wrapping_mul(r));
        }
    }
    match bias {
        Some(b) => {
            let b = &b[..n];
            for j in 0..n {
                let v = row[j].wrapping_sub(za.wrapping_mul(colsum[j])) as f32 * (sa * sw[j]) + b[j];
                row[j] = v.to_bits() as i32;
            }
        }
        None => {
            for j in 0..n {
                let v = row[j].wrapping_sub(za.wrapping_mul(colsum[j])) as f32 * (sa * sw[j]);
                row[j] = v.to_bits() as i32;
            }
        }
    }
    activate(row, act);
}
crate::simd::multiversion!(fn epilogue_f32_mv(
    row: &mut [i32], colsum: &[i32], za: i32, zw: Option<&[i32]>, r: i32, sa: f32, sw: &[f32], bias: Option<&[f32]>,
    act: Activation
) = epilogue_f32_body;);

#[allow(clippy::too_many_arguments)]
pub(super) fn epilogue_f32(
    path: Path,
    row: &mut [i32],
    colsum: &[i32],
    za: i32,
    zw: Option<&[i32]>,
    r: i32,
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
) {
    #[cfg(target_arch = "x86_64")]
    if act == Activation::Gelu && isa_of(path) == crate::cpu::Isa::Avx512 {
        epilogue_f32_mv(crate::cpu::Isa::Avx512, row, colsum, za, zw, r, sa, sw, bias, Activation::Identity);
        let full = row.len() / 16 * 16;
        // SAFETY: the AVX-512 path is active, so the CPU has AVX-512F.
        unsafe { x86::gelu16(&mut row[..full]) };
        activate(&mut row[full..], act);
        return;
    }
    epilogue_f32_mv(isa_of(path), row, colsum, za, zw, r, sa, sw, bias, act)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::gelu`] on f32 bit patterns, 16 at a time, with erf's division `p / q` as a reciprocal estimate
    /// (`vrcp14ps`, 2^-14) refined by one Newton step (about 2^-28, below float32's 2^-24): a `vdivps` of 16 lanes
    /// costs more cycles than the rest of the GELU together, which made the MLP's first GEMM's epilogue a sixth
    /// of its time at BERT-base's shape. Within 2 ulp of the portable loop (`gelu_avx512_matches_portable`);
    /// NaN stays NaN and ±inf map as there (the clamp of erf's argument keeps `q` away from 0).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `row.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::excessive_precision)]
    pub(super) unsafe fn gelu16(row: &mut [i32]) {
        let c = _mm512_set1_ps;
        for v in row.chunks_exact_mut(16) {
            let p = v.as_mut_ptr() as *mut f32;
            // SAFETY: 16 values at `p`.
            let x = unsafe { _mm512_loadu_ps(p) };
            // erf(x / √2) as in `super::erf`, clamped to [-4, 4] (a NaN becomes -4: the product with x below
            // keeps it NaN).
            let t = _mm512_mul_ps(x, c(std::f32::consts::FRAC_1_SQRT_2));
            let t = _mm512_min_ps(_mm512_max_ps(t, c(-4.0)), c(4.0));
            let t2 = _mm512_mul_ps(t, t);
            let mut q = _mm512_fmadd_ps(t2, c(-1.45660718464996e-05), c(-2.13374055278905e-04));
            let mut n = _mm512_fmadd_ps(t2, c(-2.72614225801306e-10), c(2.77068142495902e-08));
            n = _mm512_fmadd_ps(t2, n, c(-2.10102402082508e-06));
            q = _mm512_fmadd_ps(t2, q, c(-1.68282697438203e-03));
            n = _mm512_fmadd_ps(t2, n, c(-5.69250639462346e-05));
            q = _mm512_fmadd_ps(t2, q, c(-7.37332916720468e-03));
            n = _mm512_fmadd_ps(t2, n, c(-7.34990630326855e-04));
            q = _mm512_fmadd_ps(t2, q, c(-1.42647390514189e-02));
            n = _mm512_fmadd_ps(t2, n, c(-2.95459980854025e-03));
            n = _mm512_fmadd_ps(t2, n, c(-1.60960333262415e-02));
            let r = _mm512_rcp14_ps(q);
            let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, c(2.0)));
            let erf = _mm512_mul_ps(_mm512_mul_ps(t, n), r);
            let h = _mm512_mul_ps(x, c(0.5));
            let y = _mm512_mul_ps(h, _mm512_add_ps(erf, c(1.0)));
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p, y) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 GELU (reciprocal instead of division) is the portable one within 2 ulp, or within 1e-7 · (1 + |x|)
    /// where `1 + erf` cancels (x < -3: erf's own error, 4e-7, is larger there), and maps NaN, ±inf, ±0 and
    /// huge values as it does.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn gelu_avx512_matches_portable() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 2.5e-4).collect();
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, 5.7, -5.7]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        xs.extend((0..20_000).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits(state as u32)
        }));
        xs.truncate(xs.len() / 16 * 16);
        let mut row: Vec<i32> = xs.iter().map(|v| v.to_bits() as i32).collect();
        // SAFETY: AVX-512F checked above; the length is a multiple of 16.
        unsafe { x86::gelu16(&mut row) };
        for (&x, &got) in xs.iter().zip(&row) {
            let (got, want) = (f32::from_bits(got as u32), gelu(x));
            if want.is_nan() {
                assert!(got.is_nan(), "gelu({x}) = {got}, want NaN");
                continue;
            }
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(got == want || ulps <= 2 || (got - want).abs() <= 1e-7 * (1.0 + x.abs()), "gelu({x}) = {got}, want {want}");
        }
    }
}
