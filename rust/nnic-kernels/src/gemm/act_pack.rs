//! Packing activations into u8 row panels: s8 inputs shifted by 128, f32 inputs quantized on the fly.
//!
//! Activation quantization: `q_u8 = clamp(round_half_even(x * inv) + z, 0, 255)` with `inv = 1 / s` in
//! float32 (a multiplication, as `torch.quantize_per_tensor` does; numpy gets the same bits with
//! `np.rint(x * (np.float32(1) / s))`):
//! - symmetric: `s = max|x| / 127`, `z = 128` (the s8 code plus 128);
//! - asymmetric: `s = (max(x, 0) - min(x, 0)) / 255`, `z = clamp(-round_half_even(min(x, 0) / s), 0, 255)`;
//! - a zero range gives `s = 1`; per tensor or per row (token); or static, from a calibrated scale/zero point;
//! - `reduce_range` (dynamic only): 7-bit codes, as `torch.ao`'s x86 default: `qmax` = 127 instead of 255 above
//!   (symmetric: `s = max|x| / 63`, `z = 64`). On AVX2 without VNNI the GEMM then runs a tile with one operation
//!   fewer per multiply ([`super::micro::x86::avx2_narrow`]); every path gives the same bits for the same codes.
use super::panels::PackedA;
use super::{isa_of, Path};
use crate::cpu::Isa;
use crate::error::{KernelError, Result};
use crate::pool;
use std::sync::atomic::{AtomicBool, Ordering};

/// How activations are quantized on the fly.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum ActQuant {
    /// One scale and zero point for the whole input, from its range; 7-bit codes with `reduce_range`.
    DynamicPerTensor { symmetric: bool, reduce_range: bool },
    /// One scale and zero point per row (token), from the row's range; 7-bit codes with `reduce_range`.
    DynamicPerRow { symmetric: bool, reduce_range: bool },
    /// A calibrated scale and a zero point in the u8 domain [0, 255] (for s8 codes with zero point `z`,
    /// pass `z + 128`: the results are the same).
    Static { scale: f32, zero_point: i32 },
}

impl ActQuant {
    pub(crate) fn check(&self) -> Result<()> {
        if let ActQuant::Static { scale, zero_point } = *self {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(KernelError::BadScale { channel: None, value: scale });
            }
            if !(0..=255).contains(&zero_point) {
                return Err(KernelError::BadZeroPoint { channel: None, value: zero_point, qmin: 0, qmax: 255 });
            }
        }
        Ok(())
    }

    /// Whether the codes stay within 128 of the zero point (bounds the exact-accumulation K).
    pub(crate) fn is_symmetric(&self) -> bool {
        matches!(self, ActQuant::DynamicPerTensor { symmetric: true, .. } | ActQuant::DynamicPerRow { symmetric: true, .. })
    }

    /// The largest code: 127 with `reduce_range`, else 255.
    pub fn qmax(&self) -> i32 {
        match self {
            ActQuant::DynamicPerTensor { reduce_range: true, .. } | ActQuant::DynamicPerRow { reduce_range: true, .. } => 127,
            _ => 255,
        }
    }

    /// The scale and zero point of the dynamic range `[lo, hi]` ([`qparams`] with this mode's symmetry and
    /// code range; a static mode gives its own). An empty input takes `[0, 0]`: scale 1 at the code range's zero.
    pub fn params(&self, lo: f32, hi: f32) -> (f32, i32) {
        match *self {
            ActQuant::Static { scale, zero_point } => (scale, zero_point),
            ActQuant::DynamicPerTensor { symmetric, .. } | ActQuant::DynamicPerRow { symmetric, .. } => {
                qparams(lo, hi, symmetric, self.qmax())
            }
        }
    }
}

/// Scale and u8 zero point for the range `[lo, hi]` with codes in `[0, qmax]` (255, or 127 for `reduce_range`;
/// see the module doc).
pub fn qparams(lo: f32, hi: f32, symmetric: bool, qmax: i32) -> (f32, i32) {
    let fix = |s: f32| if s == 0.0 { 1.0 } else { s.max(f32::MIN_POSITIVE) };
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if symmetric {
        (fix((-lo).max(hi) / (qmax / 2) as f32), (qmax + 1) / 2)
    } else {
        let s = fix((hi - lo) / qmax as f32);
        (s, (-(lo / s).round_ties_even()).clamp(0.0, qmax as f32) as i32)
    }
}

#[inline(always)]
fn min_max_body(x: &[f32]) -> (f32, f32, bool) {
    // 16 independent lanes with plain comparisons, so that LLVM vectorizes (f32::min would not).
    const L: usize = 16;
    let (mut lo, mut hi, mut bits) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L], [0u32; L]);
    let mut chunks = x.chunks_exact(L);
    for c in chunks.by_ref() {
        for e in 0..L {
            let v = c[e];
            lo[e] = if v < lo[e] { v } else { lo[e] };
            hi[e] = if v > hi[e] { v } else { hi[e] };
            bits[e] = bits[e].max(v.to_bits() & 0x7fff_ffff);
        }
    }
    for (e, &v) in chunks.remainder().iter().enumerate() {
        lo[e] = if v < lo[e] { v } else { lo[e] };
        hi[e] = if v > hi[e] { v } else { hi[e] };
        bits[e] = bits[e].max(v.to_bits() & 0x7fff_ffff);
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (lo, hi, bits.iter().any(|&b| b >= 0x7f80_0000))
}
crate::simd::multiversion!(fn min_max(x: &[f32]) -> (f32, f32, bool) = min_max_body;);

