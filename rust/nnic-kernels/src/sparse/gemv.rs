//! Batch-1 kernels: one dot product per output row, `Σ_j v_j · x[col_j]`, with the x values gathered.
//!
//! The row's values and indices stream from memory once (this is the memory-bound decode case); `x` stays in
//! L1. AVX-512 gathers 16 lanes and AVX2 8 per instruction, two accumulators deep; N:M rows compute their
//! columns from the nibbles in registers when the slots of a vector cover whole groups (`16 % n == 0`, resp.
//! `8 % n == 0`), and on AVX-512 pick them from two loaded vectors by a permute instead of a gather when a
//! block spans at most 32 inputs (`m <= 2n`: 2:4, 4:8, 1:2); other patterns run the portable loop.
use super::{row_chunks, Epilogue, OutPtr, RowCols, SparseLinear, Values};
use crate::cpu::Isa;
use crate::gemm::par;

/// Portable dot product of one row (the readable ground truth of the SIMD versions).
fn dot_scalar<V: Copy + Into<f32>>(x: &[f32], cols: &RowCols<'_>, vals: &[V]) -> f32 {
    let mut acc = [0f32; 4];
    match cols {
        RowCols::Csr(cs) => {
            for (j, (&c, &v)) in cs.iter().zip(vals).enumerate() {
                acc[j & 3] += v.into() * x[c as usize];
            }
        }
        RowCols::Nm { n, m, idx } => {
            for (j, &v) in vals.iter().enumerate() {
                let c = (j / n) * m + super::nm::nibble(idx, j) as usize;
                acc[j & 3] += v.into() * x[c];
            }
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::nm::nibble;
    use std::arch::x86_64::*;

    /// Prefetches the cache lines from [`PF_AHEAD`] bytes after `p` to `PF_AHEAD + span` (one per 64 bytes, at
    /// least one): the batch-1 kernels stream their compressed weights once, and on the machine they were
    /// measured on the hardware prefetchers alone kept them at half the bandwidth a dense GEMV reaches (2:4,
    /// 4096x4096, one thread: 3.7 ms without, 1.8 ms with). Prefetches never fault, so reading past the end is
    /// harmless; the address is formed with `wrapping_add` for the same reason.
    #[inline(always)]
    unsafe fn pf<T>(p: *const T, span: usize) {
        let base = (p as *const i8).wrapping_add(PF_AHEAD);
        let mut o = 0;
        loop {
            // SAFETY: a prefetch does not access memory architecturally.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(o)) };
            o += 64;
            if o >= span {
                break;
            }
        }
    }

    /// How far ahead [`pf`] fetches: about 2 KB keeps a single core's stream at the dense GEMV's bandwidth.
    const PF_AHEAD: usize = 2048;

    /// 16 values as f32 (from f32 or i8), `mask` lanes (others 0).
    pub(super) trait Load16: Copy {
        unsafe fn load16(p: *const Self, mask: __mmask16) -> __m512;
        /// `popcount(mask)` packed values from `p`, spread to the set lanes of `mask` (others 0).
        unsafe fn expand16(p: *const Self, mask: __mmask16) -> __m512;
        /// The same, reading 16 values at `p` (all must be readable): no popcount, no mask transfer.
        unsafe fn expand16_wide(p: *const Self, mask: __mmask16) -> __m512;
        unsafe fn load8(p: *const Self) -> __m256;
        fn f(self) -> f32;
    }
    impl Load16 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32, mask: __mmask16) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(mask, p) }
        }
        #[inline(always)]
        unsafe fn expand16(p: *const f32, mask: __mmask16) -> __m512 {
            // A masked load and a register expand: the memory-source expand is several times slower.
            let packed = ((1u32 << mask.count_ones()) - 1) as __mmask16;
            unsafe { _mm512_maskz_expand_ps(mask, _mm512_maskz_loadu_ps(packed, p)) }
        }
        #[inline(always)]
        unsafe fn expand16_wide(p: *const f32, mask: __mmask16) -> __m512 {
            unsafe { _mm512_maskz_expand_ps(mask, _mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        fn f(self) -> f32 {
            self
        }
    }
    impl Load16 for i8 {
        #[inline(always)]
        unsafe fn load16(p: *const i8, mask: __mmask16) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p))) }
        }
        #[inline(always)]
        unsafe fn expand16(p: *const i8, mask: __mmask16) -> __m512 {
            let n = mask.count_ones();
            let packed = ((1u32 << n) - 1) as __mmask16;
            unsafe { _mm512_maskz_expand_ps(mask, Self::load16(p, packed)) }
        }
        #[inline(always)]
        unsafe fn expand16_wide(p: *const i8, mask: __mmask16) -> __m512 {
            unsafe { _mm512_maskz_expand_ps(mask, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const i8) -> __m256 {
            unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
        }
        #[inline(always)]
        fn f(self) -> f32 {
            self as f32
        }
    }

    /// CSR row, AVX-512.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn csr_avx512<V: Load16>(x: &[f32], cols: &[u16], vals: &[V]) -> f32 {
        let n = cols.len().min(vals.len());
        let (cp, vp, xp) = (cols.as_ptr(), vals.as_ptr(), x.as_ptr());
        // SAFETY: every index read is < n; gathered columns are < x.len() (checked when the layout was built).
        unsafe {
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut j = 0;
            while j + 32 <= n {
                pf(vp.add(j), 128); // values: 16 to 128 bytes per step
                pf(cp.add(j), 0);
                let i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(cp.add(j) as *const __m256i));
                let i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(cp.add(j + 16) as *const __m256i));
                let x0 = _mm512_i32gather_ps::<4>(i0, xp);
                let x1 = _mm512_i32gather_ps::<4>(i1, xp);
                a0 = _mm512_fmadd_ps(x0, V::load16(vp.add(j), 0xffff), a0);
                a1 = _mm512_fmadd_ps(x1, V::load16(vp.add(j + 16), 0xffff), a1);
                j += 32;
            }
            while j < n {
                let k: __mmask16 = if n - j >= 16 { 0xffff } else { (1u16 << (n - j)) - 1 };
                let i0 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, cp.add(j) as *const i16));
                let x0 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), k, i0, xp);
                a0 = _mm512_fmadd_ps(x0, V::load16(vp.add(j), k), a0);
                j += 16;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }
    }

    /// CSR row from its bitmask, AVX-512: per 16 inputs, the stored values are expanded into their lanes under
    /// the row's 16 mask bits and multiplied with 16 contiguous x values (no gather; the bitmask costs k/8 bytes).
    /// Value offsets come from popcounts of one 64-bit mask word per 64 inputs, so the 4 blocks of a word are
    /// independent.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
    pub(super) unsafe fn bitmask_avx512<V: Load16>(x: &[f32], bits: &[u8], vals: &[V], slack: usize) -> f32 {
        let k = x.len();
        let (bp, xp) = (bits.as_ptr(), x.as_ptr());
        let mut vp = vals.as_ptr();
        // Values that 16-wide loads may read: the row's, and `slack` more after it (the next rows').
        let readable = vals.len() + slack;
        // SAFETY: a block reads x[c..c+16] (masked at the end), bits inside the row's ceil(k/8) bytes, and values
        // inside the row (masked) or, for the unmasked loads, within `readable`.
        unsafe {
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            let mut used = 0usize;
            while c + 64 <= k {
                pf(vp, 192);
                pf(bp.add(c / 8), 0);
                let word = (bp.add(c / 8) as *const u64).read_unaligned();
                let mp = bp.add(c / 8) as *const __mmask16;
                let o1 = (word & 0xffff).count_ones() as usize;
                let o2 = (word & 0xffff_ffff).count_ones() as usize;
                let o3 = (word & 0xffff_ffff_ffff).count_ones() as usize;
                if used + o3 + 16 <= readable {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c)), V::expand16_wide(vp, _load_mask16(mp)), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 16)), V::expand16_wide(vp.add(o1), _load_mask16(mp.add(1))), a1);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 32)), V::expand16_wide(vp.add(o2), _load_mask16(mp.add(2))), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 48)), V::expand16_wide(vp.add(o3), _load_mask16(mp.add(3))), a1);
                } else {
                    let m = |s: u32| ((word >> s) & 0xffff) as __mmask16;
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c)), V::expand16(vp, m(0)), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 16)), V::expand16(vp.add(o1), m(16)), a1);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 32)), V::expand16(vp.add(o2), m(32)), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(c + 48)), V::expand16(vp.add(o3), m(48)), a1);
                }
                let n = word.count_ones() as usize;
                vp = vp.add(n);
                used += n;
                c += 64;
            }
            while c < k {
                let rem = (k - c).min(16);
                let mut word = 0u32;
                for b in 0..rem.div_ceil(8) {
                    word |= (*bp.add(c / 8 + b) as u32) << (8 * b);
                }
                let m = (word & ((1u32 << rem) - 1)) as __mmask16;
                let xv = _mm512_maskz_loadu_ps(((1u32 << rem) - 1) as __mmask16, xp.add(c));
                a0 = _mm512_fmadd_ps(xv, V::expand16(vp, m), a0);
                vp = vp.add(m.count_ones() as usize);
                c += 16;
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }
    }

    /// Σ codes · u8 activation codes of one row from its bitmask, AVX-512 VBMI2 + VNNI: per 64 inputs the packed
    /// int8 codes are expanded into their byte lanes under the 64 mask bits (`vpexpandb`) and multiplied with 64
    /// contiguous u8 activation codes by `vpdpbusd` (4 products per i32 lane). Reads 1/8 + 1 byte per stored
    /// code, no gather; exact (|Σ| < 2^31 for k ≤ 65 536: 255 · 128 · 2^16 < 2^31).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,avx512vnni,popcnt")]
    pub(super) unsafe fn bitmask_vnni(xq: &[u8], bits: &[u8], vals: &[i8], slack: usize) -> i32 {
        let k = xq.len();
        let (bp, xp) = (bits.as_ptr(), xq.as_ptr());
        let mut vp = vals.as_ptr();
        let low = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        // Codes that 64-byte loads may read: the row's, and `slack` more after it (the next rows').
        let readable = vals.len() + slack;
        // SAFETY: x and bit reads stay inside the row's k codes and ceil(k/8) bytes (the tail is masked / read
        // byte by byte); value reads are masked to the row's codes, or unmasked within `readable`.
        unsafe {
            let load = |p: *const i8, used: usize, n: usize| {
                if used + 64 <= readable {
                    _mm512_loadu_si512(p as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi8(low(n), p)
                }
            };
            let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut c = 0;
            let mut used = 0usize;
            // 256 inputs per step: four words, their value offsets from popcounts, four independent expands
            while c + 256 <= k {
                pf(vp, 256);
                pf(bp.add(c / 8), 0);
                let wp = bp.add(c / 8) as *const u64;
                let (w0, w1, w2, w3) = (wp.read_unaligned(), wp.add(1).read_unaligned(), wp.add(2).read_unaligned(), wp.add(3).read_unaligned());
                let o1 = w0.count_ones() as usize;
                let o2 = o1 + w1.count_ones() as usize;
                let o3 = o2 + w2.count_ones() as usize;
                let n = o3 + w3.count_ones() as usize;
                let (v0, v1, v2, v3) = if used + o3 + 64 <= readable {
                    let l = |o: usize| _mm512_loadu_si512(vp.add(o) as *const __m512i);
                    (l(0), l(o1), l(o2), l(o3))
                } else {
                    (load(vp, used, o1), load(vp.add(o1), used + o1, o2 - o1), load(vp.add(o2), used + o2, o3 - o2), load(vp.add(o3), used + o3, n - o3))
                };
                let xl = |o: usize| _mm512_loadu_si512(xp.add(c + o) as *const __m512i);
                a0 = _mm512_dpbusd_epi32(a0, xl(0), _mm512_maskz_expand_epi8(w0, v0));
                a1 = _mm512_dpbusd_epi32(a1, xl(64), _mm512_maskz_expand_epi8(w1, v1));
                a0 = _mm512_dpbusd_epi32(a0, xl(128), _mm512_maskz_expand_epi8(w2, v2));
                a1 = _mm512_dpbusd_epi32(a1, xl(192), _mm512_maskz_expand_epi8(w3, v3));
                vp = vp.add(n);
                used += n;
                c += 256;
            }
            while c < k {
                let rem = (k - c).min(64);
                let mut word = 0u64;
                for b in 0..rem.div_ceil(8) {
                    word |= (*bp.add(c / 8 + b) as u64) << (8 * b);
                }
                word &= low(rem);
                let n = word.count_ones() as usize;
                let v = _mm512_maskz_expand_epi8(word, _mm512_maskz_loadu_epi8(low(n), vp));
                a0 = _mm512_dpbusd_epi32(a0, _mm512_maskz_loadu_epi8(low(rem), xp.add(c) as *const i8), v);
                vp = vp.add(n);
                c += 64;
            }
            _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1))
        }
    }

    /// CSR row, AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn csr_avx2<V: Load16>(x: &[f32], cols: &[u16], vals: &[V]) -> f32 {
        let n = cols.len().min(vals.len());
        let (cp, vp, xp) = (cols.as_ptr(), vals.as_ptr(), x.as_ptr());
        // SAFETY: as in `csr_avx512`.
        unsafe {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            while j + 16 <= n {
                pf(vp.add(j), 64);
                pf(cp.add(j), 0);
                let i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(cp.add(j) as *const __m128i));
                let i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(cp.add(j + 8) as *const __m128i));
                let x0 = _mm256_i32gather_ps::<4>(xp, i0);
                let x1 = _mm256_i32gather_ps::<4>(xp, i1);
                a0 = _mm256_fmadd_ps(x0, V::load8(vp.add(j)), a0);
                a1 = _mm256_fmadd_ps(x1, V::load8(vp.add(j + 8)), a1);
                j += 16;
            }
            let mut tail = 0f32;
            while j < n {
                tail += (*vp.add(j)).f() * *xp.add(*cp.add(j) as usize);
                j += 1;
            }
            hsum256(_mm256_add_ps(a0, a1)) + tail
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
        }
    }

    /// The 16 (or 8) nibbles of 8 (or 4) index bytes at `p` as bytes, low nibble first.
    #[inline(always)]
    unsafe fn nibbles(bytes: __m128i) -> __m128i {
        unsafe {
            let low = _mm_set1_epi8(0x0f);
            _mm_unpacklo_epi8(_mm_and_si128(bytes, low), _mm_and_si128(_mm_srli_epi16::<4>(bytes), low))
        }
    }

    /// `Σ_{j0 <= j < len} vals[j] · x[column of slot j]` for the slots after the last whole vector block.
    #[inline(always)]
    fn nm_tail<V: Load16>(x: &[f32], n: usize, m: usize, idx: &[u8], vals: &[V], j0: usize) -> f32 {
        (j0..vals.len()).map(|j| vals[j].f() * x[(j / n) * m + nibble(idx, j) as usize]).sum()
    }

    /// Lane `l`'s group start `(l / n) · m` for the 16 slots of one block (`n` a power of two).
    #[inline(always)]
    unsafe fn nm_base512(n: usize, m: usize) -> __m512i {
        unsafe {
            let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            _mm512_mullo_epi32(_mm512_srlv_epi32(lane, _mm512_set1_epi32(n.trailing_zeros() as i32)), _mm512_set1_epi32(m as i32))
        }
    }

    /// N:M row with `16 % n == 0`, AVX-512: slot `j` at column `(j / n) · m + nibble(j)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn nm_avx512<V: Load16>(x: &[f32], n: usize, m: usize, idx: &[u8], vals: &[V]) -> f32 {
        let len = vals.len();
        let (ip, vp, xp) = (idx.as_ptr(), vals.as_ptr(), x.as_ptr());
        // SAFETY: 16-slot blocks read 8 index bytes and 16 values inside the row; columns < k = x.len().
        unsafe {
            let base = nm_base512(n, m);
            let step = (16 / n * m) as i32;
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut off = base;
            let mut j = 0;
            while j + 32 <= len {
                pf(vp.add(j), 128);
                pf(ip.add(j / 2), 0);
                let n0 = _mm512_cvtepu8_epi32(nibbles(_mm_loadl_epi64(ip.add(j / 2) as *const __m128i)));
                let n1 = _mm512_cvtepu8_epi32(nibbles(_mm_loadl_epi64(ip.add(j / 2 + 8) as *const __m128i)));
                let off1 = _mm512_add_epi32(off, _mm512_set1_epi32(step));
                let x0 = _mm512_i32gather_ps::<4>(_mm512_add_epi32(off, n0), xp);
                let x1 = _mm512_i32gather_ps::<4>(_mm512_add_epi32(off1, n1), xp);
                a0 = _mm512_fmadd_ps(x0, V::load16(vp.add(j), 0xffff), a0);
                a1 = _mm512_fmadd_ps(x1, V::load16(vp.add(j + 16), 0xffff), a1);
                off = _mm512_add_epi32(off1, _mm512_set1_epi32(step));
                j += 32;
            }
            let tail = nm_tail(x, n, m, idx, vals, j);
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + tail
        }
    }

    /// N:M row with `16 % n == 0` and `m <= 2n`, AVX-512: a 16-slot block covers at most 32 consecutive inputs,
    /// loaded as two vectors and picked by one two-source permute (no gather).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn nm_perm_avx512<V: Load16>(x: &[f32], n: usize, m: usize, idx: &[u8], vals: &[V]) -> f32 {
        let len = vals.len();
        let (ip, vp, xp) = (idx.as_ptr(), vals.as_ptr(), x.as_ptr());
        let span = 16 / n * m; // inputs per block, in (16, 32]
        let hi_mask: __mmask16 = if span >= 32 { 0xffff } else { (1u16 << (span - 16)) - 1 };
        // SAFETY: a block's inputs [off, off + span) lie inside the row's k inputs; index/value reads as in
        // `nm_avx512`.
        unsafe {
            let base = nm_base512(n, m);
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut j = 0;
            let mut off = 0;
            while j + 32 <= len {
                pf(vp.add(j), 128);
                pf(ip.add(j / 2), 0);
                let n0 = _mm512_cvtepu8_epi32(nibbles(_mm_loadl_epi64(ip.add(j / 2) as *const __m128i)));
                let n1 = _mm512_cvtepu8_epi32(nibbles(_mm_loadl_epi64(ip.add(j / 2 + 8) as *const __m128i)));
                let x0 = _mm512_permutex2var_ps(
                    _mm512_loadu_ps(xp.add(off)),
                    _mm512_add_epi32(base, n0),
                    _mm512_maskz_loadu_ps(hi_mask, xp.add(off + 16)),
                );
                let x1 = _mm512_permutex2var_ps(
                    _mm512_loadu_ps(xp.add(off + span)),
                    _mm512_add_epi32(base, n1),
                    _mm512_maskz_loadu_ps(hi_mask, xp.add(off + span + 16)),
                );
                a0 = _mm512_fmadd_ps(x0, V::load16(vp.add(j), 0xffff), a0);
                a1 = _mm512_fmadd_ps(x1, V::load16(vp.add(j + 16), 0xffff), a1);
                off += 2 * span;
                j += 32;
            }
            let tail = nm_tail(x, n, m, idx, vals, j);
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + tail
        }
    }

    /// N:M row with `8 % n == 0`, AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn nm_avx2<V: Load16>(x: &[f32], n: usize, m: usize, idx: &[u8], vals: &[V]) -> f32 {
        let len = vals.len();
        let (ip, vp, xp) = (idx.as_ptr(), vals.as_ptr(), x.as_ptr());
        // SAFETY: as in `nm_avx512`, with 8-slot blocks reading 4 index bytes.
        unsafe {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let base = _mm256_mullo_epi32(_mm256_srlv_epi32(lane, _mm256_set1_epi32(n.trailing_zeros() as i32)), _mm256_set1_epi32(m as i32));
            let step = _mm256_set1_epi32((8 / n * m) as i32);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut off = base;
            let mut j = 0;
            while j + 16 <= len {
                pf(vp.add(j), 64);
                pf(ip.add(j / 2), 0);
                let b = _mm_loadl_epi64(ip.add(j / 2) as *const __m128i);
                let nb = nibbles(b);
                let n0 = _mm256_cvtepu8_epi32(nb);
                let n1 = _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(nb));
                let off1 = _mm256_add_epi32(off, step);
                let x0 = _mm256_i32gather_ps::<4>(xp, _mm256_add_epi32(off, n0));
                let x1 = _mm256_i32gather_ps::<4>(xp, _mm256_add_epi32(off1, n1));
                a0 = _mm256_fmadd_ps(x0, V::load8(vp.add(j)), a0);
                a1 = _mm256_fmadd_ps(x1, V::load8(vp.add(j + 8)), a1);
                off = _mm256_add_epi32(off1, step);
                j += 16;
            }
            let tail = nm_tail(x, n, m, idx, vals, j);
            hsum256(_mm256_add_ps(a0, a1)) + tail
        }
    }
}

