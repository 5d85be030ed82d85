//! Warming weights into the last-level cache on an otherwise idle core, between GEMVs.
//!
//! Why: a decode step (one token) is a chain of GEMVs separated by small ops (norms, rotary, attention over the
//! cache, residual adds) that run on one thread. During those small ops DRAM sits idle and the second core waits,
//! while the next GEMV will stream its weights from DRAM at about half the rate it reads them from L3 (the int4
//! GEMV 4096² at 2 threads: ~65-75 % of `copy_` cold, ~150 % hot). [`warm`] hands a background thread the next
//! weights; it touches one byte per 64-byte line of them, in the order the GEMV reads them, so that the GEMV finds
//! that prefix in cache. [`cancel`] (the GEMM bindings call it before every int4/int8 linear) stops the walk within
//! [`CHUNK`] bytes, so the walker never competes with a GEMV for a core.
//!
//! `NNIC_PREFETCH` (read once) chooses how lines are touched: `load` (default: one plain load per line; the
//! loads are independent, so the core keeps as many fills in flight as it can, and the hardware streamers see a
//! sequential walk), `t2` (`prefetcht2` per line: a hint that allocates no register and may be dropped), or `off`
//! (queue nothing: the callers' cost without the walk, for measuring).
//!
//! The walker runs under Linux's `SCHED_IDLE` policy: it gets a core only when nothing else wants it, and any
//! other thread that wakes preempts it at once. So it never delays the caller's small ops, a GEMM's helpers, or
//! another process (on a loaded machine it simply walks less), and the scheduler cannot place it on the caller's
//! core ahead of the caller.
//!
//! Lifetimes by construction: a queued span holds an [`Arc`] of its weight ([`Resident`]), so the bytes stay
//! allocated until the walker has dropped it, whatever the caller frees meanwhile; there is no raw pointer in the
//! queue. Spans are byte ranges of the weight's [`Resident::regions`] (concatenated), checked by [`Span::new`].
//!
//! Progress is remembered: a span walked (fully or in part) since its weight last ran a GEMM (the bindings pass the
//! running weight to [`cancel`]) resumes where the walk stopped when it is queued again, so that re-queueing the
//! same upcoming weight after each GEMV does not spend the next gap re-reading lines that are already in cache.
//! The record names its weight by a [`Weak`], so a weight freed meanwhile cannot be mistaken for a new one at the
//! same address.
use crate::error::{KernelError, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A weight whose bytes can be warmed: the regions a GEMM reads, in the order it reads them.
pub trait Resident: Send + Sync {
    /// The byte regions of the weight in read order (their concatenation is what [`Span`] offsets index).
    fn regions(&self) -> Vec<&[u8]>;
    /// Total bytes of [`Resident::regions`].
    fn resident_bytes(&self) -> usize {
        self.regions().iter().map(|r| r.len()).sum()
    }
}

impl Resident for crate::gemm::PackedLinear {
    /// The int8 codes (the scales and column sums, a few hundred bytes per 32 columns, are left out).
    fn regions(&self) -> Vec<&[u8]> {
        let b = self.packed();
        let len = b.nbytes() - 4 * b.colsum().len(); // the codes' bytes, by `PackedB::nbytes`'s definition
        // SAFETY: `panel_ptr(0, 0)` is the start of the codes, which hold `len` bytes; they live as long as `self`.
        vec![unsafe { std::slice::from_raw_parts(b.panel_ptr(0, 0) as *const u8, len) }]
    }
}

/// Most spans one [`warm`] call may queue (the queue is bounded: a caller cannot grow it without limit).
pub const MAX_SPANS: usize = 16;
/// Bytes walked between two checks for a cancellation (64 lines: ~1-3 µs from DRAM, well under a GEMV).
pub const CHUNK: usize = 4096;
const LINE: usize = 64;

/// Bytes `start..end` of a weight's regions, with the weight itself (kept alive while queued).
#[derive(Clone)]
pub struct Span {
    owner: Arc<dyn Resident>,
    start: usize,
    end: usize,
}

impl Span {
    /// `start..end` of `owner`'s bytes; `end` past the weight's size, or `start > end`, is an error.
    pub fn new(owner: Arc<dyn Resident>, start: usize, end: usize) -> Result<Span> {
        let total = owner.resident_bytes();
        if start > end || end > total {
            return Err(KernelError::Invalid {
                what: format!("prefetch range {start}..{end} is outside the weight's {total} bytes"),
            });
        }
        Ok(Span { owner, start, end })
    }

    /// The whole weight.
    pub fn whole(owner: Arc<dyn Resident>) -> Span {
        let end = owner.resident_bytes();
        Span { owner, start: 0, end }
    }

    fn is(&self, w: &Weak<dyn Resident>) -> bool {
        same(&*self.owner, w)
    }
}

fn addr(r: &dyn Resident) -> usize {
    r as *const dyn Resident as *const () as usize
}

fn same(a: &dyn Resident, w: &Weak<dyn Resident>) -> bool {
    std::ptr::addr_eq(a as *const dyn Resident, w.as_ptr())
}

/// What the walker did since the process started.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// [`warm`] calls that queued at least one byte.
    pub jobs: u64,
    /// Bytes walked (touched, one load per line).
    pub bytes: u64,
    /// Walks stopped by [`cancel`] before their queue was done.
    pub cancelled: u64,
    /// Bytes skipped because an earlier walk had already covered them (resumed spans).
    pub resumed_bytes: u64,
}