/// min and max of `x` (in parallel when large); non-finite values are an error.
///
/// The chunks run where the GEMM's own tasks run ([`super::par::for_each`]: the OpenMP team inside PyTorch), not
/// on the rayon pool: a second team woken right before the GEMM's shares the cores with the first one's spinning
/// threads (see [`super::par`]).
pub(crate) fn tensor_range(isa: Isa, x: &[f32]) -> Result<(f32, f32)> {
    let (lo, hi, bad) = if x.len() < pool::PAR_MIN {
        min_max(isa, x)
    } else {
        let c = pool::chunk_len(x.len(), 1);
        let parts: Vec<std::sync::OnceLock<(f32, f32, bool)>> = (0..x.len().div_ceil(c)).map(|_| Default::default()).collect();
        super::par::for_each(parts.len(), pool::num_threads(), &|i| {
            let _ = parts[i].set(min_max(isa, &x[i * c..((i + 1) * c).min(x.len())]));
        });
        parts.iter().map(|p| *p.get().expect("every chunk ran")).fold((f32::INFINITY, f32::NEG_INFINITY, false), |a, b| {
            (a.0.min(b.0), a.1.max(b.1), a.2 || b.2)
        })
    };
    if bad {
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(KernelError::Invalid {
            what: format!("x contains {} at flat index {index}: cannot quantize activations", x[index]),
        });
    }
    Ok((lo, hi))
}

/// Copies row bytes `buf` (k values from `kk`, a multiple of 4) into their 4-byte slots of the panel; a
/// last partial group is padded with zeros.
#[inline(always)]
pub(crate) fn scatter(panel: &mut [u8], rows: usize, r: usize, kk: usize, buf: &[u8]) {
    let mut chunks = buf.chunks_exact(4);
    for (t, c) in chunks.by_ref().enumerate() {
        let at = (kk / 4 + t) * rows * 4 + r * 4;
        panel[at..at + 4].copy_from_slice(&[c[0], c[1], c[2], c[3]]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let at = (kk / 4 + buf.len() / 4) * rows * 4 + r * 4;
        let mut g = [0u8; 4];
        g[..rest.len()].copy_from_slice(rest);
        panel[at..at + 4].copy_from_slice(&g);
    }
}

/// Zeros the k groups of row `r` from `g0` to the end of the panel (the K padding: packed buffers are reused,
/// not zero-initialized, so every byte is written).
#[inline(always)]
pub(crate) fn zero_tail(panel: &mut [u8], rows: usize, r: usize, g0: usize) {
    let groups = panel.len() / (rows * 4);
    for g in g0..groups {
        panel[g * rows * 4 + r * 4..g * rows * 4 + r * 4 + 4].fill(0);
    }
}

/// One row's quantizer: `inv = 1 / scale`, the zero point `z` and the largest code `top` (255 or 127), as floats.
/// Every activation quantizer of the crate (the GEMM's packing, the convolution's, the sparse layers') goes through
/// [`RowCode::of`].
#[derive(Copy, Clone, Debug)]
pub(crate) struct RowCode {
    pub inv: f32,
    pub z: f32,
    pub top: f32,
}

impl RowCode {
    pub(crate) fn new(scale: f32, zero: i32, qmax: i32) -> RowCode {
        RowCode { inv: 1.0 / scale, z: zero as f32, top: qmax as f32 }
    }

    #[inline(always)]
    pub(crate) fn of(self, v: f32) -> u8 {
        code(v, self.inv, self.z, self.top)
    }
}

/// The u8 code of `v`: `clamp(round_half_even(v * inv) + z, 0, top)`, NaN to 0 (`top`: the code range's
/// largest, 255 or 127).
#[inline(always)]
fn code(v: f32, inv: f32, z: f32, top: f32) -> u8 {
    let t = (v * inv).round_ties_even() + z;
    // NaN goes to 0; afterwards t is in [0, top] ⊂ [0, 255], so the unchecked conversion is exact (and vectorizes).
    let t = if t > 0.0 { if t < top { t } else { top } } else { 0.0 };
    // SAFETY: t is finite and in [0, 255].
    unsafe { t.to_int_unchecked::<i32>() as u8 }
}

/// Quantizes `x` (the row's values from column `kk`, a multiple of 4) into the panel (`rows` rows, row
/// `r`); returns the byte sum when `sum` is set. The K padding after the row's last value is the caller's
/// ([`zero_tail`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn put_row_body(panel: &mut [u8], rows: usize, r: usize, kk: usize, x: &[f32], q: RowCode, sum: bool) -> i32 {
    let mut lanes = [0u32; 64];
    let mut buf = [0u8; 64];
    for (c, xs) in x.chunks(64).enumerate() {
        let b = &mut buf[..xs.len()];
        for (o, &v) in b.iter_mut().zip(xs) {
            *o = q.of(v);
        }
        if sum {
            for (l, &q) in lanes.iter_mut().zip(b.iter()) {
                *l += q as u32;
            }
        }
        scatter(panel, rows, r, kk + c * 64, b);
    }
    lanes.iter().sum::<u32>() as i32
}
crate::simd::multiversion!(fn put_row_mv(panel: &mut [u8], rows: usize, r: usize, kk: usize, x: &[f32], q: RowCode,
    sum: bool) -> i32 = put_row_body;);

