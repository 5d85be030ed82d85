//! Micro-kernels: `C[mr, 32] (+)= A_panel · B_panel` over `kg` groups of 4 k values, in wrapping i32.
//!
//! All paths read the same packed layouts (see [`super::panels`]) and compute `sum_k a_u8 * b_s8` exactly
//! (modulo 2^32, which the epilogue relies on):
//! - `scalar`: plain Rust, the readable ground truth;
//! - `avx2_sign`: `vpmaddubsw` on the activations shifted to s8, the sign moved onto the weight (`vpsignb`), exact
//!   for weights without the byte -128 (what symmetric quantization gives: the AVX2 path's usual kernel);
//! - `avx2`: `vpmaddwd` on bytes widened to i16, for weights with -128 (exact: plain `vpmaddubsw` on the u8
//!   activations saturates its i16 pair sum for products such as 255·127 + 255·127);
//! - `vnni`: AVX-512 VNNI `vpdpbusd` (u8 × s8, four products per i32 lane, non-saturating).
#![allow(clippy::needless_range_loop)] // register tiles are indexed by row
use super::panels::NR;

/// Rows per register tile of each path.
pub(crate) const MR_SCALAR: usize = 4;
pub(crate) const MR_AVX2: usize = 2;
pub(crate) const MR_VNNI: usize = 12;
/// Most rows of the VNNI tall tile ([`x86::vnni_tall`]: 16 columns, one accumulator per row), which takes a
/// whole block of 13 to 28 rows in one row panel (28 accumulators, the weight vector and a broadcast: 30 of
/// the 32 zmm registers).
pub(crate) const MR_TALL: usize = 28;