static JOBS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static CANCELLED: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// The walker's counters.
pub fn stats() -> Stats {
    Stats {
        jobs: JOBS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
        cancelled: CANCELLED.load(Ordering::Relaxed),
        resumed_bytes: RESUMED.load(Ordering::Relaxed),
    }
}

/// Where earlier walks got to, per weight: `(weight, start, reached)` of spans walked since that weight last ran
/// (at most `4 * MAX_SPANS`, oldest dropped first).
type Walked = Vec<(Weak<dyn Resident>, usize, usize)>;

/// How the walker touches a line (`NNIC_PREFETCH`, see the module doc).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Touch {
    Load,
    HintT2,
    Off,
}

/// The touch mode, from `NNIC_PREFETCH` at first use (an unknown value is `load`, the default).
pub fn touch_mode() -> Touch {
    static M: OnceLock<Touch> = OnceLock::new();
    *M.get_or_init(|| match std::env::var("NNIC_PREFETCH").as_deref() {
        Ok("off") => Touch::Off,
        Ok("t2") => Touch::HintT2,
        _ => Touch::Load,
    })
}

struct State {
    queue: VecDeque<Span>,
    walked: Walked,
    /// Bumped by every [`warm`] and [`cancel`]: the walker stops a span when it changes.
    generation: u64,
    /// The walker is inside a span (outside the lock).
    walking: bool,
    /// `(generation, weight address)` of recent cancels by a running weight: a walk stopped by its own weight's
    /// GEMM must not record progress that the GEMM has since overwritten in the cache's terms (the address is
    /// compared only against a span that keeps its weight alive, so it cannot name another object).
    ran: VecDeque<(u64, usize)>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    idle: Condvar,
    generation: AtomicU64,
    /// Something is queued or being walked: [`cancel`]'s lock-free fast path when false.
    busy: AtomicBool,
}

fn shared() -> &'static Shared {
    static S: OnceLock<&'static Shared> = OnceLock::new();
    S.get_or_init(|| {
        let s: &'static Shared = Box::leak(Box::new(Shared {
            state: Mutex::new(State { queue: VecDeque::new(), walked: Vec::new(), generation: 0, walking: false, ran: VecDeque::new() }),
            wake: Condvar::new(),
            idle: Condvar::new(),
            generation: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }));
        std::thread::Builder::new()
            .name("nnic-prefetch".into())
            .spawn(move || {
                idle_priority();
                walker(s)
            })
            .expect("cannot start the prefetch thread");
        s
    })
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the state inconsistent (plain fields): keep going.
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces whatever is queued by `spans` (at most [`MAX_SPANS`]) and returns at once; the walker thread touches
/// them in order. Parts already walked since their weight last ran are skipped.
pub fn warm(spans: Vec<Span>) -> Result<()> {
    if spans.len() > MAX_SPANS {
        return Err(KernelError::Invalid {
            what: format!("prefetch queue takes at most {MAX_SPANS} spans, got {}", spans.len()),
        });
    }
    if touch_mode() == Touch::Off {
        return Ok(());
    }
    let s = shared();
    let mut st = lock(s);
    st.generation += 1;
    s.generation.store(st.generation, Ordering::Release);
    let old = std::mem::take(&mut st.queue);
    for mut span in spans {
        if let Some(&(_, _, reached)) = st.walked.iter().find(|w| span.is(&w.0) && w.1 <= span.start) {
            let skip = reached.clamp(span.start, span.end);
            RESUMED.fetch_add((skip - span.start) as u64, Ordering::Relaxed);
            span.start = skip;
        }
        if span.start < span.end {
            st.queue.push_back(span);
        }
    }
    let any = !st.queue.is_empty();
    if any {
        JOBS.fetch_add(1, Ordering::Relaxed);
        s.busy.store(true, Ordering::Release);
        s.wake.notify_one();
    }
    drop(st);
    drop(old); // weights released outside the lock
    Ok(())
}