/// Quantizes the values `x` of row `r` from column `kk` (a multiple of 4) into a panel of `rows` rows with
/// the quantizer `q` (see the module doc); returns their byte sum when `sum` is set. AVX-512 quantizes 16 values
/// per step and stores their four k groups straight into the panel; the other ISAs run the multiversioned loop
/// (its ground truth).
#[allow(clippy::too_many_arguments)]
fn put_row_f32(isa: Isa, panel: &mut [u8], rows: usize, r: usize, kk: usize, x: &[f32], q: RowCode, sum: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let full = x.len() / 16 * 16;
        assert!(kk % 4 == 0 && panel.len() >= (kk + x.len()).div_ceil(4) * rows * 4 && r < rows);
        // SAFETY: AVX-512 is active (so supported); the panel holds k groups `kk / 4` up to the last value's of
        // row `r` (checked above).
        let s = unsafe { x86::put_row16(panel.as_mut_ptr().add(kk / 4 * rows * 4), rows, r, &x[..full], q, sum) };
        return s.wrapping_add(put_row_mv(Isa::Scalar, panel, rows, r, kk + full, &x[full..], q, sum));
    }
    put_row_mv(isa, panel, rows, r, kk, x, q, sum)
}

/// Quantizes the columns from `kk` (a multiple of 4) of every row of a panel into it, `x(r)` being row `r`'s
/// values there (one length for all rows), with each row's `scale` and `zero` and codes up to `qmax`; adds the byte
/// sums to `sums` (one per row) when `sum` is set. AVX-512 quantizes four rows at a time ([`x86::put_rows4`]); the other
/// rows, a last part shorter than 16 values and the other ISAs go row by row ([`put_row_f32`]).
#[allow(clippy::too_many_arguments)]
fn put_panel_cols<'a>(
    isa: Isa,
    panel: &mut [u8],
    kk: usize,
    x: &dyn Fn(usize) -> &'a [f32],
    scale: &[f32],
    zero: &[i32],
    qmax: i32,
    sum: bool,
    sums: &mut [i32],
) {
    let code = |r: usize| RowCode::new(scale[r], zero[r], qmax);
    let rows = sums.len();
    let len = x(0).len();
    let mut done = 0; // columns already put for rows below `quads`
    let mut quads = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && rows <= 2 {
        // The AVX2 path's panels (one or two rows): both rows 32 values a step, their k groups interleaved in
        // registers and stored as whole lines (see `x86::put_rows_avx2`).
        done = len / 32 * 32;
        quads = rows;
        assert!(kk % 4 == 0 && panel.len() >= (kk + len).div_ceil(4) * rows * 4);
        let xs = [0, rows - 1].map(|i| &x(i)[..done]);
        let q = [0, rows - 1].map(code);
        let mut two = [0i32; 2];
        // SAFETY: AVX2 is active (so supported); the panel holds the k groups of these columns (checked above).
        unsafe { x86::put_rows_avx2(panel.as_mut_ptr().add(kk / 4 * rows * 4), rows, xs, q, sum, &mut two) };
        for (r, s) in sums.iter_mut().enumerate() {
            *s = s.wrapping_add(two[r]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && rows >= 4 {
        done = len / 16 * 16;
        quads = rows / 4 * 4;
        assert!(kk % 4 == 0 && panel.len() >= (kk + len).div_ceil(4) * rows * 4);
        for r in (0..quads).step_by(4) {
            let xs = [0, 1, 2, 3].map(|i| &x(r + i)[..done]);
            let q = [0, 1, 2, 3].map(|i| code(r + i));
            // SAFETY: AVX-512 is active (so supported); the panel holds the k groups of these columns (checked
            // above) and `r + 4 <= rows`.
            unsafe { x86::put_rows4(panel.as_mut_ptr().add(kk / 4 * rows * 4), rows, r, xs, q, sum, &mut sums[r..r + 4]) };
        }
    }
    for r in 0..rows {
        let from = if r < quads { done } else { 0 };
        if from == len {
            continue; // all of this row's columns are in (a per-row call costs ~40 ns: 0.15 ns a value at K = 3072)
        }
        let s = put_row_f32(isa, panel, rows, r, kk + from, &x(r)[from..], code(r), sum);
        sums[r] = sums[r].wrapping_add(s);
    }
}

/// Columns that every row of a panel quantizes before the next columns: the panel bytes of one step
/// (`CHUNK / 4` k groups × `rows` × 4 bytes, 3 KiB for 12 rows) are then filled completely while they are in
/// L1. Filling whole rows one after another instead touches every cache line of the panel once per row (36
/// KiB per row at K = 3072, more than L1 holds beside the row). With [`x86::put_rows4`], the quantization
/// pass at BERT's 1024 × 3072 went from 0.92 to 0.77 ms (one thread, static ranges, CPU time).
const CHUNK: usize = 256;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The 32 codes of `x[0..32]` as bytes in order, bit-exact with [`super::code`] (as [`codes16`] is: `v = x · inv`
    /// clamped to ±1024, NaN to -1024, converted with round-half-even (the default rounding mode), `z` added; the
    /// saturating packs clamp to [0, 255], `vtop` (bytes) to the code range's top).
    #[inline(always)]
    unsafe fn codes32(x: *const f32, vinv: __m256, vz: __m256i, vtop: __m256i) -> __m256i {
        unsafe {
            let (lo, hi) = (_mm256_set1_ps(-1024.0), _mm256_set1_ps(1024.0));
            let q = |i: usize| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(8 * i)), vinv);
                _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi)), vz)
            };
            // The packs work per 128-bit lane: dwords come out as values 0-3, 8-11, 16-19, 24-27, 4-7, ...
            let c = _mm256_packus_epi16(_mm256_packs_epi32(q(0), q(1)), _mm256_packs_epi32(q(2), q(3)));
            _mm256_min_epu8(_mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)), vtop)
        }
    }

    /// The AVX2 path's panel of `rows` (1 or 2) rows: `x[r]` (row `r`'s values, one length, a multiple of 32;
    /// `x[1]` is ignored for one row) quantized with `q[r]` 32 values a step. Two rows' codes are interleaved per k
    /// group in registers (`vpunpck{l,h}dq` and a lane swap), so each step stores two whole 32-byte lines instead of
    /// sixteen 4-byte slots. `sums[r]`: row `r`'s byte sum when `sum` is set. Bit-exact with
    /// [`super::put_row_body`], 2.5-3.5× faster than it: BERT's MLP-down input (1024 × 3072, read from memory, one
    /// thread, wall time, two alternated process pairs on the Zen 3 machine) packed in 0.35-0.56 ns a value against
    /// 1.20-1.46 with a static scale, and in 0.57-0.68 against 1.46-1.63 with per-row ranges (their pass included).
    ///
    /// # Safety
    /// The CPU has AVX2; `panel` holds `x[0].len() / 4` k groups of `rows` rows × 4 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn put_rows_avx2(
        panel: *mut u8,
        rows: usize,
        x: [&[f32]; 2],
        q: [super::RowCode; 2],
        sum: bool,
        sums: &mut [i32; 2],
    ) {
        unsafe {
            let vinv = q.map(|q| _mm256_set1_ps(q.inv));
            let vz = q.map(|q| _mm256_set1_epi32(q.z as i32));
            let vtop = q.map(|q| _mm256_set1_epi8(q.top as u8 as i8));
            let mut acc = [_mm256_setzero_si256(); 2];
            let len = x[0].len();
            debug_assert!(len % 32 == 0 && (rows == 1 || x[1].len() == len) && (1..=2).contains(&rows));
            let mut dst = panel;
            for c in (0..len).step_by(32) {
                let a = codes32(x[0].as_ptr().add(c), vinv[0], vz[0], vtop[0]);
                if sum {
                    acc[0] = _mm256_add_epi64(acc[0], _mm256_sad_epu8(a, _mm256_setzero_si256()));
                }
                if rows == 1 {
                    _mm256_storeu_si256(dst as *mut __m256i, a);
                    dst = dst.add(32);
                    continue;
                }
                let b = codes32(x[1].as_ptr().add(c), vinv[1], vz[1], vtop[1]);
                if sum {
                    acc[1] = _mm256_add_epi64(acc[1], _mm256_sad_epu8(b, _mm256_setzero_si256()));
                }
                let (lo, hi) = (_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
                _mm256_storeu_si256(dst as *mut __m256i, _mm256_permute2x128_si256::<0x20>(lo, hi));
                _mm256_storeu_si256(dst.add(32) as *mut __m256i, _mm256_permute2x128_si256::<0x31>(lo, hi));
                dst = dst.add(64);
            }
            if sum {
                for r in 0..rows {
                    let v: [i64; 4] = std::mem::transmute(acc[r]);
                    sums[r] = v.iter().sum::<i64>() as i32;
                }
            }
        }
    }

    /// The 16 codes of `x[0..16]` as i32 lanes in [0, top], bit-exact with [`super::code`]: `v = x * inv` is
    /// clamped to ±1024 (`max` first, which sends NaN to -1024 and so to code 0; beyond ±1024 every code is 0 or
    /// `top` anyway, as `z` is in [0, 255]), converted with round-half-even, `z` added and the sum clamped to
    /// [0, top] in integers. The conversion rounds by
    /// itself, where rounding first (`vrndscaleps`, two µops) then converting took one step more; quantization is
    /// compute-bound once its rows are in L2: the static pass went from 0.150-0.164 to 0.138-0.149 ns per value
    /// (one thread, 96 rows in L2, alternated twice).
    #[inline(always)]
    unsafe fn codes16(x: *const f32, vinv: __m512, vz: __m512i, vtop: __m512i) -> __m512i {
        unsafe {
            let v = _mm512_mul_ps(_mm512_loadu_ps(x), vinv);
            let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1024.0)), _mm512_set1_ps(1024.0));
            let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, vz), _mm512_setzero_si512()), vtop)
        }
    }

    /// The codes of [`codes16`] (i32 lanes in [0, 255]) as 16 bytes.
    ///
    /// # Safety
    /// The CPU has AVX-512F (callers run on the AVX-512 paths).
    #[inline(always)]
    unsafe fn bytes16(q: __m512i) -> __m128i {
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtusepi32_epi8(q) }
    }

    /// [`super::put_row_body`] for `x.len()` a multiple of 16, without the K padding: 16 values per step,
    /// bit-exact with it.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; `panel` holds `x.len() / 4` k groups of `rows` rows × 4 bytes, and `r < rows`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn put_row16(panel: *mut u8, rows: usize, r: usize, x: &[f32], q: super::RowCode, sum: bool) -> i32 {
        unsafe {
            let (vinv, vz, vtop) = (_mm512_set1_ps(q.inv), _mm512_set1_epi32(q.z as i32), _mm512_set1_epi32(q.top as i32));
            let mut acc = _mm512_setzero_si512();
            let stride = rows * 4;
            let mut dst = panel.add(r * 4);
            for c in x.chunks_exact(16) {
                let b = bytes16(codes16(c.as_ptr(), vinv, vz, vtop));
                if sum {
                    acc = _mm512_add_epi32(acc, _mm512_cvtepu8_epi32(b));
                }
                if rows == 1 {
                    _mm_storeu_si128(dst as *mut __m128i, b);
                } else {
                    (dst as *mut i32).write_unaligned(_mm_cvtsi128_si32(b));
                    (dst.add(stride) as *mut i32).write_unaligned(_mm_extract_epi32::<1>(b));
                    (dst.add(2 * stride) as *mut i32).write_unaligned(_mm_extract_epi32::<2>(b));
                    (dst.add(3 * stride) as *mut i32).write_unaligned(_mm_extract_epi32::<3>(b));
                }
                dst = dst.add(4 * stride);
            }
            if sum { _mm512_reduce_add_epi32(acc) } else { 0 }
        }
    }

    /// [`put_row16`] for the four rows `r..r + 4` at once (`x[i]`: row `r + i`'s values, all of one length, a
    /// multiple of 16): each row's 16 codes of a step are four k groups, and a 4 × 4 transpose of those dwords
    /// gives, per k group, the four rows' 16 bytes side by side as the panel lays them out: four 16-byte stores
    /// instead of sixteen 4-byte stores and twelve extracts. Adds the rows' byte sums to `sums` when `sum` is set.
    ///
    /// # Safety
    /// As [`put_row16`], with `r + 4 <= rows`.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn put_rows4(
        panel: *mut u8,
        rows: usize,
        r: usize,
        x: [&[f32]; 4],
        q: [super::RowCode; 4],
        sum: bool,
        sums: &mut [i32],
    ) {
        unsafe {
            let vinv = q.map(|q| _mm512_set1_ps(q.inv));
            let vz = q.map(|q| _mm512_set1_epi32(q.z as i32));
            let vtop = q.map(|q| _mm512_set1_epi32(q.top as i32));
            let mut acc = [_mm512_setzero_si512(); 4];
            let stride = rows * 4;
            let mut dst = panel.add(r * 4);
            let len = x[0].len();
            debug_assert!(len % 16 == 0 && x.iter().all(|v| v.len() == len) && r + 4 <= rows);
            let mut c = 0;
            while c < len {
                let mut b = [_mm_setzero_si128(); 4];
                for i in 0..4 {
                    b[i] = bytes16(codes16(x[i].as_ptr().add(c), vinv[i], vz[i], vtop[i]));
                    if sum {
                        acc[i] = _mm512_add_epi32(acc[i], _mm512_cvtepu8_epi32(b[i]));
                    }
                }
                let (lo01, lo23) = (_mm_unpacklo_epi32(b[0], b[1]), _mm_unpacklo_epi32(b[2], b[3]));
                let (hi01, hi23) = (_mm_unpackhi_epi32(b[0], b[1]), _mm_unpackhi_epi32(b[2], b[3]));
                _mm_storeu_si128(dst as *mut __m128i, _mm_unpacklo_epi64(lo01, lo23));
                _mm_storeu_si128(dst.add(stride) as *mut __m128i, _mm_unpackhi_epi64(lo01, lo23));
                _mm_storeu_si128(dst.add(2 * stride) as *mut __m128i, _mm_unpacklo_epi64(hi01, hi23));
                _mm_storeu_si128(dst.add(3 * stride) as *mut __m128i, _mm_unpackhi_epi64(hi01, hi23));
                dst = dst.add(4 * stride);
                c += 16;
            }
            if sum {
                for i in 0..4 {
                    sums[i] = sums[i].wrapping_add(_mm512_reduce_add_epi32(acc[i]));
                }
            }
        }
    }
}

