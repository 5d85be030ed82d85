//! Which batch-1 kernel an unstructured (CSR) weight runs on AVX-512: the column-index gathers or the bitmask
//! expansion, chosen by density.
//!
//! The gather kernel costs about the same per *stored value* at any density (one gathered lane each, plus its
//! share of the 6 bytes per value streamed); the bitmask kernel about the same per *16 inputs* (a mask move and
//! one `vexpandps`: three port-5 operations, plus `1/8 + 4d` bytes per input), so they break even at one
//! density. Where that density lies depends on where the weight comes from: with the weight hot in L2 (a loop
//! over one small layer) the gathers are cheap (0.76 core cycles per value on the Sapphire-Rapids-class machine
//! of this round) and the break-even is 0.29-0.35; in a model, where other layers' weights (or a dense layer's
//! 64 MB) stream between two calls of a layer, the gather kernel's bytes cost more and it breaks even at about
//! 0.15 (4096 x 4096, each call after a dense MKL call, thread CPU time: bitmask / gather 1.32 at density 0.10,
//! 1.02 at 0.15, 0.84-0.88 at 0.20-0.30). The default, [`DEFAULT_BREAK_EVEN`] = 1/8, is the model case (a
//! version that measured the hot costs once per process chose the gathers up to 0.31 and ran 80 % sparse
//! layers 10-15 % slower in the bench). [`set_bitmask_break_even`] pins another density (for a loop over one
//! hot layer, or to compare the kernels on one weight).
use super::SparseLinear;
use crate::cpu::Isa;
use crate::error::{KernelError, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The break-even density used unless one is pinned (see the module docs).
pub const DEFAULT_BREAK_EVEN: f64 = 1.0 / 8.0;

/// The density pinned by [`set_bitmask_break_even`], as f64 bits.
static PINNED: AtomicU64 = AtomicU64::new(DEFAULT_BREAK_EVEN.to_bits());

/// The density from which batch-1 products of a CSR weight read the bitmask instead of the column indices on
/// `isa` (`f64::INFINITY` where there is no bitmask kernel: AVX2 and portable code always gather, and an ISA this
/// CPU lacks).
pub fn bitmask_break_even(isa: Isa) -> f64 {
    match isa {
        Isa::Avx512 if isa.is_supported() => f64::from_bits(PINNED.load(Ordering::Relaxed)),
        _ => f64::INFINITY,
    }
}

/// Sets the break-even density of [`bitmask_break_even`] (>= 0; above 1: never the bitmask), or with `None`
/// restores [`DEFAULT_BREAK_EVEN`]. Errors: NaN or negative.
pub fn set_bitmask_break_even(density: Option<f64>) -> Result<()> {
    let d = match density {
        None => DEFAULT_BREAK_EVEN,
        Some(d) if d >= 0.0 => d, // refuses NaN too
        Some(d) => {
            return Err(KernelError::Invalid { what: format!("the bitmask break-even density must be >= 0, got {d}") })
        }
    };
    PINNED.store(d.to_bits(), Ordering::Relaxed);
    Ok(())
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
    fn a_set_break_even_holds_until_reset_and_bad_ones_are_refused() {
        assert_eq!(bitmask_break_even(Isa::Avx2), f64::INFINITY); // no bitmask kernel there
        assert_eq!(bitmask_break_even(Isa::Scalar), f64::INFINITY);
        if !Isa::Avx512.is_supported() {
            assert_eq!(bitmask_break_even(Isa::Avx512), f64::INFINITY);
            return;
        }
        assert_eq!(bitmask_break_even(Isa::Avx512), DEFAULT_BREAK_EVEN);
        set_bitmask_break_even(Some(0.3)).unwrap();
        assert_eq!(bitmask_break_even(Isa::Avx512), 0.3);
        assert_eq!(bitmask_break_even(Isa::Avx2), f64::INFINITY);
        assert!(set_bitmask_break_even(Some(f64::NAN)).is_err());
        assert!(set_bitmask_break_even(Some(-0.1)).unwrap_err().to_string().contains(">= 0"));
        assert_eq!(bitmask_break_even(Isa::Avx512), 0.3); // a refused value changes nothing
        set_bitmask_break_even(None).unwrap();
        assert_eq!(bitmask_break_even(Isa::Avx512), DEFAULT_BREAK_EVEN);
    }
}
