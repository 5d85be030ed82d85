//! LayerNorm of a residual sum in one pass over memory: `out = LayerNorm(x + residual) * gamma + beta` per row
//! (BERT's `*SelfOutput` / `*Output` blocks; onnxruntime's `SkipLayerNormalization`).
//!
//! torch runs the add and the norm as two kernels: the sum is written out, read back for the statistics and read
//! a third time for the normalisation, each pass over a fresh 3 MB tensor at BERT-base batch 8. Here each row
//! (768 floats, 3 KiB: it stays in L1) is summed into `out`, its mean and variance taken from that L1 copy, and
//! normalised in place. Row blocks run where the GEMMs run (`gemm::par`: torch's OpenMP team when it is
//! loaded, else the kernels' threads). The statistics are the two-pass ones torch uses (mean, then the mean of squared
//! deviations), summed in 16 independent lanes so that the wider ISA copies vectorise them; the result differs
//! from torch's only by float32 rounding.
use crate::cpu;
use crate::error::{KernelError, Result};
use crate::pool::{self, PAR_MIN};
use crate::gemm::par;
use crate::simd::multiversion;

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
    let cols = check_norm(gamma, beta, eps)?;
    if !x.len().is_multiple_of(cols) {
        return Err(KernelError::Mismatch {
            what: format!("x has {} values, not a whole number of rows of {cols} (the length of gamma)", x.len()),
        });
    }
    for (name, len) in [("residual", residual.len()), ("out", out.len())] {
        if len != x.len() {
            return Err(KernelError::Mismatch { what: format!("{name} has {len} values, x has {}", x.len()) });
        }
    }
    let isa = cpu::active();
    let job = |x: &[f32], r: &[f32], o: &mut [f32]| {
        for ((x, r), o) in x.chunks_exact(cols).zip(r.chunks_exact(cols)).zip(o.chunks_exact_mut(cols)) {
            skip_norm_row(isa, x, r, gamma, beta, eps, o);
        }
    };
    for_row_chunks(x.len() / cols, cols, out, &|a, b, o| job(&x[a..b], &residual[a..b], o));
    Ok(())
}

/// Checks of the LayerNorm's parameters shared by the row kernels: `cols` = `gamma.len()` > 0, `beta` alike, `eps`.
pub(crate) fn check_norm(gamma: &[f32], beta: &[f32], eps: f32) -> Result<usize> {
    let cols = gamma.len();
    if cols == 0 {
        return Err(KernelError::Empty { arg: "gamma" });
    }
    if beta.len() != cols {
        return Err(KernelError::Mismatch { what: format!("beta has {} values, gamma {cols}", beta.len()) });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::Invalid { what: format!("eps must be finite and >= 0, got {eps}") });
    }
    Ok(cols)
}

/// Runs `job(a, b, &mut out[a..b])` over chunks of whole rows (`a`, `b`: flat offsets), about 4 chunks per
/// thread, dynamically, where the GEMMs run (one thread below [`PAR_MIN`] values).
fn for_row_chunks(rows: usize, cols: usize, out: &mut [f32], job: &(dyn Fn(usize, usize, &mut [f32]) + Sync)) {
    let threads = if rows * cols < PAR_MIN { 1 } else { pool::num_threads() };
    let per = rows.div_ceil(threads * 4).max(1);
    let out = OutChunks { ptr: out.as_mut_ptr(), len: out.len() };
    let task = |i: usize| {
        let (a, b) = (i * per * cols, ((i + 1) * per).min(rows) * cols);
        // SAFETY: task `i` alone writes rows [i * per, (i + 1) * per) of `out`; `a <= b <= out.len`.
        let o = unsafe { out.rows(a, b) };
        job(a, b, o);
    };
    par::for_each(rows.div_ceil(per), threads, &task);
}

/// One embedding table and, for every token, the index of its row in it.
#[derive(Clone, Copy, Debug)]
pub struct Lookup<'a> {
    /// Row-major `[entries, cols]`.
    pub table: &'a [f32],
    /// One row index per token.
    pub ids: &'a [i64],
}

