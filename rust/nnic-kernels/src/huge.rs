//! [`HugeBuf`]: a zeroed buffer for large read-mostly data (packed weights) on 2 MiB pages where the OS gives them.
//!
//! Why: a GEMV reads its packed weights once per call, from DRAM when the model is larger than the cache. On 4 KiB
//! pages a 16 MiB weight spans 4096 pages, more than the TLB holds, so every 4 KiB of the stream is a TLB miss
//! (and in a virtual machine a two-level page walk), and the hardware prefetchers stop at every page boundary. On
//! 2 MiB pages the same weight is 8 pages. Measured on the AMD Zen 4 guest (a 4096 × 4096 `int8_linear` at M = 1,
//! 24 cold copies, 2 MiB-page and 4 KiB-page copies alternating in the same rounds, 30 rounds, load average 2.8):
//! one thread 1.45-1.6× faster (30-33 against 19-22 GB/s), two threads 1.18-1.43× (34-37 against 24-32 GB/s).
//!
//! Linux with transparent huge pages set to `madvise` (the default of many distributions, and of that machine)
//! gives 2 MiB pages only to ranges advised with `MADV_HUGEPAGE` before they are first touched: so a buffer of at
//! least [`HUGE`] bytes is allocated 2 MiB-aligned, advised, and only then zeroed. Where the advice is refused
//! (THP off, another OS) it is an ordinary 64-byte-aligned buffer; nothing else depends on the page size.
use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Bytes of a huge page, and the smallest buffer that asks for them.
pub const HUGE: usize = 2 << 20;

/// Alignment of smaller buffers: a cache line, so that 64-byte loads of a line-aligned layout do not split.
const LINE: usize = 64;

/// An owned, zero-initialised `[T]` of fixed length (see the module docs); derefs to a slice.
pub struct HugeBuf<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the buffer owns its elements like a `Vec<T>` does.
unsafe impl<T: Copy + Send> Send for HugeBuf<T> {}
unsafe impl<T: Copy + Sync> Sync for HugeBuf<T> {}

impl<T: Copy> HugeBuf<T> {
    /// `len` zero bytes' worth of `T` (`T` must be a type for which all-zero bytes are a valid value: integers,
    /// floats, arrays of them).
    pub fn zeroed(len: usize) -> HugeBuf<T> {
        let Some(layout) = Self::layout(len) else {
            return HugeBuf { ptr: NonNull::dangling(), len };
        };
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw as *mut T) else { alloc::handle_alloc_error(layout) };
        if layout.align() == HUGE {
            advise_huge(raw, layout.size() / HUGE * HUGE);
        }
        // SAFETY: `raw` holds `layout.size()` writable bytes.
        unsafe { std::ptr::write_bytes(raw, 0, layout.size()) };
        HugeBuf { ptr, len }
    }

    /// The allocation of `len` elements: 2 MiB-aligned from [`HUGE`] bytes, else line-aligned; `None` for 0 bytes.
    fn layout(len: usize) -> Option<Layout> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("buffer size overflows");
        if bytes == 0 {
            return None;
        }
        let align = if bytes >= HUGE { HUGE } else { LINE.max(std::mem::align_of::<T>()) };
        Some(Layout::from_size_align(bytes, align).expect("buffer layout"))
    }
}

/// Asks the OS for 2 MiB pages on `len` bytes at `p` (2 MiB-aligned, not yet touched); a refusal is ignored.
fn advise_huge(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const MADV_HUGEPAGE: i32 = 14;
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        // SAFETY: the range lies inside one live allocation; the advice changes no contents.
        let _ = unsafe { madvise(p as *mut std::ffi::c_void, len, MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

impl<T: Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `zeroed` with this same layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) };
        }
    }
}

impl<T: Copy> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised elements (or a dangling pointer with 0 bytes).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Clone for HugeBuf<T> {
    fn clone(&self) -> HugeBuf<T> {
        let mut b = HugeBuf::zeroed(self.len);
        b.copy_from_slice(self);
        b
    }
}

impl<T: Copy + PartialEq> PartialEq for HugeBuf<T> {
    fn eq(&self, other: &HugeBuf<T>) -> bool {
        **self == **other
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and huge-page-sized buffers start zeroed, keep what is written, clone equal and independent, and are
    /// aligned as promised (2 MiB from `HUGE` bytes, a cache line below); an empty one is an empty slice.
    #[test]
    fn buffers_are_zeroed_aligned_and_clone_independently() {
        for len in [1usize, 63, 4096, HUGE - 1, HUGE, HUGE + 4097, 3 * HUGE] {
            let mut b = HugeBuf::<i8>::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0));
            let align = if len >= HUGE { HUGE } else { LINE };
            assert_eq!(b.as_ptr() as usize % align, 0, "len {len}");
            b[0] = 5;
            b[len - 1] = -3;
            let c = b.clone();
            assert_eq!(c, b);
            b[len / 2] = 9;
            assert_ne!(c[len / 2], 9, "the clone is a copy, not a view");
        }
        let e = HugeBuf::<i32>::zeroed(0);
        assert!(e.is_empty() && e.clone() == e);
        let w = HugeBuf::<u32>::zeroed(HUGE / 4 + 1);
        assert_eq!(w.as_ptr() as usize % HUGE, 0);
        assert!(w.iter().all(|&v| v == 0));
    }
}