#[inline(always)]
fn put_row_s8_body(panel: &mut [u8], rows: usize, r: usize, a: &[i8]) -> i32 {
    let mut buf = [0u8; 64];
    for (c, xs) in a.chunks(64).enumerate() {
        let b = &mut buf[..xs.len()];
        for (q, &v) in b.iter_mut().zip(xs) {
            *q = v as u8 ^ 0x80;
        }
        scatter(panel, rows, r, c * 64, b);
    }
    zero_tail(panel, rows, r, a.len().div_ceil(4));
    0
}
crate::simd::multiversion!(fn put_row_s8(panel: &mut [u8], rows: usize, r: usize, a: &[i8]) -> i32 = put_row_s8_body;);

thread_local! {
    /// Packed-activation buffer of this thread, reused across calls (no allocation or page faults per call).
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Returns a packed buffer to this thread's cache.
pub(crate) fn release(pa: PackedA) {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if pa.data.capacity() >= b.capacity() {
            *b = pa.data;
        }
    });
}

/// Rows per panel: at most `mr_max`, balanced (16 rows with `mr_max = 12` are two panels of 8, not 12 + 4).
pub(crate) fn balanced_mr(m: usize, mr_max: usize) -> usize {
    m.max(1).div_ceil(m.max(1).div_ceil(mr_max))
}