/// `out[t] = LayerNorm(lookups[0].table[ids0[t]] + lookups[1].table[ids1[t]] + ...) * gamma + beta` for every
/// token `t`: the embedding layer of BERT-style encoders (word, token type and position rows, summed in that
/// order as Hugging Face's `BertEmbeddings` adds them) in one pass (onnxruntime's `EmbedLayerNormalization`).
///
/// Why: torch runs it as three `index_select`s, two adds and a `layer_norm`, six parallel regions with static
/// splits over fresh 3 MB tensors (BERT-base batch 8); each waits for its slowest thread, so a thread that wakes
/// late or shares its core with another process stalls all six (measured beside other processes: 50-90 ms for
/// what takes 1.7 ms on one thread). Here rows are gathered, summed and normalised in L1, in chunks taken
/// dynamically, like the skip LayerNorm. The sum is the same float32 sum as torch's; the norm is the skip
/// LayerNorm's (float32 rounding from torch's).
pub fn embed_layer_norm(lookups: &[Lookup<'_>], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let cols = check_norm(gamma, beta, eps)?;
    let Some(first) = lookups.first() else {
        return Err(KernelError::Empty { arg: "lookups" });
    };
    let tokens = first.ids.len();
    if out.len() != tokens * cols {
        return Err(KernelError::Mismatch {
            what: format!("out has {} values, expected {tokens} tokens x {cols} (the length of gamma)", out.len()),
        });
    }
    for (i, l) in lookups.iter().enumerate() {
        if l.ids.len() != tokens {
            return Err(KernelError::Mismatch {
                what: format!("lookup {i} has {} ids, lookup 0 has {tokens}", l.ids.len()),
            });
        }
        if !l.table.len().is_multiple_of(cols) {
            return Err(KernelError::Mismatch {
                what: format!("table {i} has {} values, not a whole number of rows of {cols}", l.table.len()),
            });
        }
        let entries = l.table.len() / cols;
        if let Some((t, &id)) = l.ids.iter().enumerate().find(|(_, &id)| id < 0 || id as u64 >= entries as u64) {
            return Err(KernelError::Invalid {
                what: format!("lookup {i}: token {t} has index {id}, outside the table's {entries} rows"),
            });
        }
    }
    let isa = cpu::active();
    for_row_chunks(tokens, cols, out, &|a, b, o| {
        for (t, row) in (a / cols..b / cols).zip(o.chunks_exact_mut(cols)) {
            let at = |l: &Lookup<'_>| l.ids[t] as usize * cols;
            row.copy_from_slice(&first.table[at(first)..][..cols]);
            for l in &lookups[1..] {
                add_row(isa, row, &l.table[at(l)..][..cols]);
            }
            norm_row(isa, gamma, beta, eps, row);
        }
    });
    Ok(())
}

multiversion! {
    fn add_row(acc: &mut [f32], x: &[f32]) = add_row_body;
}

#[inline(always)]
fn add_row_body(acc: &mut [f32], x: &[f32]) {
    let x = &x[..acc.len()];
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

multiversion! {
    fn norm_row(gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) = norm_in_place;
}

/// `out`, shared by the tasks of [`skip_layer_norm`], each of which writes its own rows only.
struct OutChunks {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the tasks write disjoint row ranges (see `rows`), and `skip_layer_norm` holds the `&mut` meanwhile.
unsafe impl Sync for OutChunks {}

impl OutChunks {
    /// `out[a..b]`. Safety: no other live reference covers any of it.
    #[allow(clippy::mut_from_ref)] // the point of this type: disjoint rows handed to concurrent tasks
    unsafe fn rows(&self, a: usize, b: usize) -> &mut [f32] {
        assert!(a <= b && b <= self.len, "skip_layer_norm rows out of bounds");
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(a), b - a) }
    }
}

multiversion! {
    fn skip_norm_row(x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) = skip_norm_row_body;
}

/// Sum of `f(v[i])` over `v` in [`LANES`] independent lanes (vectorisable without reassociating floats; the
/// skip LayerNorm's and the decode step's RMSNorm's row sums, inlined into each ISA's compiled caller). The
/// lanes are read through fixed-size array chunks: indexing the slice by position inside the closure kept a
/// bounds check per value, and the loop stayed scalar on every ISA (0.57 ms for 1024 x 768 on AVX-512 as on
/// scalar code).
#[inline(always)]
pub(crate) fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        let c: &[f32; LANES] = c.try_into().expect("chunks_exact yields LANES values");
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    acc.iter().sum()
}

