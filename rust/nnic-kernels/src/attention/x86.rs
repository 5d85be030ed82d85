//! AVX-512 stages of the attention: the two products in 6 × 64 register tiles, `Kᵀ` by 16 × 16 in-register
//! transposes, and the softmax row with the exponential on 16 lanes. The portable stages ([`super::portable`]:
//! `tile_rows`, `transpose_body`, `softmax_body`, `exp_body`) are their ground truth; the tests run both.
//!
//! Why these tiles: an FMA has 4 cycles of latency and two ports issue one each per cycle, so at least 8
//! independent accumulators must be in flight; the compiler's code for the portable 4 × 32 tile keeps 8 and
//! reaches about a fifth of the FMA peak. A 6 × 64 tile keeps 24 accumulators (of 32 registers) and loads 4
//! vectors of `B` and broadcasts 6 values of `A` per 24 FMAs. `P V` at head_dim 64 is one tile wide, `Q Kᵀ` at
//! seq 128 two. Edge tiles (fewer rows, fewer than 64 columns) are the same kernel instantiated for their size,
//! the last vector's columns masked, so the summation order is the same everywhere: the order of `kk`.
use super::KEY_PANEL;
use std::arch::x86_64::*;

/// Rows of the register tile.
const MR: usize = 6;
/// Vectors of 16 columns of the register tile.
const NV: usize = 4;

/// Lanes `0 .. n` of a 16-lane mask (`n <= 16`).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// The body of [`matmul`] and [`matmul_bf16`]: column panels of `b` outside, row tiles inside (one panel of `b`,
/// `kk × 64` values, serves every row tile from L1), each tile the instantiation of `$tile` for its size (rows
/// `1..=MR`, vectors `1..=NV`, the last vector's columns masked). A macro, not a function, so that each caller's
/// tiles compile inside its own `target_feature`.
macro_rules! tiled {
    ($tile:ident, $a:ident, $lda:ident, $b:ident, $ldb:ident, $m:ident, $kk:ident, $n:ident, $alpha:ident, $c:ident,
     $ldc:ident) => {{
        let mut j = 0;
        while j < $n {
            let cols = ($n - j).min(16 * NV);
            let w = cols.div_ceil(16);
            let tail = lanes(cols - 16 * (w - 1));
            let mut i = 0;
            while i < $m {
                let r = ($m - i).min(MR);
                let (lda, ldb, kk, alpha, ldc) = ($lda, $ldb, $kk, $alpha, $ldc);
                // SAFETY: the tile reads rows i .. i + r of `a`, columns j .. j + cols of `b` and writes the same
                // of `c`: inside the caller's bounds.
                unsafe {
                    let (a, b, c) = ($a.add(i * lda), $b.add(j), $c.add(i * ldc + j));
                    match (r, w) {
                        (6, 4) => $tile::<6, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (6, 3) => $tile::<6, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (6, 2) => $tile::<6, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (6, 1) => $tile::<6, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (5, 4) => $tile::<5, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (5, 3) => $tile::<5, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (5, 2) => $tile::<5, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (5, 1) => $tile::<5, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (4, 4) => $tile::<4, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (4, 3) => $tile::<4, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (4, 2) => $tile::<4, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (4, 1) => $tile::<4, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (3, 4) => $tile::<3, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (3, 3) => $tile::<3, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (3, 2) => $tile::<3, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (3, 1) => $tile::<3, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (2, 4) => $tile::<2, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (2, 3) => $tile::<2, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (2, 2) => $tile::<2, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (2, 1) => $tile::<2, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (1, 4) => $tile::<1, 4>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (1, 3) => $tile::<1, 3>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (1, 2) => $tile::<1, 2>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        (1, 1) => $tile::<1, 1>(a, lda, b, ldb, kk, alpha, tail, c, ldc),
                        _ => unreachable!("tile rows in 1..=6, vectors in 1..=4"),
                    }
                }
                i += r;
            }
            j += cols;
        }
    }};
}

/// `c[m × n] = alpha · a[m × kk] · b[kk × n]` (row strides `lda`, `ldb`, `ldc`).
///
/// # Safety
/// The CPU has AVX-512F; `a`, `b` and `c` hold the rows described (`(m-1)·lda + kk` values of `a`, and so on).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(a: *const f32, lda: usize, b: *const f32, ldb: usize, m: usize, kk: usize, n: usize,
                            alpha: f32, c: *mut f32, ldc: usize) {
    tiled!(tile, a, lda, b, ldb, m, kk, n, alpha, c, ldc);
}

