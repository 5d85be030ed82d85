//! Column lanes: the weight panels of a one-row-block GEMM split into one contiguous range per thread, each
//! walked front to back by the thread that took it, and halved by a thread whose own range has run out.
//!
//! Why: with the output cut into a fixed list of column blocks taken from a shared counter (16 blocks of 256
//! columns at 128 × 4096 × 4096, ~0.6 ms each on one Zen 4 core), a thread that finishes its share one block
//! before the other idles for up to a whole block at the join, and every block boundary breaks the chain of
//! next-panel prefetches. Here each thread streams its own part of the weights in order (the next panel, known in
//! advance, is prefetched while the current one is multiplied), and the last work is shared one panel (32
//! columns, ~75 µs at that shape) at a time. A thread that is descheduled by another process holds up only the
//! panel it is multiplying: the others take the rest of its range.
use std::sync::atomic::{AtomicU64, Ordering};

/// One lane's remaining panels `[lo, hi)`, packed as `lo << 32 | hi` so that both ends change in one
/// compare-and-swap (the owner takes from the front, a thief halves from the back).
fn pack(lo: u32, hi: u32) -> u64 {
    (lo as u64) << 32 | hi as u64
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// `lanes` contiguous ranges over panels `0..panels`, as even as can be.
pub(super) struct Lanes {
    lanes: Vec<AtomicU64>,
}

impl Lanes {
    pub(super) fn new(panels: usize, lanes: usize) -> Lanes {
        let lanes = lanes.max(1);
        assert!(panels <= u32::MAX as usize, "too many panels for a lane");
        let edge = |i: usize| (panels * i / lanes) as u32;
        Lanes { lanes: (0..lanes).map(|i| AtomicU64::new(pack(edge(i), edge(i + 1)))).collect() }
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// The first panel left in `lane`, taken; and whether the panel after it was still in the lane (the one the
    /// caller will most likely take next, worth prefetching).
    pub(super) fn take_front(&self, lane: usize) -> Option<(usize, bool)> {
        let cell = &self.lanes[lane];
        let mut v = cell.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = unpack(v);
            if lo >= hi {
                return None;
            }
            match cell.compare_exchange_weak(v, pack(lo + 1, hi), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((lo as usize, lo + 1 < hi)),
                Err(now) => v = now,
            }
        }
    }

    /// Moves the back half of the fullest other lane (at least one panel) into `lane`, which must be empty and
    /// run by the caller alone; returns whether any was left to move.
    pub(super) fn steal_into(&self, lane: usize) -> bool {
        loop {
            let fullest = (0..self.lanes.len())
                .filter(|&i| i != lane)
                .map(|i| (i, self.lanes[i].load(Ordering::Relaxed)))
                .max_by_key(|&(_, v)| {
                    let (lo, hi) = unpack(v);
                    hi.saturating_sub(lo)
                });
            let Some((victim, v)) = fullest else { return false };
            let (lo, hi) = unpack(v);
            if lo >= hi {
                return false;
            }
            let mid = hi - (hi - lo).div_ceil(2);
            if self.lanes[victim].compare_exchange(v, pack(lo, mid), Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                // Nobody else writes an empty lane (every change above needs `lo < hi`), so a store is enough.
                self.lanes[lane].store(pack(mid, hi), Ordering::Relaxed);
                return true;
            }
        }
    }

    /// Runs `f(panel, next_is_ours)` for panels, from `lane` first, then from the others' halves, until none is
    /// left anywhere. `next_is_ours`: the panel after this one is the next this call will take, unless a thief
    /// takes it first.
    pub(super) fn run(&self, lane: usize, f: &mut dyn FnMut(usize, bool)) {
        loop {
            while let Some((p, more)) = self.take_front(lane) {
                f(p, more);
            }
            if !self.steal_into(lane) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Alone, a lane's caller takes its own range in order and then the others' panels, each once.
    #[test]
    fn one_caller_takes_every_panel_once_its_own_range_first_in_order() {
        let lanes = Lanes::new(10, 3);
        let mut seen = Vec::new();
        lanes.run(1, &mut |p, _| seen.push(p));
        assert_eq!(&seen[..3], &[3, 4, 5]);
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }

    /// `next_is_ours` is false exactly at the end of a run of consecutive panels taken from one range.
    #[test]
    fn the_next_panel_is_announced_only_while_the_range_goes_on() {
        let lanes = Lanes::new(4, 1);
        let mut seen = Vec::new();
        lanes.run(0, &mut |p, more| seen.push((p, more)));
        assert_eq!(seen, vec![(0, true), (1, true), (2, true), (3, false)]);
    }

    /// More lanes than panels: empty lanes steal, nothing is taken twice.
    #[test]
    fn more_lanes_than_panels_still_covers_each_panel_once() {
        let lanes = Lanes::new(2, 5);
        let mut seen = Vec::new();
        for lane in 0..5 {
            lanes.run(lane, &mut |p, _| seen.push(p));
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1]);
    }

    /// Threads racing over the lanes (with a slow one that others steal from) take every panel exactly once.
    #[test]
    fn racing_threads_take_every_panel_exactly_once() {
        for (panels, threads) in [(128, 2), (97, 3), (5, 4), (1000, 4)] {
            let lanes = Lanes::new(panels, threads);
            let seen = Mutex::new(vec![0u32; panels]);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (lanes, seen) = (&lanes, &seen);
                    s.spawn(move || {
                        lanes.run(t, &mut |p, _| {
                            if t == 0 {
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            }
                            seen.lock().unwrap()[p] += 1;
                        })
                    });
                }
            });
            assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1), "{panels} panels, {threads} threads");
        }
    }
}
