//! The int4 tiles: `f[r][c] = sum_g s[g][c] · sum_{k in g} a_s8[r, k] · (nib[k, c] - z[g][c])` for up to
//! [`MR4`] rows and one 32-column panel, one per path (portable, AVX2, AVX-512 VNNI).
//!
//! Layout (see [`super::int4`]): a weight panel is one stream of `groups` blocks of [`Panel::stride`] bytes, one
//! per k group, in the order the tiles read them: `group / 4` quad rows of 64 bytes (4 k values × 32 columns:
//! in quad row `t`, byte `4j + e` holds k value `4t + e` of column `j` in its low nibble and of column `j + 16`
//! in its high nibble, each stored as `q + 8` in [0, 15]), then the group's 32 scales (`f32`, or half-precision
//! bits). So the two nibbles of a byte share their activation, and one 64-byte row is one `vpdpbusd` operand for
//! all 32 columns (the low nibbles in the 16 lanes of columns 0..16, the high ones of columns 16..32). The
//! stride is a whole number of 64-byte lines (`group · 16 + 32 · 4` or `+ 32 · 2`) and the buffer is line
//! aligned, so no load splits a cache line, and the scales arrive with the codes they scale: the tiles prefetch
//! one stream instead of two (before, the scales were a second array, fetched by demand misses at every 4 KiB page
//! of it). `z[g][c]` is the stored zero point `zero + 8` (a separate `groups × 32` array of affine weights; 8 for
//! symmetric ones), so `nib - z = q - zero`. Activations are signed bytes (the u8 codes minus 128, padding 0):
//! k quad `j` of the panel holds `rows × 4` bytes (row stride 4), and `na[g][r]` comes with them: `-sum_{k in g}
//! a_s8[r, k]`, times 8 for symmetric weights (their zero-point term, ready to broadcast).
//!
//! Double-quantized scales ([`ScaleFmt::U8`]): each group scale is an unsigned 8-bit code, in units of one `f32`
//! step per column that the epilogue applies, so a group of 32 codes costs 16 + 1 bytes per column instead of
//! 16 + 2. 32 one-byte scales are half a line, so groups go in pairs: one line holding both groups' 32 + 32 scale
//! codes, then the first group's codes, then the second's (`64 + 2 · group · 16` bytes, whole lines again; a
//! last unpaired group keeps its line). The tiles sum the group in integers as before and multiply by the
//! exactly widened code at its end, where the other formats multiply by the scale.
//!
//! Why signed activations: the nibbles are then the *unsigned* operand of `vpdpbusd` / `vpmaddubsw`, used as
//! they are masked out of the byte, and the zero point enters once per group, as the accumulator's initial
//! value `z · na` (`sum a · (nib - z) = sum a · nib + z · na`), instead of a byte subtraction per 64 weights.
//! Why the two columns per byte: the VNNI tile masks once per 64 bytes instead of twice. It sums the *whole*
//! byte, `P = sum a · (lo + 16 · hi)`, and its high part, `Q = sum a · (byte & 0xF0) = 16 · sum a · hi`
//! (both u8 operands as they are), so the low columns' sums are `P - Q` and the high columns' `Q / 16` (exact:
//! an arithmetic shift of a multiple of 16): one `vpandd` and two `vpdpbusd` per 64 bytes of weights, against
//! two and two with the nibbles of one column per byte (measured on Zen 4, where a 512-bit op takes two of the
//! four vector pipes, the masks were a fifth of a GEMV's vector work). That is for one or two rows: tiles of
//! more rows share each mask among them, and there the whole byte's per-row work (the initial value, `P - Q`,
//! the shift) costs more than the masks it saves (8 rows: 0.92× against masking both nibbles), so they mask
//! both. `P` sums up to `255 · 128` per k, which bounds the group ([`WHOLE_BYTE_MAX_GROUP`]); larger groups
//! mask both nibbles too. (`vpmaddubsw` saturates its i16 pair sums, so the AVX2 tile masks both: `255 · 128 · 2`
//! would not fit.) Integer sums run per group and are scaled into `f` at each group end; the tiles widen half
//! scales to `f32` (exactly) when they apply them.
#![allow(clippy::needless_range_loop)] // register tiles are indexed by row
use super::panels::NR;
use crate::half::f16_to_f32;

