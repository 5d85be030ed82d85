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
//! least [`HUGE`] bytes lies in an advised range and is zeroed only then. Where the advice is refused (THP off,
//! another OS) it is ordinary 64-byte-aligned memory; nothing else depends on the page size.
//!
//! Those buffers are carved one after another from shared chunks ([`CHUNK`] bytes or more, 2 MiB-aligned,
//! advised whole), not allocated one by one: a buffer of its own could have only its whole 2 MiB
//! pages advised, and its last partial page (up to 2 MiB) stayed on 4 KiB pages. A 4096 × 4096 int4 weight with
//! 8-bit scales is 8.53 MB: 0.53 MB on 4 KiB pages, which cost its cold GEMV ~7-10 % per call (one thread,
//! `examples/int4_stream`, twelve alternated processes per build, two builds per side: each buffer rounded up to
//! whole advised pages 290-301 against 324 µs, int8 ÷ int4 1.93-1.96 against 1.77; rounded up but advised as
//! before: no gain, so the pages it is; carved from chunks 1.92-1.93 against 1.77-1.79, two threads 1.89-1.91
//! against 1.73-1.77; `docs/performance/low-bit.md`, 2026-12-02 morning). Rounding each buffer up
//! to whole 2 MiB pages would cost that much memory per buffer (17 % of that weight, 80 % of a 2048 × 2048
//! one); in a chunk, neighbouring buffers share the boundary pages. A chunk is freed when its last buffer is;
//! a dropped buffer gives its whole 2 MiB pages back to the OS at once (`MADV_DONTNEED`), so a chunk's dead
//! buffers do not stay resident while its others live.
use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Bytes of a huge page, and the smallest buffer that asks for them.
pub const HUGE: usize = 2 << 20;

/// Alignment of smaller buffers: a cache line, so that 64-byte loads of a line-aligned layout do not split.
const LINE: usize = 64;

/// An owned, zero-initialised `[T]` of fixed length (see the module docs); derefs to a slice.
pub struct HugeBuf<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    /// The chunk the buffer lies in (buffers of at least [`HUGE`] bytes), else `None`: its own allocation.
    chunk: Option<Arc<Chunk>>,
}

/// Smallest chunk that buffers of at least [`HUGE`] bytes are carved from (virtual: untouched pages cost no memory).
const CHUNK: usize = 64 << 20;

/// One 2 MiB-aligned allocation advised for 2 MiB pages, shared by the buffers carved from it.
struct Chunk {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the chunk is raw memory; the buffers carved from it own disjoint parts.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `carve` with this layout; no buffer refers to it any more.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The chunk new buffers are carved from, and how many of its bytes are taken.
static ARENA: Mutex<Option<(Arc<Chunk>, usize)>> = Mutex::new(None);

/// `bytes` (at least [`HUGE`]) at `align` (at most [`HUGE`]) of the current chunk, or of a new one where they do
/// not fit; not touched yet.
fn carve(bytes: usize, align: usize) -> (NonNull<u8>, Arc<Chunk>) {
    let mut arena = ARENA.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((chunk, used)) = arena.as_mut() {
        let at = used.div_ceil(align) * align;
        if at + bytes <= chunk.layout.size() {
            *used = at + bytes;
            // SAFETY: `at + bytes` is inside the chunk.
            return (unsafe { NonNull::new_unchecked(chunk.ptr.as_ptr().add(at)) }, chunk.clone());
        }
    }
    let size = bytes.div_ceil(HUGE).max(CHUNK / HUGE) * HUGE;
    let layout = Layout::from_size_align(size, HUGE).expect("chunk layout");
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { alloc::alloc(layout) };
    let Some(ptr) = NonNull::new(raw) else { alloc::handle_alloc_error(layout) };
    advise(raw, size, MADV_HUGEPAGE);
    let chunk = Arc::new(Chunk { ptr, layout });
    *arena = Some((chunk.clone(), bytes));
    (ptr, chunk)
}

// SAFETY: the buffer owns its elements like a `Vec<T>` does.
unsafe impl<T: Copy + Send> Send for HugeBuf<T> {}
unsafe impl<T: Copy + Sync> Sync for HugeBuf<T> {}

impl<T: Copy> HugeBuf<T> {
    /// `len` zero bytes' worth of `T` (`T` must be a type for which all-zero bytes are a valid value: integers,
    /// floats, arrays of them).
    pub fn zeroed(len: usize) -> HugeBuf<T> {
        let Some(layout) = Self::layout(len) else {
            return HugeBuf { ptr: NonNull::dangling(), len, chunk: None };
        };
        let (raw, chunk) = if layout.size() >= HUGE {
            let (p, c) = carve(layout.size(), layout.align());
            (p.as_ptr(), Some(c))
        } else {
            // SAFETY: the layout has a non-zero size.
            (unsafe { alloc::alloc(layout) }, None)
        };
        let Some(ptr) = NonNull::new(raw as *mut T) else { alloc::handle_alloc_error(layout) };
        // SAFETY: `raw` holds `layout.size()` writable bytes.
        unsafe { std::ptr::write_bytes(raw, 0, layout.size()) };
        HugeBuf { ptr, len, chunk }
    }

