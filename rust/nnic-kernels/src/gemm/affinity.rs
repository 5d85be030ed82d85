//! The calling thread's CPU affinity mask on Linux: read by `neighbours` (whose CPUs' busy time counts) and read
//! and set by `spread` (a move off one CPU). One place for the raw calls and the mask's size.

extern "C" {
    fn sched_getaffinity(pid: i32, size: usize, mask: *mut u64) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}

/// Words of the mask: CPUs it can name here (the kernel's mask may be longer only beyond 4096 CPUs).
pub(super) const MASK_WORDS: usize = 64;

/// A CPU mask, one bit per CPU.
pub(super) type Mask = [u64; MASK_WORDS];

/// The calling thread's mask (`None` where it cannot be read).
pub(super) fn mask() -> Option<Mask> {
    let mut m = [0u64; MASK_WORDS];
    // SAFETY: `m` is writable for its size in bytes; pid 0 is the calling thread.
    (unsafe { sched_getaffinity(0, std::mem::size_of_val(&m), m.as_mut_ptr()) } >= 0).then_some(m)
}

/// Sets the calling thread's mask; whether the kernel took it.
pub(super) fn set_mask(m: &Mask) -> bool {
    // SAFETY: `m` is readable for its size in bytes; pid 0 is the calling thread.
    unsafe { sched_setaffinity(0, std::mem::size_of_val(m), m.as_ptr()) == 0 }
}

/// Whether `m` holds `cpu`.
pub(super) fn holds(m: &Mask, cpu: usize) -> bool {
    cpu < 64 * MASK_WORDS && m[cpu / 64] >> (cpu % 64) & 1 == 1
}
