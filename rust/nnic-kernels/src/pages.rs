//! Byte buffers for packed weights that a GEMV streams: cache-line aligned, and on 2 MiB transparent huge pages
//! where Linux gives them.
//!
//! Why: at batch 1 a GEMV reads each weight byte once per call, straight from DRAM when the model is larger than
//! the last-level cache. On 4 KiB pages that stream crosses a page every 64 lines: a TLB miss and a page walk
//! each, and the hardware prefetchers do not follow a stream across a 4 KiB page boundary (Zen 4, Linux THP
//! setting `madvise`, so an ordinary allocation never gets huge pages). A plain AVX-512 read of 16 MiB buffers
//! (one thread, cold) ran at 21 GB/s median on 4 KiB pages and 31 GB/s on 2 MiB pages in the same rounds.
//!
//! A buffer of at least one huge page ([`HUGE`]) is therefore aligned to 2 MiB and its whole huge pages are
//! advised `MADV_HUGEPAGE` before the first touch, so that the first write faults in 2 MiB pages. The tail past the
//! last whole huge page stays on small pages (a huge page there would be mostly padding). Elsewhere (another OS,
//! THP `never`, no huge page free) the advice does nothing and the buffer is an ordinary line-aligned one: same
//! bytes, same results.
use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// The huge page size asked for (x86-64 and most aarch64 Linux systems).
pub const HUGE: usize = 2 << 20;
/// The alignment of every buffer: one cache line.
pub const LINE: usize = 64;

/// One cache line: its alignment is what an empty buffer's (dangling) pointer gets.
#[repr(C, align(64))]
struct Line([u8; LINE]);

/// A fixed-size byte buffer, [`LINE`]-aligned, on huge pages where possible (module doc).
pub struct Lines {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Lines` owns its allocation like a `Vec<u8>` (no shared interior state).
unsafe impl Send for Lines {}
unsafe impl Sync for Lines {}

impl Lines {
    /// `len` bytes (a multiple of [`LINE`]), each `fill`.
    pub fn new(len: usize, fill: u8) -> Lines {
        assert!(len.is_multiple_of(LINE), "Lines::new: {len} bytes is not a whole number of cache lines");
        if len == 0 {
            return Lines { ptr: NonNull::<Line>::dangling().cast(), len };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size.
        let Some(ptr) = NonNull::new(unsafe { alloc(layout) }) else { handle_alloc_error(layout) };
        advise_huge(ptr.as_ptr(), len);
        // SAFETY: `ptr` holds `len` writable bytes.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), fill, len) };
        Lines { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let align = if len >= HUGE { HUGE } else { LINE };
        Layout::from_size_align(len, align).expect("a buffer size below isize::MAX")
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialized bytes (dangling but aligned when `len` is 0), owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated by `Lines::new` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
        }
    }
}

impl Clone for Lines {
    fn clone(&self) -> Lines {
        let mut c = Lines::new(self.len, 0);
        c.as_mut_slice().copy_from_slice(self.as_slice());
        c
    }
}

impl PartialEq for Lines {
    fn eq(&self, other: &Lines) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lines({} bytes at {:p})", self.len, self.ptr)
    }
}

/// Asks for huge pages over the whole 2 MiB pages inside `ptr..ptr + len` (Linux; elsewhere a no-op). A refusal
/// (THP off, an old kernel) leaves small pages: the advice is only a hint.
fn advise_huge(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const MADV_HUGEPAGE: i32 = 14;
        extern "C" {
            fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
        }
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: `start..end` lies inside the allocation just made (page aligned); madvise only changes how
            // the kernel backs those pages, not their contents or mapping.
            let _ = unsafe { madvise(start as *mut u8, end - start, MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and huge-page sized buffers hold their fill, are line aligned (huge ones on a 2 MiB boundary), and
    /// clone to equal, independent buffers.
    #[test]
    fn buffers_hold_their_bytes_at_their_alignment() {
        for len in [0, LINE, 5 * LINE, HUGE, HUGE + 3 * LINE, 3 * HUGE] {
            let mut b = Lines::new(len, 0x88);
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&v| v == 0x88));
            assert_eq!(b.as_slice().as_ptr() as usize % if len >= HUGE { HUGE } else { LINE }, 0);
            let c = b.clone();
            assert_eq!(b, c);
            if len > 0 {
                b.as_mut_slice()[len - 1] = 1;
                assert_ne!(b, c);
                assert_eq!(c.as_slice()[len - 1], 0x88);
            }
        }
    }
}
