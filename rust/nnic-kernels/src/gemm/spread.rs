//! Two threads of one parallel run on one CPU: the caller moves itself to another CPU of its affinity mask.
//!
//! Why: with three runnable threads on two CPUs (the GEMM's two and one of another process), the kernel's load
//! balancer counts two on one CPU and one on the other as balanced whichever threads they are. When the GEMM's
//! two share a CPU and the other process has the second to itself, the GEMM gets one core where it could get one
//! and a half, and the placement lasts: per-thread CPU samples every millisecond beside `bench/gemm.py`'s
//! neighbour (2048 × 4096², load 4-6, 2026-12-02) found the caller and its team mate on one CPU for the whole
//! 0.3-0.5 s call in about half of the calls, on torch's OpenMP team and on nnic's own helpers alike (the
//! neighbour then ran 441 ms of a 498 ms call). The tasks are dynamic, so any CPU time either thread gets is used;
//! what is lost is the other CPU.
//!
//! Each thread notes, as it starts a task from [`LOOK_AFTER`] on, on which CPU it is ([`Seen`]); the caller, at
//! each of its own task starts, compares ([`Watch`]). When another thread of the run has been on the caller's CPU at every look for
//! [`SHARED_FOR`], the caller moves to another CPU of its mask ([`move_off`]: the mask without this CPU, then the
//! mask as it was, so nothing stays changed but where the thread runs), at most once per [`MOVE_GAP`]. A CPU left
//! idle is not the case this is for: the kernel's idle balancing pulls a waiting thread within a tick, so two
//! threads on one CPU for milliseconds means the other CPUs are busy with others.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long another thread of the run must have shared the caller's CPU (at every look) before the caller moves.
pub(super) const SHARED_FOR: Duration = Duration::from_millis(2);
/// Runs look only from this long after their start: a run that ends sooner (an M = 1 GEMM: ~0.3-0.6 ms) could not
/// move anyway, and pays nothing for the watch but reading the clock once per task.
pub(super) const LOOK_AFTER: Duration = Duration::from_millis(1);
/// The least time between two moves of the caller within a run.
pub(super) const MOVE_GAP: Duration = Duration::from_millis(20);
/// A note of another thread's CPU counts for this long. Why not [`SHARED_FOR`]: two threads on one CPU take turns
/// in scheduler slices of milliseconds, and the caller looks only while it runs, so the other's latest note is up to
/// a slice or two old then (the caller's own slice, ~1.4-3 ms with others waiting).
pub(super) const FRESH: Duration = Duration::from_millis(10);

/// The CPU on which the calling thread runs now (`None` where it cannot be asked).
pub(super) fn current_cpu() -> Option<u32> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn sched_getcpu() -> i32;
        }
        // SAFETY: no arguments; returns -1 on failure.
        let c = unsafe { sched_getcpu() };
        u32::try_from(c).ok()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Where the run's other threads started their latest task: the CPU and when (nanoseconds after the run's start),
/// in one word (`ns << 16 | cpu`; 0: none yet). With more than two threads it holds whichever started last.
pub(super) struct Seen(AtomicU64);

impl Seen {
    pub(super) const fn new() -> Seen {
        Seen(AtomicU64::new(0))
    }

    /// A thread other than the caller starts a task on `cpu`, `ns` after the run's start.
    pub(super) fn note(&self, cpu: u32, ns: u64) {
        if cpu < 1 << 16 {
            self.0.store((ns.max(1) << 16) | cpu as u64, Ordering::Relaxed);
        }
    }

    /// The latest note: (CPU, nanoseconds after the start).
    fn get(&self) -> Option<(u32, u64)> {
        let v = self.0.load(Ordering::Relaxed);
        (v != 0).then_some(((v & 0xffff) as u32, v >> 16))
    }

    #[cfg(test)]
    pub(super) fn get_for_test(&self) -> Option<(u32, u64)> {
        self.get()
    }
}

/// The caller's side of one run: since when another thread has been on its CPU at every look, and when it last
/// moved.
pub(super) struct Watch {
    since: Option<u64>,
    moved_at: Option<u64>,
}

impl Watch {
    pub(super) const fn new() -> Watch {
        Watch { since: None, moved_at: None }
    }