/// One `R × 16·W` tile: `c = alpha · a · b`, the last vector's columns limited to `tail`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const W: usize>(a: *const f32, lda: usize, b: *const f32, ldb: usize, kk: usize,
                                               alpha: f32, tail: __mmask16, c: *mut f32, ldc: usize) {
    // SAFETY (whole body): the caller's bounds; the last vector's loads and stores are masked to `tail`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); W]; R];
        for p in 0..kk {
            let bp = b.add(p * ldb);
            let mut bv = [_mm512_setzero_ps(); W];
            for v in 0..W {
                bv[v] = if v + 1 == W { _mm512_maskz_loadu_ps(tail, bp.add(16 * v)) } else { _mm512_loadu_ps(bp.add(16 * v)) };
            }
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * lda + p));
                for v in 0..W {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
        }
        store_tile(&acc, alpha, tail, c, ldc);
    }
}

/// `c[r, 16·v ..] = alpha · acc[r][v]` for a tile's `R × W` accumulators, the last vector's columns masked to
/// `tail`: the end of both products' tiles ([`tile`], [`tile_bf16`]).
///
/// # Safety
/// AVX-512F (inlined into the products' `target_feature` functions); `c` holds the tile's rows (stride `ldc`).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn store_tile<const R: usize, const W: usize>(acc: &[[__m512; W]; R], alpha: f32, tail: __mmask16, c: *mut f32,
                                                     ldc: usize) {
    // SAFETY: the caller's bounds; the last vector's stores are masked to `tail`.
    unsafe {
        let al = _mm512_set1_ps(alpha);
        for r in 0..R {
            for v in 0..W {
                let x = _mm512_mul_ps(acc[r][v], al);
                let at = c.add(r * ldc + 16 * v);
                if v + 1 == W {
                    _mm512_mask_storeu_ps(at, tail, x);
                } else {
                    _mm512_storeu_ps(at, x);
                }
            }
        }
    }
}

/// [`matmul`] with bfloat16 operands (the `Bf16` products of [`super::Products`]): `a` and `b` hold pairs of
/// bfloat16 values as `u32` (the even-indexed value in the low half), `kk` pairs along the sum, so that one
/// `vdpbf16ps` does the multiply-adds of two sum steps: twice the float32 FMA's per instruction (Zen 4 measured
/// 105 against 52 GMAC/s on registers, one thread). Accumulates in float32 in the order of the pairs; `c` is
/// float32 times `alpha`.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `a` holds `(m-1)·lda + kk` pairs, `b` `(kk-1)·ldb + n`, `c` its rows.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_bf16(a: *const u32, lda: usize, b: *const u32, ldb: usize, m: usize, kk: usize, n: usize,
                                 alpha: f32, c: *mut f32, ldc: usize) {
    tiled!(tile_bf16, a, lda, b, ldb, m, kk, n, alpha, c, ldc);
}

/// One `R × 16·W` tile of [`matmul_bf16`].
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile_bf16<const R: usize, const W: usize>(a: *const u32, lda: usize, b: *const u32, ldb: usize, kk: usize,
                                                    alpha: f32, tail: __mmask16, c: *mut f32, ldc: usize) {
    // SAFETY (whole body): the caller's bounds; the last vector's loads and stores are masked to `tail`.
    unsafe {
        let bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
        let mut acc = [[_mm512_setzero_ps(); W]; R];
        for p in 0..kk {
            let bp = b.add(p * ldb);
            let mut bv = [_mm512_setzero_si512(); W];
            for v in 0..W {
                bv[v] = if v + 1 == W {
                    _mm512_maskz_loadu_epi32(tail, bp.add(16 * v) as *const i32)
                } else {
                    _mm512_loadu_si512(bp.add(16 * v) as *const __m512i)
                };
            }
            for r in 0..R {
                let av = bh(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                for v in 0..W {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bh(bv[v]));
                }
            }
        }
        store_tile(&acc, alpha, tail, c, ldc);
    }
}

