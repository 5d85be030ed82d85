//! Batched kernels: `x[m, k]` is transposed into tiles `xᵀ[k, W]` of W batch rows, and each stored value `v` at
//! column `c` adds `v · xᵀ[c, 0..W]` to a W-wide accumulator of its output row (two accumulators deep, held in
//! registers: 8 zmm for W = 64). The loads of `xᵀ[c]` come from L2 (a group of tiles is kept under ~1 MiB) and
//! start on cache lines (the tiles are 64-byte aligned); the output row's W values are written once, through the
//! epilogue.
//!
//! W is 16, 32 or 64 (64 only with AVX-512, where 8 of the 32 zmm registers hold the accumulators); the AVX-512
//! and AVX2 loops keep 2-4 independent accumulator sets to cover the FMA latency, the portable loop is the
//! readable ground truth.
use super::{row_chunks, Epilogue, Index, OutPtr, SparseLinear, Values};
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

/// `acc[0..W] += Σ_j vals[j] · xt[cols[j] · W ..][..W]` (portable).
fn tile<const W: usize, V: Val>(xt: &[f32], cols: &[u16], vals: &[V], acc: &mut [f32; W]) {
    let mut a = [*acc, [0f32; W]];
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

/// Columns per transposition task: a task writes `TRANSPOSE_COLS · W` floats (at most 32 KB), which stay in L1
/// while its W source rows are read in order.
const TRANSPOSE_COLS: usize = 128;

/// Floats of slack in the transposed buffer, so that its used part can start on a cache line.
const LINE_FLOATS: usize = 64 / 4;

/// `xt` for tile `t`: batch rows `t·W .. t·W + W` of `x`, transposed to `[k, W]` (zero-padded), in blocks of
/// [`TRANSPOSE_COLS`] columns spread over `threads`. (Row by row over all of `k`, on the calling thread, it
/// took 0.1 ms at 16 x 4096 and 1.3-1.9 ms at 128 x 4096 before any helper started: ~10 % of the product.)
///
/// Returns the buffer and the offset of tile 0 in it, which starts on a 64-byte line: every `xᵀ[c]` row
/// (64, 128 or 256 bytes) then fills whole lines. The allocator's 16-byte alignment split every 64-byte load
/// over two lines: the batched kernels ran 1.7-1.9x slower (4096x4096, batch 16, one thread: 90 % 3.7 against
/// 2.2 ms, 70 % 9.8 against 5.0 ms, batch 128 24 against 17 ms), by chance of the address.
fn transpose_tiles(x: &[f32], m: usize, k: usize, w: usize, threads: usize) -> (Vec<f32>, usize) {
    let tiles = m.div_ceil(w);
    let mut xt = vec![0f32; tiles * k * w + LINE_FLOATS];
    let off = xt.as_ptr().align_offset(64);
    debug_assert!(off < LINE_FLOATS);
    let blocks = k.div_ceil(TRANSPOSE_COLS);
    let dst = OutPtr(xt[off..].as_mut_ptr());
    let task = |id: usize| {
        #[allow(clippy::redundant_locals)]
        let dst = dst;
        let (t, b) = (id / blocks, id % blocks);
        let (c0, c1) = (b * TRANSPOSE_COLS, ((b + 1) * TRANSPOSE_COLS).min(k));
        for i in 0..w.min(m - t * w) {
            let src = &x[(t * w + i) * k + c0..(t * w + i) * k + c1];
            for (c, &v) in (c0..c1).zip(src) {
                // SAFETY: element (t, c, i) of `xt` lies inside it and belongs to this task's column block only.
                unsafe { *dst.0.add(t * k * w + c * w + i) = v };
            }
        }
    };
    let threads = if m * k < super::PAR_MIN_WORK { 1 } else { threads };
    par::for_each(tiles * blocks, threads, &task);
    (xt, off)
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Val;
    use std::arch::x86_64::*;

    /// One register of f32 lanes: what [`block`] needs of AVX-512 (`__m512`) and AVX2 (`__m256`). Every method
    /// is `#[inline(always)]`, so it compiles inside the `#[target_feature]` wrapper that calls `block`.
    trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// `self · b + c`
        unsafe fn fmadd(self, b: Self, c: Self) -> Self;
        unsafe fn add(self, b: Self) -> Self;
    }

    macro_rules! lanes {
        ($t:ty, $n:expr, $zero:ident, $set1:ident, $load:ident, $store:ident, $fmadd:ident, $add:ident) => {
            impl Lanes for $t {
                const N: usize = $n;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    unsafe { $set1(v) }
                }
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn fmadd(self, b: Self, c: Self) -> Self {
                    unsafe { $fmadd(self, b, c) }
                }
                #[inline(always)]
                unsafe fn add(self, b: Self) -> Self {
                    unsafe { $add(self, b) }
                }
            }
        };
    }
    lanes!(__m512, 16, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_add_ps);
    lanes!(__m256, 8, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, _mm256_add_ps);

    /// `part[i][0..N·T] += Σ_{j in spans[i]} vals[j] · xt[cols[j]·N·T ..]` with T registers of N lanes per
    /// accumulator set and `S` sets (independent FMA chains that cover the FMA latency).
    ///
    /// # Safety
    /// The registers' ISA is active; spans index `cols`/`vals`; every column's tile row is inside `xt` (columns
    /// < k, `xt` is `[k, N·T]`); `part` holds `spans.len()` rows of `N·T`.
    #[inline(always)]
    unsafe fn block<R: Lanes, const T: usize, const S: usize, V: Val>(
        xt: &[f32], cols: &[u16], vals: &[V], spans: &[(usize, usize)], part: &mut [f32],
    ) {
        let w = R::N * T;
        debug_assert!(part.len() >= spans.len() * w);
        // SAFETY: see the function's contract; row `i` of `part` is `part[i·w..(i+1)·w]`.
        unsafe {
            let xp = xt.as_ptr();
            for (i, &(j0, j1)) in spans.iter().enumerate() {
                if j0 == j1 {
                    continue;
                }
                let pp = part.as_mut_ptr().add(i * w);
                let mut a = [[R::zero(); T]; S];
                for t in 0..T {
                    a[0][t] = R::load(pp.add(R::N * t));
                }
                let mut j = j0;
                while j + S <= j1 {
                    for s in 0..S {
                        let v = R::splat(vals.get_unchecked(j + s).f());
                        let row = xp.add(*cols.get_unchecked(j + s) as usize * w);
                        for t in 0..T {
                            a[s][t] = v.fmadd(R::load(row.add(R::N * t)), a[s][t]);
                        }
                    }
                    j += S;
                }
                while j < j1 {
                    let v = R::splat(vals.get_unchecked(j).f());
                    let row = xp.add(*cols.get_unchecked(j) as usize * w);
                    for t in 0..T {
                        a[0][t] = v.fmadd(R::load(row.add(R::N * t)), a[0][t]);
                    }
                    j += 1;
                }
                for t in 0..T {
                    let mut sum = a[0][t];
                    for acc in &a[1..] {
                        sum = sum.add(acc[t]);
                    }
                    sum.store(pp.add(R::N * t));
                }
            }
        }
    }

    /// [`block`] on AVX-512 registers: `16·T` batch columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn block_avx512<const T: usize, const S: usize, V: Val>(
        xt: &[f32], cols: &[u16], vals: &[V], spans: &[(usize, usize)], part: &mut [f32],
    ) {
        // SAFETY: the caller's contract is `block`'s, and this function enables AVX-512.
        unsafe { block::<__m512, T, S, V>(xt, cols, vals, spans, part) }
    }

    /// [`block`] on AVX2 registers: `8·T` batch columns.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2<const T: usize, const S: usize, V: Val>(
        xt: &[f32], cols: &[u16], vals: &[V], spans: &[(usize, usize)], part: &mut [f32],
    ) {
        // SAFETY: as above, with AVX2.
        unsafe { block::<__m256, T, S, V>(xt, cols, vals, spans, part) }
    }
}

