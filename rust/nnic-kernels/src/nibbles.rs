//! Signed int4 packing: two values per byte, the even (first) value in the low nibble.
use crate::error::{KernelError, Result};

/// Packs `q` (values in [-8, 7]) into `out` of `ceil(q.len() / 2)` bytes; an odd tail gets a 0 high nibble.
/// Errors: a value outside [-8, 7] (named by flat index; `out` untouched), wrong `out` length.
pub fn pack_int4(q: &[i8], out: &mut [u8]) -> Result<()> {
    if out.len() != q.len().div_ceil(2) {
        return Err(KernelError::Mismatch {
            what: format!("out has {} bytes, {} int4 values need {}", out.len(), q.len(), q.len().div_ceil(2)),
        });
    }
    let (lo, hi) = q.iter().fold((0i8, 0i8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if lo < -8 || hi > 7 {
        let index = q.iter().position(|&v| !(-8..=7).contains(&v)).expect("bad value exists");
        return Err(KernelError::ValueOutOfRange { arg: "q", index, value: q[index] as i64, lo: -8, hi: 7 });
    }
    let mut pairs = q.chunks_exact(2);
    for (o, p) in out.iter_mut().zip(&mut pairs) {
        *o = (p[0] as u8 & 0x0f) | ((p[1] as u8) << 4);
    }
    if let [last] = pairs.remainder() {
        out[out.len() - 1] = *last as u8 & 0x0f;
    }
    Ok(())
}

/// Unpacks `out.len()` sign-extended int4 values from `p`; `p` must have exactly `ceil(out.len() / 2)` bytes.
pub fn unpack_int4(p: &[u8], out: &mut [i8]) -> Result<()> {
    if p.len() != out.len().div_ceil(2) {
        return Err(KernelError::Mismatch {
            what: format!("n = {} int4 values need {} packed bytes, got {}", out.len(), out.len().div_ceil(2), p.len()),
        });
    }
    let mut pairs = out.chunks_exact_mut(2);
    for (o, &b) in (&mut pairs).zip(p) {
        o[0] = ((b << 4) as i8) >> 4;
        o[1] = (b as i8) >> 4;
    }
    if let [last] = pairs.into_remainder() {
        *last = ((p[p.len() - 1] << 4) as i8) >> 4;
    }
    Ok(())
}