/// `x[0 .. n]` as bfloat16 pairs (round to nearest even, as `vcvtne2ps2bf16` does; subnormals flush to zero) into
/// `out[0 .. n.div_ceil(2)]`, value `2p` in the low half of `out[p]`, an odd `n`'s last pair padded with zero.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `x` holds `n` values, `out` `n.div_ceil(2)` pairs.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16_pairs(x: *const f32, n: usize, out: *mut u32) {
    let mut j = 0;
    while j < n {
        let len = (n - j).min(32);
        // SAFETY: values j .. j + len of `x` (masked) and pairs j / 2 .. (j + len).div_ceil(2) of `out` (masked).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(len.min(16)), x.add(j));
            let hi = _mm512_maskz_loadu_ps(lanes(len.saturating_sub(16)), x.add(j + 16));
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(out.add(j / 2) as *mut i32, lanes(len.div_ceil(2)), v);
        }
        j += 32;
    }
}

/// The pairs of rows `x0` and `x1` (`n` values each) column by column: `out[c]` holds `x0[c]` in bfloat16 in its
/// low half and `x1[c]` in its high half (rounded as [`to_bf16_pairs`]); `x1` absent: zeros. `V`'s layout for the
/// `P V` product, whose sum runs over rows.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16; `x0` (and `x1`) hold `n` values, `out` `n` pairs.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn interleave_bf16(x0: *const f32, x1: Option<*const f32>, n: usize, out: *mut u32) {
    for j in (0..n).step_by(16) {
        let m = lanes((n - j).min(16));
        // SAFETY: values j .. j + 16 of the rows and of `out`, masked to `n`.
        unsafe {
            let widen = |v: __m512| -> __m512i { _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v))) };
            let lo = widen(_mm512_maskz_loadu_ps(m, x0.add(j)));
            let hi = x1.map_or(_mm512_setzero_si512(), |x1| widen(_mm512_maskz_loadu_ps(m, x1.add(j))));
            let v = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
            _mm512_mask_storeu_epi32(out.add(j) as *mut i32, m, v);
        }
    }
}

/// `portable::transpose_body` (`Kᵀ` in panels of `KEY_PANEL` keys), 16 × 16 blocks transposed in registers.
///
/// # Safety
/// The CPU has AVX-512F; `x` holds `(rows-1)·ldx + cols` values, `out` `rows.div_ceil(KEY_PANEL) · KEY_PANEL · cols`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose(x: *const f32, ldx: usize, rows: usize, cols: usize, out: *mut f32) {
    for r0 in (0..rows).step_by(16) {
        let nr = (rows - r0).min(16);
        let panel = r0 / KEY_PANEL * cols * KEY_PANEL; // 16 divides KEY_PANEL: a block never straddles two panels
        for c0 in (0..cols).step_by(16) {
            let nc = (cols - c0).min(16);
            let cm = lanes(nc);
            let mut v = [_mm512_setzero_ps(); 16];
            for (r, vr) in v.iter_mut().enumerate().take(nr) {
                // SAFETY: row r0 + r < rows, columns c0 .. c0 + nc < cols (masked).
                *vr = unsafe { _mm512_maskz_loadu_ps(cm, x.add((r0 + r) * ldx + c0)) };
            }
            let t = transpose16(v);
            let rm = lanes(nr);
            for (c, tc) in t.iter().enumerate().take(nc) {
                // SAFETY: output row c0 + c < cols, columns r0 .. r0 + nr <= rows (masked).
                unsafe { _mm512_mask_storeu_ps(out.add(panel + (c0 + c) * KEY_PANEL + r0 % KEY_PANEL), rm, *tc) };
            }
        }
    }
}

/// The transpose of a 16 × 16 block held as 16 row vectors: pairs of rows interleaved (`unpack*_ps`), then pairs
/// of pairs (`unpack*_pd`), leaving in 128-bit lane `L` of vector `4i + k` rows `4i .. 4i + 3` of column
/// `4L + k`; two rounds of `shuffle_f32x4` gather each column's four lanes.
#[inline(always)]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: register-only intrinsics of AVX-512F, which the callers enable.
    unsafe {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            let pd = _mm512_castps_pd;
            u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            let even01 = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]); // lanes 0, 2 of rows 0-3, 4-7
            let odd01 = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]); // lanes 1, 3
            let even23 = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            let odd23 = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
            out[k] = _mm512_shuffle_f32x4::<0x88>(even01, even23);
            out[8 + k] = _mm512_shuffle_f32x4::<0xDD>(even01, even23);
            out[4 + k] = _mm512_shuffle_f32x4::<0x88>(odd01, odd23);
            out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(odd01, odd23);
        }
        out
    }
}

