//! The GEMM's helper team: persistent threads that take a published job, spin a bounded time after each
//! job for the next one, then park.
//!
//! Why not rayon's `spawn` per GEMM: each call then boxes a job, pushes it on the global queue and wakes a
//! sleeping worker through the kernel (tens of microseconds per GEMM, as much as a whole 4096 × 4096 GEMV
//! on hot weights spends in the kernel's fixed cost). Here a helper that finished a job polls one atomic for
//! [`spin`] (50 µs by default) and so starts the next GEMM of a layer sequence within a microsecond; after
//! that it parks on a condition variable and costs nothing. The spin is bounded so that a helper never holds
//! a core that another process (or torch's next op) needs for longer than the bound: a layer that follows
//! within the bound finds the helper awake, anything later pays one wake-up. [`stats`] counts which it was
//! and how long the helpers spun, so the bound's cost is measured, not guessed; [`set_spin`] changes it (0:
//! park at once).
//!
//! A job is an `Arc<dyn Fn()>` that every helper free at the time calls once; jobs are not queued: a newer
//! job replaces one that no helper took yet (its caller does that work itself, see `gemm::par`).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A job: called once by each helper that takes it.
pub type Job = Arc<dyn Fn() + Send + Sync>;

/// How long a helper polls for the next job before it parks.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Upper bound accepted by [`set_spin`].
pub const MAX_SPIN: Duration = Duration::from_millis(10);

static SPIN_NS: AtomicU64 = AtomicU64::new(DEFAULT_SPIN.as_nanos() as u64);

/// What the helpers did since the process started (or [`reset_stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Jobs published.
    pub jobs: u64,
    /// Jobs a helper took while still spinning (no wake-up through the kernel).
    pub taken_spinning: u64,
    /// Jobs a helper took after it had parked (a wake-up through the kernel).
    pub taken_parked: u64,
    /// Nanoseconds the helpers spent polling, all together: the cost of the bound.
    pub spin_ns: u64,
}

static JOBS: AtomicU64 = AtomicU64::new(0);
static TAKEN_SPINNING: AtomicU64 = AtomicU64::new(0);
static TAKEN_PARKED: AtomicU64 = AtomicU64::new(0);
static SPUN_NS: AtomicU64 = AtomicU64::new(0);

/// The counters of the helpers.
pub fn stats() -> Stats {
    Stats {
        jobs: JOBS.load(Ordering::Relaxed),
        taken_spinning: TAKEN_SPINNING.load(Ordering::Relaxed),
        taken_parked: TAKEN_PARKED.load(Ordering::Relaxed),
        spin_ns: SPUN_NS.load(Ordering::Relaxed),
    }
}

/// Sets the counters of [`stats`] to zero.
pub fn reset_stats() {
    for c in [&JOBS, &TAKEN_SPINNING, &TAKEN_PARKED, &SPUN_NS] {
        c.store(0, Ordering::Relaxed);
    }
}

/// The spin bound now.
pub fn spin() -> Duration {
    Duration::from_nanos(SPIN_NS.load(Ordering::Relaxed))
}

