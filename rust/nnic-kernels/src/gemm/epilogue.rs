//! Epilogues: what runs on each finished output block of the i32 accumulator while it is in cache.
//! [`epilogue_int`] undoes the +128 activation shift of exact products; [`epilogue_f32`] applies the zero-point
//! compensation, activation and weight scales and the bias, writing float32. Both are multiversioned loops
//! (see the crate's SIMD style), picked by the ISA of the GEMM path.
use super::path::{isa_of, Path};

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
}
crate::simd::multiversion!(fn epilogue_f32_mv(
    row: &mut [i32], colsum: &[i32], za: i32, zw: Option<&[i32]>, r: i32, sa: f32, sw: &[f32], bias: Option<&[f32]>
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
) {
    epilogue_f32_mv(isa_of(path), row, colsum, za, zw, r, sa, sw, bias)
}
