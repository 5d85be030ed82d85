//! Epilogues: what runs on each finished output block of the i32 accumulator while it is in cache.
//! [`epilogue_int`] undoes the +128 activation shift of exact products; [`epilogue_f32`] applies the zero-point
//! compensation, activation and weight scales, the bias and an optional [`Activation`] (GELU after the first
//! Linear of a transformer's MLP, ReLU), writing float32: the activation costs no pass over the output of its
//! own. Both are multiversioned loops (see the crate's SIMD style), picked by the ISA the caller names (the GEMM
//! path's, `path::isa_of`), so this module needs nothing of the paths that call it.
use crate::cpu::Isa;
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
/// max abs error 4e-7), branch-free so that the epilogue loop vectorizes. The quotient is clamped to [-1, 1]: near
/// ±4 it reaches ±1.0000004, which made `gelu` of x ≈ -5.6 positive (+1.1e-6 where the true value is -4.5e-8).
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
    (x * p / q).clamp(-1.0, 1.0)
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

pub(super) fn epilogue_int(isa: Isa, row: &mut [i32], colsum: &[i32], zero: i32) {
    epilogue_int_mv(isa, row, colsum, zero)
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
    isa: Isa,
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
    epilogue_f32_mv(isa, row, colsum, za, zw, r, sa, sw, bias, act)
}

/// Each row's activation zero point `za`, `K·za - rowsum` (the weight zero-point term) `r` and scale `sa`, `rows`
/// values each. Raw pointers, not slices: when the activations are packed inside the GEMM's region
/// (`driver::drive` with `pack`), the task that packs a row panel writes its rows' values while other tasks read
/// the rows of panels packed before (each after waiting for its panels' flags).
#[derive(Copy, Clone)]
pub(crate) struct RowTerms {
    pub za: *const i32,
    pub r: *const i32,
    pub sa: *const f32,
    pub rows: usize,
}
// SAFETY: read only for rows whose panel is packed (see above); the buffers outlive the GEMM.
unsafe impl Send for RowTerms {}
unsafe impl Sync for RowTerms {}

impl RowTerms {
    /// Row `i`'s `(za, r, sa)`.
    ///
    /// # Safety
    /// `i < rows`, and row `i`'s values are written and visible to this thread.
    #[inline(always)]
    pub(crate) unsafe fn get(&self, i: usize) -> (i32, i32, f32) {
        debug_assert!(i < self.rows);
        // SAFETY: the caller's contract.
        unsafe { (*self.za.add(i), *self.r.add(i), *self.sa.add(i)) }
    }
}

/// The float epilogue of a whole linear layer in the form the VNNI tile applies to its accumulator registers
/// before storing them (`x86::finish_tile` in `micro.rs`), so that the i32 products never reach memory: the
/// same operations as [`epilogue_f32`], in the same order, so the bits are the same. Column arrays hold the
/// weights' padded columns (a multiple of 32: the tile reads 32 at a time); `row` the terms of the `m` rows.
pub(crate) struct TileEpilogue<'a> {
    pub colsum: &'a [i32],
    pub sw: &'a [f32],
    /// Weight zero points, when any is not 0.
    pub zw: Option<&'a [i32]>,
    /// The bias padded with zeros to the columns of `colsum`.
    pub bias: Option<Vec<f32>>,
    pub row: RowTerms,
    pub act: Activation,
}

/// [`TileEpilogue`] at one tile: its pointers start at the tile's first row and column.
#[derive(Copy, Clone)]
pub(crate) struct TileAt {
    pub colsum: *const i32,
    pub sw: *const f32,
    pub zw: *const i32,
    pub bias: *const f32,
    pub za: *const i32,
    pub r: *const i32,
    pub sa: *const f32,
    pub act: Activation,
}

impl TileEpilogue<'_> {
    /// The pointers for the tile at row `i0`, column `j0` (a multiple of 32).
    pub(crate) fn at(&self, i0: usize, j0: usize) -> TileAt {
        assert!(j0 + 32 <= self.colsum.len() && j0 + 32 <= self.sw.len() && i0 < self.row.rows);
        let col = |v: Option<&[i32]>| v.map_or(std::ptr::null(), |v| v[j0..j0 + 32].as_ptr());
        // SAFETY: `i0 < rows` (checked above): the row pointers stay inside their buffers.
        let (za, r, sa) = unsafe { (self.row.za.add(i0), self.row.r.add(i0), self.row.sa.add(i0)) };
        TileAt {
            colsum: self.colsum[j0..].as_ptr(),
            sw: self.sw[j0..].as_ptr(),
            zw: col(self.zw),
            bias: self.bias.as_ref().map_or(std::ptr::null(), |b| b[j0..j0 + 32].as_ptr()),
            za,
            r,
            sa,
            act: self.act,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf stays within [-1, 1] on the whole float line, and GELU keeps the sign of its input in the tails (near
    /// x = -5.6, where the rational approximation alone reaches -1.0000004, it gave +1.1e-6).
    #[test]
    fn erf_is_bounded_and_gelu_keeps_its_sign_in_the_tails() {
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let e = erf(x);
            assert!((-1.0..=1.0).contains(&e), "erf({x}) = {e}");
            let g = gelu(x);
            assert!(if x < 0.0 { g <= 0.0 } else { g >= 0.0 }, "gelu({x}) = {g}");
        }
    }
}