pub(crate) fn packed(m: usize, kp: usize, mr: usize) -> PackedA {
    let mr = balanced_mr(m, mr);
    let len = m.max(1) * kp;
    let mut data = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if data.len() < len {
        data.resize(len, 0);
    }
    data.truncate(len);
    PackedA { m, mr, kp, data, zero: vec![0; m], scale: Vec::new(), rowsum: vec![0; m], narrow: false }
}

/// One row panel's slices: packed bytes, and the row sums, scales and zero points of its rows.
pub(crate) struct Panel<'a> {
    pub data: &'a mut [u8],
    pub sums: &'a mut [i32],
    pub scale: &'a mut [f32],
    pub zero: &'a mut [i32],
}

#[derive(Copy, Clone)]
struct Ptrs(*mut u8, *mut i32, *mut f32, *mut i32);
// SAFETY: every task gets the disjoint slices of its own panel.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

/// Activations with fewer values are quantized and packed on the calling thread. Why: packing takes about 14 us
/// per 64 K values (per-row asymmetric, one thread's CPU time on the Zen 4 machine: 0.014 ms at 85 × 768, 0.050 ms
/// at 85 × 3072, `examples/gemm_parts`), so splitting 256 K values saves at most 25 us, about what a parallel
/// region costs: a fork and join, and on the OpenMP team an end barrier that waits for a thread woken from its
/// sleep (60-190 us late at M = 1 there). Below that (M = 64 at K = 4096) a second region before the GEMM's own
/// only adds its overhead.
pub(crate) const PACK_PAR_MIN: usize = 1 << 18;