/// Rows per register tile.
pub(super) const MR4: usize = 8;

/// Largest group for the VNNI tile's whole-byte sums (module doc): `P` starts at `(z_lo + 16 · z_hi) · na` and
/// adds `a · byte` for each k of the group, at most `(15 + 240 + 255) · 128 · group` in all, inside i32 for
/// groups of up to 32896 k values; larger groups mask both nibbles.
pub(super) const WHOLE_BYTE_MAX_GROUP: usize = 32768;

/// How a panel stores its group scales (module doc).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum ScaleFmt {
    /// `f32`, after each group's codes.
    F32,
    /// Half-precision bits, after each group's codes.
    F16,
    /// Unsigned 8-bit codes in units of one `f32` step per column (kept outside the panel, applied by the
    /// epilogue): groups go in pairs, each pair one line of the two groups' 32 + 32 codes, then their codes.
    U8,
}

impl ScaleFmt {
    /// Bytes per scale.
    pub(super) fn width(self) -> usize {
        match self {
            ScaleFmt::F32 => 4,
            ScaleFmt::F16 => 2,
            ScaleFmt::U8 => 1,
        }
    }
    /// Byte offsets in a panel of this format of group `g`'s codes and of its 32 scales ([`group_at`]).
    #[inline(always)]
    pub(super) fn group_at(self, g: usize, stride: usize, pairs: usize) -> (usize, usize) {
        match self {
            ScaleFmt::F32 => group_at::<0>(g, stride, pairs),
            ScaleFmt::F16 => group_at::<1>(g, stride, pairs),
            ScaleFmt::U8 => group_at::<2>(g, stride, pairs),
        }
    }
}

/// Where group `g`'s codes and scales start in a panel of format `S` (0, 1, 2: [`ScaleFmt`]'s order, the
/// tiles' `x86::F32`, `x86::F16`, `x86::U8`) with `stride` bytes
/// per group block (per *pair* of groups for 8-bit scales) and `pairs · 128` bytes of codes per group.
#[inline(always)]
pub(super) fn group_at<const S: u8>(g: usize, stride: usize, pairs: usize) -> (usize, usize) {
    if S == 2 {
        let at = (g / 2) * stride + (g % 2) * pairs * 128;
        (at + 64, (g / 2) * stride + (g % 2) * NR)
    } else {
        (g * stride, g * stride + pairs * 128)
    }
}

/// One weight panel (32 columns): `groups` blocks of `stride` bytes (codes, then scales: module doc; for 8-bit
/// scales, pairs of groups behind their scale line) and the stored zero points (`groups × 32`, or empty for
/// symmetric weights, whose stored zero point is 8).
#[derive(Copy, Clone, Debug)]
pub(super) struct Panel<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) zeros: &'a [u8],
    pub(super) groups: usize,
    pub(super) pairs: usize,
    pub(super) stride: usize,
    pub(super) fmt: ScaleFmt,
}

