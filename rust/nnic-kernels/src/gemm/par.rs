//! Where the GEMM's parallel tasks run: on the process's OpenMP team when libgomp is loaded (PyTorch loads
//! it), else on the kernels' own threads (the GEMM team, [`crate::team`], sized by [`crate::pool`]).
//!
//! Why: PyTorch's OpenMP workers spin for milliseconds after each torch op. A GEMM that runs on other
//! threads right after one (the normal case inside a model) shares the cores with those spinning threads
//! and loses up to half its speed. Running on the same team reuses the spinning threads instead.
//! [`set_backend`]`("rayon")` forces the kernel pool (the Python runtime applies `NNIC_GEMM_BACKEND` with it).
//!
//! On the kernel pool, the calling thread never waits for a helper that has not started: it takes tasks from
//! the shared counter itself, while the helpers of the GEMM team ([`crate::team`]: polling a bounded time
//! after each GEMM, else parked) take tasks as they arrive; it then waits only for tasks a helper has claimed
//! (polling for at most the same bound, then a condition variable: no core is burnt while a descheduled
//! helper finishes). A helper that arrives after the last task is claimed leaves at once. So a
//! helper descheduled by another process costs at most the task it holds, not a static share of the work.
//!
//! The OpenMP team cannot do that: `GOMP_parallel` returns only when every team thread has passed the region, so a
//! thread that another process keeps off its core stalls the GEMM for a scheduler time slice (milliseconds) even
//! when the other threads took all its tasks. So each run on the team records how late its last thread arrived;
//! when one arrives more than [`LATE`] after the start (a neighbour holds a core), and after half of the caller's
//! own part of the run or with a stalled join (a big run hides a thread's lateness behind the caller's tasks
//! otherwise: [`late_run`]), the runs of the next [`AVOID`] go to the kernel pool instead, and then the team is
//! tried again. A retry that finds a thread late again doubles the window (up to [`MAX_AVOID`]); a run whose
//! threads all arrive in time resets it. Why: with a neighbour that stays, every retry stalled for a scheduler
//! slice (measured under load 5-7 with `bench/handoff.py`: a 90 % batch-1 sparse product's caller waited 9-17 ms
//! for the late thread, against a 0.3-1 ms product; `bench/gemm.py`'s M=1 rows found 8 of 8 team runs late), and
//! calls that come less than once per window, as in a benchmark's interleaved rounds or a server's requests,
//! retried on every call.
//!
//! A window also ends early when the neighbour has left: every [`PROBE_EVERY`] inside it, a GEMM reads how much
//! CPU other processes took on our CPUs since the last look ([`super::neighbours`], ~13 µs); when they left
//! room for all the team's threads, the next run tries the team. Why: once the neighbour is gone, nnic's helpers
//! share the cores with torch's still-spinning OpenMP thread and lost ~40 % at ~1 ms shapes (`bench/gemm.py
//! --contention`'s quiet leg at 128×768×3072: 0.68× against 1.11× in a plain run) for the rest of a window of
//! up to 8 s. A probe that let a retry run late anyway (a neighbour inside this process, say) doubles the time
//! to its next look, so a wrong probe costs at most what the windows cost before.
//!
//! A late run starts no window at all when it follows a run on time and the others left room for the team over
//! the last [`PROBE_EVERY`] or more (a baseline sample that runs on time refresh once per interval): something
//! brief held the thread up, and the next run tries the team again; a second late run in a row starts the window.
//! Why: on the quiet 2-core guest, `bench/gemm.py`'s M = 1 row found a team thread late about twice per shape
//! (runs I and J of 2026-12-01: 2 late of 38 and of 60 team runs), each time with no neighbour (the probe ended the
//! window at its first look), and each window sent the next 0.1 s of calls, 5-8 rounds, to the helpers, where the
//! call shares the cores with torch's spinning OpenMP thread: 7 of 15 calls on the team gave a median of 0.713 ms,
//! 10 of 15 0.592 ms, the team's own calls ~0.59 ms. A neighbour that arrives costs one late run more than before.
//!
//! With [`set_routing`] on (off by default: see there why), the GEMM's own runs ([`for_each_routed`], from
//! `super::driver`) do not follow the window: each goes the way that cost its shape class least over its last runs,
//! the other way tried now and then, so that probing costs ~1 % ([`super::route`]).
//! Why: one late run in a window's worth of good ones sent the next 0.5 s of GEMMs to the helpers, where beside a
//! neighbour they cost ~1.8× the team's (`bench/gemm.py --contention` at 512 × 768 × 768, run M of 2026-12-01:
//! 7 of 15 contended calls, 1.76 ms against 0.975 ms, the row at 0.79× its quiet ratio); a team that is late on
//! every run still loses the class after two runs. Their team runs still feed the window (a late one opens it) for
//! the other kernels' runs ([`for_each`]: attention, sparse products, packing), which have no class to keep costs
//! for.
//!
//! On either way, a caller that another thread of its run has shared a CPU with for milliseconds moves itself to
//! another CPU of its affinity mask (`gemm::spread`, [`set_spread`]): beside a neighbour the scheduler can leave
//! the run's two threads on one CPU for a whole call while the neighbour has the other to itself.
use super::neighbours;
use super::route::{Router, Way};
use super::spread::{self, Seen, Watch};
use crate::error::{KernelError, Result};
use crate::team;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A team thread that arrives this long after the region started was kept off its core by another process
/// (waking a sleeping OpenMP thread takes tens of microseconds).
const LATE: Duration = Duration::from_micros(500);
/// How long the runs avoid the team after a late arrival.
const AVOID: Duration = Duration::from_millis(500);
/// The longest window: after a late retry the window doubles up to this.
const MAX_AVOID: Duration = Duration::from_secs(8);

/// The window that the next late run starts, in nanoseconds ([`AVOID`] until a retry is late again).
static AVOID_NS: AtomicU64 = AtomicU64::new(AVOID.as_nanos() as u64);