/// Sets how long a helper polls for the next job before parking (0 ..= [`MAX_SPIN`]). Errors: longer.
pub fn set_spin(d: Duration) -> crate::error::Result<()> {
    if d > MAX_SPIN {
        return Err(crate::error::KernelError::Invalid {
            what: format!(
                "the GEMM helpers' spin must be at most {} us, got {} us",
                MAX_SPIN.as_micros(),
                d.as_micros()
            ),
        });
    }
    SPIN_NS.store(d.as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

struct Slot {
    job: Option<Job>,
    stop: bool,
    parked: usize,
}

struct Inner {
    /// Bumped under `slot`'s lock for each published job and at shutdown; helpers poll it.
    epoch: AtomicU64,
    slot: Mutex<Slot>,
    wake: Condvar,
}

/// A set of helper threads (see the module docs).
pub struct Team {
    inner: Arc<Inner>,
    helpers: usize,
}

impl Team {
    fn new(helpers: usize) -> Team {
        let inner = Arc::new(Inner {
            epoch: AtomicU64::new(0),
            slot: Mutex::new(Slot { job: None, stop: false, parked: 0 }),
            wake: Condvar::new(),
        });
        for i in 0..helpers {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("nnic-gemm-{i}"))
                .spawn(move || helper(&inner, 0))
                .expect("cannot start a GEMM helper thread");
        }
        Team { inner, helpers }
    }

    /// Helper threads.
    pub fn helpers(&self) -> usize {
        self.helpers
    }

    /// Hands `job` to every helper that is free (spinning or parked) now or becomes free before the next
    /// publish. Returns at once.
    pub fn publish(&self, job: Job) {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.job = Some(job);
        self.inner.epoch.fetch_add(1, Ordering::Release);
        JOBS.fetch_add(1, Ordering::Relaxed);
        if slot.parked > 0 {
            self.inner.wake.notify_all();
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let mut slot = self.inner.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.stop = true;
        slot.job = None;
        self.inner.epoch.fetch_add(1, Ordering::Release);
        self.inner.wake.notify_all();
    }
}

/// A helper's loop; `seen` is the epoch when the team was made (a job published before the thread got to
/// run is still taken).
fn helper(inner: &Inner, mut seen: u64) {
    loop {
        let bound = SPIN_NS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut polls = 0u32;
        let spinning = loop {
            if inner.epoch.load(Ordering::Acquire) != seen {
                break true;
            }
            polls = polls.wrapping_add(1);
            if polls & 63 == 0 && t0.elapsed().as_nanos() as u64 >= bound {
                break false;
            }
            std::hint::spin_loop();
        };
        SPUN_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let job = {
            let mut slot = inner.slot.lock().unwrap_or_else(|e| e.into_inner());
            if !spinning {
                // The epoch is bumped under this lock, so checking it here loses no wake-up.
                while inner.epoch.load(Ordering::Acquire) == seen {
                    slot.parked += 1;
                    slot = inner.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    slot.parked -= 1;
                }
            }
            if slot.stop {
                return;
            }
            seen = inner.epoch.load(Ordering::Acquire);
            slot.job.clone()
        };
        if let Some(job) = job {
            (if spinning { &TAKEN_SPINNING } else { &TAKEN_PARKED }).fetch_add(1, Ordering::Relaxed);
            job();
        }
    }
}

static TEAM: RwLock<Option<Arc<Team>>> = RwLock::new(None);

/// The team: one helper fewer than the kernel pool has threads (the caller is the other one). Rebuilt
/// when the pool's size changed.
pub fn team() -> Arc<Team> {
    let want = crate::pool::num_threads().saturating_sub(1);
    if let Some(t) = TEAM.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        if t.helpers == want {
            return t.clone();
        }
    }
    let mut guard = TEAM.write().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(t) if t.helpers == want => t.clone(),
        _ => {
            let t = Arc::new(Team::new(want));
            // The old team's helpers stop once its last user drops it.
            *guard = Some(t.clone());
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn spin_bound_is_checked() {
        assert!(set_spin(MAX_SPIN + Duration::from_nanos(1)).is_err());
        assert!(set_spin(MAX_SPIN).is_ok());
        assert_eq!(spin(), MAX_SPIN);
        set_spin(DEFAULT_SPIN).unwrap();
    }

    /// Every helper of a private team takes a published job (woken from its park) and the counters see it.
    #[test]
    fn helpers_take_published_jobs() {
        let team = Team::new(2);
        let calls = Arc::new(AtomicUsize::new(0));
        for round in 1..=3 {
            let c = calls.clone();
            team.publish(Arc::new(move || {
                c.fetch_add(1, Ordering::Relaxed);
            }));
            // Both helpers take each job once (one publish at a time here), so the count reaches 2 per round.
            while calls.load(Ordering::Relaxed) < 2 * round {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20)); // no helper takes a job twice
            assert_eq!(calls.load(Ordering::Relaxed), 2 * round);
        }
        let s = stats();
        assert!(s.jobs >= 3 && s.taken_spinning + s.taken_parked >= 6, "{s:?}");
    }
}
