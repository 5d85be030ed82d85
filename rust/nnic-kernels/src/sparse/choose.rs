//! Which batch-1 kernel an unstructured (CSR) weight runs on AVX-512: the column-index gathers or the bitmask
//! expansion, decided from costs measured once per process on this CPU.
//!
//! Why measured: the two kernels are bound by different instructions whose costs differ between CPUs (and
//! microcode: gather mitigations). The gather kernel costs about the same per *stored value* at any density
//! (one gathered lane each); the bitmask kernel costs the same per *16 inputs* at any density (one mask move and
//! one `vexpandps`, three port-5 operations). So the faster one flips at one density, `cost per 16 inputs /
//! (16 · cost per stored value)`: on the machine the kernels were first tuned on it was about 1/8, on the
//! Sapphire-Rapids-class machine of the next round 1/4 to 0.3 (there the bitmask kernel ran 1.1-2.5x slower
//! than the gathers at densities 1/8 to 1/4, and the constant 1/8 chose it). The measurement is a few hundred
//! microseconds on a synthetic 64 x 4096 weight held in L2 (instruction costs, not memory), the minimum of
//! several interleaved rounds (another process's time slice inflates a round, never deflates it), and the
//! resulting density is clamped to [1/16, 1/2] so that a disturbed measurement cannot pick a kernel far from
//! its range. Every process decides once: its products are reproducible within it; two processes on one
//! machine can differ only for layers within the measurement's noise of the break-even, and then only in float
//! rounding (both kernels sum the same products).
use super::{csr, Epilogue, SparseLinear, Values};
use crate::cpu::Isa;
use std::sync::OnceLock;
use std::time::Instant;

/// Lowest and highest density accepted as the break-even.
const CLAMP: (f64, f64) = (1.0 / 16.0, 0.5);
/// Rounds of the measurement (each times both kernels once; minimum per kernel).
const ROUNDS: usize = 9;

/// The density from which batch-1 products of a CSR weight read the bitmask instead of the column indices on
/// `isa` (`f64::INFINITY` where there is no bitmask kernel: AVX2 and portable code always gather, and an ISA this
/// CPU lacks).
pub fn bitmask_break_even(isa: Isa) -> f64 {
    static AVX512: OnceLock<f64> = OnceLock::new();
    match isa {
        Isa::Avx512 if isa.is_supported() => *AVX512.get_or_init(|| measure(isa)),
        _ => f64::INFINITY,
    }
}

/// Times both kernels on a synthetic weight (see the module docs) and returns the clamped break-even density.
fn measure(isa: Isa) -> f64 {
    let (rows, k) = (64usize, 4096usize);
    let stride = k / 8;
    // a fixed pseudo-random quarter of the inputs per row (xorshift), values and x in [-0.5, 0.5)
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut bits = vec![0u8; rows * stride];
    let mut nnz = 0;
    for r in 0..rows {
        for c in 0..k {
            if next() % 4 == 0 {
                bits[r * stride + c / 8] |= 1 << (c % 8);
                nnz += 1;
            }
        }
    }
    let unit = |v: u64| (v >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    let values = Values::F32((0..nnz).map(|_| unit(next())).collect());
    let w = csr::from_bitmask(rows, k, &bits, values, vec![]).expect("a valid synthetic weight");
    let x: Vec<f32> = (0..k).map(|_| unit(next())).collect();
    let mut out = vec![0f32; rows];
    let epi = Epilogue { scale: &[], row_scale: None, bias: None };
    let mut best = [f64::INFINITY; 2];
    for round in 0..=ROUNDS {
        for (i, bitmask) in [false, true].into_iter().enumerate() {
            let t0 = Instant::now();
            super::gemv::run_with(isa, &w, &x, 1, &epi, &mut out, 1, bitmask);
            let t = t0.elapsed().as_secs_f64();
            if round > 0 {
                // round 0 warms the caches and the code
                best[i] = best[i].min(t);
            }
        }
    }
    let per_value = best[0] / nnz as f64;
    let per_block = best[1] / (rows * k.div_ceil(16)) as f64;
    break_even(per_value, per_block)
}

/// The density at which `per_block` seconds per 16 inputs equal `per_value` seconds per stored value, clamped.
fn break_even(per_value: f64, per_block: f64) -> f64 {
    let d = per_block / (16.0 * per_value);
    if d.is_finite() {
        d.clamp(CLAMP.0, CLAMP.1)
    } else {
        CLAMP.1
    }
}

impl SparseLinear {
    /// Whether batch-1 products on `isa` read the bitmask instead of the column indices: CSR weights at or
    /// above [`bitmask_break_even`] on AVX-512 (the only ISA with the expanding kernel).
    pub(crate) fn gemv_uses_bitmask(&self, isa: Isa) -> bool {
        matches!(self.index, super::Index::Csr { .. })
            && isa == Isa::Avx512
            && self.nnz() as f64 >= bitmask_break_even(isa) * (self.rows * self.k) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_even_is_where_the_two_costs_meet_and_stays_in_range() {
        // 1 ns per stored value, 4 ns per 16 inputs: the bitmask kernel wins from density 1/4
        assert!((break_even(1e-9, 4e-9) - 0.25).abs() < 1e-12);
        assert_eq!(break_even(1e-9, 1e-9), CLAMP.0); // expansion nearly free: never below 1/16
        assert_eq!(break_even(1e-9, 1e-6), CLAMP.1); // expansion very slow: never above 1/2
        assert_eq!(break_even(0.0, 1e-9), CLAMP.1); // a zero-time gather round (clock too coarse): stay sane
        assert_eq!(break_even(0.0, 0.0), CLAMP.1);
    }

    #[test]
    fn the_measured_break_even_is_in_range_and_fixed_for_the_process() {
        assert_eq!(bitmask_break_even(Isa::Avx2), f64::INFINITY);
        assert_eq!(bitmask_break_even(Isa::Scalar), f64::INFINITY);
        let first = bitmask_break_even(Isa::Avx512);
        if !Isa::Avx512.is_supported() {
            assert_eq!(first, f64::INFINITY);
            return;
        }
        assert!((CLAMP.0..=CLAMP.1).contains(&first), "{first}");
        assert_eq!(bitmask_break_even(Isa::Avx512), first);
    }
}
