//! SIMD pass 2 of the radix select: compare 8/16 lanes against the selected high bin at once and only
//! touch the histogram for matching lanes (a small fraction of all entries).
use crate::cpu::Isa;
use crate::simd::abs_bits;

/// Bins of pass 2: the low 16 bits of |x| inside the selected high bin.
pub(crate) const LO_BINS: usize = 1 << 16;

/// Adds the low 16 bits of |x| of the entries whose high 16 bits equal `hi` to `h` (65536 bins).
pub(crate) fn hist_lo(isa: Isa, x: &[f32], hi: u32, h: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `cpu::set_isa` only activates ISAs that this CPU supports.
        Isa::Avx512 => return unsafe { x86::hist_lo_avx512(x, hi, h) },
        Isa::Avx2 => return unsafe { x86::hist_lo_avx2(x, hi, h) },
        Isa::Scalar => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    hist_lo_scalar(x, hi, h)
}

/// Scalar pass 2 (ground truth of the SIMD versions below).
#[inline(always)]
pub(crate) fn hist_lo_scalar(x: &[f32], hi: u32, h: &mut [u32]) {
    let h: &mut [u32; LO_BINS] = h.try_into().expect("histogram size");
    for &v in x {
        let b = abs_bits(v);
        if b >> 16 == hi {
            h[(b & 0xffff) as usize] += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::hist_lo_scalar;
    use super::LO_BINS;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn bump(h: &mut [u32; LO_BINS], v: f32) {
        h[(v.to_bits() & 0xffff) as usize] += 1;
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,popcnt,bmi1,bmi2")]
    pub(super) fn hist_lo_avx512(x: &[f32], hi: u32, h: &mut [u32]) {
        let hh: &mut [u32; LO_BINS] = (&mut *h).try_into().expect("histogram size");
        let absm = _mm512_set1_epi32(0x7fff_ffff);
        let bin = _mm512_set1_epi32(hi as i32);
        let mut blocks = x.chunks_exact(32);
        for c in &mut blocks {
            // SAFETY: `c` has 32 elements, two unaligned 16-lane loads stay inside it.
            let (a, b) = unsafe { (_mm512_loadu_ps(c.as_ptr()), _mm512_loadu_ps(c.as_ptr().add(16))) };
            let a = _mm512_srli_epi32::<16>(_mm512_and_si512(_mm512_castps_si512(a), absm));
            let b = _mm512_srli_epi32::<16>(_mm512_and_si512(_mm512_castps_si512(b), absm));
            let m = (_mm512_cmpeq_epi32_mask(a, bin) as u32) | ((_mm512_cmpeq_epi32_mask(b, bin) as u32) << 16);
            let mut m = m;
            while m != 0 {
                bump(hh, c[m.trailing_zeros() as usize]);
                m &= m - 1;
            }
        }
        hist_lo_scalar(blocks.remainder(), hi, h)
    }

    #[target_feature(enable = "avx2,fma,popcnt,bmi1,bmi2")]
    pub(super) fn hist_lo_avx2(x: &[f32], hi: u32, h: &mut [u32]) {
        let hh: &mut [u32; LO_BINS] = (&mut *h).try_into().expect("histogram size");
        let absm = _mm256_set1_epi32(0x7fff_ffff);
        let bin = _mm256_set1_epi32(hi as i32);
        let mut blocks = x.chunks_exact(16);
        for c in &mut blocks {
            // SAFETY: `c` has 16 elements, two unaligned 8-lane loads stay inside it.
            let (a, b) = unsafe { (_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(c.as_ptr().add(8))) };
            let a = _mm256_srli_epi32::<16>(_mm256_and_si256(_mm256_castps_si256(a), absm));
            let b = _mm256_srli_epi32::<16>(_mm256_and_si256(_mm256_castps_si256(b), absm));
            let ma = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a, bin))) as u32;
            let mb = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(b, bin))) as u32;
            let mut m = ma | (mb << 8);
            while m != 0 {
                bump(hh, c[m.trailing_zeros() as usize]);
                m &= m - 1;
            }
        }
        hist_lo_scalar(blocks.remainder(), hi, h)
    }
}