/// [`skip_layer_norm`] of rows that are already in `out` (`x` there, then overwritten), with `residual` the same
/// rows' residuals: the same float32 operations, so the same bits. Runs on the calling thread (the GEMM that wrote
/// the rows calls it on each finished row block: `gemm::int8_linear_skip_layer_norm`).
pub(crate) fn skip_layer_norm_rows_in_place(isa: cpu::Isa, residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32,
                                            out: &mut [f32]) {
    let cols = gamma.len();
    assert!(cols > 0 && residual.len() == out.len() && out.len().is_multiple_of(cols));
    skip_norm_rows_in_place(isa, residual, gamma, beta, eps, out);
}

#[inline(always)]
fn skip_norm_rows_in_place_body(residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let cols = gamma.len();
    for (o, r) in out.chunks_exact_mut(cols).zip(residual.chunks_exact(cols)) {
        for (o, &b) in o.iter_mut().zip(r) {
            *o += b;
        }
        norm_in_place(gamma, beta, eps, o);
    }
}
multiversion! {
    fn skip_norm_rows_in_place(residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) =
        skip_norm_rows_in_place_body;
}

#[inline(always)]
fn skip_norm_row_body(x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = out.len();
    let (x, r) = (&x[..n], &r[..n]);
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
        *o = a + b;
    }
    norm_in_place(gamma, beta, eps, out);
}

/// LayerNorm of the row `out` in place (the statistics of the module docs).
#[inline(always)]
fn norm_in_place(gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = out.len();
    let (gamma, beta) = (&gamma[..n], &beta[..n]);
    let mean = lane_sum(out, |v| v) / n as f32;
    let var = lane_sum(out, |v| {
        let d = v - mean;
        d * d
    }) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((o, &g), &b) in out.iter_mut().zip(gamma).zip(beta) {
        *o = (*o - mean) * rstd * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5).collect()
    }

    /// The embedding LayerNorm is the skip LayerNorm of (word + type rows, position rows): the same float32
    /// operations in the same order, across the parallel row split (every ISA path: the Python tests).
    #[test]
    fn embed_layer_norm_is_the_skip_layer_norm_of_the_looked_up_rows() {
        let (cols, tokens) = (40, 2000);
        let (word, types, pos) = (values(50 * cols, 1), values(2 * cols, 2), values(9 * cols, 3));
        let ids: Vec<i64> = (0..tokens as i64).map(|t| t * 7 % 50).collect();
        let tt: Vec<i64> = (0..tokens as i64).map(|t| t % 2).collect();
        let pp: Vec<i64> = (0..tokens as i64).map(|t| t % 9).collect();
        let (g, b) = (values(cols, 4), values(cols, 5));
        let row = |table: &[f32], ids: &[i64], t: usize| table[ids[t] as usize * cols..][..cols].to_vec();
        let mut x = Vec::new();
        let mut r = Vec::new();
        for t in 0..tokens {
            x.extend(row(&word, &ids, t).iter().zip(row(&types, &tt, t)).map(|(a, b)| a + b));
            r.extend(row(&pos, &pp, t));
        }
        let mut want = vec![0.0; tokens * cols];
        skip_layer_norm(&x, &r, &g, &b, 1e-12, &mut want).unwrap();
        let mut got = vec![0.0; tokens * cols];
        let lookups =
            [Lookup { table: &word, ids: &ids }, Lookup { table: &types, ids: &tt }, Lookup { table: &pos, ids: &pp }];
        embed_layer_norm(&lookups, &g, &b, 1e-12, &mut got).unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn embed_layer_norm_refuses_indices_outside_their_table() {
        let table = values(3 * 4, 1);
        let (g, b) = (vec![1.0; 4], vec![0.0; 4]);
        let mut out = vec![0.0; 8];
        for bad in [-1i64, 3] {
            let ids = [0, bad];
            let err = embed_layer_norm(&[Lookup { table: &table, ids: &ids }], &g, &b, 1e-5, &mut out).unwrap_err();
            assert!(err.to_string().contains(&format!("token 1 has index {bad}, outside the table's 3 rows")), "{err}");
        }
        assert!(embed_layer_norm(&[], &g, &b, 1e-5, &mut out).is_err());
    }
}
