//! Streaming (non-temporal) output stores for large out-of-place kernels.
//!
//! A kernel whose output does not fit in cache pays a read of every output line before writing it
//! (write-allocate). Large outputs are therefore produced block by block into an L1-resident buffer by the
//! ordinary (vectorised) loop, then copied out with non-temporal stores that bypass the cache, as `memcpy`
//! does for large copies. The scalar ISA keeps plain stores.
use crate::cpu::Isa;

/// Outputs at least this large (bytes) use streaming stores.
pub(crate) const MIN_BYTES: usize = 16 << 20;
/// Bytes per staging block (fits L1 together with its input).
pub(crate) const BLOCK_BYTES: usize = 8 << 10;

/// Whether an output of `bytes` should be streamed with `isa`.
pub(crate) fn wanted(isa: Isa, bytes: usize) -> bool {
    isa != Isa::Scalar && bytes >= MIN_BYTES
}

/// Elements of `T` per staging block, rounded down to a multiple of `align` (at least `align`).
pub(crate) fn block_len<T>(align: usize) -> usize {
    (BLOCK_BYTES / std::mem::size_of::<T>() / align).max(1) * align
}

/// Runs `f(lo, hi, buf)` for consecutive element ranges of `out` of `per` elements (the last may be
/// shorter), where `f` fills `buf[..hi - lo]`; the buffer is then streamed to `out[lo..hi]`.
pub(crate) fn staged<T: Copy + Default>(isa: Isa, out: &mut [T], per: usize, mut f: impl FnMut(usize, usize, &mut [T])) {
    let mut buf = vec![T::default(); per];
    let mut lo = 0;
    while lo < out.len() {
        let hi = (lo + per).min(out.len());
        f(lo, hi, &mut buf[..hi - lo]);
        store(isa, &mut out[lo..hi], &buf[..hi - lo]);
        lo = hi;
    }
    fence(isa);
}

/// `dst.copy_from_slice(src)` with non-temporal stores where the ISA has them.
fn store<T: Copy>(isa: Isa, dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let bytes = std::mem::size_of_val(src);
        // SAFETY: the ranges have `bytes` bytes each, do not overlap (one is a &mut), and AVX2 is active.
        unsafe { x86::stream(dst.as_mut_ptr() as *mut u8, src.as_ptr() as *const u8, bytes) };
        return;
    }
    let _ = isa;
    dst.copy_from_slice(src)
}

/// Orders the streaming stores before anything that follows (another thread may read the output next).
fn fence(isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: SSE is part of x86-64.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = isa;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// `dst` and `src` valid for `len` bytes, not overlapping; the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream(dst: *mut u8, src: *const u8, len: usize) {
        let head = dst.align_offset(32).min(len);
        // SAFETY: all offsets stay below `len`; stores at `dst + i` are 32-byte aligned after the head.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, head);
            let mut i = head;
            while i + 32 <= len {
                let v = _mm256_loadu_si256(src.add(i) as *const __m256i);
                _mm256_stream_si256(dst.add(i) as *mut __m256i, v);
                i += 32;
            }
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        }
    }
}