/// `portable::softmax_body` on 16 lanes for `R` rows at once (row `r` at `p + r·ld`, `n` values each): two passes
/// (mask and max, then exp and sum), returning each row's `1 / sum`. Every row gets the same operations in the same
/// order whatever `R` is, so its bits do not depend on the grouping. Why several rows: at seq 128 a row is 8
/// vectors, and one row alone waits on its own max reduction before its exponentials and on its sum reduction
/// after them; the rows' independent chains fill those waits.
///
/// # Safety
/// The CPU has AVX-512F; `p` holds `R` rows of `n` values `ld` apart; `mask` is empty or holds at least `n` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_rows<const R: usize>(p: *mut f32, ld: usize, n: usize, mask: &[f32]) -> [f32; R] {
    let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); R];
    for j in (0..n).step_by(16) {
        let m = lanes((n - j).min(16));
        // SAFETY: lanes j .. j + 16 masked to the rows (and to the mask, as long as a row).
        unsafe {
            let add = (!mask.is_empty()).then(|| _mm512_maskz_loadu_ps(m, mask.as_ptr().add(j)));
            for (r, mx) in mx.iter_mut().enumerate() {
                let at = p.add(r * ld + j);
                let mut x = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), m, at);
                if let Some(add) = add {
                    x = _mm512_add_ps(x, add);
                    _mm512_mask_storeu_ps(at, m, x);
                }
                *mx = _mm512_max_ps(*mx, x);
            }
        }
    }
    // max skips a NaN score, as the portable path's does; that score's exp is NaN, and so are the sum and the row.
    let max = mx.map(|v| _mm512_set1_ps(_mm512_reduce_max_ps(v)));
    let mut sum = [_mm512_setzero_ps(); R];
    for j in (0..n).step_by(16) {
        let m = lanes((n - j).min(16));
        for (r, sum) in sum.iter_mut().enumerate() {
            // SAFETY: as above.
            unsafe {
                let at = p.add(r * ld + j);
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, at), max[r]));
                _mm512_mask_storeu_ps(at, m, e);
                *sum = _mm512_mask_add_ps(*sum, m, *sum, e);
            }
        }
    }
    sum.map(|s| 1.0 / _mm512_reduce_add_ps(s))
}

