//! The seeded generator the examples (and `src/decoder.rs`'s tests, through a `#[path]` module) draw their data
//! from: xorshift64 (Marsaglia's 13 / 7 / 17), in one place rather than a copy per file. Not for statistics: fast,
//! reproducible across runs and machines (so that a number in `docs/performance` can be measured again on the
//! same bytes), and any nonzero seed gives a full-period sequence. Also the examples' one reading of how long this
//! process's threads waited for a core ([`run_queue_wait_ns`]), by which they tell undisturbed calls from others.
#![allow(dead_code)] // each includer uses what it needs of it

/// xorshift64 state; the seed must be nonzero.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in [-0.5, 0.5) from the top 24 bits of the next draw (exact in `f32`).
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Nanoseconds the threads of this process have waited on a run queue (runnable, not running), summed over
/// `/proc/self/task/*/schedstat`; 0 where that cannot be read.
pub fn run_queue_wait_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}
