//! The portable attention stages (the baseline path, and the AVX2 path: `multiversion!` compiles them for both):
//! register-tiled products, the `Kᵀ` panel transpose, the softmax row and its exponential. They are the ground
//! truth of the AVX-512 stages in [`super::x86`].
use super::KEY_PANEL;
use crate::simd::multiversion;

/// Rows × columns of the portable products' register tile (4 × 32 floats).
pub(super) const TILE_ROWS: usize = 4;
const TILE_COLS: usize = 32;

multiversion! {
    pub(super) fn rows4(a: &[f32], lda: usize, b: &[f32], ldb: usize, kk: usize, n: usize, alpha: f32, c: &mut [f32], ldc: usize) = tile_rows::<4>;
}
multiversion! {
    pub(super) fn rows1(a: &[f32], lda: usize, b: &[f32], ldb: usize, kk: usize, n: usize, alpha: f32, c: &mut [f32], ldc: usize) = tile_rows::<1>;
}
multiversion! {
    pub(super) fn transpose_portable(x: &[f32], ldx: usize, rows: usize, cols: usize, out: &mut [f32]) = transpose_body;
}
multiversion! {
    pub(super) fn softmax_portable(row: &mut [f32], mask: &[f32]) -> f32 = softmax_body;
}

/// `R` (1 or 4) rows of `c = alpha · a · b`, [`TILE_COLS`] columns at a time with the `R × TILE_COLS` accumulators
/// in registers (four named row accumulators: LLVM keeps those in registers, where an `[[f32; 32]; R]` array
/// indexed by row stayed on the stack). The portable and AVX2 path; AVX-512 has its own tiles ([`x86`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_rows<const R: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, kk: usize, n: usize, alpha: f32,
                             c: &mut [f32], ldc: usize) {
    let full = n - n % TILE_COLS;
    let a0 = &a[..kk];
    let row = |r: usize| if r < R { &a[r * lda..r * lda + kk] } else { a0 };
    let (a1, a2, a3) = (row(1), row(2), row(3));
    for j0 in (0..full).step_by(TILE_COLS) {
        let (mut c0, mut c1, mut c2, mut c3) = ([0.0f32; TILE_COLS], [0.0f32; TILE_COLS], [0.0f32; TILE_COLS],
                                                [0.0f32; TILE_COLS]);
        for p in 0..kk {
            let br: &[f32; TILE_COLS] = b[p * ldb + j0..p * ldb + j0 + TILE_COLS].try_into().unwrap();
            let v0 = a0[p];
            for t in 0..TILE_COLS {
                c0[t] = v0.mul_add(br[t], c0[t]);
            }
            if R == 4 {
                let (v1, v2, v3) = (a1[p], a2[p], a3[p]);
                for t in 0..TILE_COLS {
                    c1[t] = v1.mul_add(br[t], c1[t]);
                    c2[t] = v2.mul_add(br[t], c2[t]);
                    c3[t] = v3.mul_add(br[t], c3[t]);
                }
            }
        }
        for (r, acc) in [c0, c1, c2, c3].iter().enumerate().take(R) {
            for (o, &x) in c[r * ldc + j0..r * ldc + j0 + TILE_COLS].iter_mut().zip(acc) {
                *o = x * alpha;
            }
        }
    }
    if full < n {
        tile_edge::<R>(a, lda, b, ldb, kk, full, n, alpha, c, ldc);
    }
}

/// The last `n - j0` (< [`TILE_COLS`]) columns of [`tile_rows`], in the same summation order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_edge<const R: usize>(a: &[f32], lda: usize, b: &[f32], ldb: usize, kk: usize, j0: usize, n: usize,
                             alpha: f32, c: &mut [f32], ldc: usize) {
    let w = n - j0;
    let mut acc = [[0.0f32; TILE_COLS]; R];
    for p in 0..kk {
        let br = &b[p * ldb + j0..p * ldb + n];
        for r in 0..R {
            let av = a[r * lda + p];
            for t in 0..w {
                acc[r][t] = av.mul_add(br[t], acc[r][t]);
            }
        }
    }
    for r in 0..R {
        for (o, &x) in c[r * ldc + j0..r * ldc + n].iter_mut().zip(&acc[r][..w]) {
            *o = x * alpha;
        }
    }
}

/// `out[panel r / KEY_PANEL][c][r % KEY_PANEL] = x[r · ldx + c]` for `rows × cols` values, in 8 × 8 blocks.
#[inline(always)]
fn transpose_body(x: &[f32], ldx: usize, rows: usize, cols: usize, out: &mut [f32]) {
    for r0 in (0..rows).step_by(8) {
        for c0 in (0..cols).step_by(8) {
            for r in r0..(r0 + 8).min(rows) {
                let panel = &mut out[r / KEY_PANEL * cols * KEY_PANEL..];
                for c in c0..(c0 + 8).min(cols) {
                    panel[c * KEY_PANEL + r % KEY_PANEL] = x[r * ldx + c];
                }
            }
        }
    }
}

/// Lanes of the softmax's running max and sum (a multiple of every ISA's f32 vector width).
const LANES: usize = 16;

/// In place: `row = e^(row + mask - max)` (`mask` empty: none), returning `1 / sum(row)`: the normalisation is
/// applied to the `head_dim` context values of the row ([`super::write`]) instead of its `seq` probabilities.
#[inline(always)]
fn softmax_body(row: &mut [f32], mask: &[f32]) -> f32 {
    let n = row.len();
    if !mask.is_empty() {
        row.iter_mut().zip(&mask[..n]).for_each(|(x, &m)| *x += m);
    }
    softmax_unnormalised(row)
}

/// In place `row = e^(row - max(row))`, returning `1 / sum(row)` (the encoder's rows after their mask, the decode
/// step's scores). The max and the sum run in [`LANES`] independent lanes so that they vectorise (inlined into
/// each ISA's compiled caller).
#[inline(always)]
pub(crate) fn softmax_unnormalised(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if ch[l] > lanes[l] { ch[l] } else { lanes[l] };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            ch[l] = exp_body(ch[l] - max);
            sums[l] += ch[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_body(*x - max);
        sum += *x;
    }
    1.0 / sum
}

/// `e^x` for `x <= 0` (the shifted scores): `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `e^r` by Cephes' degree-6
/// polynomial, times `2^n` built in the exponent bits. Below -87.3 (where `e^x` leaves the normal floats) the
/// result is `e^-87.3` ≈ 1e-38, nothing beside the row's largest term `e^0 = 1`. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_body(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    let x = if x < -87.3 { -87.3 } else { x };
    let t = x * LOG2E + ROUND; // its low mantissa bits hold n = round(x log2 e) as a two's-complement integer
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2^n from n's bits: integer operations only (an `as i32` conversion would saturate lane by lane)
    y * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}