/// `part[i] += Σ_{j in spans[i]} vals[j] · xt[cols[j]]` for every row `i` of `part` (`w` wide).
fn run_block(isa: Isa, w: usize, xt: &[f32], cols: &[u16], vals: &Values, spans: &[(usize, usize)], part: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! simd {
            ($v:expr) => {{
                let v = &$v[..];
                // SAFETY: `isa` is active, so supported; spans lie in `cols`/`vals` and columns < k (checked when
                // the layout was built).
                unsafe {
                    match (isa, w) {
                        (Isa::Avx512, 16) => return x86::block_avx512::<1, 4, _>(xt, cols, v, spans, part),
                        (Isa::Avx512, 32) => return x86::block_avx512::<2, 2, _>(xt, cols, v, spans, part),
                        (Isa::Avx512, _) => return x86::block_avx512::<4, 2, _>(xt, cols, v, spans, part),
                        (Isa::Avx2, 16) => return x86::block_avx2::<2, 3, _>(xt, cols, v, spans, part),
                        (Isa::Avx2, _) => return x86::block_avx2::<4, 2, _>(xt, cols, v, spans, part),
                        _ => {}
                    }
                }
            }};
        }
        match vals {
            Values::F32(v) => simd!(v),
            Values::I8(v) => simd!(v),
        }
    }
    macro_rules! portable {
        ($v:expr) => {{
            for (i, &(j0, j1)) in spans.iter().enumerate() {
                let acc = &mut part[i * w..(i + 1) * w];
                let (c, v) = (&cols[j0..j1], &$v[j0..j1]);
                match w {
                    16 => tile::<16, _>(xt, c, v, acc.try_into().unwrap()),
                    32 => tile::<32, _>(xt, c, v, acc.try_into().unwrap()),
                    _ => tile::<64, _>(xt, c, v, acc.try_into().unwrap()),
                }
            }
        }};
    }
    match vals {
        Values::F32(v) => portable!(v),
        Values::I8(v) => portable!(v),
    }
}