/// Whether a run on the team counts as late for the window: its last thread arrived more than [`LATE`] after the
/// start (`arrival_ns`), and either later than half of the caller's own part of the run (`caller_done_ns`, when the
/// caller found no task left) or the caller then waited more than [`LATE`] for the run's end (`region_ns`: the
/// join, which nnic's helpers do not make it wait for). Why relative to the run: a thread that arrives in the first
/// half of the caller's part still takes tasks from the shared counter until the end, so the run lost at most about
/// a third to it, no more than the helpers lose quiet beside torch's spinning OpenMP worker (`bench/gemm.py`'s
/// helpers row: 1.17-1.6× the team's time), and the join has the caller's remaining tasks to hide the thread's
/// arrival behind. On the quiet guest, 7 of 85 M = 128 × 4096² runs (5 ms) had a thread 0.5 ms late (~2.5 ms on
/// average), and each sent the next calls to the helpers, 6.4 ms against the team's 5.1 (run S of 2026-12-02). A
/// thread that arrives after the caller ran out of tasks (a small run beside a neighbour) makes the caller wait in
/// the join for a scheduler slice: that is what the window avoids, and it still counts; so does a big run whose
/// join stalled (beside a neighbour that holds a core the team thread needs to reach `GOMP_parallel`'s end: under
/// other processes' load, M = 128 × 4096² calls on the team took 13-22 ms against 10-11 on the helpers, with
/// 1.1-1.8 ms per run after the last task).
fn late_run(arrival_ns: u64, caller_done_ns: u64, region_ns: u64) -> bool {
    let late = LATE.as_nanos() as u64;
    arrival_ns > late
        && (arrival_ns.saturating_mul(2) > caller_done_ns || region_ns.saturating_sub(caller_done_ns) > late)
}

/// The window after a run on the team: `late` starts `window` (and the next late run's window doubles it, up to
/// [`MAX_AVOID`]); a run on time starts none and resets the next one to [`AVOID`]. Returns (this run's window,
/// the next late run's window), in nanoseconds.
fn avoid_window(late: bool, window: u64) -> (Option<u64>, u64) {
    if late {
        (Some(window), (window * 2).min(MAX_AVOID.as_nanos() as u64))
    } else {
        (None, AVOID.as_nanos() as u64)
    }
}

/// Nanoseconds since [`epoch`] until which the team is avoided (0: not avoided).
static AVOID_UNTIL: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// How often a GEMM inside an avoidance window looks whether other processes have left the cores.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Cores short of the team's threads that the others may still have held, on average over the look interval, for
/// the probe to call the team back. Why half a core: the interval runs from the last look, which may lie before an
/// idle gap (no GEMM, so no look): a neighbour that stopped 100 ms into a 300 ms interval reads as a third of a
/// core; one that stays reads as its whole core (and `/proc/stat`'s 10 ms ticks read a 100 ms interval to about
/// ±0.1 core per CPU). A lighter neighbour that this lets through makes the retry late, and the look interval
/// backs off.
const PROBE_SLACK: f64 = 0.5;
/// The look interval doubles after each retry that a probe allowed and that found a thread late, up to this
/// many times (100 ms · 2⁶ = 6.4 s, near [`MAX_AVOID`]).
const MAX_PROBE_BACKOFF: u32 = 6;

/// The probe's state: the sample that the current interval starts from (inside a window: the last look; outside:
/// the baseline that runs on time refresh every [`PROBE_EVERY`]), how many probe-allowed retries in a row were
/// late, whether the last window was ended by the probe, and whether the last run on the team was late.
struct Probe {
    last: Option<neighbours::Sample>,
    misses: u32,
    ended_early: bool,
    late_before: bool,
}

static PROBE: Mutex<Probe> = Mutex::new(Probe::START);

/// Whether other processes, between two samples, left room for `threads` threads of ours on the CPUs we may use.
fn room_for(threads: usize, earlier: &neighbours::Sample, now: &neighbours::Sample) -> bool {
    now.cpus as f64 - earlier.others_cores(now) >= threads as f64 - PROBE_SLACK
}

/// The look interval after `misses` late probe-allowed retries in a row.
fn probe_every(misses: u32) -> Duration {
    PROBE_EVERY * (1u32 << misses.min(MAX_PROBE_BACKOFF))
}

impl Probe {
    /// No sample yet, no misses, no window ended, no late run: the state before the first run on the team.
    const START: Probe = Probe { last: None, misses: 0, ended_early: false, late_before: false };

    /// Inside a window, at `now`: whether the others have left room for `threads` threads over the last look
    /// interval (then the window ends). Takes a new sample (`sample`) at most every [`probe_every`]; answers no
    /// when none can be read.
    fn look(&mut self, threads: usize, now: Instant, sample: impl FnOnce() -> Option<neighbours::Sample>) -> bool {
        let Some(last) = self.last else {
            self.last = sample();
            return false;
        };
        if now.saturating_duration_since(last.at) < probe_every(self.misses) {
            return false;
        }
        let Some(next) = sample() else { return false };
        self.last = Some(next);
        let left = room_for(threads, &last, &next);
        self.ended_early |= left;
        left
    }

