//! The N:M layout: every group of `m` consecutive inputs of a row stores `n` values (a group with fewer
//! non-zeros pads with zero values), each with its position in the group as a 4-bit index (`m ≤ 16`), two
//! indices per byte, low nibble first. A row of `k` inputs holds `L = k / m · n` values and `ceil(L / 2)` index
//! bytes; 2:4 with f32 values reads 2.25 bytes per dense weight instead of 4.
use super::{Index, SparseLinear, Values};
use crate::error::{KernelError, Result};

/// Largest group size (4-bit indices).
pub const MAX_M: usize = 16;

/// Nibble `j` of `idx` (low nibble first).
#[inline(always)]
pub(crate) fn nibble(idx: &[u8], j: usize) -> u8 {
    (idx[j / 2] >> ((j & 1) * 4)) & 0x0f
}

/// Values per row and index bytes per row of an `n:m` weight with `k` inputs.
pub fn row_sizes(k: usize, n: usize, m: usize) -> (usize, usize) {
    let len = k / m * n;
    (len, len.div_ceil(2))
}

/// An N:M weight `[rows, k]` from its values (`rows · L`, row-major) and index bytes (`rows · ceil(L / 2)`).
pub fn from_parts(rows: usize, k: usize, n: usize, m: usize, idx: Vec<u8>, values: Values, scale: Vec<f32>) -> Result<SparseLinear> {
    if !(1..=MAX_M).contains(&m) || !(1..=m).contains(&n) {
        return Err(KernelError::Invalid { what: format!("N:M needs 1 <= n <= m <= {MAX_M}, got n={n}, m={m}") });
    }
    if k % m != 0 {
        return Err(KernelError::Invalid {
            what: format!("N:M needs in_features ({k}) to be a multiple of m={m}"),
        });
    }
    if k > super::csr::MAX_K {
        return Err(KernelError::Invalid {
            what: format!("in_features = {k} is too large for the sparse layout: at most {}", super::csr::MAX_K),
        });
    }
    let (len, bytes) = row_sizes(k, n, m);
    if values.len() != rows * len {
        return Err(KernelError::Mismatch {
            what: format!("N:M values: expected {rows} rows x {len} ({k} / {m} x {n}), got {}", values.len()),
        });
    }
    if idx.len() != rows * bytes {
        return Err(KernelError::Mismatch {
            what: format!("N:M indices: expected {rows} rows x {bytes} bytes, got {}", idx.len()),
        });
    }
    for r in 0..rows {
        let row = &idx[r * bytes..(r + 1) * bytes];
        for j in 0..len {
            if nibble(row, j) as usize >= m {
                return Err(KernelError::ValueOutOfRange {
                    arg: "index",
                    index: r * len + j,
                    value: nibble(row, j) as i64,
                    lo: 0,
                    hi: m as i64 - 1,
                });
            }
        }
        if len % 2 == 1 && row[bytes - 1] >> 4 != 0 {
            return Err(KernelError::Invalid { what: format!("N:M index row {r}: the unused high nibble must be 0") });
        }
    }
    SparseLinear::new(rows, k, Index::Nm { n, m, idx }, values, scale)
}

/// Writes the absolute columns of one N:M row (`len` slots) into `cols`.
#[inline]
pub(crate) fn decode_row(n: usize, m: usize, idx: &[u8], cols: &mut Vec<u16>, len: usize) {
    cols.clear();
    let mut base = 0u16;
    let mut j = 0;
    while j < len {
        for _ in 0..n {
            cols.push(base + nibble(idx, j) as u16);
            j += 1;
        }
        base += m as u16;
    }
}
