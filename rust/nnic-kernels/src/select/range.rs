//! One pass of the sampled select: classify |x| bits against a range `(lo, hi]` estimated from a sample:
//! count entries below `lo` and equal to `lo` (vectorised compares and popcounts), and histogram only the
//! few entries inside the range. Most vectors have no entry in the range, so the pass runs at memory speed.
use crate::cpu::Isa;
use crate::simd::abs_bits;

/// Bins of a range histogram.
pub(crate) const BINS: usize = 1 << 16;

/// Counts of a pass (added to, so one value can accumulate several slices).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    /// Entries with |x| bits < lo.
    pub below: u64,
    /// Entries with |x| bits == lo.
    pub at_lo: u64,
    /// Largest |x| bits seen (> +inf bits means a NaN).
    pub max: u32,
}

/// The in-range entries themselves (|x| bits), kept while there are at most `cap` of them, so that the
/// k-th value can be picked from them instead of a second pass over the data.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    pub bits: Vec<u32>,
    pub cap: usize,
    /// More than `cap` entries were in range: `bits` is incomplete.
    pub overflow: bool,
}

impl Candidates {
    pub fn with_cap(cap: usize) -> Self {
        Candidates { bits: Vec::new(), cap, overflow: false }
    }

    #[inline]
    fn add(&mut self, b: &[u32]) {
        if !self.overflow {
            if self.bits.len() + b.len() > self.cap {
                self.overflow = true;
                self.bits = Vec::new();
            } else {
                self.bits.extend_from_slice(b);
            }
        }
    }
}

/// For every |x| bits `b`: `b < lo` and `b == lo` are counted, `lo < b <= hi` adds one to
/// `h[(b - lo - 1) >> shift]`. `h` has [`BINS`] bins and `(hi - lo - 1) >> shift < BINS`.
/// The in-range bits are also appended to `cand`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hist_range(isa: Isa, x: &[f32], lo: u32, hi: u32, shift: u32, h: &mut [u32], c: &mut Counts, cand: &mut Candidates) {
    debug_assert!(h.len() == BINS && (hi <= lo || ((hi - lo - 1) >> shift) < BINS as u32));
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `cpu::set_isa` only activates ISAs that this CPU supports.
        Isa::Avx512 => return unsafe { x86::hist_range_avx512(x, lo, hi, shift, h, c, cand) },
        Isa::Avx2 => return unsafe { x86::hist_range_avx2(x, lo, hi, shift, h, c, cand) },
        Isa::Scalar => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    hist_range_scalar(x, lo, hi, shift, h, c, cand)
}