    /// After a run on the team, at `now`; returns whether a late run is forgiven (starts no window). A late run is
    /// forgiven when it follows a run on time and the others left room for `threads` threads over the last
    /// [`PROBE_EVERY`] or more before it (the baseline against `sample`): the thread was held up by something
    /// brief (a kernel thread's tick of work, a wake-up of an idle virtual CPU), not by a neighbour that stays.
    /// A late run that is not forgiven starts the next interval at `sample` (and counts a miss when the probe had
    /// ended the window before it), except a first late run whose baseline was too young to judge: the window's
    /// first look then reads from that baseline, one interval after it, not one after the late run. Why: on the
    /// quiet guest a team thread is late about twice per hundred runs (an idle virtual CPU's wake-up), and each
    /// window sent the next 100 ms or more of calls to the helpers before its first look (run V of 2026-12-02: one
    /// window, 9 of 16 M = 1 calls on the helpers at 0.714 ms against the team's 0.585); from the baseline the first
    /// look comes 0-100 ms after the late run. A neighbour that arrived inside that interval reads as part of a
    /// core and may end the window early: the retry is then late, counts a miss and the next look waits twice as
    /// long, as for any wrong look. One on time clears the misses and refreshes the baseline when it is older
    /// than [`PROBE_EVERY`] (one `/proc/stat` read, ~13 µs, per interval).
    fn after_team_run(
        &mut self,
        late: bool,
        threads: usize,
        now: Instant,
        sample: impl FnOnce() -> Option<neighbours::Sample>,
    ) -> bool {
        let mut forgiven = false;
        if late {
            let next = sample();
            // The first late run after runs on time (not a retry the probe allowed), and its baseline's age.
            let first_late = !self.late_before && self.misses == 0 && !self.ended_early;
            let baseline = match (&self.last, &next) {
                (Some(l), Some(n)) => Some((l, n, n.at.saturating_duration_since(l.at))),
                _ => None,
            };
            forgiven = !self.late_before
                && self.misses == 0
                && baseline.is_some_and(|(l, n, age)| age >= PROBE_EVERY && room_for(threads, l, n));
            let young_baseline = first_late && baseline.is_some_and(|(_, _, age)| age < PROBE_EVERY);
            if self.ended_early {
                self.misses = self.misses.saturating_add(1);
            }
            if !forgiven && !young_baseline {
                self.last = next;
            }
        } else {
            self.misses = 0;
            if self.last.is_none_or(|l| now.saturating_duration_since(l.at) >= PROBE_EVERY) {
                self.last = sample();
            }
        }
        self.ended_early = false;
        self.late_before = late;
        forgiven
    }
}

/// [`Probe::look`] on the process's probe; a call that finds it busy on another thread answers no.
fn neighbours_left(threads: usize) -> bool {
    match PROBE.try_lock() {
        Ok(mut p) => p.look(threads, Instant::now(), neighbours::sample),
        Err(_) => false,
    }
}

