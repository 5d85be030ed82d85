//! CPU-time clocks (POSIX `clock_gettime`): what other processes' load does not inflate, unlike wall time. One
//! place for the binding: the attention profile and the examples time with the thread's clock, the GEMM's
//! neighbour probe subtracts the process's own CPU time from the cores' busy time.

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// Nanoseconds of `clock` (Linux x86-64 and other 64-bit Linux targets); `None` elsewhere or on failure.
fn nanos(clock: i32) -> Option<u64> {
    if !cfg!(all(target_os = "linux", target_pointer_width = "64")) {
        return None;
    }
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { clock_gettime(clock, &mut t) };
    (rc == 0).then(|| t.sec as u64 * 1_000_000_000 + t.nsec as u64)
}

/// Seconds this thread has run on a CPU; `None` where the clock is not available.
pub fn thread_cpu() -> Option<f64> {
    nanos(CLOCK_THREAD_CPUTIME_ID).map(|n| n as f64 * 1e-9)
}

/// Seconds of CPU this process has used, all threads together; `None` where the clock is not available.
pub fn process_cpu() -> Option<f64> {
    process_cpu_ns().map(|n| n as f64 * 1e-9)
}

/// [`process_cpu`] in nanoseconds.
pub fn process_cpu_ns() -> Option<u64> {
    nanos(CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clocks advance with work done on this thread, and the process's includes the thread's.
    #[test]
    fn the_cpu_clocks_advance_with_work() {
        let (Some(t0), Some(p0)) = (thread_cpu(), process_cpu()) else { return };
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i * i));
        }
        let (t1, p1) = (thread_cpu().unwrap(), process_cpu().unwrap());
        assert!(t1 > t0 && p1 > p0, "{t0} {t1} {p0} {p1} {x}");
        assert!(p1 - p0 >= (t1 - t0) * 0.5);
    }
}