/// Portable kernel. `c` has row stride `ldc`; `acc` adds to it instead of overwriting.
///
/// # Safety
/// `a` must hold `kg * mr * 4` bytes, `b` `kg * 128` bytes (stride 128), `c` `mr` rows of 32 at `ldc`.
pub(crate) unsafe fn scalar(mr: usize, kg: usize, a: *const u8, b: *const i8, c: *mut i32, ldc: usize, acc: bool) {
    let mut t = [[0i32; NR]; MR_SCALAR];
    // SAFETY: sizes are the caller's contract.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, kg * mr * 4), std::slice::from_raw_parts(b, kg * NR * 4)) };
    for g in 0..kg {
        let bg = &b[g * NR * 4..(g + 1) * NR * 4];
        for r in 0..mr {
            let ar = &a[(g * mr + r) * 4..(g * mr + r) * 4 + 4];
            for (j, bj) in bg.chunks_exact(4).enumerate() {
                let mut s = 0i32;
                for e in 0..4 {
                    s = s.wrapping_add(ar[e] as i32 * bj[e] as i32);
                }
                t[r][j] = t[r][j].wrapping_add(s);
            }
        }
    }
    for (r, tr) in t.iter().enumerate().take(mr) {
        for (j, &v) in tr.iter().enumerate() {
            // SAFETY: caller's contract.
            unsafe {
                let p = c.add(r * ldc + j);
                *p = if acc { (*p).wrapping_add(v) } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::super::epilogue::{Activation, TileAt};
    use std::arch::x86_64::*;

    /// How far ahead (bytes) the 1-2 row tile prefetches its weight stream, into L2 (`prefetcht1`). Why L2 and
    /// this far: a weight stream from DRAM needs more lines in flight than L1's fill buffers hold, and the
    /// prefetches to L2 land early enough at 4-8 KiB. The read probe (`cargo run --release --example
    /// gemv_stream` with `PROBE=1`: a plain sum of 16.8 MB, one thread, thread CPU time, load 1.6, three runs)
    /// read 5-7 % faster with `prefetcht1` 4-8 KiB ahead than with `prefetcht0` 2 KiB (before) or none;
    /// `prefetchnta` halved the rate. The GEMV against the previous kernel, both linked into one binary (order
    /// alternating per round, 41 rounds, one thread, thread CPU time, 4096² weights read from DRAM, load 4.8-7.6):
    /// 0.98-1.14×, median 1.05× over six runs. On AMD the VNNI tile leaves the stream to the hardware
    /// ([`crate::cpu::stream_prefetch_in_software`]).
    pub(crate) const GEMV_AHEAD: usize = 4096;
    /// The same for the `MR`-row tile on weights streamed once ([`vnni`] with `stream`; before: `prefetcht0`
    /// 1 KiB ahead, which left the M = 16 product neither compute- nor bandwidth-bound): M = 16 1.00-1.18×,
    /// median 1.12× over six runs (four of them with the second row panel's tile run per K slice of 512-2048
    /// while the slice was in L1: no better, so not kept), M = 24 1.15-1.18× (same A/B). Blocks that reuse a panel from L2 (M > 24) keep
    /// the 1 KiB `prefetcht0`: at M = 128 `prefetcht1` 4-8 KiB was 1-10 % slower.
    pub(crate) const STREAM_AHEAD: usize = 8192;

    /// AVX2 widening kernel for `MR` ≤ [`super::MR_AVX2`] rows, two halves of 16 columns: the AVX2 path's kernel for
    /// weights holding the byte -128 ([`avx2_sign`] otherwise; 3.5-4.5× slower than it at M = 1 on a Zen 3 core, one
    /// thread).
    ///
    /// # Safety
    /// As [`super::scalar`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn avx2<const MR: usize>(kg: usize, a: *const u8, b: *const i8, c: *mut i32, ldc: usize, acc: bool) {
        unsafe {
            let lo_mask = _mm256_set1_epi32(0x00FF_00FF);
            for half in 0..2 {
                let mut s = [[_mm256_setzero_si256(); 2]; MR];
                let bh = b.add(half * 64);
                for g in 0..kg {
                    let x0 = _mm256_loadu_si256(bh.add(g * 128) as *const __m256i);
                    let x1 = _mm256_loadu_si256(bh.add(g * 128 + 32) as *const __m256i);
                    // i16 lanes: (k0, k2) and (k1, k3) of each column, sign-extended.
                    let e0 = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(x0));
                    let o0 = _mm256_srai_epi16::<8>(x0);
                    let e1 = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(x1));
                    let o1 = _mm256_srai_epi16::<8>(x1);
                    let ag = a.add(g * MR * 4);
                    for r in 0..MR {
                        let av = _mm256_set1_epi32((ag.add(r * 4) as *const i32).read_unaligned());
                        let ae = _mm256_and_si256(av, lo_mask);
                        let ao = _mm256_srli_epi16::<8>(av);
                        let p0 = _mm256_add_epi32(_mm256_madd_epi16(ae, e0), _mm256_madd_epi16(ao, o0));
                        let p1 = _mm256_add_epi32(_mm256_madd_epi16(ae, e1), _mm256_madd_epi16(ao, o1));
                        s[r][0] = _mm256_add_epi32(s[r][0], p0);
                        s[r][1] = _mm256_add_epi32(s[r][1], p1);
                    }
                }
                for (r, sr) in s.iter().enumerate() {
                    for (h, &v) in sr.iter().enumerate() {
                        let p = c.add(r * ldc + half * 16 + h * 8) as *mut __m256i;
                        let v = if acc { _mm256_add_epi32(_mm256_loadu_si256(p), v) } else { v };
                        _mm256_storeu_si256(p, v);
                    }
                }
            }
        }
    }

    /// AVX2 kernel for `MR` ≤ 2 rows × 32 columns with `vpmaddubsw`, for weights without the byte -128
    /// (`PackedB::min_free`: what symmetric quantization gives). Why not plain `vpmaddubsw` on the u8 activations:
    /// its i16 pair sum saturates (255·127 + 255·127). Here each activation byte is shifted to s8 (`a' = a - 128`,
    /// an xor), the sign moves onto the weight (`vpsignb`: `w·sgn(a')`) and the magnitude `|a'|` ≤ 128 is the u8
    /// operand, so a pair sum is at most 2·128·127 = 32512: exact. `vpmaddwd` with ones widens the pairs to i32.
    /// The shift comes back through the column sums: `Σ a·w = Σ a'·w + 128·Σ w`, added when the tile starts
    /// (`acc` false) from `colsum` (the panel's 32 sums over all of K). Per row and 32 weight bytes: 4 operations,
    /// 2 of them multiplies, where the widening kernel ([`avx2`]) needs 5 and 2 plus the weight unpacking.
    ///
    /// `next` (or null): part of the driver's next weight micro-panel, whose first `next_groups` k groups (two lines
    /// each) this tile prefetches into L2 alongside its own, paced over its `kg` groups ([`PacedPrefetch`]).
    /// `stream`: the weights are read once from DRAM (small-M blocks): prefetched [`GEMV_AHEAD`] bytes ahead into
    /// L2, else 1 KiB ahead into L1.
    ///
    /// # Safety
    /// As [`super::scalar`], the CPU has AVX2, no weight byte is -128, and `colsum` holds 32 values (`next` is only
    /// prefetched: any address).
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn avx2_sign<const MR: usize>(
        kg: usize,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
        acc: bool,
        colsum: *const i32,
        next: *const i8,
        next_groups: usize,
        stream: bool,
    ) {
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let flip = _mm256_set1_epi8(i8::MIN);
            let mut s = [[_mm256_setzero_si256(); 4]; MR];
            let step = |g: usize, s: &mut [[__m256i; 4]; MR]| {
                let (ag, bp) = (a.add(g * MR * 4), b.add(g * 128));
                let mut sa = [_mm256_setzero_si256(); MR];
                let mut ua = [_mm256_setzero_si256(); MR];
                for r in 0..MR {
                    sa[r] = _mm256_xor_si256(_mm256_set1_epi32((ag.add(r * 4) as *const i32).read_unaligned()), flip);
                    ua[r] = _mm256_abs_epi8(sa[r]);
                }
                for v in 0..4 {
                    let w = _mm256_loadu_si256(bp.add(32 * v) as *const __m256i);
                    for r in 0..MR {
                        let p = _mm256_maddubs_epi16(ua[r], _mm256_sign_epi8(w, sa[r]));
                        s[r][v] = _mm256_add_epi32(s[r][v], _mm256_madd_epi16(p, ones));
                    }
                }
            };
            avx2_k_loop(kg, b, next, next_groups, stream, &mut s, step);
            let shift = [0, 1, 2, 3].map(|v| _mm256_slli_epi32::<7>(_mm256_loadu_si256(colsum.add(8 * v) as *const __m256i)));
            store_avx2_tile(&s, c, ldc, acc, shift);
        }
    }

    /// A tile's prefetch for k group `bp` (128 weight bytes): with `stream` `AHEAD` bytes ahead into L2
    /// ([`GEMV_AHEAD`] for the AVX2 tiles' [`avx2_k_loop`], [`STREAM_AHEAD`] for VNNI's), else 1 KiB ahead into L1.
    ///
    /// # Safety
    /// The CPU has SSE (every x86-64 does).
    #[inline(always)]
    unsafe fn prefetch_group<const AHEAD: usize>(bp: *const i8, stream: bool) {
        // SAFETY: prefetches never fault (the addresses are computed with wrapping arithmetic).
        unsafe {
            if stream {
                _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(AHEAD));
                _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(AHEAD + 64));
            } else {
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(1024));
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(1024 + 64));
            }
        }
    }

    /// The VNNI tile's prefetch of the next weight micro-panel: its k group `g` (two lines) into L2 while
    /// `g < next_groups` (see [`vnni`]; the driver gives a block's first tile all of it, two lines per k group).
    ///
    /// # Safety
    /// The CPU has SSE (every x86-64 does).
    #[inline(always)]
    unsafe fn prefetch_next(next: *const i8, g: usize, next_groups: usize) {
        if g < next_groups {
            // SAFETY: prefetches never fault (the addresses are computed with wrapping arithmetic).
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(g * 128));
                _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(g * 128 + 64));
            }
        }
    }

    /// The AVX2 `vpmaddubsw` tiles' k loop: `step(g, s)` adds k group `g` (128 weight bytes at `b + 128·g`) into the
    /// accumulators `s`, two groups a turn, each turn prefetching its weights (with `stream` [`GEMV_AHEAD`] bytes
    /// ahead into L2, else 1 KiB ahead into L1) and its share of the next micro-panel ([`PacedPrefetch`]).
    ///
    /// Why two groups a turn, and `stream` a constant of each loop: per k group and 2-row tile the multiplies are 16
    /// of about 40 operations, the rest loads, prefetches and the loop's own (the `stream` test, the prefetch pacing,
    /// the counter), which compete with them for the core's dispatch. This against one group a turn with the test
    /// inside (both in one process, interleaved, 25 rounds, Zen 3, medians of the per-round ratios, 4096 × 4096):
    /// quiet, where the tile runs at its multiply ports' peak (~84 GMAC/s, 32 per cycle), the same (0.98-1.03×,
    /// 7-bit and 8-bit tiles, M = 1 to 128, one and two threads); in a slow phase of this virtual machine (both at
    /// ~55-70 % of their quiet rate: the core shared), 7-bit tile, 1.13-1.26× at M = 16 and 128 (one thread, two
    /// runs) and 1.09-1.12× (two threads).
    ///
    /// # Safety
    /// `step` reads what the tile's contract allows for `g < kg`; the CPU has AVX2 (prefetches never fault).
    #[inline(always)]
    unsafe fn avx2_k_loop<S, const MR: usize>(
        kg: usize,
        b: *const i8,
        next: *const i8,
        next_groups: usize,
        stream: bool,
        s: &mut [[__m256i; 4]; MR],
        step: S,
    ) where
        S: Fn(usize, &mut [[__m256i; 4]; MR]),
    {
        #[inline(always)]
        fn turns<S, const MR: usize, const STREAM: bool>(
            kg: usize,
            b: *const i8,
            mut ahead: PacedPrefetch,
            s: &mut [[__m256i; 4]; MR],
            step: S,
        ) where
            S: Fn(usize, &mut [[__m256i; 4]; MR]),
        {
            let mut g = 0;
            while g + 2 <= kg {
                let bp = b.wrapping_add(g * 128);
                // SAFETY: SSE is on every x86-64.
                unsafe {
                    prefetch_group::<GEMV_AHEAD>(bp, STREAM);
                    prefetch_group::<GEMV_AHEAD>(bp.wrapping_add(128), STREAM);
                }
                ahead.tick();
                ahead.tick();
                step(g, s);
                step(g + 1, s);
                g += 2;
            }
            if g < kg {
                ahead.tick();
                step(g, s);
            }
        }
        let ahead = PacedPrefetch::new(next, next_groups, kg);
        if stream {
            turns::<S, MR, true>(kg, b, ahead, s, step)
        } else {
            turns::<S, MR, false>(kg, b, ahead, s, step)
        }
    }

    /// An AVX2 tile's share of the next weight micro-panel (`groups` k groups from `next`, two lines each) into L2,
    /// one line every [`PACE`](Self::PACE) k groups of the tile's own from its first, or evenly over all of them where
    /// the share has more lines than that leaves room for ([`tick`](Self::tick) once per group).
    ///
    /// Why paced: the driver shares the next micro-panel out over a block's 2-row panels, and each tile used to ask
    /// for its share as two lines per k group in its first groups: at M = 16 a burst of 64 lines from L3/DRAM at
    /// once, which the tile's own loads then queued behind. Probe of `int8_linear` (4096 × 4096, 7-bit activations,
    /// Zen 3, the variants interleaved in one process, 25 rounds, medians of the per-round ratios; the weights read
    /// from DRAM): paced against the burst M = 16 1.05-1.07× (one and two threads), 4096 × 11008 1.07×, M = 32 and
    /// M = 128 1.00×. Spread evenly over every tile's groups instead: M = 16 1.08×, but M = 128 0.94-0.96× (its
    /// tiles' shares are 8 lines, one every 32 groups: too late).
    pub(crate) struct PacedPrefetch {
        next: *const i8,
        lines: usize,
        /// The k groups over which the lines are spread: the tile's, or fewer at the pace.
        span: usize,
        /// `lines` per k group, counted in units of `span` (Bresenham's line: no division in the loop).
        credit: usize,
        line: usize,
    }

    impl PacedPrefetch {
        /// k groups of the tile's own per line of the next panel's: its own stream is 128 bytes a group, so this
        /// adds an eighth (at M = 16 the share is 64 lines of a 256-group tile: spread over all of it).
        const PACE: usize = 4;

        #[inline(always)]
        pub(crate) fn new(next: *const i8, groups: usize, kg: usize) -> Self {
            let lines = if next.is_null() { 0 } else { 2 * groups };
            let span = kg.min(Self::PACE * lines).max(1);
            // The first line is asked for with the tile's first k group.
            Self { next, lines, span, credit: span.saturating_sub(lines), line: 0 }
        }

        /// One k group of the tile: the lines of the share that are due by now (`lines / span` a group on average).
        #[inline(always)]
        pub(crate) fn tick(&mut self) {
            if self.line < self.lines {
                self.credit += self.lines;
                while self.credit >= self.span && self.line < self.lines {
                    // SAFETY: prefetches never fault (the address is computed with wrapping arithmetic), and SSE is
                    // on every x86-64.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(self.next.wrapping_add(self.line * 64)) };
                    self.line += 1;
                    self.credit -= self.span;
                }
            }
        }

        /// Lines asked for so far.
        #[cfg(test)]
        pub(crate) fn asked(&self) -> usize {
            self.line
        }
    }

    /// Stores an AVX2 tile's `MR` rows × 32 sums at `c` (row stride `ldc`): added to what is there with `acc`, else
    /// to `init` (per 8-column vector: the sign tile's activation shift, zero for the narrow tile).
    ///
    /// # Safety
    /// The CPU has AVX2; `c` holds `MR` rows of 32 at `ldc`.
    #[inline(always)]
    unsafe fn store_avx2_tile<const MR: usize>(s: &[[__m256i; 4]; MR], c: *mut i32, ldc: usize, acc: bool, init: [__m256i; 4]) {
        unsafe {
            for v in 0..4 {
                for r in 0..MR {
                    let p = c.add(r * ldc + 8 * v) as *mut __m256i;
                    let base = if acc { _mm256_loadu_si256(p) } else { init[v] };
                    _mm256_storeu_si256(p, _mm256_add_epi32(base, s[r][v]));
                }
            }
        }
    }

    /// AVX2 kernel for activations of 7 bits (codes ≤ 127: `ActQuant`'s `reduce_range`), `MR` ≤
    /// [`super::MR_AVX2`] rows × 32 columns: plain `vpmaddubsw` on the u8 activations, whose i16 pair sum is then
    /// at most 2·127·128 = 32512 for every weight byte (-128 included): exact. `vpmaddwd` with ones widens the
    /// pairs to i32. Per row and 32 weight bytes: 3 operations, 2 of them multiplies, against [`avx2_sign`]'s 4
    /// (its `vpsignb` shares the multiply ports).
    ///
    /// `next`, `next_groups` and `stream`: as in [`avx2_sign`].
    ///
    /// # Safety
    /// As [`super::scalar`], the CPU has AVX2, and no activation byte exceeds 127.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn avx2_narrow<const MR: usize>(
        kg: usize,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
        acc: bool,
        next: *const i8,
        next_groups: usize,
        stream: bool,
    ) {
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut s = [[_mm256_setzero_si256(); 4]; MR];
            let step = |g: usize, s: &mut [[__m256i; 4]; MR]| {
                let (ag, bp) = (a.add(g * MR * 4), b.add(g * 128));
                let mut av = [_mm256_setzero_si256(); MR];
                for r in 0..MR {
                    av[r] = _mm256_set1_epi32((ag.add(r * 4) as *const i32).read_unaligned());
                }
                for v in 0..4 {
                    let w = _mm256_loadu_si256(bp.add(32 * v) as *const __m256i);
                    for r in 0..MR {
                        s[r][v] = _mm256_add_epi32(s[r][v], _mm256_madd_epi16(_mm256_maddubs_epi16(av[r], w), ones));
                    }
                }
            };
            avx2_k_loop(kg, b, next, next_groups, stream, &mut s, step);
            store_avx2_tile(&s, c, ldc, acc, [_mm256_setzero_si256(); 4]);
        }
    }

    /// AVX-512 VNNI kernel for `MR` ≤ 12 rows × 32 columns (2 × `MR` zmm accumulators).
    ///
    /// `next`, when `next_groups` is not 0, is the weight micro-panel the driver multiplies after this one (the
    /// driver gives all `kg` groups of 128 bytes to the first row panel's tile): its lines are prefetched into L2
    /// alongside, two per k group ([`prefetch_next`]), so that it arrives from L3/DRAM while this tile computes
    /// instead of stalling the next tile's first row panel.
    ///
    /// `stream`: the weights are read once, in memory order, from DRAM (the driver's small-M blocks): the tile
    /// then prefetches [`STREAM_AHEAD`] bytes ahead into L2 instead of 1 KiB ahead into L1 (see there).
    ///
    /// # Safety
    /// As [`super::scalar`], and the CPU has AVX-512F/BW and AVX512-VNNI; `next` is null or points into an
    /// allocation (prefetch addresses past the end are computed with wrapping arithmetic and never fault).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn vnni<const MR: usize>(
        kg: usize,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
        acc: bool,
        next: *const i8,
        next_groups: usize,
        stream: bool,
        epi: Option<&TileAt>,
    ) {
        unsafe {
            let mut s = [[_mm512_setzero_si512(); 2]; MR];
            let mut ap = a;
            let mut bp = b;
            for g in 0..kg {
                // The output tile's lines, requested for writing one per k group at the start of the K loop so
                // that they arrive while the tile computes (see [`prefetch_tile_line`]).
                if g < 2 * MR {
                    prefetch_tile_line(c, ldc, g);
                }
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                prefetch_group::<STREAM_AHEAD>(bp, stream);
                prefetch_next(next, g, next_groups);
                for r in 0..MR {
                    let av = _mm512_set1_epi32((ap.add(r * 4) as *const i32).read_unaligned());
                    s[r][0] = _mm512_dpbusd_epi32(s[r][0], av, b0);
                    s[r][1] = _mm512_dpbusd_epi32(s[r][1], av, b1);
                }
                ap = ap.add(MR * 4);
                bp = bp.add(128);
            }
            store_tile::<MR, 2>(&spill(&s), c, ldc, acc, epi, 0);
        }
    }

    /// `s` copied into a fresh array, element by element. Why: the epilogue's row loop ([`finish_tile`]) is not
    /// unrolled, so the array it reads lives on the stack; handed `s` itself, the tile kept `s` there too, zeroed
    /// by a `memset` call of `2 · MR` vectors at every tile's start (1 % of a BERT-base forward's `perf` samples,
    /// one thread), although the K loop runs in registers and overwrites it. A copy made at the end lets `s` stay
    /// a set of registers from the start, and only the copy is written to the stack, once.
    #[inline(always)]
    fn spill<const MR: usize, const H: usize>(s: &[[__m512i; H]; MR]) -> [[__m512i; H]; MR] {
        let mut out = std::mem::MaybeUninit::<[[__m512i; H]; MR]>::uninit();
        let p = out.as_mut_ptr() as *mut __m512i;
        for r in 0..MR {
            for h in 0..H {
                // SAFETY: `r · H + h` < `MR · H`, the array's length in vectors.
                unsafe { p.add(r * H + h).write(s[r][h]) };
            }
        }
        // SAFETY: every element was written above.
        unsafe { out.assume_init() }
    }

    /// How far ahead (bytes of the panel, whose 64-byte halves the tile reads every other line of) the tall tile
    /// prefetches its weight stream into L2: 64 lines of the half it reads.
    pub(crate) const TALL_AHEAD: usize = 8192;

    /// AVX-512 VNNI kernel for 13 ≤ `MR` ≤ [`super::MR_TALL`] rows: the 32-column panel as two halves of 16
    /// columns, each over the whole of `kg`, with one zmm accumulator per row. Each 64-byte weight vector is
    /// loaded once and feeds all `MR` rows.
    ///
    /// Why: the 32-column tile holds 2 × `MR` accumulators, so at most 12 rows (of 32 registers); 13 to 24 rows
    /// were two row panels (e.g. 8 + 8 at M = 16; 25 to 28 rows three), the first streaming each weight panel from
    /// DRAM at twice the rate the whole product consumes it (128 bytes per 16 `vpdpbusd` at 8 rows: ~27 GB/s a
    /// core at the VNNI peak; two cores in that phase at once ask for more than the memory's 30-43 GB/s) and the
    /// second re-reading it from L2 while the memory idled. Here every weight line is read once, at one rate: 64
    /// bytes per `MR` `vpdpbusd` (at M = 16, ~13.5 GB/s a core at the peak). Each row's activation word is
    /// broadcast twice (once per half) instead of once.
    ///
    /// Measured: one thread is bound by `vpdpbusd` either way (M = 16 at 91-97 % of the register peak with the weights
    /// hot or cold on a lightly loaded core, within ±5 % of the two-panel tiling, `examples/small_m`); the two-thread
    /// regime that this is for (both cores streaming) has to be judged on a quiet machine (`bench/gemm.py`'s row "no
    /// tall tile", `THREADS=2` with `small_m`).
    ///
    /// The weights are read once, in memory order within each half: used by the driver's small-M blocks only,
    /// where every tile sees the whole of K. Prefetched [`TALL_AHEAD`] bytes ahead into L2, the prefetch turning
    /// at each half's end to the start of the next half (the second half's lines, then the next panel's first
    /// half) rather than running on past it: a plain read of 16.8 MB in this order (every other line of each
    /// 128 KiB panel, then the others; one thread, thread CPU time, memory-bound) ran at 20.7-22.8 GB/s with the
    /// first half's turn against 18.0-20.8 without (the six of nine runs with the least load), and 25-34 GB/s in
    /// memory order. That read order is
    /// this tile's risk: when both cores stream, one core's read in it may fall below the ~13.5 GB/s it needs.
    ///
    /// # Safety
    /// As [`vnni`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn vnni_tall<const MR: usize>(
        kg: usize,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
        acc: bool,
        epi: Option<&TileAt>,
    ) {
        unsafe {
            // The prefetch passes the half's end `ahead` groups before the last and turns to the next half's start:
            // the first half's to the second's (byte 64), the second's to the next panel's first half.
            let ahead = (TALL_AHEAD / 128).min(kg);
            for h in 0..2 {
                let mut s = [[_mm512_setzero_si512(); 1]; MR];
                let mut ap = a;
                let mut bp = b.add(64 * h);
                let pf = bp.wrapping_add(TALL_AHEAD);
                let turned = pf.wrapping_sub(if h == 0 { 128 * kg - 64 } else { 64 });
                tall_steps::<MR>(&mut s, kg - ahead, &mut ap, &mut bp, pf);
                tall_steps::<MR>(&mut s, ahead, &mut ap, &mut bp, turned.wrapping_add(128 * (kg - ahead)));
                store_tile::<MR, 1>(&spill(&s), c, ldc, acc, epi, 16 * h);
            }
        }
    }

    /// `n` k groups of the tall tile's half at `bp` (activations at `ap`; both advanced), prefetching the line
    /// at `pf` and every 128 bytes after it.
    ///
    /// # Safety
    /// As [`vnni_tall`]; `pf` is only prefetched (it may point anywhere).
    #[inline(always)]
    unsafe fn tall_steps<const MR: usize>(
        s: &mut [[__m512i; 1]; MR],
        n: usize,
        ap: &mut *const u8,
        bp: &mut *const i8,
        mut pf: *const i8,
    ) {
        unsafe {
            let (mut a, mut b) = (*ap, *bp);
            for _ in 0..n {
                let w = _mm512_loadu_si512(b as *const __m512i);
                _mm_prefetch::<_MM_HINT_T1>(pf);
                pf = pf.wrapping_add(128);
                for r in 0..MR {
                    let av = _mm512_set1_epi32((a.add(r * 4) as *const i32).read_unaligned());
                    s[r][0] = _mm512_dpbusd_epi32(s[r][0], av, w);
                }
                a = a.add(MR * 4);
                b = b.add(128);
            }
            (*ap, *bp) = (a, b);
        }
    }

    /// Stores the accumulators `s` (`MR` rows × `H` vectors of 16 columns) at column `c0` of the tile at `c`:
    /// finished in registers when `epi` is given (see [`finish_tile`]), else as i32 (added to what is there when
    /// `acc`).
    ///
    /// # Safety
    /// As [`vnni`]; `c0 + 16 H` ≤ 32.
    #[inline(always)]
    unsafe fn store_tile<const MR: usize, const H: usize>(
        s: &[[__m512i; H]; MR],
        c: *mut i32,
        ldc: usize,
        acc: bool,
        epi: Option<&TileAt>,
        c0: usize,
    ) {
        unsafe {
            if let Some(e) = epi {
                finish_tile::<MR, H>(s, c, ldc, e, c0);
                return;
            }
            for (r, sr) in s.iter().enumerate() {
                for (h, &v) in sr.iter().enumerate() {
                    let p = c.add(r * ldc + c0 + h * 16) as *mut __m512i;
                    let v = if acc { _mm512_add_epi32(_mm512_loadu_si512(p), v) } else { v };
                    _mm512_storeu_si512(p, v);
                }
            }
        }
    }

    /// Applies the float epilogue `e` to the accumulators `s` (`MR` rows × 32 columns, exact i32 products) and
    /// stores the f32 results at `c`: the operations of `epilogue_f32_body` in the same order (zero-point terms in
    /// wrapping i32, conversion, `sa · sw`, bias, activation), so the bits equal those of the pass over memory
    /// that it replaces. Why: that pass read the block back from L2 after the tiles had stored it (about 0.25 ns
    /// a value at BERT-base's shapes, one thread); here the values are in registers.
    ///
    /// # Safety
    /// As [`vnni`]; `e`'s pointers hold 32 columns and `MR` rows; `c` holds `MR` rows of 32 at `ldc`; the `H`
    /// vectors of each row are columns `c0 ..` `c0 + 16 H` ≤ 32.
    #[inline(always)]
    unsafe fn finish_tile<const MR: usize, const H: usize>(
        s: &[[__m512i; H]; MR],
        c: *mut i32,
        ldc: usize,
        e: &TileAt,
        c0: usize,
    ) {
        unsafe {
            let li = |p: *const i32, h: usize| _mm512_loadu_si512(p.add(c0 + 16 * h) as *const __m512i);
            let lf = |p: *const f32, h: usize| _mm512_loadu_ps(p.add(c0 + 16 * h));
            let cs: [__m512i; H] = std::array::from_fn(|h| li(e.colsum, h));
            let sw: [__m512; H] = std::array::from_fn(|h| lf(e.sw, h));
            let zw = (!e.zw.is_null()).then(|| -> [__m512i; H] { std::array::from_fn(|h| li(e.zw, h)) });
            let bias = (!e.bias.is_null()).then(|| -> [__m512; H] { std::array::from_fn(|h| lf(e.bias, h)) });
            for r in 0..MR {
                let za = _mm512_set1_epi32(*e.za.add(r));
                let sa = _mm512_set1_ps(*e.sa.add(r));
                for h in 0..H {
                    let mut v = s[r][h];
                    if let Some(zw) = zw {
                        v = _mm512_add_epi32(v, _mm512_mullo_epi32(zw[h], _mm512_set1_epi32(*e.r.add(r))));
                    }
                    v = _mm512_sub_epi32(v, _mm512_mullo_epi32(za, cs[h]));
                    let mut f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(sa, sw[h]));
                    if let Some(b) = bias {
                        f = _mm512_add_ps(f, b[h]);
                    }
                    let f = match e.act {
                        Activation::Identity => f,
                        Activation::Relu => {
                            // `relu`: x where x > 0 or NaN, else +0 (so -0 becomes +0, as there).
                            let keep = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(f, _mm512_setzero_ps());
                            _mm512_mask_blend_ps(keep, _mm512_setzero_ps(), f)
                        }
                        Activation::Gelu => gelu16(f),
                    };
                    _mm512_storeu_ps(c.add(r * ldc + c0 + 16 * h) as *mut f32, f);
                }
            }
        }
    }

    /// `super::super::epilogue::gelu` on 16 lanes, operation for operation (`clamp` as max/min: a NaN becomes
    /// -4 there instead of staying NaN, and the product with `x` makes the result NaN all the same).
    #[inline(always)]
    #[allow(clippy::excessive_precision)]
    unsafe fn gelu16(x: __m512) -> __m512 {
        unsafe {
            let c = _mm512_set1_ps;
            let t = _mm512_mul_ps(x, c(std::f32::consts::FRAC_1_SQRT_2));
            let t = _mm512_min_ps(_mm512_max_ps(t, c(-4.0)), c(4.0));
            let t2 = _mm512_mul_ps(t, t);
            let mut p = _mm512_fmadd_ps(t2, c(-2.72614225801306e-10), c(2.77068142495902e-08));
            p = _mm512_fmadd_ps(t2, p, c(-2.10102402082508e-06));
            p = _mm512_fmadd_ps(t2, p, c(-5.69250639462346e-05));
            p = _mm512_fmadd_ps(t2, p, c(-7.34990630326855e-04));
            p = _mm512_fmadd_ps(t2, p, c(-2.95459980854025e-03));
            p = _mm512_fmadd_ps(t2, p, c(-1.60960333262415e-02));
            let mut q = _mm512_fmadd_ps(t2, c(-1.45660718464996e-05), c(-2.13374055278905e-04));
            q = _mm512_fmadd_ps(t2, q, c(-1.68282697438203e-03));
            q = _mm512_fmadd_ps(t2, q, c(-7.37332916720468e-03));
            q = _mm512_fmadd_ps(t2, q, c(-1.42647390514189e-02));
            let erf = _mm512_div_ps(_mm512_mul_ps(t, p), q);
            let erf = _mm512_min_ps(_mm512_max_ps(erf, c(-1.0)), c(1.0));
            _mm512_mul_ps(_mm512_mul_ps(c(0.5), x), _mm512_add_ps(c(1.0), erf))
        }
    }

    /// Prefetches line `h` (row `h / 2`, half `h % 2`) of an output tile for writing (`prefetchw`). Why: the
    /// tile's stores come after its whole K loop, and at BERT-base's M = 1024 with N = 2304-3072 the output (9-13
    /// MB of i32) is not in L2 when a tile stores it: the stores then wait for their lines from L3 at the end of
    /// every tile. Why one line per k group rather than all `2 · MR` at the tile's start: on Zen 4 the burst of 24
    /// write prefetches ahead of the first loads of A and B held the miss buffers those loads need (one thread,
    /// thread CPU time, `examples/gemm_parts`, four alternated runs at load 1.1-2.0: the product of 1024×768×2304
    /// 204-212 → 212-218 GMAC/s, 1024×768×3072 198-202 → 208-210, 1024×3072×768 unchanged; prefetching the next
    /// row panel's tile instead, half way through the K loop, was 2-5 % slower than this).
    ///
    /// # Safety
    /// None beyond the CPU having SSE (a prefetch never faults).
    #[inline(always)]
    unsafe fn prefetch_tile_line(c: *mut i32, ldc: usize, h: usize) {
        let p = c.wrapping_add((h / 2) * ldc + (h % 2) * 16) as *const i8;
        // SAFETY: prefetches do not fault.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(p) };
    }

    /// VNNI kernel for 1 or 2 rows: k groups split over two accumulator sets to hide `vpdpbusd` latency; the
    /// weights stream from DRAM (or L3), prefetched [`GEMV_AHEAD`] bytes ahead into L2 where the CPU wants it
    /// ([`crate::cpu::stream_prefetch_in_software`]: not on AMD, where it cost 12-26 % with the weights in L3).
    ///
    /// # Safety
    /// As [`vnni`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn vnni_small<const MR: usize>(
        kg: usize,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        ldc: usize,
        acc: bool,
        epi: Option<&TileAt>,
    ) {
        unsafe {
            let pf = crate::cpu::stream_prefetch_in_software();
            let mut s = [[_mm512_setzero_si512(); 2]; MR];
            let mut t = [[_mm512_setzero_si512(); 2]; MR];
            let mut g = 0;
            while g + 2 <= kg {
                let bp = b.add(g * 128);
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                let b2 = _mm512_loadu_si512(bp.add(128) as *const __m512i);
                let b3 = _mm512_loadu_si512(bp.add(192) as *const __m512i);
                if pf {
                    for l in 0..4 {
                        _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(GEMV_AHEAD + 64 * l));
                    }
                }
                for r in 0..MR {
                    let a0 = _mm512_set1_epi32((a.add(g * MR * 4 + r * 4) as *const i32).read_unaligned());
                    let a1 = _mm512_set1_epi32((a.add((g + 1) * MR * 4 + r * 4) as *const i32).read_unaligned());
                    s[r][0] = _mm512_dpbusd_epi32(s[r][0], a0, b0);
                    s[r][1] = _mm512_dpbusd_epi32(s[r][1], a0, b1);
                    t[r][0] = _mm512_dpbusd_epi32(t[r][0], a1, b2);
                    t[r][1] = _mm512_dpbusd_epi32(t[r][1], a1, b3);
                }
                g += 2;
            }
            if g < kg {
                let bp = b.add(g * 128);
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                for r in 0..MR {
                    let a0 = _mm512_set1_epi32((a.add(g * MR * 4 + r * 4) as *const i32).read_unaligned());
                    s[r][0] = _mm512_dpbusd_epi32(s[r][0], a0, b0);
                    s[r][1] = _mm512_dpbusd_epi32(s[r][1], a0, b1);
                }
            }
            for r in 0..MR {
                for h in 0..2 {
                    s[r][h] = _mm512_add_epi32(s[r][h], t[r][h]);
                }
            }
            store_tile::<MR, 2>(&spill(&s), c, ldc, acc, epi, 0);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::x86::PacedPrefetch;

    /// A tile asks for each line of its share of the next micro-panel once: one every 4 k groups from its first
    /// while they fit, else evenly over all its groups (half of them, give or take one, by the middle), also where the
    /// share has more lines than the tile has groups; a null `next` asks for none.
    #[test]
    fn a_tile_asks_for_its_share_of_the_next_panel_at_a_pace_or_evenly_over_its_k_groups() {
        let next = 4096 as *const i8; // only prefetched: any address
        for (groups, kg) in [(32, 256), (4, 256), (3, 256), (86, 256), (128, 256), (200, 256), (300, 256), (5, 7), (1, 1), (0, 9)] {
            let lines = 2 * groups;
            let mut ahead = PacedPrefetch::new(next, groups, kg);
            let mut asked = Vec::new();
            for _ in 0..kg {
                ahead.tick();
                asked.push(ahead.asked());
            }
            assert_eq!(ahead.asked(), lines, "{groups} groups over {kg}");
            if 4 * lines <= kg {
                let paced = (1..=kg).map(|g| g.div_ceil(4).min(lines)).collect::<Vec<_>>();
                assert_eq!(asked, paced, "{groups} groups over {kg}: one line every 4 groups");
            } else if kg >= 2 {
                let middle = asked[kg / 2 - 1];
                assert!(middle.abs_diff(lines * (kg / 2) / kg) <= 1, "{groups} groups over {kg}: {middle} by the middle");
            }
        }
        let mut none = PacedPrefetch::new(std::ptr::null(), 32, 256);
        (0..256).for_each(|_| none.tick());
        assert_eq!(none.asked(), 0);
    }
}