/// The scalar pass (ground truth of the SIMD versions).
#[inline(always)]
pub(crate) fn hist_range_scalar(
    x: &[f32],
    lo: u32,
    hi: u32,
    shift: u32,
    h: &mut [u32],
    c: &mut Counts,
    cand: &mut Candidates,
) {
    let h: &mut [u32; BINS] = h.try_into().expect("histogram size");
    let (mut below, mut at, mut max) = (0u64, 0u64, c.max);
    for &v in x {
        let b = abs_bits(v);
        max = max.max(b);
        // Branch-free counts: `b < lo` is a coin flip near the median.
        below += (b < lo) as u64;
        at += (b == lo) as u64;
        if b > lo && b <= hi {
            h[(((b - lo - 1) >> shift) as usize) & (BINS - 1)] += 1;
            cand.add(&[b]);
        }
    }
    c.below += below;
    c.at_lo += at;
    c.max = max;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{hist_range_scalar, Candidates, Counts, BINS};
    use std::arch::x86_64::*;

    /// Histograms the in-range entries gathered in `buf` (by their bits above `lo`) and keeps them as candidates.
    #[inline(always)]
    fn flush(hh: &mut [u32; BINS], buf: &[u32], lo: u32, shift: u32, cand: &mut Candidates) {
        for &b in buf {
            hh[(((b - lo - 1) >> shift) as usize) & (BINS - 1)] += 1;
        }
        cand.add(buf);
    }

    /// Row `m`: the indices of the set bits of `m`, in order, then zeros (a left-packing permutation).
    static COMPRESS8: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut j, mut bit) = (0, 0);
            while bit < 8 {
                if m & (1 << bit) != 0 {
                    t[m][j] = bit as u32;
                    j += 1;
                }
                bit += 1;
            }
            m += 1;
        }
        t
    };

    // All |x| bits are below 2^31, so signed 32-bit compares order them correctly.

    /// Sum of the 16 u32 lanes (as u64: the lanes are counts).
    #[target_feature(enable = "avx512f")]
    fn lanes512(v: __m512i) -> u64 {
        let mut l = [0u32; 16];
        // SAFETY: `l` has room for 16 lanes.
        unsafe { _mm512_storeu_si512(l.as_mut_ptr() as *mut __m512i, v) };
        l.iter().map(|&x| x as u64).sum()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,popcnt,bmi1,bmi2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hist_range_avx512(
        x: &[f32],
        lo: u32,
        hi: u32,
        shift: u32,
        h: &mut [u32],
        c: &mut Counts,
        cand: &mut Candidates,
    ) {
        let hh: &mut [u32; BINS] = (&mut *h).try_into().expect("histogram size");
        let absm = _mm512_set1_epi32(0x7fff_ffff);
        let one = _mm512_set1_epi32(1);
        let (lov, hiv) = (_mm512_set1_epi32(lo as i32), _mm512_set1_epi32(hi as i32));
        let mut maxv = _mm512_setzero_si512();
        // Per-lane counters (a group has < 2^31 entries, so no lane overflows).
        let (mut below, mut at) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        // In-range entries are compressed (branch-free) into `buf`, then histogrammed per block.
        const BLOCK: usize = 2048;
        let mut buf = [0u32; BLOCK + 16];
        let mut blocks = x.chunks_exact(16);
        let mut len = 0usize;
        for (i, blk) in (&mut blocks).enumerate() {
            // SAFETY: `blk` has 16 elements.
            let v = _mm512_and_si512(_mm512_castps_si512(unsafe { _mm512_loadu_ps(blk.as_ptr()) }), absm);
            maxv = _mm512_max_epi32(maxv, v);
            below = _mm512_mask_add_epi32(below, _mm512_cmplt_epi32_mask(v, lov), below, one);
            at = _mm512_mask_add_epi32(at, _mm512_cmpeq_epi32_mask(v, lov), at, one);
            let inr = _mm512_cmpgt_epi32_mask(v, lov) & _mm512_cmple_epi32_mask(v, hiv);
            // SAFETY: len <= BLOCK, so 16 lanes fit in `buf` (BLOCK + 16 entries).
            unsafe { _mm512_storeu_si512(buf.as_mut_ptr().add(len) as *mut __m512i, _mm512_maskz_compress_epi32(inr, v)) };
            len += inr.count_ones() as usize;
            if i % (BLOCK / 16) == BLOCK / 16 - 1 {
                flush(hh, &buf[..len], lo, shift, cand);
                len = 0;
            }
        }
        flush(hh, &buf[..len], lo, shift, cand);
        c.below += lanes512(below);
        c.at_lo += lanes512(at);
        c.max = c.max.max(_mm512_reduce_max_epi32(maxv) as u32);
        hist_range_scalar(blocks.remainder(), lo, hi, shift, h, c, cand)
    }

    #[target_feature(enable = "avx2,fma,popcnt,bmi1,bmi2")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hist_range_avx2(
        x: &[f32],
        lo: u32,
        hi: u32,
        shift: u32,
        h: &mut [u32],
        c: &mut Counts,
        cand: &mut Candidates,
    ) {
        let hh: &mut [u32; BINS] = (&mut *h).try_into().expect("histogram size");
        let absm = _mm256_set1_epi32(0x7fff_ffff);
        let (lov, hiv) = (_mm256_set1_epi32(lo as i32), _mm256_set1_epi32(hi as i32));
        let mut maxv = _mm256_setzero_si256();
        // Per-lane counters: a true compare lane is -1, so subtracting it counts.
        let (mut below, mut at) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        const BLOCK: usize = 2048;
        let mut buf = [0u32; BLOCK + 8];
        let mut len = 0usize;
        let mut blocks = x.chunks_exact(8);
        for (i, blk) in (&mut blocks).enumerate() {
            // SAFETY: `blk` has 8 elements.
            let v = _mm256_and_si256(_mm256_castps_si256(unsafe { _mm256_loadu_ps(blk.as_ptr()) }), absm);
            maxv = _mm256_max_epi32(maxv, v);
            let gt_lo = _mm256_cmpgt_epi32(v, lov);
            let eq = _mm256_cmpeq_epi32(v, lov);
            below = _mm256_sub_epi32(below, _mm256_andnot_si256(_mm256_or_si256(gt_lo, eq), _mm256_set1_epi32(-1)));
            at = _mm256_sub_epi32(at, eq);
            let inr = _mm256_andnot_si256(_mm256_cmpgt_epi32(v, hiv), gt_lo);
            let inr = _mm256_movemask_ps(_mm256_castsi256_ps(inr)) as usize;
            // Branch-free compress: move the in-range lanes to the front with a permutation from a table.
            // SAFETY: the table row has 8 indices; len <= BLOCK, so 8 lanes fit in `buf`.
            unsafe {
                let idx = _mm256_loadu_si256(COMPRESS8[inr].as_ptr() as *const __m256i);
                _mm256_storeu_si256(buf.as_mut_ptr().add(len) as *mut __m256i, _mm256_permutevar8x32_epi32(v, idx));
            }
            len += inr.count_ones() as usize;
            if i % (BLOCK / 8) == BLOCK / 8 - 1 {
                flush(hh, &buf[..len], lo, shift, cand);
                len = 0;
            }
        }
        flush(hh, &buf[..len], lo, shift, cand);
        let lanes = |v: __m256i| {
            let mut l = [0u32; 8];
            // SAFETY: `l` has room for 8 lanes.
            unsafe { _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, v) };
            l
        };
        c.below += lanes(below).iter().map(|&x| x as u64).sum::<u64>();
        c.at_lo += lanes(at).iter().map(|&x| x as u64).sum::<u64>();
        c.max = c.max.max(lanes(maxv).into_iter().max().unwrap_or(0));
        hist_range_scalar(blocks.remainder(), lo, hi, shift, h, c, cand)
    }
}
