//! The kernels' own rayon pool: rayon's global pool cannot be rebuilt, this one can ([`set_num_threads`]).
use crate::error::{KernelError, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Upper bound accepted by [`set_num_threads`].
pub const MAX_THREADS: usize = 1024;

/// The default thread count: the CPU count. (`NNIC_NUM_THREADS` is read in one place, the Python runtime,
/// which calls [`set_num_threads`] before any kernel runs.)
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("nnic-kernels-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| KernelError::Invalid { what: format!("cannot start {n} kernel threads: {e}") })
}

fn pool() -> Arc<ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(build(default_threads()).expect("cannot start the kernel thread pool"));
    }
    guard.as_ref().unwrap().clone()
}

/// Replaces the pool by one with `n` threads (1..=1024). Kernels running now finish on the old pool.
pub fn set_num_threads(n: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(KernelError::Invalid { what: format!("num_threads must be in [1, {MAX_THREADS}], got {n}") });
    }
    let p = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// Threads of the kernel pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` inside the kernel pool (rayon parallel iterators in `f` use it).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Elements below which kernels run inline on the calling thread.
pub const PAR_MIN: usize = 1 << 16;

/// Chunk length for splitting `n` elements over the pool: about 4 chunks per thread, at least
/// `PAR_MIN / 2`, rounded up to a multiple of `align` (>= 1).
pub fn chunk_len(n: usize, align: usize) -> usize {
    let tasks = num_threads() * 4;
    let c = n.div_ceil(tasks).max(PAR_MIN / 2);
    c.div_ceil(align) * align
}