/// `portable::exp_body` on 16 lanes, the same constants and steps.
#[inline(always)]
fn exp16(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    // SAFETY: register-only intrinsics of AVX-512F, which the callers enable.
    unsafe {
        let x = _mm512_max_ps(_mm512_set1_ps(-87.3), x); // NaN in x stays NaN (max returns its second operand)
        let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(ROUND));
        let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        // y · 2^n in one instruction, where the portable path builds 2^n in the exponent bits and multiplies (four
        // here): the same bits, as both are exact products by a power of two rounded once (n >= -126 after the clamp)
        _mm512_scalef_ps(y, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp16` as it was before `vscalefps`: `2^n` built in the exponent bits, then multiplied.
    #[target_feature(enable = "avx512f")]
    fn exp16_by_exponent_bits(x: __m512) -> __m512 {
        const ROUND: f32 = 12_582_912.0;
        let x = _mm512_max_ps(_mm512_set1_ps(-87.3), x);
        let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(ROUND));
        let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(_mm512_set1_ps(ROUND)));
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127))));
        _mm512_mul_ps(y, two_n)
    }

    /// bfloat16 of `x` by rounding its bits to the nearest even (subnormals to zero), for finite `x`.
    fn bf16_bits(x: f32) -> u32 {
        if x.abs() < f32::MIN_POSITIVE {
            return (x.to_bits() & 0x8000_0000) >> 16;
        }
        let b = x.to_bits();
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }

    /// The bfloat16 pairs of a row ([`to_bf16_pairs`]) and of two rows ([`interleave_bf16`]) hold the rounded
    /// values where the products expect them, for lengths around the 16- and 32-value steps (odd ones padded with
    /// zero), values across the exponent range with ties both ways.
    #[test]
    fn bf16_pairs_round_to_nearest_even_and_pad_with_zero() {
        if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")) {
            return; // the bfloat16 products never run here
        }
        let mut seed = 3u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = f32::from_bits((seed >> 32) as u32 & 0x7fff_ffff).min(1e30);
            let v = if seed & 1 == 0 { v } else { -v };
            if seed & 6 == 0 { f32::from_bits(v.to_bits() & 0xffff_8000 | 0x8000) } else { v } // a tie
        };
        for n in [1usize, 2, 15, 16, 17, 31, 32, 33, 64, 65, 130] {
            let (x0, x1): (Vec<f32>, Vec<f32>) = (0..n).map(|_| (next(), next())).unzip();
            let mut pairs = vec![u32::MAX; n.div_ceil(2) + 1];
            let mut rows = vec![u32::MAX; n + 1];
            let mut alone = vec![u32::MAX; n + 1];
            // SAFETY: AVX-512F and AVX512_BF16 are present (checked above); the buffers hold what the calls write.
            unsafe {
                to_bf16_pairs(x0.as_ptr(), n, pairs.as_mut_ptr());
                interleave_bf16(x0.as_ptr(), Some(x1.as_ptr()), n, rows.as_mut_ptr());
                interleave_bf16(x0.as_ptr(), None, n, alone.as_mut_ptr());
            }
            for p in 0..n.div_ceil(2) {
                let hi = if 2 * p + 1 < n { bf16_bits(x0[2 * p + 1]) } else { 0 };
                assert_eq!(pairs[p], bf16_bits(x0[2 * p]) | hi << 16, "n {n}, pair {p}");
            }
            assert_eq!(pairs[n.div_ceil(2)], u32::MAX, "n {n}: wrote past the pairs");
            for c in 0..n {
                assert_eq!(rows[c], bf16_bits(x0[c]) | bf16_bits(x1[c]) << 16, "n {n}, column {c}");
                assert_eq!(alone[c], bf16_bits(x0[c]), "n {n}, column {c}, no second row");
            }
            assert_eq!((rows[n], alone[n]), (u32::MAX, u32::MAX), "n {n}: wrote past the row");
        }
    }

    /// On its domain (the shifted scores, `x <= 0`, or NaN), the exponential's `vscalefps` gives the bits of the
    /// exponent-bit construction: every 37th f32 from -0 to -100 (about 29 million), the 2000 above the clamp at
    /// -87.3 and their neighbours 1000 ulps below (subnormal results), ±0, -inf and NaN.
    #[test]
    fn scalef_exponential_equals_the_exponent_bits_construction() {
        if !std::is_x86_feature_detected!("avx512f") {
            return; // no AVX-512 here: the path is never selected
        }
        let mut xs: Vec<f32> = (0..(100.0f32).to_bits()).step_by(37).map(|b| -f32::from_bits(b)).collect();
        let mut around = -87.3f32;
        for _ in 0..2000 {
            xs.extend([around, f32::from_bits(around.to_bits() - 1000)]);
            around = f32::from_bits(around.to_bits() + 1);
        }
        xs.extend([0.0, -0.0, f32::NEG_INFINITY, f32::NAN]);
        let mut checked = 0usize;
        for c in xs.chunks(16) {
            let mut v = [0.0f32; 16];
            v[..c.len()].copy_from_slice(c);
            // SAFETY: AVX-512F is present (checked above); the arrays hold 16 values.
            let (got, want) = unsafe {
                let x = _mm512_loadu_ps(v.as_ptr());
                let (mut g, mut w) = ([0.0f32; 16], [0.0f32; 16]);
                _mm512_storeu_ps(g.as_mut_ptr(), exp16(x));
                _mm512_storeu_ps(w.as_mut_ptr(), exp16_by_exponent_bits(x));
                (g, w)
            };
            for l in 0..c.len() {
                assert!(got[l].to_bits() == want[l].to_bits() || (got[l].is_nan() && want[l].is_nan()),
                        "exp({:e}): {:e} against {:e}", v[l], got[l], want[l]);
                checked += 1;
            }
        }
        assert!(checked > 20_000_000, "only {checked} values checked");
    }
}