/// `out[i, r] = epilogue(Σ stored W[r, c] · x[i, c])` for `m ≥ GEMV_MAX_M` rows of `x`.
///
/// Per task (a range of output rows × a group of batch tiles): for each tile, every row adds all its stored
/// values at once. (Splitting K into L1-sized blocks, with partial sums kept between blocks, measured 1.3-2x
/// slower at batch 16 and 128 on Sapphire Rapids class cores: the transposed tile rows come from L2 fast
/// enough, and the per-block bookkeeping costs more.)
pub(super) fn run(isa: Isa, wt: &SparseLinear, x: &[f32], m: usize, epi: &Epilogue<'_>, out: &mut [f32], threads: usize) {
    let (k, rows) = (wt.in_features(), wt.out_features());
    let w = width(isa, m);
    let (xt_buf, off) = transpose_tiles(x, m, k, w, threads);
    let xt = &xt_buf[off..off + m.div_ceil(w) * k * w];
    let tiles = m.div_ceil(w);
    let per_group = (TILE_GROUP_BYTES / (k.max(1) * w * 4)).clamp(1, tiles);
    let groups: Vec<(usize, usize)> = (0..tiles).step_by(per_group).map(|t| (t, (t + per_group).min(tiles))).collect();
    let chunks = row_chunks(wt, threads);
    let cols: &[u16] = match wt.index() {
        Index::Csr { cols, .. } => cols,
        Index::Nm { .. } => wt.nm_columns(),
    };
    let o = OutPtr(out.as_mut_ptr());
    let task = |id: usize| {
        #[allow(clippy::redundant_locals)]
        let o = o;
        let (r0, r1) = chunks[id % chunks.len()];
        let (t0, t1) = groups[id / chunks.len()];
        let mut part = vec![0f32; (r1 - r0) * w];
        let spans: Vec<(usize, usize)> = (r0..r1).map(|r| { let g = wt.row(r).0; (g.start, g.end) }).collect();
        for t in t0..t1 {
            part.fill(0.0);
            run_block(isa, w, &xt[t * k * w..(t + 1) * k * w], cols, wt.values(), &spans, &mut part);
            // One batch row at a time, so that the stores run along an output row: row by row they went `rows`
            // floats apart, and with `rows · 4` bytes a multiple of 1-4 KiB (768, 3072, 4096 outputs) those
            // lines fell into 1-4 sets of L1 and evicted each other.
            for ti in 0..w.min(m - t * w) {
                let mi = t * w + ti;
                for (i, r) in (r0..r1).enumerate() {
                    // SAFETY: output row r belongs to this task for the batch rows of its tile group.
                    unsafe { *o.0.add(mi * rows + r) = epi.apply(part[i * w + ti], mi, r) };
                }
                // SAFETY: rows r0..r1 of batch row mi are this task's, all written above.
                unsafe { epi.activate(o.0.add(mi * rows + r0), r1 - r0) };
            }
        }
    };
    par::for_each(chunks.len() * groups.len(), threads, &task);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_tiles_start_on_a_cache_line_and_hold_x_transposed_zero_padded() {
        for (m, k, w) in [(4usize, 7usize, 16usize), (16, 300, 16), (40, 129, 32), (130, 257, 64)] {
            let x: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
            for threads in [1, 2] {
                let (buf, off) = transpose_tiles(&x, m, k, w, threads);
                assert_eq!(buf[off..].as_ptr() as usize % 64, 0, "m {m} k {k} w {w}: tile 0 is not line-aligned");
                let xt = &buf[off..];
                for t in 0..m.div_ceil(w) {
                    for c in 0..k {
                        for i in 0..w {
                            let want = if t * w + i < m { x[(t * w + i) * k + c] } else { 0.0 };
                            assert_eq!(xt[t * k * w + c * w + i], want, "m {m} k {k} w {w} tile {t} column {c} lane {i}");
                        }
                    }
                }
            }
        }
    }
}