/// Stops the walk (within [`CHUNK`] bytes) and empties the queue; `ran`: the weight about to run a GEMM, whose
/// walked record is forgotten (after the GEMM its bytes are what the GEMM left, not what a walk did). Returns at
/// once; costs one atomic load when nothing is queued or walked and `ran` has no record.
pub fn cancel(ran: Option<&dyn Resident>) {
    let s = shared();
    if !s.busy.load(Ordering::Acquire) && ran.is_none() {
        return;
    }
    let mut st = lock(s);
    if let Some(r) = ran {
        st.walked.retain(|w| !same(r, &w.0));
    }
    if !s.busy.load(Ordering::Acquire) {
        return;
    }
    st.generation += 1;
    s.generation.store(st.generation, Ordering::Release);
    if let Some(r) = ran {
        if st.ran.len() >= MAX_SPANS {
            st.ran.pop_front();
        }
        let at = (st.generation, addr(r));
        st.ran.push_back(at);
    }
    if !st.queue.is_empty() || st.walking {
        CANCELLED.fetch_add(1, Ordering::Relaxed);
    }
    let old = std::mem::take(&mut st.queue);
    if !st.walking {
        s.busy.store(false, Ordering::Release);
    }
    drop(st);
    drop(old);
}

/// Waits until the queue is walked or cancelled, at most `timeout`; whether it is idle now. (Tests and benchmarks.)
pub fn wait_idle(timeout: Duration) -> bool {
    let s = shared();
    let deadline = Instant::now() + timeout;
    let mut st = lock(s);
    while !st.queue.is_empty() || st.walking {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        st = s.idle.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
    true
}

/// Whether the weight `w` has a walked record covering byte `offset` (tests).
pub fn walked_past(w: &dyn Resident, offset: usize) -> bool {
    let st = lock(shared());
    st.walked.iter().any(|(v, start, reached)| same(w, v) && *start <= offset && offset < *reached)
}

/// Puts the calling thread under `SCHED_IDLE` (Linux; elsewhere a no-op). Failure leaves the normal policy: the
/// walker then still stops at every GEMM, it may only share a busy core.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct SchedParam {
            priority: i32,
        }
        const SCHED_IDLE: i32 = 5;
        extern "C" {
            fn sched_setscheduler(pid: i32, policy: i32, param: *const SchedParam) -> i32;
        }
        let p = SchedParam { priority: 0 };
        // SAFETY: a valid pointer to a `struct sched_param` (one int) for the call; pid 0 is the calling thread.
        let _ = unsafe { sched_setscheduler(0, SCHED_IDLE, &p) };
    }
}