/// The dot product of row `cols`/`vals` with `x` on the path `isa`.
#[inline]
fn dot<V: Copy + Into<f32> + DotSimd>(isa: Isa, x: &[f32], cols: &RowCols<'_>, vals: &[V]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `isa` is active, so the CPU supports it; index bounds were checked when the layout was built.
    unsafe {
        match (isa, cols) {
            (Isa::Avx512, RowCols::Csr(cs)) => return x86::csr_avx512(x, cs, V::cast(vals)),
            (Isa::Avx2, RowCols::Csr(cs)) => return x86::csr_avx2(x, cs, V::cast(vals)),
            (Isa::Avx512, RowCols::Nm { n, m, idx }) if 16 % n == 0 && *m <= 2 * n => {
                return x86::nm_perm_avx512(x, *n, *m, idx, V::cast(vals))
            }
            (Isa::Avx512, RowCols::Nm { n, m, idx }) if 16 % n == 0 => return x86::nm_avx512(x, *n, *m, idx, V::cast(vals)),
            (Isa::Avx512 | Isa::Avx2, RowCols::Nm { n, m, idx }) if 8 % n == 0 => return x86::nm_avx2(x, *n, *m, idx, V::cast(vals)),
            _ => {}
        }
    }
    dot_scalar(x, cols, vals)
}

