//! Where the GEMM's parallel tasks run: on the process's OpenMP team when libgomp is loaded (PyTorch loads
//! it), else on the kernel pool ([`crate::pool`]).
//!
//! Why: PyTorch's OpenMP workers spin for milliseconds after each torch op. A GEMM that runs on other
//! threads right after one (the normal case inside a model) shares the cores with those spinning threads
//! and loses up to half its speed. Running on the same team reuses the spinning threads instead.
//! [`set_backend`]`("rayon")` forces the kernel pool (the Python runtime applies `NNIC_GEMM_BACKEND` with it).
use crate::error::{KernelError, Result};
use crate::pool;
use rayon::prelude::*;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

/// Whether [`set_backend`] forced the kernel pool.
static FORCE_RAYON: AtomicBool = AtomicBool::new(false);

/// libgomp's `GOMP_parallel`, when the process has it loaded with global symbols and the kernel pool is
/// not forced.
fn gomp() -> Option<GompParallel> {
    static F: OnceLock<Option<GompParallel>> = OnceLock::new();
    if FORCE_RAYON.load(Ordering::Relaxed) {
        return None;
    }
    *F.get_or_init(lookup)
}

/// `"openmp"`: the process's OpenMP team when libgomp is loaded (else the kernel pool); `"rayon"`: always
/// the kernel pool. Errors: another name.
pub fn set_backend(name: &str) -> Result<()> {
    match name {
        "openmp" => FORCE_RAYON.store(false, Ordering::Relaxed),
        "rayon" => FORCE_RAYON.store(true, Ordering::Relaxed),
        _ => {
            return Err(KernelError::Invalid { what: format!("GEMM backend must be 'openmp' or 'rayon', got {name:?}") })
        }
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn lookup() -> Option<GompParallel> {
    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const std::ffi::c_char) -> *mut c_void;
    }
    // SAFETY: RTLD_DEFAULT (null) searches the global scope; the name is a NUL-terminated C string.
    let p = unsafe { dlsym(std::ptr::null_mut(), c"GOMP_parallel".as_ptr()) };
    // SAFETY: `GOMP_parallel` has this signature in every libgomp since GCC 4.9.
    (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, GompParallel>(p) })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn lookup() -> Option<GompParallel> {
    None
}

/// The backend that the GEMM tasks use now: `"openmp"` or `"rayon"`.
pub fn backend() -> &'static str {
    if gomp().is_some() {
        "openmp"
    } else {
        "rayon"
    }
}

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    n: usize,
    panicked: AtomicBool,
}

extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each` keeps alive until `GOMP_parallel` returns.
    let job = unsafe { &*(data as *const Job) };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n || job.panicked.load(Ordering::Relaxed) {
            break;
        }
        // A panic must not unwind through C frames: record it and re-raise on the calling thread.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.f)(i))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `f(i)` for every `i` in `0..n`, on up to `threads` threads (tasks taken in order, dynamically).
pub(crate) fn for_each(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    let threads = threads.min(n);
    if threads <= 1 {
        (0..n).for_each(f);
        return;
    }
    match gomp() {
        Some(parallel) => {
            let job = Job { f, next: AtomicUsize::new(0), n, panicked: AtomicBool::new(false) };
            // SAFETY: `trampoline` only reads `job`, which outlives the call; flags 0 = default binding.
            unsafe { parallel(trampoline, &job as *const Job as *mut c_void, threads as u32, 0) };
            if job.panicked.load(Ordering::Relaxed) {
                panic!("a GEMM task panicked");
            }
        }
        None => pool::install(|| (0..n).into_par_iter().with_max_len(1).for_each(f)),
    }
}