    /// The bytes of `len` elements, line-aligned (or as `T` needs); `None` for 0 bytes.
    fn layout(len: usize) -> Option<Layout> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).expect("buffer size overflows");
        if bytes == 0 {
            return None;
        }
        Some(Layout::from_size_align(bytes, LINE.max(std::mem::align_of::<T>())).expect("buffer layout"))
    }
}

/// `madvise` advice: 2 MiB pages for the range (before it is first touched).
const MADV_HUGEPAGE: i32 = 14;
/// `madvise` advice: the range's pages go back to the OS (read again, they are zero).
const MADV_DONTNEED: i32 = 4;

/// Gives the OS `advice` on `len` bytes at `p` (page-aligned, inside one live allocation); a refusal is ignored.
fn advise(p: *mut u8, len: usize, advice: i32) {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        // SAFETY: the range lies inside one live allocation; `MADV_HUGEPAGE` changes no contents, and
        // `MADV_DONTNEED` is given only for pages no live buffer holds.
        let _ = unsafe { madvise(p as *mut std::ffi::c_void, len, advice) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len, advice);
}

impl<T: Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        let Some(layout) = Self::layout(self.len) else { return };
        match self.chunk.take() {
            Some(chunk) => {
                // The whole 2 MiB pages inside this buffer are its alone (no other buffer of the chunk, which
                // is never carved again below its fill mark, reaches into them): back to the OS now.
                let (start, end) = (self.ptr.as_ptr() as usize, self.ptr.as_ptr() as usize + layout.size());
                let (lo, hi) = (start.div_ceil(HUGE) * HUGE, end / HUGE * HUGE);
                if hi > lo {
                    advise(lo as *mut u8, hi - lo, MADV_DONTNEED);
                }
                drop(chunk);
            }
            // SAFETY: allocated in `zeroed` with this same layout.
            None => unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) },
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
            assert_eq!(b.as_ptr() as usize % LINE, 0, "len {len}");
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
        assert!(w.iter().all(|&v| v == 0));
    }

    /// Large buffers are carved from shared 2 MiB-aligned chunks: each is zeroed, line-aligned and disjoint from
    /// the others alive, also after buffers before it were dropped (their whole pages given back), and one larger
    /// than a chunk gets a chunk of its own.
    #[test]
    fn large_buffers_share_chunks_without_overlap() {
        let mut live: Vec<HugeBuf<u8>> = Vec::new();
        for (i, len) in [HUGE, HUGE + 64 * 1000 + 3, 3 * HUGE + 17, CHUNK + 5, HUGE + 1, 5 * HUGE].into_iter().enumerate() {
            let mut b = HugeBuf::<u8>::zeroed(len);
            assert!(b.iter().all(|&v| v == 0), "buffer {i}");
            assert_eq!(b.as_ptr() as usize % LINE, 0);
            b.fill(i as u8 + 1);
            if i == 2 {
                drop(live.remove(0));
            }
            live.push(b);
        }
        for (i, b) in live.iter().enumerate() {
            let first = b[0];
            assert!(b.iter().all(|&v| v == first), "buffer {i} was written by another");
            let (s, e) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
            for o in &live[i + 1..] {
                let (so, eo) = (o.as_ptr() as usize, o.as_ptr() as usize + o.len());
                assert!(e <= so || eo <= s, "buffers overlap");
            }
        }
    }
}