/// Panel `p`'s slices of the buffers behind `ptrs` (`m` rows of `kp` bytes, panels of `mr` rows).
///
/// # Safety
/// `ptrs` point into a [`PackedA`] of these dimensions that is alive, and no other slice or reference to panel
/// `p`'s bytes, sums, scales or zero points is in use while the returned one is.
unsafe fn panel_at<'a>(ptrs: Ptrs, p: usize, mr: usize, kp: usize, m: usize) -> Panel<'a> {
    let (r0, r1) = (p * mr, ((p + 1) * mr).min(m));
    // SAFETY: panel `p` covers rows [r0, r1) and bytes [r0 * kp, r1 * kp): in bounds, and the caller's contract
    // makes the slices unique.
    unsafe {
        Panel {
            data: std::slice::from_raw_parts_mut(ptrs.0.add(r0 * kp), (r1 - r0) * kp),
            sums: std::slice::from_raw_parts_mut(ptrs.1.add(r0), r1 - r0),
            scale: std::slice::from_raw_parts_mut(ptrs.2.add(r0), r1 - r0),
            zero: std::slice::from_raw_parts_mut(ptrs.3.add(r0), r1 - r0),
        }
    }
}

/// The raw pointers of `pa`'s buffers (their heap storage: they stay valid when `pa` is moved).
fn ptrs_of(pa: &mut PackedA) -> Ptrs {
    let m = pa.m;
    assert!(pa.scale.len() == m && pa.zero.len() == m && pa.rowsum.len() == m && pa.data.len() >= m * pa.kp);
    Ptrs(pa.data.as_mut_ptr(), pa.rowsum.as_mut_ptr(), pa.scale.as_mut_ptr(), pa.zero.as_mut_ptr())
}

/// Runs `f(panel_index, panel)` over the row panels (in parallel when `work` is large). `pa.scale` must have
/// `m` entries.
pub(crate) fn for_panels(pa: &mut PackedA, work: usize, f: impl Fn(usize, Panel<'_>) + Sync) {
    let (mr, kp, m) = (pa.mr, pa.kp, pa.m);
    if m == 0 {
        return;
    }
    let ptrs = ptrs_of(pa);
    // SAFETY: `pa` is borrowed for the call; every task gets its own panel.
    let task = |p: usize| f(p, unsafe { panel_at(ptrs, p, mr, kp, m) });
    let threads = if work < PACK_PAR_MIN { 1 } else { pool::num_threads() };
    super::par::for_each(m.div_ceil(mr), threads, &task);
}

/// Packs s8 `a[m, k]` as u8 (`a + 128`, zero point 128).
pub(crate) fn pack_s8(path: Path, a: &[i8], m: usize, k: usize, kp: usize) -> PackedA {
    let isa = isa_of(path);
    let mut pa = packed(m, kp, path.mr_for(m));
    let mr = pa.mr;
    pa.zero.fill(128);
    pa.scale = vec![1.0; m];
    for_panels(&mut pa, m * k, |p, pn| {
        let rows = pn.sums.len();
        for r in 0..rows {
            let i = p * mr + r;
            put_row_s8(isa, pn.data, rows, r, &a[i * k..(i + 1) * k]);
        }
    });
    pa
}

/// Quantizes and packs f32 `x[m, k]` as `act` says (per-row ranges are taken while the row is in cache).
/// With `rowsum`, also each row's byte sum (needed with weight zero points).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_f32(
    path: Path,
    mr: usize,
    x: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    act: ActQuant,
    rowsum: bool,
) -> Result<PackedA> {
    let (pa, panels) = F32Panels::new(path, mr, x, m, k, kp, act, rowsum)?;
    let threads = if m * k < PACK_PAR_MIN { 1 } else { pool::num_threads() };
    // SAFETY: `pa` is alive and not touched until `pack_all` returns.
    unsafe { panels.pack_all(threads) }?;
    Ok(pa)
}