/// The SIMD value types (f32, i8): a no-op view as the type the x86 kernels take.
trait DotSimd: Sized {
    #[cfg(target_arch = "x86_64")]
    type Simd: x86::Load16;
    #[cfg(target_arch = "x86_64")]
    fn cast(v: &[Self]) -> &[Self::Simd];
}
impl DotSimd for f32 {
    #[cfg(target_arch = "x86_64")]
    type Simd = f32;
    #[cfg(target_arch = "x86_64")]
    fn cast(v: &[f32]) -> &[f32] {
        v
    }
}
impl DotSimd for i8 {
    #[cfg(target_arch = "x86_64")]
    type Simd = i8;
    #[cfg(target_arch = "x86_64")]
    fn cast(v: &[i8]) -> &[i8] {
        v
    }
}

/// `out[i, r] = epilogue(dot(row r, x[i]))` for the `m` rows of `x`, output rows split over `threads`.
pub(super) fn run(isa: Isa, w: &SparseLinear, x: &[f32], m: usize, epi: &Epilogue<'_>, out: &mut [f32], threads: usize) {
    let (k, rows) = (w.in_features(), w.out_features());
    let chunks = row_chunks(w, threads);
    let o = OutPtr(out.as_mut_ptr());
    let bitmask = w.gemv_uses_bitmask(isa);
    let task = |t: usize| {
        #[allow(clippy::redundant_locals)]
        let o = o;
        let (r0, r1) = chunks[t];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            for r in r0..r1 {
                let (range, cols) = w.row(r);
                let acc = match (w.values(), bitmask) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `bitmask` implies the active ISA is AVX-512; the row's bits set range.len() bits.
                    (Values::F32(v), true) => unsafe { x86::bitmask_avx512(xi, w.row_bits(r), &v[range.clone()], v.len() - range.end) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    (Values::I8(v), true) => unsafe { x86::bitmask_avx512(xi, w.row_bits(r), &v[range.clone()], v.len() - range.end) },
                    (Values::F32(v), _) => dot(isa, xi, &cols, &v[range]),
                    (Values::I8(v), _) => dot(isa, xi, &cols, &v[range]),
                };
                // SAFETY: row r of output row i belongs to this task only.
                unsafe { *o.0.add(i * rows + r) = epi.apply(acc, i, r) };
            }
            // SAFETY: rows r0..r1 of output row i are this task's, all written above.
            unsafe { epi.activate(o.0.add(i * rows + r0), r1 - r0) };
        }
    };
    par::for_each(chunks.len(), threads, &task);
}