impl Panel<'_> {
    /// Bytes per group block: `pairs · 2` quad rows of 64 bytes and 32 scales of 4 or 2 bytes; for 8-bit scales,
    /// per pair of groups: their scale line and both groups' codes. A multiple of 64.
    pub(super) fn stride_of(pairs: usize, fmt: ScaleFmt) -> usize {
        match fmt {
            ScaleFmt::F32 => pairs * 128 + NR * 4,
            ScaleFmt::F16 => pairs * 128 + NR * 2,
            ScaleFmt::U8 => 64 + 2 * pairs * 128,
        }
    }
    /// Bytes of a panel of `groups` groups (the last pair of 8-bit-scale groups may hold one group).
    pub(super) fn len_of(groups: usize, pairs: usize, fmt: ScaleFmt) -> usize {
        match fmt {
            ScaleFmt::U8 => groups.div_ceil(2) * 64 + groups * pairs * 128,
            _ => groups * Self::stride_of(pairs, fmt),
        }
    }
    /// Byte offsets of group `g`'s codes and of its 32 scales.
    #[inline(always)]
    pub(super) fn group_at(&self, g: usize) -> (usize, usize) {
        self.fmt.group_at(g, self.stride, self.pairs)
    }
    /// Quad row `t` of group `g`'s codes (64 bytes: k values `4t..4t + 4` of the group, module doc).
    #[inline(always)]
    pub(super) fn quad(&self, g: usize, t: usize) -> &[u8] {
        &self.bytes[self.group_at(g).0 + t * 64..][..64]
    }
    /// Where k value `r` of a group and column `c` sit in the group's codes: byte offset and whether in the high
    /// nibble.
    #[inline(always)]
    pub(super) fn code_at(r: usize, c: usize) -> (usize, bool) {
        ((r / 4) * 64 + (c % 16) * 4 + r % 4, c >= 16)
    }
    /// The scale of group `g`, column `c` (for 8-bit scales: the code, in units of the column's step).
    #[inline(always)]
    pub(super) fn scale(&self, g: usize, c: usize) -> f32 {
        let at = self.group_at(g).1;
        match self.fmt {
            ScaleFmt::F16 => f16_to_f32(u16::from_le_bytes([self.bytes[at + 2 * c], self.bytes[at + 2 * c + 1]])),
            ScaleFmt::F32 => f32::from_le_bytes(self.bytes[at + 4 * c..at + 4 * c + 4].try_into().expect("4 bytes")),
            ScaleFmt::U8 => self.bytes[at + c] as f32,
        }
    }
    /// The stored zero point (`zero + 8`) of group `g`, column `c`.
    #[inline(always)]
    pub(super) fn zero(&self, g: usize, c: usize) -> i32 {
        if self.zeros.is_empty() { 8 } else { self.zeros[g * NR + c] as i32 }
    }
}