/// f32 activations `x[m, k]` to be quantized and packed one row panel at a time, into the [`PackedA`] that
/// [`F32Panels::new`] returns with them. [`pack_f32`] packs every panel in a parallel region of its own;
/// `int8_linear` packs them as the first tasks of the GEMM's own region instead (see `driver::drive`): one fork
/// and join per call fewer (4 of the 11 per BERT layer), and a thread that runs out of panels to pack goes on to
/// the products instead of waiting at the end of a region. Whatever needs the whole input (a per-tensor range)
/// is taken in `new`; a panel needs only its own rows.
pub(crate) struct F32Panels<'x> {
    isa: Isa,
    x: &'x [f32],
    m: usize,
    k: usize,
    mr: usize,
    kp: usize,
    act: ActQuant,
    rowsum: bool,
    /// A panel found a non-finite value (per-row ranges).
    bad: AtomicBool,
    ptrs: Ptrs,
}

impl<'x> F32Panels<'x> {
    /// The packed buffer for `x[m, k]` (K padded to `kp`, panels of at most `mr` rows) with the scales and zero
    /// points known before packing (static, or per tensor from `x`'s range: an error names a non-finite value),
    /// and the panels still to pack into it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        path: Path,
        mr: usize,
        x: &'x [f32],
        m: usize,
        k: usize,
        kp: usize,
        act: ActQuant,
        rowsum: bool,
    ) -> Result<(PackedA, F32Panels<'x>)> {
        let isa = isa_of(path);
        let mut pa = packed(m, kp, mr);
        let (s, z) = match act {
            ActQuant::DynamicPerTensor { .. } if m * k > 0 => {
                let (lo, hi) = tensor_range(isa, x)?;
                act.params(lo, hi)
            }
            ActQuant::DynamicPerRow { .. } => (1.0, 0), // each panel's rows get theirs when it is packed
            _ => act.params(0.0, 0.0),
        };
        pa.scale = vec![s; m];
        pa.zero.fill(z);
        pa.narrow = act.qmax() <= 127;
        let ptrs = ptrs_of(&mut pa);
        let panels = F32Panels { isa, x, m, k, mr: pa.mr, kp, act, rowsum, bad: AtomicBool::new(false), ptrs };
        Ok((pa, panels))
    }

    /// Row panels (each packed by one [`F32Panels::pack`]).
    pub(crate) fn count(&self) -> usize {
        self.m.div_ceil(self.mr)
    }

    /// Rows per panel (the [`PackedA`]'s `mr`).
    pub(crate) fn mr(&self) -> usize {
        self.mr
    }

    /// Quantizes and packs row panel `p`: its bytes, and its rows' scales, zero points and byte sums.
    ///
    /// # Safety
    /// The [`PackedA`] returned with `self` is alive, each panel is packed once, and nothing reads or writes panel
    /// `p`'s bytes, sums, scales or zero points until this returns (the GEMM waits for each panel's flag).
    pub(crate) unsafe fn pack(&self, p: usize) {
        let (isa, k, mr) = (self.isa, self.k, self.mr);
        // SAFETY: the contract above.
        let pn = unsafe { panel_at(self.ptrs, p, mr, self.kp, self.m) };
        let row = |i: usize| &self.x[i * k..(i + 1) * k];
        let rows = pn.sums.len();
        if let ActQuant::DynamicPerRow { .. } = self.act {
            for r in 0..rows {
                let (s, z) = if k == 0 {
                    self.act.params(0.0, 0.0)
                } else {
                    let (lo, hi, nonfinite) = min_max(isa, row(p * mr + r));
                    if nonfinite {
                        self.bad.store(true, Ordering::Relaxed);
                    }
                    self.act.params(lo, hi)
                };
                pn.scale[r] = s;
                pn.zero[r] = z;
            }
        }
        for kk in (0..k).step_by(CHUNK) {
            let cols = kk..(kk + CHUNK).min(k);
            let x = |r: usize| &row(p * mr + r)[cols.clone()];
            put_panel_cols(isa, pn.data, kk, &x, pn.scale, pn.zero, self.act.qmax(), self.rowsum, pn.sums);
        }
        for r in 0..rows {
            zero_tail(pn.data, rows, r, k.div_ceil(4));
        }
    }

    /// Packs every row panel on `threads` threads (one task per panel), then [`F32Panels::check`]s.
    ///
    /// # Safety
    /// The [`PackedA`] returned with `self` is alive, no panel is packed yet, and nothing reads or writes it until
    /// this returns.
    pub(crate) unsafe fn pack_all(&self, threads: usize) -> Result<()> {
        // SAFETY: the contract above; each task packs its own panel once.
        super::par::for_each(self.count(), threads, &|p| unsafe { self.pack(p) });
        self.check()
    }

    /// After every panel is packed: the error that names the first non-finite value, if a row's range met one.
    pub(crate) fn check(&self) -> Result<()> {
        if self.bad.load(Ordering::Relaxed) {
            tensor_range(self.isa, self.x)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty input's range `[0, 0]` gives scale 1 at the code range's zero: 128 / 64 symmetric (8 / 7 bits), 0
    /// asymmetric; a static mode keeps its own.
    #[test]
    fn an_empty_range_quantizes_at_scale_one_and_the_code_ranges_zero() {
        for (symmetric, reduce_range, zero) in [(true, false, 128), (true, true, 64), (false, false, 0), (false, true, 0)] {
            for act in [ActQuant::DynamicPerRow { symmetric, reduce_range }, ActQuant::DynamicPerTensor { symmetric, reduce_range }] {
                assert_eq!(act.params(0.0, 0.0), (1.0, zero), "{act:?}");
            }
        }
        assert_eq!(ActQuant::Static { scale: 0.5, zero_point: 7 }.params(0.0, 0.0), (0.5, 7));
    }

    /// Every path packs f32 activations into the same bytes, row sums, scales and zero points as the portable
    /// one: AVX-512's four-row transposed stores (`put_rows4`), its single rows, AVX2's one- and two-row panels
    /// (`put_rows_avx2`) and the scalar tails cover panels of 1 to 13 rows (panels of at most 12 and of at most 2)
    /// and K around the 16- and 32-value steps and the column chunks, with 8- and 7-bit codes.
    #[test]
    fn f32_packing_is_identical_on_every_path() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 40.0
        };
        let acts = [
            ActQuant::DynamicPerRow { symmetric: true, reduce_range: false },
            ActQuant::DynamicPerRow { symmetric: false, reduce_range: false },
            ActQuant::DynamicPerTensor { symmetric: false, reduce_range: false },
            ActQuant::DynamicPerRow { symmetric: false, reduce_range: true },
            ActQuant::DynamicPerTensor { symmetric: true, reduce_range: true },
            ActQuant::Static { scale: 0.07, zero_point: 117 },
        ];
        for (m, mr) in [1, 3, 4, 5, 8, 12, 13, 29].into_iter().flat_map(|m| [(m, 12), (m, 2)]) {
            for k in [1usize, 15, 16, 17, 31, 32, 33, 63, 255, 256, 257, 1000, 3001] {
                let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
                let kp = k.div_ceil(4) * 4;
                for act in acts {
                    let want = pack_f32(Path::Scalar, mr, &x, m, k, kp, act, true).unwrap();
                    for path in Path::ALL.into_iter().filter(|p| p.is_supported()) {
                        let got = pack_f32(path, mr, &x, m, k, kp, act, true).unwrap();
                        let what = format!("{path:?} m={m} mr={mr} k={k} {act:?}");
                        assert_eq!(got.mr, want.mr, "{what}");
                        assert_eq!(got.data[..m * kp], want.data[..m * kp], "{what}: bytes");
                        assert_eq!(got.rowsum, want.rowsum, "{what}: row sums");
                        assert_eq!(got.scale, want.scale, "{what}: scales");
                        assert_eq!(got.zero, want.zero, "{what}: zero points");
                        release(got);
                    }
                    release(want);
                }
            }
        }
    }

    /// Static ranges quantize whatever comes: every path gives the portable path's codes for NaN (0), infinities,
    /// values far beyond the clamp (|x / s| up to 1e30, where the vector path clamps before converting), exact
    /// ties around it and around the u8 ends, for zero points 0, 128 and 255, in panels of at most 12 and 2 rows;
    /// and the same codes with the 7-bit top (the clamp at 127 that `reduce_range` codes get), panel by panel.
    #[test]
    fn extreme_static_inputs_quantize_alike_on_every_path() {
        let s = 0.5f32;
        let mut x = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, f32::MAX, -0.0, 0.0];
        for t in [0.25f32, 0.75, 63.75, 64.25, 127.25, 127.75, 511.75, 512.25, 1023.75, 1024.25, 5000.0] {
            x.extend([t, -t, t + 0.5, -t - 0.5]);
        }
        for (m, mr) in [(1usize, 12), (4, 12), (12, 12), (1, 2), (2, 2), (5, 2)] {
            let k = x.len() * 2 + 3;
            let xs: Vec<f32> = (0..m * k).map(|i| x[(i * 7 + i / k) % x.len()]).collect();
            let kp = k.div_ceil(4) * 4;
            for zero_point in [0, 128, 255] {
                let act = ActQuant::Static { scale: s, zero_point };
                let want = pack_f32(Path::Scalar, mr, &xs, m, k, kp, act, true).unwrap();
                for path in Path::ALL.into_iter().filter(|p| p.is_supported()) {
                    let got = pack_f32(path, mr, &xs, m, k, kp, act, true).unwrap();
                    let what = format!("{path:?} m={m} mr={mr} z={zero_point}");
                    assert_eq!(got.data[..m * kp], want.data[..m * kp], "{what}: bytes");
                    assert_eq!(got.rowsum, want.rowsum, "{what}: row sums");
                    release(got);
                }
                release(want);
            }
        }
        for rows in [1usize, 2, 4] {
            let k = x.len() / 4 * 4 * 2;
            let xs: Vec<f32> = (0..rows * k).map(|i| x[(i * 7 + i / k) % x.len()]).collect();
            let row = |r: usize| &xs[r * k..(r + 1) * k];
            for zero_point in [0, 64, 127] {
                let (scale, zero) = (vec![s; rows], vec![zero_point; rows]);
                let put = |isa: Isa| {
                    let (mut panel, mut sums) = (vec![0u8; k * rows], vec![0i32; rows]);
                    put_panel_cols(isa, &mut panel, 0, &row, &scale, &zero, 127, true, &mut sums);
                    (panel, sums)
                };
                let want = put(Isa::Scalar);
                assert!(want.0.iter().all(|&c| c <= 127) && want.0.contains(&127));
                for isa in [Isa::Avx2, Isa::Avx512].into_iter().filter(|i| i.is_supported()) {
                    assert_eq!(put(isa), want, "{isa:?} rows={rows} z={zero_point}: 7-bit codes");
                }
            }
        }
    }
}