/// Whether a recent run on the team found a thread late and the others still hold the cores that a run of
/// `threads` threads would need (see the module docs).
fn team_contended(threads: usize) -> bool {
    let until = AVOID_UNTIL.load(Ordering::Relaxed);
    if until == 0 || nanos_since_epoch(Instant::now()) >= until {
        return false;
    }
    if neighbours_left(threads) {
        AVOID_UNTIL.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

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
    start: Instant,
    caller: std::thread::ThreadId,
    /// The latest arrival of a team thread, in nanoseconds after `start`.
    last_arrival: AtomicU64,
    /// When the last thread found no task left, in nanoseconds after `start`.
    last_done: AtomicU64,
    /// Tasks run by team threads other than the caller.
    by_team: AtomicUsize,
    /// When the caller found no task left, in nanoseconds after `start`.
    caller_done: AtomicU64,
    /// Where the other threads started their latest task, and the caller's moves ([`spread`]).
    spreading: Spreading,
}

/// Whether the caller of a parallel run moves off a CPU that another thread of the run shares ([`set_spread`]).
static SPREAD: AtomicBool = AtomicBool::new(true);

/// Turns the caller's move off a CPU shared with another thread of its run on (the default) or off (`gemm::spread`
/// says why). The same bits either way; a measurement aid, for timing the two in the same rounds.
pub fn set_spread(on: bool) {
    SPREAD.store(on, Ordering::Relaxed);
}

/// One run's spreading ([`spread`]): where its other threads started their latest task, and how often the caller
/// moved off a CPU they shared with it. One value per run, read by every thread of it.
struct Spreading {
    seen: Seen,
    moves: AtomicU64,
}

impl Spreading {
    const fn new() -> Spreading {
        Spreading { seen: Seen::new(), moves: AtomicU64::new(0) }
    }

    /// At a task start, `ns` after the run's start: another thread (`caller` `None`) notes its CPU; the caller looks
    /// whether one has shared its CPU long enough and moves off it (counted in [`Spreading::moves`]).
    fn look(&self, caller: Option<&mut Watch>, ns: u64) {
        if ns < spread::LOOK_AFTER.as_nanos() as u64 || !SPREAD.load(Ordering::Relaxed) {
            return;
        }
        let Some(cpu) = spread::current_cpu() else { return };
        match caller {
            None => self.seen.note(cpu, ns),
            Some(watch) => {
                if watch.look(cpu, ns, &self.seen) && spread::move_off(cpu) {
                    self.moves.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Times the caller moved so far.
    fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }
}

extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each` keeps alive until `GOMP_parallel` returns.
    let job = unsafe { &*(data as *const Job) };
    job.last_arrival.fetch_max(job.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let is_caller = std::thread::current().id() == job.caller;
    let mut watch = Watch::new();
    let mut ran = 0;
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n || job.panicked.load(Ordering::Relaxed) {
            break;
        }
        let ns = job.start.elapsed().as_nanos() as u64;
        job.spreading.look(is_caller.then_some(&mut watch), ns);
        // A panic must not unwind through C frames: record it and re-raise on the calling thread.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.f)(i))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        ran += 1;
    }
    let done = job.start.elapsed().as_nanos() as u64;
    job.last_done.fetch_max(done, Ordering::Relaxed);
    if !is_caller {
        job.by_team.fetch_add(ran, Ordering::Relaxed);
    } else {
        job.caller_done.store(done, Ordering::Relaxed);
    }
}

/// Where the time of parallel runs goes besides the tasks themselves, summed over runs since the process started
/// (or the last reset): one set for runs on the OpenMP team ([`team_stats`]), one for runs on nnic's own
/// helpers ([`pool_stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Runs.
    pub runs: u64,
    /// OpenMP team: runs whose last thread arrived more than [`LATE`] after the start. Own helpers: runs in which no
    /// helper took a task (the caller ran them all).
    pub late: u64,
    /// OpenMP team: runs that started an avoidance window (the runs of the next [`AVOID`], or longer after a late
    /// retry, went to the kernel pool): late ones whose thread also arrived after half the caller's part of the run
    /// or whose join held the caller ([`late_run`]), and that were not forgiven as a brief hold-up
    /// ([`Probe::after_team_run`]). Own helpers: 0.
    pub windows: u64,
    /// Tasks, and tasks taken by threads other than the caller (about half with two threads when the helper
    /// starts at once; few when it wakes late).
    pub tasks: u64,
    pub tasks_by_team: u64,
    /// Nanoseconds from a run's start until its last (OpenMP) or first (own helpers) other thread arrived,
    /// summed over the runs it arrived in: the fork, or the hand-off.
    pub arrival_ns: u64,
    /// Nanoseconds from the moment no task was left until the run returned (the join), summed.
    pub tail_ns: u64,
    /// Nanoseconds of the whole run, summed.
    pub region_ns: u64,
    /// Nanoseconds the caller spent after it found no task left (waiting for tasks other threads still ran,
    /// then the join), summed: what the split costs the caller beyond its own share.
    pub wait_ns: u64,
    /// Times the caller moved to another CPU because a thread of its run had shared its CPU for 2 ms (see
    /// `gemm::spread`).
    pub moves: u64,
}

const FIELDS: usize = 10;

/// Counters of one backend's runs, in the order of [`TeamStats`]'s fields.
struct Counters([AtomicU64; FIELDS]);

impl Counters {
    const fn new() -> Counters {
        Counters([const { AtomicU64::new(0) }; FIELDS])
    }

    fn read(&self) -> TeamStats {
        let c = |i: usize| self.0[i].load(Ordering::Relaxed);
        TeamStats {
            runs: c(0),
            late: c(1),
            windows: c(2),
            tasks: c(3),
            tasks_by_team: c(4),
            arrival_ns: c(5),
            tail_ns: c(6),
            region_ns: c(7),
            wait_ns: c(8),
            moves: c(9),
        }
    }

    fn reset(&self) {
        self.0.iter().for_each(|c| c.store(0, Ordering::Relaxed));
    }

    /// Adds one run: `late` as defined per backend, `window` whether it started an avoidance window, `done` when
    /// the last thread found no task left and `caller_done` when the caller did, both in nanoseconds after the
    /// start; `moves` of the caller.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        late: bool,
        window: bool,
        tasks: usize,
        by_team: usize,
        arrival_ns: u64,
        done: u64,
        caller_done: u64,
        region_ns: u64,
        moves: u64,
    ) {
        let add = [
            1,
            late as u64,
            window as u64,
            tasks as u64,
            by_team as u64,
            arrival_ns,
            region_ns.saturating_sub(done),
            region_ns,
            region_ns.saturating_sub(caller_done),
            moves,
        ];
        for (c, v) in self.0.iter().zip(add) {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }
}

static OPENMP_RUNS: Counters = Counters::new();
static POOL_RUNS: Counters = Counters::new();

/// The counters of runs on the OpenMP team.
pub fn team_stats() -> TeamStats {
    OPENMP_RUNS.read()
}

/// Sets the counters of [`team_stats`] to zero.
pub fn reset_team_stats() {
    OPENMP_RUNS.reset()
}

/// The counters of runs on nnic's own helpers ([`crate::team`]).
pub fn pool_stats() -> TeamStats {
    POOL_RUNS.read()
}

/// Sets the counters of [`pool_stats`] to zero.
pub fn reset_pool_stats() {
    POOL_RUNS.reset()
}

/// Runs `f(i)` for every `i` in `0..n`, on up to `threads` threads (tasks taken in order, dynamically): on the
/// OpenMP team unless a recent late team thread opened an avoidance window (see the module docs).
pub(crate) fn for_each(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    run(n, threads, None, f)
}

/// What a GEMM tells [`for_each_routed`] about its run: `key` names its shape class (runs of one class are
/// compared with each other), `units` its work (the costs are kept per unit, so that shapes of one class compare).
#[derive(Copy, Clone, Debug)]
pub(crate) struct Work {
    pub key: u64,
    pub units: f64,
}

/// [`for_each`] for a GEMM: with [`set_routing`] on, its runs go the way that cost its class least lately
/// ([`super::route`]), the team or the helpers, with the other way tried now and then, and the avoidance window
/// does not apply (a late team run costs the class's team estimate what it cost, see `route`'s docs for why);
/// off (the default), as [`for_each`].
pub(crate) fn for_each_routed(n: usize, threads: usize, work: Work, f: &(dyn Fn(usize) + Sync)) {
    run(n, threads, Some(work), f)
}

/// The classes of [`for_each_routed`].
static ROUTER: Mutex<Router> = Mutex::new(Router::new());

/// Whether [`for_each_routed`] routes by cost ([`set_routing`]); off by default.
static ROUTING: AtomicBool = AtomicBool::new(false);

/// Turns the GEMM's routing by measured cost on or off (the default: its runs then follow the avoidance window, as
/// the other kernels' do). The same bits either way. Why off by default: each way's cost depends on what the
/// process ran just before (torch's OpenMP thread spins for milliseconds after a team region and takes a core from
/// the helpers; after helper runs it sleeps and a team run waits for its wake-up), so a one-run probe of the other
/// way is measured in the chosen way's wake and finds it dear. Under load 6-9 (2026-12-02) the BERT encoder's
/// GEMMs stayed on a late team (35-47 of 48 runs, 27-42 of them late) and the forward took 1.2-1.5× the window's,
/// which keeps every run of the process on the helpers; calls between torch ops (`bench/gemm.py`'s rows) gained
/// 1.1-8× from it beside a neighbour. Routing that decides for the whole process over phases of runs is the next
/// step (see `docs/performance/low-bit.md`).
pub fn set_routing(on: bool) {
    ROUTING.store(on, Ordering::Relaxed);
}

/// How many [`for_each_routed`] runs went each way, and how many of them were probes (not the way their class
/// had chosen), since the process started (or the last reset).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub team: u64,
    pub helpers: u64,
    pub probes: u64,
    /// Switches of a class from one way to the other.
    pub switches: u64,
}

static ROUTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The counters of [`RouteStats`].
pub fn route_stats() -> RouteStats {
    let c = |i: usize| ROUTED[i].load(Ordering::Relaxed);
    RouteStats { team: c(0), helpers: c(1), probes: c(2), switches: c(3) }
}

/// Sets the counters of [`route_stats`] to zero.
pub fn reset_route_stats() {
    ROUTED.iter().for_each(|c| c.store(0, Ordering::Relaxed));
}

fn router() -> std::sync::MutexGuard<'static, Router> {
    ROUTER.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(n: usize, threads: usize, work: Option<Work>, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    let threads = threads.min(n);
    if threads <= 1 {
        (0..n).for_each(f);
        return;
    }
    let Some(parallel) = gomp() else {
        on_pool(n, threads, f);
        return;
    };
    let Some(work) = work.filter(|_| ROUTING.load(Ordering::Relaxed)) else {
        if team_contended(threads) {
            on_pool(n, threads, f);
        } else {
            on_team(parallel, n, threads, f);
        }
        return;
    };
    let (way, probe) = router().choose(work.key);
    let start = Instant::now();
    match way {
        Way::Team => on_team(parallel, n, threads, f),
        Way::Helpers => on_pool(n, threads, f),
    }
    let cost = start.elapsed().as_nanos() as f64 / work.units.max(1.0);
    let switched = router().record(work.key, way, cost);
    for (i, add) in [way == Way::Team, way == Way::Helpers, probe, switched].into_iter().enumerate() {
        ROUTED[i].fetch_add(add as u64, Ordering::Relaxed);
    }
}

/// One run on the OpenMP team; records how late its last thread arrived (the avoidance window) and the counters.
fn on_team(parallel: GompParallel, n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let start = Instant::now();
    let job = Job {
        f,
        next: AtomicUsize::new(0),
        n,
        panicked: AtomicBool::new(false),
        start,
        caller: std::thread::current().id(),
        last_arrival: AtomicU64::new(0),
        last_done: AtomicU64::new(0),
        by_team: AtomicUsize::new(0),
        caller_done: AtomicU64::new(0),
        spreading: Spreading::new(),
    };
    // SAFETY: `trampoline` only reads `job`, which outlives the call; flags 0 = default binding.
    unsafe { parallel(trampoline, &job as *const Job as *mut c_void, threads as u32, 0) };
    let region_ns = start.elapsed().as_nanos() as u64;
    let arrival = job.last_arrival.load(Ordering::Relaxed);
    let late = late_run(arrival, job.caller_done.load(Ordering::Relaxed), region_ns);
    let forgiven = PROBE.lock().unwrap_or_else(|e| e.into_inner()).after_team_run(
        late,
        threads,
        Instant::now(),
        neighbours::sample,
    );
    let (now_avoid, next) = avoid_window(late && !forgiven, AVOID_NS.load(Ordering::Relaxed));
    AVOID_NS.store(next, Ordering::Relaxed);
    if let Some(w) = now_avoid {
        let until = nanos_since_epoch(Instant::now() + Duration::from_nanos(w)).max(1);
        AVOID_UNTIL.store(until, Ordering::Relaxed);
    }
    OPENMP_RUNS.add(
        arrival > LATE.as_nanos() as u64,
        now_avoid.is_some(),
        n,
        job.by_team.load(Ordering::Relaxed),
        arrival,
        job.last_done.load(Ordering::Relaxed),
        job.caller_done.load(Ordering::Relaxed),
        region_ns,
        job.spreading.moves(),
    );
    if job.panicked.load(Ordering::Relaxed) {
        panic!("a GEMM task panicked");
    }
}

/// Tasks shared by the calling thread and the helpers it wakes on the GEMM team ([`crate::team`]).
struct Shared {
    /// The task body; dereferenced only for a claimed task (`i < n`), and the caller returns only after every
    /// claimed task is done, so it outlives each use.
    f: *const (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    done: AtomicUsize,
    n: usize,
    /// Helpers still allowed to join (`threads - 1` at the start).
    seats: AtomicIsize,
    panicked: AtomicBool,
    lock: Mutex<()>,
    all_done: Condvar,
    start: Instant,
    /// When the first helper arrived, in nanoseconds after `start` (`u64::MAX`: none yet).
    first_arrival: AtomicU64,
    /// Tasks run by helpers.
    by_helpers: AtomicUsize,
    /// When the last thread found no task left, in nanoseconds after `start`.
    last_done: AtomicU64,
    /// Where the helpers started their latest task, and the caller's moves ([`spread`]).
    spreading: Spreading,
}
// SAFETY: `f` is `Sync` and used only while valid (see above); the rest are thread-safe types.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Claims and runs tasks until none is left (`helper`: on a helper thread, counted as such).
    fn work(&self, helper: bool) {
        let mut watch = Watch::new();
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.n {
                self.last_done.fetch_max(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                return;
            }
            let ns = self.start.elapsed().as_nanos() as u64;
            self.spreading.look((!helper).then_some(&mut watch), ns);
            if helper {
                // counted before the task is reported done, so the caller reads every helper task
                self.by_helpers.fetch_add(1, Ordering::Relaxed);
            }
            if !self.panicked.load(Ordering::Relaxed) {
                // SAFETY: task `i` is claimed and not yet counted done, so the caller is still waiting.
                let f = unsafe { &*self.f };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
            }
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.all_done.notify_all();
            }
        }
    }

    /// A helper's part: take a seat if one is left, then tasks.
    fn join(&self) {
        self.first_arrival.fetch_min(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if self.next.load(Ordering::Relaxed) < self.n && self.seats.fetch_sub(1, Ordering::AcqRel) > 0 {
            self.work(true);
        }
    }
}

/// [`for_each`] on the calling thread plus up to `threads - 1` helpers of the GEMM team (see the module
/// docs).
fn on_pool(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    // SAFETY: only the lifetime is erased; `Shared::f` documents why every dereference is in time.
    let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let shared = Arc::new(Shared {
        f,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        n,
        seats: AtomicIsize::new(threads as isize - 1),
        panicked: AtomicBool::new(false),
        lock: Mutex::new(()),
        all_done: Condvar::new(),
        start: Instant::now(),
        first_arrival: AtomicU64::new(u64::MAX),
        by_helpers: AtomicUsize::new(0),
        last_done: AtomicU64::new(0),
        spreading: Spreading::new(),
    });
    let team = team::team();
    if team.helpers() > 0 {
        let s = shared.clone();
        team.publish(Arc::new(move || s.join()));
    }
    shared.work(false);
    let caller_done = shared.start.elapsed().as_nanos() as u64;
    // Tasks a helper claimed are short (one output block), so poll for them first, but no longer than the
    // helpers' own bound: a helper that lost its core to another process is waited for asleep.
    let (t0, bound) = (Instant::now(), team::spin());
    let mut polls = 0u32;
    while shared.done.load(Ordering::Acquire) < n {
        polls = polls.wrapping_add(1);
        if polls & 63 != 0 || t0.elapsed() < bound {
            std::hint::spin_loop();
            continue;
        }
        let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        if shared.done.load(Ordering::Acquire) < n {
            // The last helper notifies under the lock after counting its task, so no wakeup is lost.
            drop(shared.all_done.wait(guard).unwrap_or_else(|e| e.into_inner()));
        }
    }
    let region_ns = shared.start.elapsed().as_nanos() as u64;
    let arrival = shared.first_arrival.load(Ordering::Relaxed);
    let by_helpers = shared.by_helpers.load(Ordering::Relaxed);
    let done = shared.last_done.load(Ordering::Relaxed).max(caller_done);
    let arrival = if arrival == u64::MAX { 0 } else { arrival };
    let moves = shared.spreading.moves();
    POOL_RUNS.add(by_helpers == 0, false, n, by_helpers, arrival, done, caller_done, region_ns, moves);
    if shared.panicked.load(Ordering::Relaxed) {
        panic!("a GEMM task panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread::ThreadId;

    /// The tests below publish jobs to the one process-wide team; a newer job replaces an untaken one, so they
    /// take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// A helper that stalls inside a task (as when another process takes its core) holds only that task:
    /// the caller runs every other one meanwhile and then waits for the one the helper claimed.
    #[test]
    fn a_stalled_helper_costs_only_the_task_it_holds() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if team::team().helpers() == 0 {
            return; // a one-CPU machine: the caller runs everything, nothing to stall
        }
        let caller = std::thread::current().id();
        let n = 32;
        let mut joined = 0;
        // Another GEMM of the process can replace this job before a helper takes it: then the attempt runs
        // on the caller alone and another is made.
        for _attempt in 0..30 {
            let ran: Vec<Mutex<Option<ThreadId>>> = (0..n).map(|_| Mutex::new(None)).collect();
            let helper_started = AtomicBool::new(false);
            on_pool(n, 2, &|i| {
                let me = std::thread::current().id();
                if me == caller {
                    // The caller's first task gives a helper time to join (a wait, not a timing check).
                    let t0 = Instant::now();
                    while i == 0 && !helper_started.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(2) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                } else if !helper_started.swap(true, Ordering::AcqRel) {
                    std::thread::sleep(Duration::from_millis(300)); // stalled inside its first task
                }
                *ran[i].lock().unwrap() = Some(me);
            });
            let who: Vec<ThreadId> = ran.iter().map(|r| r.lock().unwrap().expect("every task ran once")).collect();
            let by_helper = who.iter().filter(|&&t| t != caller).count();
            if helper_started.load(Ordering::Acquire) {
                assert_eq!(by_helper, 1, "the stalled helper ran only the task it held");
                joined += 1;
                if joined == 2 {
                    return;
                }
            } else {
                assert_eq!(by_helper, 0);
            }
        }
        panic!("a helper joined only {joined} of 30 attempts");
    }

    /// The window after a late run doubles with each late retry up to the bound, and a run on time resets it.
    #[test]
    fn late_retries_double_the_window_up_to_the_bound_and_a_run_on_time_resets_it() {
        let (first, max) = (AVOID.as_nanos() as u64, MAX_AVOID.as_nanos() as u64);
        let mut window = first;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let (now, next) = avoid_window(true, window);
            seen.push(now.unwrap());
            window = next;
        }
        assert_eq!(&seen[..3], &[first, 2 * first, 4 * first]);
        assert!(seen.windows(2).all(|w| w[1] == (2 * w[0]).min(max)) && *seen.last().unwrap() == max);
        assert_eq!(avoid_window(false, window), (None, first));
    }

    /// A thread over [`LATE`] late counts for the window only when it also arrived after half the caller's part of
    /// the run or the join then held the caller over [`LATE`]: a big run (M = 128 × 4096², the caller's part ~6 ms)
    /// keeps a thread 2.5 ms late on the team when the run then ends with the caller's last task; a small one, any run
    /// whose thread came after the caller ran out of tasks, or a big one whose join stalled, does not. Timings
    /// injected.
    #[test]
    fn a_late_thread_counts_only_when_it_arrived_after_half_the_callers_part_or_stalled_the_join() {
        let us = |v: u64| v * 1_000;
        // M = 128 at 4096²: a quiet hiccup of 2.5 ms inside a 6 ms caller part, and 3 ms of 6.5, each run ending
        // 0.1 ms after the caller's last task
        assert!(!late_run(us(2_500), us(6_000), us(6_100)));
        assert!(!late_run(us(3_000), us(6_500), us(6_600)));
        // the same run whose join then held the caller 1.5 ms (the team thread off its core at the end)
        assert!(late_run(us(2_500), us(6_000), us(7_500)));
        // M = 1 beside a neighbour: 1 ms late, the caller done at 1.2 ms (it ran almost all the tasks)
        assert!(late_run(us(1_000), us(1_200), us(1_300)));
        // after the caller ran out of tasks: the join waited for it, whatever the run's size
        assert!(late_run(us(9_000), us(8_000), us(9_500)));
        // never before LATE, however small the run or long the join
        assert!(!late_run(us(400), us(300), us(5_000)) && !late_run(LATE.as_nanos() as u64, 0, us(5_000)));
        // the bounds: half the caller's part, and LATE of join
        assert!(!late_run(us(5_000), us(10_000), us(10_500)) && late_run(us(5_001), us(10_000), us(10_000)));
        assert!(late_run(us(1_000), us(10_000), us(10_501)));
    }

    /// The probe calls the team back when the others left room for its threads (up to half a core short on
    /// average over the interval).
    #[test]
    fn the_probe_finds_room_when_the_others_leave_the_team_its_cores() {
        let t0 = Instant::now();
        let at = |ms: u64, busy_ms: u64, own_ms: u64, cpus: usize| neighbours::Sample {
            at: t0 + Duration::from_millis(ms),
            busy_ns: busy_ms * 1_000_000,
            self_ns: own_ms * 1_000_000,
            cpus,
        };
        let start = at(0, 0, 0, 2);
        // over 100 ms on 2 CPUs: a neighbour's full core (100 ms busy not ours) leaves no room for 2 threads
        assert!(!room_for(2, &start, &at(100, 250, 150, 2)));
        // a tenth of a core of others does, and so does a neighbour that left a third into the interval
        assert!(room_for(2, &start, &at(100, 210, 200, 2)));
        assert!(room_for(2, &start, &at(300, 700, 600, 2)));
        // one that held a core for half the interval and more does not
        assert!(!room_for(2, &start, &at(300, 760, 600, 2)));
        // on 16 CPUs a neighbour's core leaves room for 2 threads
        assert!(room_for(2, &at(0, 0, 0, 16), &at(100, 300, 200, 16)));
    }

    /// Inside a window the probe samples every interval and says whether the others left; a retry it allowed
    /// that finds a thread late doubles the interval (bounded), a run on time resets it.
    #[test]
    fn a_wrong_probe_backs_off_and_a_run_on_time_resets_it() {
        let t0 = Instant::now();
        let ms = |v: u64| t0 + Duration::from_millis(v);
        let quiet = |v: u64| Some(neighbours::Sample { at: ms(v), busy_ns: 0, self_ns: 0, cpus: 2 });
        let busy = |v: u64| Some(neighbours::Sample { at: ms(v), busy_ns: v * 1_000_000, self_ns: 0, cpus: 2 });
        let mut p = Probe::START;
        assert!(!p.after_team_run(true, 2, ms(0), || busy(0))); // a late run starts the window and the first interval
        assert!(!p.look(2, ms(50), || panic!("sampled before the interval ended")));
        assert!(!p.look(2, ms(100), || busy(100)), "a neighbour held a core");
        assert!(p.look(2, ms(200), || quiet(200)), "no one else ran: the team is tried again");
        // that retry is late after all (say a neighbour within the process): the next look waits twice as long
        assert!(!p.after_team_run(true, 2, ms(210), || quiet(210)), "a late retry is never forgiven");
        assert_eq!((p.misses, probe_every(p.misses)), (1, 2 * PROBE_EVERY));
        assert!(!p.look(2, ms(300), || panic!("sampled before the doubled interval ended")));
        assert!(p.look(2, ms(410), || quiet(410)));
        p.after_team_run(true, 2, ms(420), || quiet(420));
        assert_eq!(p.misses, 2);
        for _ in 0..10 {
            p.ended_early = true;
            p.after_team_run(true, 2, ms(420), || quiet(420));
        }
        assert_eq!(probe_every(p.misses), PROBE_EVERY * (1 << MAX_PROBE_BACKOFF));
        // a window that ran out by itself and a late retry: no miss of the probe's
        let before = p.misses;
        p.after_team_run(true, 2, ms(430), || quiet(430));
        assert_eq!(p.misses, before);
        assert!(!p.after_team_run(false, 2, ms(430), || panic!("a run on time inside the interval takes no sample")));
        assert_eq!((p.misses, probe_every(p.misses)), (0, PROBE_EVERY));
        // no readable sample (not Linux): the probe never ends a window
        let mut q = Probe::START;
        q.after_team_run(true, 2, ms(0), || None);
        assert!(!q.look(2, ms(1_000), || None) && !q.look(2, ms(2_000), || None));
    }

    /// A late run after runs on time, with the others leaving room over the last interval or more, is forgiven
    /// (no window); a second late run in a row, one with too short a baseline, or one beside a neighbour that held a
    /// core is not. Runs on time refresh the baseline once per interval.
    #[test]
    fn a_brief_hold_up_starts_no_window_and_a_second_late_run_does() {
        let t0 = Instant::now();
        let ms = |v: u64| t0 + Duration::from_millis(v);
        // `others_ms` of other processes' CPU by `v` ms (this process's own time is not counted in busy here)
        let at = |v: u64, others_ms: u64| {
            Some(neighbours::Sample { at: ms(v), busy_ns: others_ms * 1_000_000, self_ns: 0, cpus: 2 })
        };
        let mut p = Probe::START;
        assert!(!p.after_team_run(false, 2, ms(0), || at(0, 0)), "a run on time never starts a window");
        assert!(p.last.is_some(), "the first run on time takes the baseline");
        assert!(!p.after_team_run(false, 2, ms(50), || panic!("no new baseline inside the interval")));
        // 150 ms later a thread is late, and the others took 3 ms of CPU meanwhile: forgiven
        assert!(p.after_team_run(true, 2, ms(150), || at(150, 3)));
        // the very next run is late again: a neighbour stays, the window starts
        assert!(!p.after_team_run(true, 2, ms(152), || at(152, 5)));
        // runs on time again; the baseline is refreshed after the interval only
        assert!(!p.after_team_run(false, 2, ms(160), || panic!("baseline taken at the late run is fresh")));
        assert!(!p.after_team_run(false, 2, ms(260), || at(260, 5)));
        // late with a baseline under one interval old: not forgiven (the ticks of /proc/stat say too little)
        assert!(!p.after_team_run(true, 2, ms(300), || at(300, 5)));
        assert!(!p.after_team_run(false, 2, ms(400), || at(400, 5)));
        // late after 200 ms in which a neighbour held a core for 150 ms: not forgiven
        assert!(!p.after_team_run(true, 2, ms(600), || at(600, 155)));
        // no readable sample: never forgiven
        let mut q = Probe::START;
        q.after_team_run(false, 2, ms(0), || None);
        assert!(!q.after_team_run(true, 2, ms(500), || None));
    }

    /// A first late run whose baseline is under one interval old keeps that baseline: the window's first look
    /// comes one interval after the baseline (so within one interval of the late run) and reads from it; a second
    /// late run in a row starts its interval at itself.
    #[test]
    fn a_late_run_with_a_young_baseline_gets_its_first_look_one_interval_after_the_baseline() {
        let t0 = Instant::now();
        let ms = |v: u64| t0 + Duration::from_millis(v);
        let at = |v: u64, others_ms: u64| {
            Some(neighbours::Sample { at: ms(v), busy_ns: others_ms * 1_000_000, self_ns: 0, cpus: 2 })
        };
        let mut p = Probe::START;
        p.after_team_run(false, 2, ms(0), || at(0, 0));
        assert!(!p.after_team_run(true, 2, ms(60), || at(60, 1)), "too young to forgive");
        assert_eq!(p.last.map(|l| l.at), Some(ms(0)), "the baseline stays");
        assert!(!p.look(2, ms(90), || panic!("sampled before the baseline's interval ended")));
        assert!(p.look(2, ms(100), || at(100, 2)), "no one else ran: the window ends 40 ms after the late run");
        assert!(!p.after_team_run(false, 2, ms(110), || panic!("the look's sample is the baseline")));
        // beside a neighbour that took a core from 150 ms on: the first late run keeps the baseline of 100 ms ...
        assert!(!p.after_team_run(true, 2, ms(160), || at(160, 12)));
        assert_eq!(p.last.map(|l| l.at), Some(ms(100)));
        // ... and its look at 200 ms reads half a core (the neighbour's 50 of 100 ms): tried again, late again
        assert!(p.look(2, ms(200), || at(200, 52)));
        assert!(!p.after_team_run(true, 2, ms(201), || at(201, 53)), "a late retry is never forgiven");
        assert_eq!((p.misses, p.last.map(|l| l.at)), (1, Some(ms(201))), "a miss: the next interval starts here");
        assert!(!p.look(2, ms(301), || panic!("sampled before the doubled interval ended")));
        assert!(!p.look(2, ms(401), || at(401, 253)), "the neighbour's whole core: the window stays");
    }

    /// The watch in a run's task loop: another thread noting the caller's CPU at every look for the bound moves the
    /// caller once (where the mask has a second CPU), counted; before [`spread::LOOK_AFTER`] nothing is looked at;
    /// with the spreading off nothing moves. The run's clock is injected.
    #[test]
    fn a_caller_that_shares_its_cpu_for_the_bound_moves_once_and_is_counted() {
        std::thread::spawn(|| {
            let Some(cpu) = spread::current_cpu() else { return };
            let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
            let (run, mut watch) = (Spreading::new(), Watch::new());
            let ms = |v: u64| v * 1_000_000;
            // The other thread's note comes from wherever the caller is now: the two look as one CPU.
            let step = |t: u64, watch: &mut Watch| {
                run.seen.note(spread::current_cpu().unwrap_or(cpu), ms(t));
                run.look(Some(watch), ms(t));
            };
            run.look(None, 0);
            assert!(run.seen.get_for_test().is_none(), "no note before LOOK_AFTER");
            for t in 1..=4 {
                step(t, &mut watch);
            }
            assert_eq!(run.moves(), u64::from(two_cpus), "one move after 2 ms together");
            for t in 5..=20 {
                step(t, &mut watch);
            }
            assert_eq!(run.moves(), u64::from(two_cpus), "none again within the gap");
            set_spread(false);
            let mut off = Watch::new();
            for t in 30..=60 {
                step(t, &mut off);
            }
            set_spread(true);
            assert_eq!(run.moves(), u64::from(two_cpus), "the spreading off: no move");
        })
        .join()
        .unwrap();
    }

    /// Several callers at once (each publishes its job; a newer one replaces an untaken older one): every
    /// task of every call runs exactly once.
    #[test]
    fn concurrent_callers_each_run_every_task_once() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::scope(|s| {
            for c in 0..4 {
                s.spawn(move || {
                    for round in 0..50 {
                        let n = 1 + (c * 7 + round) % 40;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        on_pool(n, 4, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "caller {c} round {round}");
                    }
                });
            }
        });
    }
}