/// int8 codes times int8 activations at batch < [`super::GEMV_MAX_M`] with integer dot products on AVX-512 VNNI +
/// VBMI2 (see [`SparseLinear::gemv_uses_vnni`]): `xq` holds the u8 activation codes `q` of the `m` rows and
/// `zero` their zero points, so a row's `Σ c · (q - z) = Σ c · q - z · Σ c` is exact; then the epilogue.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn run_vnni(w: &SparseLinear, xq: &[u8], zero: &[i32], m: usize, epi: &Epilogue<'_>, out: &mut [f32], threads: usize) {
    let (k, rows) = (w.in_features(), w.out_features());
    let Values::I8(v) = w.values() else { unreachable!("run_vnni takes int8 values") };
    let sums = w.code_sums();
    let chunks = row_chunks(w, threads);
    let o = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        #[allow(clippy::redundant_locals)]
        let o = o;
        let (r0, r1) = chunks[t];
        for i in 0..m {
            let xi = &xq[i * k..(i + 1) * k];
            for (r, &sum) in (r0..r1).zip(&sums[r0..r1]) {
                let range = w.row(r).0;
                // SAFETY: the caller checked the CPU (gemv_uses_vnni); the row's bits set range.len() bits.
                let dot = unsafe { x86::bitmask_vnni(xi, w.row_bits(r), &v[range.clone()], v.len() - range.end) };
                let acc = dot as i64 - zero[i] as i64 * sum as i64;
                // SAFETY: row r of output row i belongs to this task only.
                unsafe { *o.0.add(i * rows + r) = epi.apply(acc as f32, i, r) };
            }
            // SAFETY: rows r0..r1 of output row i are this task's, all written above.
            unsafe { epi.activate(o.0.add(i * rows + r0), r1 - r0) };
        }
    };
    par::for_each(chunks.len(), threads, &task);
}
