//! The unstructured layout: rows of ascending u16 column indices, built from a row-major bitmask.
//!
//! The bitmask is the storage form (what files hold): row `r` owns `ceil(k / 8)` bytes, bit `c % 8` of byte
//! `c / 8` (least significant first, as `numpy.packbits(..., bitorder="little")`) set when column `c` is
//! stored; the values follow in row-major order of the set bits. Indices are rebuilt from it in one pass, and
//! the bitmask is kept: batch-1 products of denser layers read it instead of the indices (fewer bytes).
use super::{Index, SparseLinear, Values};
use crate::error::{KernelError, Result};

/// Largest `k` the u16 column indices address.
pub const MAX_K: usize = 1 << 16;

/// A CSR weight `[rows, k]` from its bitmask (`rows · ceil(k / 8)` bytes) and its stored values in row-major
/// order; `scale` is empty for f32 values, one per row for int8 codes.
pub fn from_bitmask(rows: usize, k: usize, bits: &[u8], values: Values, scale: Vec<f32>) -> Result<SparseLinear> {
    if k > MAX_K {
        return Err(KernelError::Invalid {
            what: format!("in_features = {k} is too large for the sparse layout (u16 column indices): at most {MAX_K}"),
        });
    }
    let stride = k.div_ceil(8);
    if bits.len() != rows * stride {
        return Err(KernelError::Mismatch {
            what: format!("bitmask has {} bytes, expected {rows} rows x {stride} bytes (ceil({k} / 8))", bits.len()),
        });
    }
    let spare = (stride * 8 - k) as u32; // bits past column k - 1 in each row's last byte must be clear
    let mut row_ptr = Vec::with_capacity(rows + 1);
    row_ptr.push(0usize);
    let mut cols = Vec::with_capacity(values.len().min(rows * k));
    for r in 0..rows {
        let row = &bits[r * stride..(r + 1) * stride];
        if spare > 0 && row[stride - 1] >> (8 - spare) != 0 {
            return Err(KernelError::Invalid {
                what: format!("bitmask row {r} sets bits past in_features = {k}"),
            });
        }
        for (b, &byte) in row.iter().enumerate() {
            let mut v = byte;
            while v != 0 {
                cols.push((b * 8 + v.trailing_zeros() as usize) as u16);
                v &= v - 1;
            }
        }
        row_ptr.push(cols.len());
    }
    if cols.len() != values.len() {
        return Err(KernelError::Mismatch {
            what: format!("the bitmask sets {} bits but {} values were given", cols.len(), values.len()),
        });
    }
    SparseLinear::new(rows, k, Index::Csr { row_ptr, cols, bits: bits.to_vec() }, values, scale)
}

/// The bitmask of a CSR weight (`rows · ceil(k / 8)` bytes); `None` for other layouts.
pub fn to_bitmask(w: &SparseLinear) -> Option<&[u8]> {
    let Index::Csr { bits, .. } = w.index() else { return None };
    Some(bits)
}