/// Portable tile over `rows` rows of the signed activation panel `a`. It sums `a · (nib - z)` directly (the
/// same integers as the SIMD tiles' `a · nib + z · na`), so it needs no `na`.
#[inline(always)]
pub(super) fn tile_body(rows: usize, a: &[u8], w: Panel<'_>, f: &mut [[f32; NR]; MR4]) {
    for fr in f.iter_mut() {
        *fr = [0.0; NR];
    }
    let quads = 2 * w.pairs;
    for g in 0..w.groups {
        let mut acc = [[0i32; NR]; MR4];
        let z: [i32; NR] = std::array::from_fn(|c| w.zero(g, c));
        for t in 0..quads {
            let bb = w.quad(g, t);
            for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                let aq = &a[(g * quads + t) * rows * 4 + r * 4..][..4];
                for j in 0..NR / 2 {
                    let (mut lo, mut hi) = (0i32, 0i32);
                    for e in 0..4 {
                        let (byte, av) = (bb[j * 4 + e], aq[e] as i8 as i32);
                        lo += av * ((byte & 0x0F) as i32 - z[j]);
                        hi += av * ((byte >> 4) as i32 - z[j + NR / 2]);
                    }
                    accr[j] += lo;
                    accr[j + NR / 2] += hi;
                }
            }
        }
        let s: [f32; NR] = std::array::from_fn(|c| w.scale(g, c));
        for r in 0..rows {
            for c in 0..NR {
                f[r][c] += s[c] * acc[r][c] as f32;
            }
        }
    }
}
crate::simd::multiversion!(pub(super) fn tile_mv(rows: usize, a: &[u8], w: Panel<'_>, f: &mut [[f32; NR]; MR4])
    = tile_body;);

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{group_at, MR4, NR};
    use std::arch::x86_64::*;

    /// Scale format tags of the tiles' const parameter `S` ([`super::ScaleFmt`]'s order).
    pub(crate) const F32: u8 = 0;
    pub(crate) const F16: u8 = 1;
    pub(crate) const U8: u8 = 2;

    /// Bytes per scale of format `S`.
    const fn scale_bytes(s: u8) -> usize {
        match s {
            F32 => 4,
            F16 => 2,
            _ => 1,
        }
    }

    /// 16 scales at `p` as `f32`: `f32`, half-precision bits (`vcvtph2ps`) or 8-bit codes (zero-extended and
    /// converted, exactly) as `S` says.
    ///
    /// # Safety
    /// `p` points to 16 scales of that format; the CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scales16<const S: u8>(p: *const u8) -> __m512 {
        unsafe {
            match S {
                F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                U8 => _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))),
                _ => _mm512_loadu_ps(p as *const f32),
            }
        }
    }

    /// 8 scales at `p` as `f32`, as [`scales16`].
    ///
    /// # Safety
    /// `p` points to 8 scales of that format; the CPU has AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales8<const S: u8>(p: *const u8) -> __m256 {
        unsafe {
            match S {
                F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                U8 => _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))),
                _ => _mm256_loadu_ps(p as *const f32),
            }
        }
    }

    /// The accumulator's initial value for one row of a group: `z · na` with `z` the 16 stored zero points at
    /// `zp` when `affine`, else `na` as it is (symmetric weights' sums come multiplied by their zero point 8).
    ///
    /// # Safety
    /// `zp` points to 16 bytes when `affine`; the CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero_term16(affine: bool, zp: *const u8, na: i32) -> __m512i {
        unsafe {
            if affine {
                _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(zp as *const __m128i)), _mm512_set1_epi32(na))
            } else {
                _mm512_set1_epi32(na)
            }
        }
    }

    /// [`zero_term16`] for 8 columns.
    ///
    /// # Safety
    /// `zp` points to 8 bytes when `affine`; the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn zero_term8(affine: bool, zp: *const u8, na: i32) -> __m256i {
        unsafe {
            if affine {
                _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(zp as *const __m128i)), _mm256_set1_epi32(na))
            } else {
                _mm256_set1_epi32(na)
            }
        }
    }

    /// How far ahead (bytes) the VNNI and AVX2 tiles prefetch their weight stream into L2 (`prefetcht1`, every line of
    /// it, scales included) where they prefetch at all ([`crate::cpu::stream_prefetch_in_software`]): a stream from
    /// DRAM needs more lines in flight than L1's fill buffers hold. On the Intel part (Ice Lake-SP), against
    /// `prefetcht0` 2 KiB ahead on the codes only (the scales were a second array then), with the one-stream layout,
    /// cold 4096² GEMV, one thread, CPU time, quiet machine: 4, 8 and 16 KiB ahead within 1 % of one another, adding
    /// `prefetcht0` 1 KiB ahead nothing, one prefetch per 128 bytes (the adjacent line left to the hardware) 0.89×, no
    /// software prefetch 0.72×; at two threads 4 KiB was as fast as 8 KiB or faster.
    const AHEAD: usize = 4096;

    /// Prefetches the line `AHEAD` bytes after `p` into L2 when `on` (wrapping address arithmetic: a prefetch
    /// never faults, past the end of the buffer included).
    #[inline(always)]
    unsafe fn prefetch(on: bool, p: *const u8) {
        if on {
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(AHEAD) as *const i8) }
        }
    }

    /// VNNI tile of `MR` rows (see the module doc); `S`: the scale format ([`F32`], [`F16`], [`U8`]); `W`: whole-byte
    /// sums (`P` and `Q`, groups of at most [`super::WHOLE_BYTE_MAX_GROUP`]), else both nibbles masked; `C` chains
    /// of accumulators per row, taking alternate quad rows (two where one or two rows leave too few
    /// independent `vpdpbusd` chains to cover its latency), added at the group end; `pf`: prefetch the stream
    /// ([`crate::cpu::stream_prefetch_in_software`]).
    ///
    /// # Safety
    /// `a`: `2 * groups * pairs` k quads of `MR` rows of signed bytes; `na`: `groups * MR` sums; `b`: a panel of
    /// `groups` groups of format `S` ([`super::Panel::len_of`], `stride` as [`super::Panel::stride_of`]); `z`:
    /// `groups * 32` bytes when `affine`; the CPU has AVX-512 VNNI; `C` is 1 or 2 (it divides `2 * pairs`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn vnni<const MR: usize, const S: u8, const W: bool, const C: usize>(
        groups: usize,
        pairs: usize,
        stride: usize,
        a: *const u8,
        na: *const i32,
        b: *const u8,
        z: *const u8,
        affine: bool,
        pf: bool,
        f: &mut [[f32; NR]; MR4],
    ) {
        unsafe {
            let fv = vnni_sums::<MR, S, W, C>(groups, pairs, stride, a, na, b, z, affine, pf);
            for r in 0..MR {
                _mm512_storeu_ps(f[r].as_mut_ptr(), fv[r][0]);
                _mm512_storeu_ps(f[r].as_mut_ptr().add(16), fv[r][1]);
            }
        }
    }

    /// [`vnni`] over the `panels` consecutive weight panels of a block (`plen` bytes apart, their zero points
    /// `groups * 32` bytes apart), writing each panel's sums straight into the block's output rows: row `r`'s
    /// `cols` columns at `y + r * ldy` (the last panel's columns past `cols` masked off). One call per block
    /// instead of one per panel: no dispatch, no register-tile round trip and no copy per 32 columns, and the
    /// weight stream is read as one run of `panels * plen` bytes, in address order across the panel boundaries.
    ///
    /// # Safety
    /// As [`vnni`] for each panel; `y + r * ldy` holds `cols` writable `f32` for `r < MR`, `cols <= 32 * panels`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn vnni_block<const MR: usize, const S: u8, const W: bool, const C: usize>(
        panels: usize,
        plen: usize,
        groups: usize,
        pairs: usize,
        stride: usize,
        a: *const u8,
        na: *const i32,
        b: *const u8,
        z: *const u8,
        affine: bool,
        pf: bool,
        y: *mut f32,
        ldy: usize,
        cols: usize,
    ) {
        unsafe {
            for p in 0..panels {
                let bp = b.add(p * plen);
                let zp = if affine { z.add(p * groups * NR) } else { z };
                let fv = vnni_sums::<MR, S, W, C>(groups, pairs, stride, a, na, bp, zp, affine, pf);
                let c0 = p * NR;
                let nr = (cols - c0).min(NR);
                let (m0, m1) = (lanes(nr), lanes(nr.saturating_sub(16)));
                for r in 0..MR {
                    // Masked-off lanes are neither written nor faulted on (AVX-512 masked stores).
                    let yr = y.wrapping_add(r * ldy + c0);
                    _mm512_mask_storeu_ps(yr, m0, fv[r][0]);
                    _mm512_mask_storeu_ps(yr.wrapping_add(16), m1, fv[r][1]);
                }
            }
        }
    }

    /// The store mask of the first `n` (at most 16 taken) of 16 lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 }
    }

    /// The sums of [`vnni`] as registers: `[row][low / high 16 columns]`.
    ///
    /// # Safety
    /// As [`vnni`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vnni_sums<const MR: usize, const S: u8, const W: bool, const C: usize>(
        groups: usize,
        pairs: usize,
        stride: usize,
        a: *const u8,
        na: *const i32,
        b: *const u8,
        z: *const u8,
        affine: bool,
        pf: bool,
    ) -> [[__m512; 2]; MR] {
        unsafe {
            let lo = _mm512_set1_epi8(0x0F);
            let hi = _mm512_set1_epi8(0xF0u8 as i8);
            let quads = 2 * pairs;
            let mut fv = [[_mm512_setzero_ps(); 2]; MR];
            let mut ap = a;
            for g in 0..groups {
                let (co, so) = group_at::<S>(g, stride, pairs);
                let blk = b.add(co);
                if S == U8 && g % 2 == 0 {
                    // The pair's scale line precedes its codes: touch it first, so the stream is read in order.
                    _mm_prefetch::<_MM_HINT_T0>(b.add(so) as *const i8);
                }
                // Per row and chain: the sums of the low-nibble columns (`P` when `W`) and of the high ones (`Q`).
                let mut s = [[_mm512_setzero_si512(); C]; MR];
                let mut t = [[_mm512_setzero_si512(); C]; MR];
                for r in 0..MR {
                    let n = *na.add(g * MR + r);
                    let (zl, zh) = (zero_term16(affine, z.add(g * NR), n), zero_term16(affine, z.add(g * NR + 16), n));
                    if W {
                        let zh16 = _mm512_slli_epi32::<4>(zh);
                        (s[r][0], t[r][0]) = (_mm512_add_epi32(zl, zh16), zh16);
                    } else {
                        (s[r][0], t[r][0]) = (zl, zh);
                    }
                }
                let mut bp = blk;
                for _ in 0..quads / C {
                    for c in 0..C {
                        let x = _mm512_loadu_si512(bp as *const __m512i);
                        prefetch(pf, bp);
                        let (u, v) = if W {
                            (x, _mm512_and_si512(x, hi))
                        } else {
                            (_mm512_and_si512(x, lo), _mm512_and_si512(_mm512_srli_epi16::<4>(x), lo))
                        };
                        for r in 0..MR {
                            let av = _mm512_set1_epi32((ap.add(r * 4) as *const i32).read_unaligned());
                            s[r][c] = _mm512_dpbusd_epi32(s[r][c], u, av);
                            t[r][c] = _mm512_dpbusd_epi32(t[r][c], v, av);
                        }
                        ap = ap.add(MR * 4);
                        bp = bp.add(64);
                    }
                }
                // Group end: f += float(sum) * scale; the scales follow the codes (1 or 2 lines; 8-bit ones
                // precede each pair of groups, already read).
                prefetch(pf, bp);
                if S == F32 {
                    prefetch(pf, bp.add(64));
                }
                let sp = b.add(so);
                let w = scale_bytes(S);
                let s0 = scales16::<S>(sp);
                let s1 = scales16::<S>(sp.add(16 * w));
                if affine && pf {
                    _mm_prefetch::<_MM_HINT_T1>(z.wrapping_add(g * NR + AHEAD / stride * NR) as *const i8);
                }
                for r in 0..MR {
                    let (mut p, mut q) = (s[r][0], t[r][0]);
                    for c in 1..C {
                        (p, q) = (_mm512_add_epi32(p, s[r][c]), _mm512_add_epi32(q, t[r][c]));
                    }
                    let (v0, v1) = if W { (_mm512_sub_epi32(p, q), _mm512_srai_epi32::<4>(q)) } else { (p, q) };
                    fv[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v0), s0, fv[r][0]);
                    fv[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), s1, fv[r][1]);
                }
            }
            fv
        }
    }

    /// AVX2 tiles over the `panels` consecutive weight panels of a block (`plen` bytes apart, their zero points
    /// `groups * 32` bytes apart) for the `rows` rows of one activation panel, writing the sums straight into the
    /// block's output rows: row `r`'s `cols` columns at `y + r * ldy` (as [`vnni_block`]). Per panel, the rows go
    /// in tiles of up to 4 ([`avx2_sums`]), so a panel (68 KB at 4096 deep) is streamed once and re-read from L2
    /// by the next tile of rows; the first tile prefetches the stream [`AHEAD`] bytes ahead, every line of it,
    /// on every CPU (unlike [`vnni`], which leaves AMD's Zen 4 to its hardware prefetchers).
    ///
    /// Why prefetch on Zen 3: 4096² GEMV, 8-bit scales, two threads, wall time, interleaved rounds (25) in one
    /// process, load average 2.4-3.3 on the 2-core VM: against no software prefetch, 1.26× cold (median of the
    /// per-round ratios, 25 of 25 rounds faster) and 1.28× hot (L3-resident); 2 KiB ahead 0.91× cold against 4
    /// KiB, 8 KiB 0.97× (10 of 25 rounds faster); `prefetcht0` instead of `prefetcht1` 0.99×.
    ///
    /// # Safety
    /// As [`vnni_block`] with `rows` (1..=8) rows per k quad and `groups * rows` sums at `na`, and the CPU has
    /// AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn avx2_block<const S: u8>(
        panels: usize,
        plen: usize,
        groups: usize,
        pairs: usize,
        stride: usize,
        a: *const u8,
        na: *const i32,
        rows: usize,
        b: *const u8,
        z: *const u8,
        affine: bool,
        y: *mut f32,
        ldy: usize,
        cols: usize,
    ) {
        unsafe {
            for p in 0..panels {
                let bp = b.add(p * plen);
                let zp = if affine { z.add(p * groups * NR) } else { z };
                let c0 = p * NR;
                let nr = (cols - c0).min(NR);
                let mut r0 = 0;
                while r0 < rows {
                    let yr = y.wrapping_add(r0 * ldy + c0);
                    let args = (groups, pairs, stride, a, na, rows, r0, bp, zp, affine, r0 == 0);
                    match rows - r0 {
                        1 => store_rows(&avx2_sums::<1, S>(args), yr, ldy, nr),
                        2 => store_rows(&avx2_sums::<2, S>(args), yr, ldy, nr),
                        3 => store_rows(&avx2_sums::<3, S>(args), yr, ldy, nr),
                        _ => store_rows(&avx2_sums::<4, S>(args), yr, ldy, nr),
                    }
                    r0 += 4;
                }
            }
        }
    }

    /// Writes the first `nr` columns of each row's 32 sums to `y + r * ldy`.
    ///
    /// # Safety
    /// `y + r * ldy` holds `nr` writable `f32` for each row `r`; the CPU has AVX.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_rows<const MR: usize>(fv: &[[__m256; 4]; MR], y: *mut f32, ldy: usize, nr: usize) {
        unsafe {
            for r in 0..MR {
                let yr = y.add(r * ldy);
                if nr == NR {
                    for q in 0..4 {
                        _mm256_storeu_ps(yr.add(8 * q), fv[r][q]);
                    }
                } else {
                    let mut t = [0f32; NR];
                    for q in 0..4 {
                        _mm256_storeu_ps(t.as_mut_ptr().add(8 * q), fv[r][q]);
                    }
                    std::ptr::copy_nonoverlapping(t.as_ptr(), yr, nr);
                }
            }
        }
    }

    /// Arguments of [`avx2_sums`]: `(groups, pairs, stride, a, na, rows, r0, b, z, affine, pf)`, `pf`: prefetch the
    /// stream (the first tile of rows of a panel).
    type Avx2Args = (usize, usize, usize, *const u8, *const i32, usize, usize, *const u8, *const u8, bool, bool);

    /// Quad rows whose `vpmaddubsw` pair sums one i16 lane can add exactly: each is at most `2 · 15 · 128 =
    /// 3840` in magnitude, and `8 · 3840 = 30720 < 2^15`.
    const I16_QUADS: usize = 8;

    /// The 32 sums of rows `r0..r0 + MR` (`MR` ≤ 4) of a panel of `rows` rows against one weight panel, as
    /// registers `[row][columns 8q..8q + 8]`. Per group, in one pass over each of its 64-byte quad rows (one or two
    /// rows) or in two over their 32-byte halves (three or four: half `h` holds columns `8h..8h + 8` in its low
    /// nibbles and `16 + 8h..24 + 8h` in its high ones, so that the i16 accumulators fit 16 registers; the output
    /// sums of two or more rows live on the stack between group ends, as before): both nibbles masked,
    /// `vpmaddubsw` (u8 nibbles × s8 activations) added in i16 over up to [`I16_QUADS`] quad rows, then one
    /// `vpmaddwd` by ones into i32 per run of them; at the group end the zero-point term `z · na` is added and the
    /// sums scaled into the output registers, `f = fma(float(sum), s, f)` per group in group order (the bits of the
    /// per-panel tile this replaced).
    ///
    /// Why: the tile before it made two half passes with per-group sums in i32 (one `vpmaddwd` and one `vpaddd`
    /// per two quad rows and nibble) and its `f` in a stack array (a load, FMA and store per row, group and 8
    /// columns), about one vector operation per cycle. Per 128 codes (one 64-byte quad row, one row) the loop now
    /// issues 14 vector operations (2 shifts, 4 masks, 4 `vpmaddubsw`, 4 i16 adds) besides 2 loads, a broadcast
    /// and a prefetch, and each group end 3 more per 128 codes (`vpmaddwd`, zero term, convert, FMA, scales),
    /// against ~22 before. Measured on Zen 3 (2-core VM, load average 3.2-3.5 from another process), 4096² GEMV,
    /// 8-bit scales, two threads, interleaved rounds (25) in one process (`bench/int4_ab.py`), same bits: 1.46×
    /// cold and 1.26× hot (median per-round ratios, 25 of 25 rounds faster); ÷ nnic int8 (`int4_scales_ab`, two
    /// runs each): cold 1.28-1.33 → 1.80-1.84, hot 1.47-1.61 → 2.24-2.29.
    ///
    /// # Safety
    /// As [`avx2_block`] for one panel; `r0 + MR <= rows`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2_sums<const MR: usize, const S: u8>(args: Avx2Args) -> [[__m256; 4]; MR] {
        let (groups, pairs, stride, a, na, rows, r0, b, z, affine, pf) = args;
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            let step = rows * 4;
            let quads = 2 * pairs;
            let w = scale_bytes(S);
            // Halves of each quad row per pass (doc above): both for one or two rows (two rows, 4096² at two
            // threads, interleaved rounds, load ~3.3: 1.07-1.12× against two passes), else one.
            let hp = if MR <= 2 { 2 } else { 1 };
            let mut fv = [[_mm256_setzero_ps(); 4]; MR];
            let a = a.add(r0 * 4);
            for g in 0..groups {
                let (co, so) = group_at::<S>(g, stride, pairs);
                let blk = b.add(co);
                if S == U8 && g % 2 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(b.add(so) as *const i8); // read the stream in order (as `vnni`)
                    prefetch(pf, b.add(so));
                }
                let ag = a.add(g * quads * step);
                let sp = b.add(so);
                let zc = z.add(g * NR);
                for pass in 0..2 / hp {
                    let h0 = pass * hp;
                    // Per row, half of the pass and nibble: the group's i32 sums.
                    let mut s = [[[_mm256_setzero_si256(); 2]; 2]; MR];
                    let mut t0 = 0;
                    while t0 < quads {
                        let t1 = (t0 + I16_QUADS).min(quads);
                        let mut p = [[[_mm256_setzero_si256(); 2]; 2]; MR];
                        for t in t0..t1 {
                            let at = ag.add(t * step);
                            let mut av = [_mm256_setzero_si256(); MR];
                            for r in 0..MR {
                                av[r] = _mm256_set1_epi32((at.add(r * 4) as *const i32).read_unaligned());
                            }
                            if h0 == 0 {
                                prefetch(pf, blk.add(t * 64));
                            }
                            for hh in 0..hp {
                                let x = _mm256_loadu_si256(blk.add(t * 64 + (h0 + hh) * 32) as *const __m256i);
                                let lo = _mm256_and_si256(x, mask);
                                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask);
                                for r in 0..MR {
                                    p[r][hh][0] = _mm256_add_epi16(p[r][hh][0], _mm256_maddubs_epi16(lo, av[r]));
                                    p[r][hh][1] = _mm256_add_epi16(p[r][hh][1], _mm256_maddubs_epi16(hi, av[r]));
                                }
                            }
                        }
                        for r in 0..MR {
                            for hh in 0..hp {
                                for e in 0..2 {
                                    s[r][hh][e] = _mm256_add_epi32(s[r][hh][e], _mm256_madd_epi16(p[r][hh][e], ones));
                                }
                            }
                        }
                        t0 = t1;
                    }
                    for hh in 0..hp {
                        let h = h0 + hh;
                        let (cl, ch) = (8 * h, 16 + 8 * h); // first column of the low / high nibbles
                        let (s0, s1) = (scales8::<S>(sp.add(cl * w)), scales8::<S>(sp.add(ch * w)));
                        for r in 0..MR {
                            let n = *na.add(g * rows + r0 + r);
                            let vl = _mm256_add_epi32(s[r][hh][0], zero_term8(affine, zc.add(cl), n));
                            let vh = _mm256_add_epi32(s[r][hh][1], zero_term8(affine, zc.add(ch), n));
                            fv[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(vl), s0, fv[r][h]);
                            fv[r][2 + h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(vh), s1, fv[r][2 + h]);
                        }
                    }
                }
            }
            fv
        }
    }
}
