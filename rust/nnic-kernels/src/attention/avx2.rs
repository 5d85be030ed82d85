//! AVX2 + FMA stages of the attention: the products (`Q Kᵀ` and `P V`) in 6 × 16 register tiles, and the softmax
//! on 8 lanes, four rows at a time. The portable stages ([`super::portable`]: `tile_rows`, `softmax_body`,
//! `exp_body`) are their ground truth, bit for bit: every product element is `fma(a[p], b[p], c)` for
//! `p = 0 .. kk` in order from `0.0`, then `× alpha`; the softmax takes the portable row's operations in its order.
//!
//! Why this tile: an FMA has 4 cycles of latency and Zen 3 issues two a cycle, so at least 8 independent
//! accumulators must be in flight, and AVX2 has 16 ymm registers. The portable 4 × 32 tile compiled for AVX2 wants
//! 16 accumulators, so LLVM spills them and the loads of `B` and broadcasts of `A` queue behind the spills
//! (15-21 GMAC/s one thread at BERT-base's shape in `examples/attention_parts.rs`, of a ~16 MAC/cycle peak; this
//! tile 19-27 there, loads 1.7-4.6 on two cores, and 31-38 on a 48 × 128 by 128 × 64 product held in L1). 6 × 16
//! keeps 12 accumulators, two vectors of `B` and one broadcast in registers: 12 FMAs per 2 loads and 6 broadcasts.
//! `P V` at head_dim 64 is four tiles wide, `Q Kᵀ`'s panels of 64 keys too; a query block of 48 rows is 8 tiles
//! high. Edge tiles (fewer rows, one vector, a last vector of fewer than 8 columns loaded and stored with
//! `vmaskmovps`) are the same kernel instantiated for their size, in the same summation order. (4 × 24 measured the
//! same in L1, 3 × 32 spills: 19 GMAC/s.) The whole attention at BERT-base's shape, wall time, one thread, median of
//! 40 calls, 10 alternated runs of each build at load 4: 16.5 ms before this file, 14.2 ms with it.
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
/// (one 16-column panel of `b` for every row tile) measured 3-7 % slower in `examples/attention_parts.rs` (a guess
/// at why: `P V`'s panel has rows 256 bytes apart, which fall in a quarter of L1's sets).
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

/// `portable::softmax_body` on 8 lanes for `R` rows at once (row `r` at `p + r·ld`, `n` values each): in place
/// `row = e^(row + mask - max)` (`mask` empty: none), returning each row's `1 / sum`, with the portable path's bits:
/// its 16 running lanes of the max and of the sum are two vectors here, folded in the same order, the exponential
/// ([`exp8`]) takes the same steps, and the last `n % 16` values run the scalar code, as there. Why several rows:
/// a row's max and sum end in 16-step scalar folds; the rows' independent chains fill each other's waits.
/// Measured on a 48 × 128 block in L1 (Zen 3, wall time, 3000 calls, three rounds): 0.68-0.89 ns per exponential
/// in groups of four, 0.81-1.08 one row at a time, 0.98-1.23 for the portable row compiled for AVX2 (in
/// `attention_parts` on a loaded machine the stage's change, ~1 ns per exponential either way, is within its noise).
///
/// # Safety
/// The CPU has AVX2 and FMA; `p` holds `R` rows of `n` values `ld` apart; `mask` is empty or holds `n` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn softmax_rows<const R: usize>(p: *mut f32, ld: usize, n: usize, mask: &[f32]) -> [f32; R] {
    let full = n - n % 16;
    // SAFETY: row r is `n` values at p + r·ld (the caller's bounds); the rows do not overlap (ld >= n).
    let row = |r: usize| unsafe { std::slice::from_raw_parts_mut(p.add(r * ld), n) };
    let mut mx = [[_mm256_set1_ps(f32::NEG_INFINITY); 2]; R];
    for j in (0..full).step_by(16) {
        for (r, mx) in mx.iter_mut().enumerate() {
            for (h, l) in mx.iter_mut().enumerate() {
                // SAFETY: values j + 8h .. j + 8h + 8 <= full of row r (and of the mask, as long).
                unsafe {
                    let at = p.add(r * ld + j + 8 * h);
                    let mut x = _mm256_loadu_ps(at);
                    if !mask.is_empty() {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(mask.as_ptr().add(j + 8 * h)));
                        _mm256_storeu_ps(at, x);
                    }
                    *l = _mm256_max_ps(x, *l); // x > lane ? x : lane, as the portable lanes (a NaN x is skipped)
                }
            }
        }
    }
    let max: [f32; R] = std::array::from_fn(|r| {
        let rest = &mut row(r)[full..];
        if !mask.is_empty() {
            rest.iter_mut().zip(&mask[full..n]).for_each(|(x, &m)| *x += m);
        }
        rest.iter().chain(&to_array(mx[r])).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    });
    let mut sums = [[_mm256_setzero_ps(); 2]; R];
    for j in (0..full).step_by(16) {
        for (r, sums) in sums.iter_mut().enumerate() {
            for (h, sum) in sums.iter_mut().enumerate() {
                // SAFETY: as above.
                unsafe {
                    let at = p.add(r * ld + j + 8 * h);
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(at), _mm256_set1_ps(max[r])));
                    _mm256_storeu_ps(at, e);
                    *sum = _mm256_add_ps(*sum, e);
                }
            }
        }
    }
    std::array::from_fn(|r| {
        let mut sum: f32 = to_array(sums[r]).iter().sum();
        for x in &mut row(r)[full..] {
            *x = super::exp_body(*x - max[r]);
            sum += *x;
        }
        1.0 / sum
    })
}

/// Two vectors' 16 lanes in order.
#[inline(always)]
fn to_array(v: [__m256; 2]) -> [f32; 16] {
    // SAFETY: two 32-byte vectors are 16 floats.
    unsafe { std::mem::transmute::<[__m256; 2], [f32; 16]>(v) }
}

/// `portable::exp_body` on 8 lanes, the same constants and the same operations (unfused where it multiplies and
/// adds, fused where it calls `mul_add`; `2^n` built in the exponent bits).
#[inline(always)]
fn exp8(x: __m256) -> __m256 {
    const ROUND: f32 = 12_582_912.0;
    // SAFETY: register-only intrinsics of AVX2 and FMA, which the callers enable.
    unsafe {
        let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x); // -87.3 > x ? -87.3 : x: a NaN x stays NaN
        let t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _mm256_set1_ps(ROUND));
        let n = _mm256_sub_ps(t, _mm256_set1_ps(ROUND));
        let r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693_359_4)));
        let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.121_944_4e-4)));
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(_mm256_set1_ps(ROUND)));
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(bits, _mm256_set1_epi32(127))));
        _mm256_mul_ps(y, two_n)
    }
}
