//! The seeded generator the examples (and `src/decoder.rs`'s tests, through a `#[path]` module) draw their data
//! from: xorshift64 (Marsaglia's 13 / 7 / 17), in one place rather than a copy per file. Not for statistics: fast,
//! reproducible across runs and machines (so that a number in `docs/performance` can be measured again on the
//! same bytes), and any nonzero seed gives a full-period sequence.
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