fn walker(s: &'static Shared) {
    loop {
        let (span, generation) = {
            let mut st = lock(s);
            loop {
                if let Some(span) = st.queue.pop_front() {
                    st.walking = true;
                    break (span, st.generation);
                }
                st.walking = false;
                s.busy.store(false, Ordering::Release);
                s.idle.notify_all();
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let reached = walk(&span, |_| s.generation.load(Ordering::Acquire) == generation);
        BYTES.fetch_add((reached - span.start) as u64, Ordering::Relaxed);
        let mut st = lock(s);
        let own = addr(&*span.owner);
        if st.ran.iter().any(|&(g, a)| g > generation && a == own) {
            drop(st);
            continue; // its own GEMM stopped the walk: nothing to remember
        }
        match st.walked.iter_mut().find(|w| span.is(&w.0) && w.1 <= span.start && span.start <= w.2) {
            Some(w) => w.2 = w.2.max(reached),
            None => {
                if st.walked.len() >= 4 * MAX_SPANS {
                    st.walked.remove(0);
                }
                st.walked.push((Arc::downgrade(&span.owner), span.start, reached));
            }
        }
        drop(st);
        drop(span);
    }
}

/// Touches `span`'s lines in order while `go(offset)` holds (checked every [`CHUNK`] bytes); returns the offset
/// reached.
fn walk(span: &Span, go: impl Fn(usize) -> bool) -> usize {
    let mode = touch_mode();
    let mut base = 0; // offset of the current region in the concatenation
    let mut at = span.start;
    for r in span.owner.regions() {
        let (lo, hi) = (base, base + r.len());
        base = hi;
        while at < hi.min(span.end) {
            if at < lo {
                at = lo;
                continue;
            }
            if !go(at) {
                return at;
            }
            let stop = (at + CHUNK).min(hi).min(span.end);
            touch(&r[at - lo..stop - lo], mode);
            at = stop;
        }
        if at >= span.end {
            break;
        }
    }
    at.max(span.start).min(span.end)
}

/// Touches each 64-byte line of `b` once, as `mode` says.
#[inline(never)]
fn touch(b: &[u8], mode: Touch) {
    #[cfg(target_arch = "x86_64")]
    if mode == Touch::HintT2 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T2};
        for i in (0..b.len()).step_by(LINE) {
            // SAFETY: a prefetch hint never faults; the address is inside `b`.
            unsafe { _mm_prefetch::<_MM_HINT_T2>(b.as_ptr().add(i) as *const i8) };
        }
        return;
    }
    let _ = mode;
    let mut acc = 0u8;
    let mut i = 0;
    while i < b.len() {
        // SAFETY: `i < b.len()`; a volatile read so the loads are not elided.
        acc ^= unsafe { std::ptr::read_volatile(b.as_ptr().add(i)) };
        i += LINE;
    }
    std::hint::black_box(acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<Vec<u8>>);
    impl Resident for Bytes {
        fn regions(&self) -> Vec<&[u8]> {
            self.0.iter().map(|v| v.as_slice()).collect()
        }
    }

    /// The walker is one per process: tests that queue or cancel take turns.
    fn serial() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(sizes: &[usize]) -> Arc<dyn Resident> {
        Arc::new(Bytes(sizes.iter().map(|&n| vec![1u8; n]).collect()))
    }

    #[test]
    fn bad_ranges_are_refused() {
        let _turn = serial();
        let w = weight(&[100, 28]);
        assert!(Span::new(w.clone(), 0, 128).is_ok());
        let e = Span::new(w.clone(), 0, 129).err().unwrap().to_string();
        assert!(e.contains("0..129") && e.contains("128 bytes"), "{e}");
        assert!(Span::new(w.clone(), 10, 9).is_err());
        let many = vec![Span::whole(w); MAX_SPANS + 1];
        assert!(warm(many).err().unwrap().to_string().contains("at most 16"));
    }

    #[test]
    fn walk_covers_every_region_in_order_and_stops_when_told() {
        let w = weight(&[10_000, 300, 5000]);
        let span = Span::new(w.clone(), 50, 15_000).unwrap();
        assert_eq!(walk(&span, |_| true), 15_000);
        // Stopped at the second chunk check: one chunk walked from 50.
        let calls = std::cell::Cell::new(0);
        let reached = walk(&span, |_| {
            calls.set(calls.get() + 1);
            calls.get() < 2
        });
        assert_eq!(reached, 50 + CHUNK);
        assert_eq!(walk(&Span::new(w, 10_100, 10_300).unwrap(), |_| true), 10_300);
    }

    /// Whenever the cancel lands (before the walk starts, during it, or after it), a weight that ran is not
    /// remembered as walked: the walker does not record progress that its own GEMM stopped.
    #[test]
    fn a_weight_stopped_by_its_own_gemm_is_not_remembered() {
        let _turn = serial();
        for pause_us in [0u64, 50, 300] {
            let w = weight(&[64 << 20]);
            warm(vec![Span::whole(w.clone())]).unwrap();
            std::thread::sleep(Duration::from_micros(pause_us));
            cancel(Some(&*w));
            assert!(wait_idle(Duration::from_secs(10)));
            assert!(!walked_past(&*w, 0), "pause {pause_us} us");
        }
    }

    #[test]
    fn a_queued_weight_outlives_its_caller_and_resumes() {
        let _turn = serial();
        let w = weight(&[1 << 20]);
        let weak = Arc::downgrade(&w);
        warm(vec![Span::whole(w.clone())]).unwrap();
        assert!(wait_idle(Duration::from_secs(10)));
        assert!(walked_past(&*w, (1 << 20) - 1));
        // Queued again before it ran: nothing left to walk.
        let before = stats().resumed_bytes;
        warm(vec![Span::whole(w.clone())]).unwrap();
        assert!(stats().resumed_bytes >= before + (1 << 20));
        // It ran: the record is forgotten.
        cancel(Some(&*w));
        assert!(!walked_past(&*w, 0));
        // Dropped by the caller while queued: the queue keeps it alive until walked, then frees it.
        warm(vec![Span::whole(w.clone())]).unwrap();
        drop(w);
        assert!(wait_idle(Duration::from_secs(10)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while weak.upgrade().is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(weak.upgrade().is_none());
    }
}