    /// The caller starts a task on `mine`, `now` nanoseconds after the run's start; `seen` is where another thread
    /// started its latest task. Returns whether the caller should move off `mine` now: another thread was on it at
    /// every look over the last [`SHARED_FOR`] or more (a note older than [`FRESH`] says nothing about now and ends
    /// the streak), and the last move is [`MOVE_GAP`] or more ago.
    pub(super) fn look(&mut self, mine: u32, now: u64, seen: &Seen) -> bool {
        let (shared, fresh) = (SHARED_FOR.as_nanos() as u64, FRESH.as_nanos() as u64);
        let together = matches!(seen.get(), Some((cpu, at)) if cpu == mine && now.saturating_sub(at) < fresh);
        if !together {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        let gap_over = self.moved_at.is_none_or(|t| now.saturating_sub(t) >= MOVE_GAP.as_nanos() as u64);
        if now - since >= shared && gap_over {
            self.moved_at = Some(now);
            self.since = None;
            return true;
        }
        false
    }
}

/// Moves the calling thread off `cpu` to another CPU of its affinity mask, then gives the mask back as it was.
/// Returns whether it moved (not where the mask holds no other CPU, or cannot be read or set).
pub(super) fn move_off(cpu: u32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        linux::move_off(cpu)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = cpu;
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod linux {
    use crate::gemm::affinity::{holds, mask, set_mask};

    pub(super) fn move_off(cpu: u32) -> bool {
        let Some(before) = mask() else { return false };
        if !holds(&before, cpu as usize) || before.iter().map(|w| w.count_ones()).sum::<u32>() < 2 {
            return false;
        }
        let mut without = before;
        without[cpu as usize / 64] &= !(1u64 << (cpu % 64));
        // The kernel moves the thread to a CPU of the new mask before the call returns; giving the old mask back
        // leaves it there.
        let moved = set_mask(&without);
        // Never leave the thread with a narrower mask than it had; no panic here either (this runs inside the
        // OpenMP region's C frames): the mask just read is one the kernel accepts, so a retry or two is all a
        // transient failure (EINTR-like) needs.
        let _given_back = (0..3).any(|_| set_mask(&before));
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    use crate::gemm::affinity;

    const MS: u64 = 1_000_000;

    /// Another thread on the caller's CPU at every look for 2 ms: the caller moves, once, and not again within the
    /// gap; a look that finds them apart, or a stale note, ends the streak.
    #[test]
    fn the_caller_moves_after_sharing_its_cpu_for_the_whole_bound_and_not_again_within_the_gap() {
        let seen = Seen::new();
        let mut w = Watch::new();
        assert!(!w.look(0, 0, &seen), "no note yet");
        seen.note(0, MS / 2);
        assert!(!w.look(0, MS / 2, &seen));
        seen.note(0, 2 * MS);
        assert!(!w.look(0, 2 * MS, &seen), "1.5 ms together");
        seen.note(0, 5 * MS / 2);
        assert!(w.look(0, 5 * MS / 2, &seen), "2 ms together: move");
        // together again at once: the streak starts over, and the gap holds the next move off
        seen.note(1, 3 * MS);
        for t in [3, 6, 9, 12, 15, 18, 21] {
            seen.note(1, t * MS);
            assert!(!w.look(1, t * MS, &seen), "{t} ms: within the gap");
        }
        seen.note(1, 23 * MS);
        assert!(w.look(1, 23 * MS, &seen), "past the gap and together for 2 ms and more: move again");
        // apart at one look: the streak ends
        let mut w = Watch::new();
        seen.note(0, 30 * MS);
        assert!(!w.look(0, 30 * MS, &seen));
        seen.note(1, 31 * MS);
        assert!(!w.look(0, 31 * MS, &seen));
        seen.note(0, 32 * MS);
        assert!(!w.look(0, 32 * MS, &seen));
        assert!(!w.look(0, 33 * MS, &seen), "together again for 1 ms only");
        // the other thread's note may be a slice or two old (the two take turns on the CPU), not older
        let mut w = Watch::new();
        seen.note(0, 40 * MS);
        assert!(!w.look(0, 40 * MS, &seen));
        assert!(w.look(0, 43 * MS, &seen), "its note 3 ms old: they take turns on this CPU");
        let mut w = Watch::new();
        seen.note(0, 60 * MS);
        assert!(!w.look(0, 60 * MS, &seen));
        assert!(!w.look(0, 71 * MS, &seen), "the other thread started no task for 11 ms: no streak");
        assert!(!w.look(0, 74 * MS, &seen));
    }

    /// A move leaves the thread's mask as it was, with the thread on a CPU of it other than the one it left when
    /// there is one; with a mask of one CPU it does nothing.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_move_gives_the_mask_back_and_needs_a_second_cpu() {
        std::thread::spawn(|| {
            let before = affinity::mask().expect("the affinity mask is readable");
            let cpus: Vec<u32> = (0..64 * 64).filter(|&c| before[c / 64] >> (c % 64) & 1 == 1).map(|c| c as u32).collect();
            let here = current_cpu().expect("sched_getcpu works here");
            if cpus.len() >= 2 {
                assert!(move_off(here));
                assert_eq!(affinity::mask().unwrap(), before, "the mask is given back");
            }
            assert!(!move_off(u32::MAX / 2), "a CPU outside the mask: nothing to move off");
            let mut one = [0u64; 64];
            one[cpus[0] as usize / 64] = 1 << (cpus[0] % 64);
            assert!(affinity::set_mask(&one));
            assert!(!move_off(cpus[0]), "one CPU: nowhere to go");
            assert_eq!(affinity::mask().unwrap(), one);
        })
        .join()
        .unwrap();
    }
}
