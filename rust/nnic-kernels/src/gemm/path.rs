//! The GEMM's code paths ([`Path`]: scalar, AVX2, AVX-512 VNNI), which one the ISA switch selects, and
//! the dispatch to the micro-kernel of a path. A new micro-kernel family is a new `Path` variant here plus
//! its kernel in `micro.rs`; the driver, packing and epilogues do not change.
use super::epilogue::TileAt;
use super::micro::{self, MR_AVX2, MR_SCALAR, MR_TALL, MR_VNNI};
use crate::cpu::{self, Isa};
use crate::error::{KernelError, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the VNNI path takes 13 to [`MR_TALL`] rows as one panel for its tall tile ([`Path::mr_for`]).
static TALL_TILE: AtomicBool = AtomicBool::new(true);

/// Turns the VNNI tall tile on (the default) or off (13 to 28 rows then run as two or three row panels of the 12-row
/// tile, as before it). Both give the same bits. A measurement aid: `examples/small_m` times the two in the same rounds
/// of one process, where a comparison of two builds run one after the other drowned in other processes' load; and the
/// tests compare their results.
pub fn set_tall_tile(on: bool) {
    TALL_TILE.store(on, Ordering::Relaxed);
}

/// A micro-kernel family.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust.
    Scalar,
    /// AVX2 `vpmaddwd` (exact).
    Avx2,
    /// AVX-512 VNNI `vpdpbusd`.
    Vnni,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Scalar, Path::Avx2, Path::Vnni];

    /// The path used for the kernel-wide ISA `isa`.
    pub fn for_isa(isa: Isa) -> Path {
        match isa {
            Isa::Avx512 if has_vnni() => Path::Vnni,
            Isa::Avx512 | Isa::Avx2 => Path::Avx2,
            Isa::Scalar => Path::Scalar,
        }
    }

    /// The path of the active ISA.
    pub fn active() -> Path {
        Path::for_isa(cpu::active())
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Vnni => "avx512vnni",
        }
    }

    /// Parses a path name or an ISA name (`"avx512"` means VNNI when present).
    pub fn parse(name: &str) -> Result<Path> {
        let n = name.trim().to_ascii_lowercase();
        if let Some(p) = Path::ALL.into_iter().find(|p| p.name() == n) {
            return Ok(p);
        }
        if n == "vnni" {
            return Ok(Path::Vnni);
        }
        Isa::parse(&n).map(Path::for_isa).map_err(|_| KernelError::Invalid {
            what: format!("unknown GEMM path {name:?}: expected one of scalar, avx2, avx512, avx512vnni"),
        })
    }

    pub fn is_supported(self) -> bool {
        match self {
            Path::Scalar => true,
            Path::Avx2 => Isa::Avx2.is_supported(),
            Path::Vnni => Isa::Avx512.is_supported() && has_vnni(),
        }
    }

    pub(crate) fn check(self) -> Result<()> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(KernelError::Invalid { what: format!("GEMM path {:?} is not supported by this CPU", self.name()) })
        }
    }

    pub(crate) fn mr(self) -> usize {
        match self {
            Path::Scalar => MR_SCALAR,
            Path::Avx2 => MR_AVX2,
            Path::Vnni => MR_VNNI,
        }
    }

    /// The most rows per activation panel for a product of `m` rows (the packing balances the panels under it):
    /// [`Path::mr`], except that VNNI takes 13 to [`MR_TALL`] rows as one panel, for its tall tile
    /// ([`micro::x86::vnni_tall`], which reads each weight line once for all of them).
    pub(crate) fn mr_for(self, m: usize) -> usize {
        match self {
            Path::Vnni if m > MR_VNNI && m <= MR_TALL && TALL_TILE.load(Ordering::Relaxed) => MR_TALL,
            _ => self.mr(),
        }
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The AVX2 path's tile for a weight panel: each is exact on the codes it is chosen for, and the first that applies
/// is the fastest (per row and 32 weight bytes: 3, 4 and 5 operations plus the weight unpacking).
#[derive(Copy, Clone, Debug)]
pub(crate) enum Avx2Tile {
    /// 7-bit activations ([`super::panels::PackedA::narrow`]): [`micro::x86::avx2_narrow`].
    Narrow,
    /// No weight byte is -128 ([`super::panels::PackedB::min_free`]): [`micro::x86::avx2_sign`], with the weight
    /// panel's 32 column sums here.
    Sign(*const i32),
    /// Any codes: [`micro::x86::avx2`].
    Widen,
}

/// Runs the micro-kernel of `path` for a panel of `mr` rows (≤ `path.mr()`, or for VNNI ≤ [`MR_TALL`]: the tall tile,
/// which ignores `next` and `stream` as it is made for streamed small-M blocks); `next` is the weight micro-panel of
/// the driver's next tile (or the part of it this tile takes), of which the VNNI and AVX2 `vpmaddubsw` tiles
/// prefetch the first `next_groups` k groups into L2 (the driver gives a VNNI block's first tile all of it and shares
/// it out over an AVX2 block's row panels, whose tiles pace theirs: `micro::x86::PacedPrefetch`), and `stream` says
/// that the weights are read once from DRAM (both: see [`micro::x86::vnni`]); `epi`, only on the VNNI path and for a
/// tile's whole product (`acc` false), finishes the tile in registers and stores f32 (see `TileEpilogue`); `tile`
/// picks the AVX2 path's tile (the other paths ignore it).
///
/// # Safety
/// Pointers as in [`micro::scalar`]; `path` is supported (`next` is only prefetched: any address).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro_kernel(
    path: Path,
    mr: usize,
    kg: usize,
    a: *const u8,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
    acc: bool,
    next: *const i8,
    next_groups: usize,
    stream: bool,
    epi: Option<&TileAt>,
    tile: Avx2Tile,
) {
    debug_assert!(epi.is_none() || (path == Path::Vnni && !acc), "only the VNNI tile finishes a whole product");
    #[cfg(target_arch = "x86_64")]
    {
        use micro::x86::*;
        // SAFETY: caller's contract.
        unsafe {
            macro_rules! pick {
                ($f:ident $args:tt; $($n:literal)*) => {
                    match mr { $($n => $f::<$n> $args,)* _ => unreachable!() }
                };
            }
            match path {
                Path::Vnni => match mr {
                    1 => vnni_small::<1>(kg, a, b, c, ldc, acc, epi),
                    2 => vnni_small::<2>(kg, a, b, c, ldc, acc, epi),
                    3..=MR_VNNI => pick!(vnni (kg, a, b, c, ldc, acc, next, next_groups, stream, epi); 3 4 5 6 7 8 9 10 11 12),
                    _ => pick!(vnni_tall (kg, a, b, c, ldc, acc, epi); 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28),
                },
                Path::Avx2 => match tile {
                    Avx2Tile::Narrow => pick!(avx2_narrow (kg, a, b, c, ldc, acc, next, next_groups, stream); 1 2),
                    Avx2Tile::Sign(colsum) => pick!(avx2_sign (kg, a, b, c, ldc, acc, colsum, next, next_groups, stream); 1 2),
                    Avx2Tile::Widen => pick!(avx2 (kg, a, b, c, ldc, acc); 1 2),
                },
                Path::Scalar => micro::scalar(mr, kg, a, b, c, ldc, acc),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: caller's contract.
    unsafe {
        let _ = (path, next, next_groups, stream, epi, tile);
        micro::scalar(mr, kg, a, b, c, ldc, acc)
    }
}

/// The ISA whose multiversioned loops (epilogues, activation quantization) go with `path`.
pub(crate) fn isa_of(path: Path) -> Isa {
    match path {
        Path::Vnni => Isa::Avx512,
        Path::Avx2 => Isa::Avx2,
        Path::Scalar => Isa::Scalar,
    }
}
