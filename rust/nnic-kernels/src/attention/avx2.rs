//! AVX2 + FMA products of the attention (`Q Kᵀ` and `P V`) in 6 × 16 register tiles. The portable tile
//! ([`super::portable`]'s `tile_rows`) is their ground truth: every output element is `fma(a[p], b[p], c)` for
//! `p = 0 .. kk` in order from `0.0`, then `× alpha`, so the bits are the same on both paths.
//!
//! Why this tile: an FMA has 4 cycles of latency and Zen 3 issues two a cycle, so at least 8 independent
//! accumulators must be in flight, and AVX2 has 16 ymm registers. The portable 4 × 32 tile compiled for AVX2 wants
//! 16 accumulators, so LLVM spills them and the loads of `B` and broadcasts of `A` queue behind the spills
//! (17-21 GMAC/s one thread at BERT-base's shape, of a ~16 MAC/cycle peak; this tile 23-27 there, 33-38 on
//! operands held in L1). 6 × 16 keeps 12 accumulators, two
//! vectors of `B` and one broadcast in registers: 12 FMAs per 2 loads and 6 broadcasts (loads, not shuffles, on
//! Zen 3). `P V` at head_dim 64 is four tiles wide, `Q Kᵀ`'s panels of 64 keys too; a query block of 48 rows is
//! 8 tiles high. Edge tiles (fewer rows, one vector, a last vector of fewer than 8 columns loaded and stored with
//! `vmaskmovps`) are the same kernel instantiated for their size, in the same summation order.
use std::arch::x86_64::*;

/// Rows of the register tile.
const MR: usize = 6;
/// Vectors of 8 columns of the register tile.
const NV: usize = 2;

/// Lanes `0 .. n` of an 8-lane `vmaskmovps` mask (`n <= 8`): all bits set in the lanes kept.
#[inline(always)]
fn lanes(n: usize) -> __m256i {
    // SAFETY: register-only intrinsics of AVX, which the callers enable.
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// `c[m × n] = alpha · a[m × kk] · b[kk × n]` (row strides `lda`, `ldb`, `ldc`): row tiles outside, the tiles
/// of 16 columns inside (a tile's 6 rows of `a`, 3 KiB at kk 128, stay in L1 while `b` streams). The other order
/// (one 16-column panel of `b` for every row tile) measured 3-7 % slower in `examples/attention_parts.rs`: `P V`'s
/// panel has rows 256 bytes apart, which fall in a quarter of L1's sets.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a`, `b` and `c` hold the rows described (`(m-1)·lda + kk` values of `a`, and so on).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(a: *const f32, lda: usize, b: *const f32, ldb: usize, m: usize, kk: usize, n: usize,
                            alpha: f32, c: *mut f32, ldc: usize) {
    let mut i = 0;
    while i < m {
        let r = (m - i).min(MR);
        let mut j = 0;
        while j < n {
            let cols = (n - j).min(8 * NV);
            let w = cols.div_ceil(8);
            let tail = cols - 8 * (w - 1);
            let mask = lanes(tail);
            // SAFETY: the tile reads rows i .. i + r of `a`, columns j .. j + cols of `b` and writes the same of
            // `c`: inside the caller's bounds.
            unsafe {
                let (a, b, c) = (a.add(i * lda), b.add(j), c.add(i * ldc + j));
                match r {
                    6 => widths::<6>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    5 => widths::<5>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    4 => widths::<4>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    3 => widths::<3>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    2 => widths::<2>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    1 => widths::<1>(w, tail < 8, a, lda, b, ldb, kk, alpha, mask, c, ldc),
                    _ => unreachable!("tile rows in 1..=6"),
                }
            }
            j += cols;
        }
        i += r;
    }
}

/// The `R`-row tile of `w` vectors (1 or 2), the last one masked when `masked` (fewer than 8 columns).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn widths<const R: usize>(w: usize, masked: bool, a: *const f32, lda: usize, b: *const f32, ldb: usize,
                                 kk: usize, alpha: f32, mask: __m256i, c: *mut f32, ldc: usize) {
    // SAFETY: the caller's bounds, passed on.
    unsafe {
        match (w, masked) {
            (2, false) => tile::<R, 2, false>(a, lda, b, ldb, kk, alpha, mask, c, ldc),
            (2, true) => tile::<R, 2, true>(a, lda, b, ldb, kk, alpha, mask, c, ldc),
            (1, false) => tile::<R, 1, false>(a, lda, b, ldb, kk, alpha, mask, c, ldc),
            (1, true) => tile::<R, 1, true>(a, lda, b, ldb, kk, alpha, mask, c, ldc),
            _ => unreachable!("tile vectors in 1..=2"),
        }
    }
}

/// One `R × 8·W` tile: `c = alpha · a · b`, the last vector's columns limited to `mask` when `MASKED`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const W: usize, const MASKED: bool>(a: *const f32, lda: usize, b: *const f32,
                                                                   ldb: usize, kk: usize, alpha: f32, mask: __m256i,
                                                                   c: *mut f32, ldc: usize) {
    // SAFETY (whole body): the caller's bounds; a masked vector's loads and stores touch only its `mask` lanes.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); W]; R];
        for p in 0..kk {
            let bp = b.add(p * ldb);
            let mut bv = [_mm256_setzero_ps(); W];
            for v in 0..W {
                bv[v] = if MASKED && v + 1 == W {
                    _mm256_maskload_ps(bp.add(8 * v), mask)
                } else {
                    _mm256_loadu_ps(bp.add(8 * v))
                };
            }
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                for v in 0..W {
                    acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
        }
        let al = _mm256_set1_ps(alpha);
        for r in 0..R {
            for v in 0..W {
                let x = _mm256_mul_ps(acc[r][v], al);
                let at = c.add(r * ldc + 8 * v);
                if MASKED && v + 1 == W {
                    _mm256_maskstore_ps(at, mask, x);
                } else {
                    _mm256_storeu_ps(at, x);
                }
            }
        }
    }
}
