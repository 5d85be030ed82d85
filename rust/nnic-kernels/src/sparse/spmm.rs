//! Batched kernels: `x[m, k]` is transposed into tiles `xᵀ[k, W]` of W batch rows, and each stored value `v` at
//! column `c` adds `v · xᵀ[c, 0..W]` to a W-wide accumulator of its output row (two accumulators deep, held in
//! registers: 8 zmm for W = 64). The loads of `xᵀ[c]` come from L2 (a group of tiles is kept under ~1 MiB);
//! the output row's W values are written once, through the epilogue.
//!
//! The loop is plain Rust compiled for each ISA ([`crate::simd::multiversion`]); W is 16, 32 or 64 (64 only
//! with AVX-512, where 16 zmm registers hold the accumulators).
use super::{nm, row_chunks, Epilogue, OutPtr, RowCols, SparseLinear, Values};
use crate::cpu::Isa;
use crate::gemm::par;

/// Bytes of transposed tiles one task works through per pass over its rows.
const TILE_GROUP_BYTES: usize = 1 << 20;

trait Val: Copy {
    fn f(self) -> f32;
}
impl Val for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}
impl Val for i8 {
    #[inline(always)]
    fn f(self) -> f32 {
        self as f32
    }
}

/// `acc[0..W] = Σ_j vals[j] · xt[cols[j] · W ..][..W]`.
#[inline(always)]
fn tile<const W: usize, V: Val>(xt: &[f32], cols: &[u16], vals: &[V], acc: &mut [f32; W]) {
    let mut a = [[0f32; W]; 2];
    let n = cols.len().min(vals.len());
    let mut j = 0;
    while j + 2 <= n {
        for s in 0..2 {
            let v = vals[j + s].f();
            let row: &[f32; W] = xt[cols[j + s] as usize * W..][..W].try_into().unwrap();
            for i in 0..W {
                a[s][i] = v.mul_add(row[i], a[s][i]);
            }
        }
        j += 2;
    }
    if j < n {
        let v = vals[j].f();
        let row: &[f32; W] = xt[cols[j] as usize * W..][..W].try_into().unwrap();
        for i in 0..W {
            a[0][i] = v.mul_add(row[i], a[0][i]);
        }
    }
    for i in 0..W {
        acc[i] = a[0][i] + a[1][i];
    }
}

macro_rules! tiles {
    ($($name:ident, $body:ident, $w:literal, $v:ty;)*) => {$(
        #[inline(always)]
        fn $body(xt: &[f32], cols: &[u16], vals: &[$v], acc: &mut [f32; $w]) {
            tile::<$w, $v>(xt, cols, vals, acc)
        }
        crate::simd::multiversion!(fn $name(xt: &[f32], cols: &[u16], vals: &[$v], acc: &mut [f32; $w]) = $body;);
    )*};
}
tiles! {
    tile16_f32, tile16_f32_body, 16, f32;
    tile32_f32, tile32_f32_body, 32, f32;
    tile64_f32, tile64_f32_body, 64, f32;
    tile16_i8, tile16_i8_body, 16, i8;
    tile32_i8, tile32_i8_body, 32, i8;
    tile64_i8, tile64_i8_body, 64, i8;
}

/// `xt` for tile `t`: batch rows `t·W .. t·W + W` of `x`, transposed to `[k, W]` (zero-padded).
fn transpose_tiles(x: &[f32], m: usize, k: usize, w: usize) -> Vec<f32> {
    let tiles = m.div_ceil(w);
    let mut xt = vec![0f32; tiles * k * w];
    for t in 0..tiles {
        let dst = &mut xt[t * k * w..(t + 1) * k * w];
        for i in 0..w.min(m - t * w) {
            let src = &x[(t * w + i) * k..(t * w + i + 1) * k];
            for (c, &v) in src.iter().enumerate() {
                dst[c * w + i] = v;
            }
        }
    }
    xt
}

/// The tile width for `m` batch rows on `isa`.
fn width(isa: Isa, m: usize) -> usize {
    match m {
        0..=16 => 16,
        17..=32 => 32,
        _ if isa == Isa::Avx512 => 64,
        _ => 32,
    }
}

fn run_tile(isa: Isa, w: usize, xt: &[f32], cols: &[u16], vals: &Values, range: std::ops::Range<usize>, acc: &mut [f32; 64]) {
    macro_rules! go {
        ($f:ident, $n:literal, $v:expr) => {{
            let a: &mut [f32; $n] = (&mut acc[..$n]).try_into().unwrap();
            $f(isa, xt, cols, &$v[range], a)
        }};
    }
    match (vals, w) {
        (Values::F32(v), 16) => go!(tile16_f32, 16, v),
        (Values::F32(v), 32) => go!(tile32_f32, 32, v),
        (Values::F32(v), _) => go!(tile64_f32, 64, v),
        (Values::I8(v), 16) => go!(tile16_i8, 16, v),
        (Values::I8(v), 32) => go!(tile32_i8, 32, v),
        (Values::I8(v), _) => go!(tile64_i8, 64, v),
    }
}

/// `out[i, r] = epilogue(Σ stored W[r, c] · x[i, c])` for `m ≥ GEMV_MAX_M` rows of `x`.
pub(super) fn run(isa: Isa, wt: &SparseLinear, x: &[f32], m: usize, epi: &Epilogue<'_>, out: &mut [f32], threads: usize) {
    let (k, rows) = (wt.in_features(), wt.out_features());
    let w = width(isa, m);
    let xt = transpose_tiles(x, m, k, w);
    let tiles = m.div_ceil(w);
    let per_group = (TILE_GROUP_BYTES / (k.max(1) * w * 4)).clamp(1, tiles);
    let groups: Vec<(usize, usize)> = (0..tiles).step_by(per_group).map(|t| (t, (t + per_group).min(tiles))).collect();
    let chunks = row_chunks(wt, threads);
    let o = OutPtr(out.as_mut_ptr());
    let task = |id: usize| {
        #[allow(clippy::redundant_locals)]
        let o = o;
        let (r0, r1) = chunks[id % chunks.len()];
        let (t0, t1) = groups[id / chunks.len()];
        let mut decoded: Vec<u16> = Vec::new();
        let mut acc = [0f32; 64];
        for r in r0..r1 {
            let (range, rc) = wt.row(r);
            let cols: &[u16] = match rc {
                RowCols::Csr(cs) => cs,
                RowCols::Nm { n, m: gm, idx } => {
                    nm::decode_row(n, gm, idx, &mut decoded, range.len());
                    &decoded
                }
            };
            for t in t0..t1 {
                run_tile(isa, w, &xt[t * k * w..(t + 1) * k * w], cols, wt.values(), range.clone(), &mut acc);
                for (i, &a) in acc[..w.min(m - t * w)].iter().enumerate() {
                    let mi = t * w + i;
                    // SAFETY: output row r belongs to this task for the batch rows of its tile group.
                    unsafe { *o.0.add(mi * rows + r) = epi.apply(a, mi, r) };
                }
            }
        }
    };
    par::for_each(chunks.len() * groups.len(), threads, &task);
}
