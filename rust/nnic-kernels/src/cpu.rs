//! Run-time CPU feature detection and the instruction-set switch used by every kernel.
//!
//! [`active`] is what the kernels use now: the best supported ISA unless [`set_isa`] forced another one.
use crate::error::{KernelError, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// A code path of the kernels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, compiled for the baseline target: the readable ground truth.
    Scalar = 0,
    /// x86-64 AVX2 + FMA.
    Avx2 = 1,
    /// x86-64 AVX-512 F/BW/DQ/VL.
    Avx512 = 2,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses `"scalar"`, `"avx2"` or `"avx512"` (case-insensitive).
    pub fn parse(name: &str) -> Result<Isa> {
        Isa::ALL.into_iter().find(|i| i.name().eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
            KernelError::Invalid { what: format!("unknown ISA '{name}': expected one of scalar, avx2, avx512") }
        })
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && Isa::Avx2.is_supported()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The ISAs this CPU supports, slowest first (always starts with `Scalar`).
pub fn supported() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The fastest supported ISA.
pub fn best() -> Isa {
    *supported().last().expect("scalar is always supported")
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The ISA the kernels use now.
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => Isa::Scalar,
        1 => Isa::Avx2,
        2 => Isa::Avx512,
        _ => {
            let b = best();
            ACTIVE.store(b as u8, Ordering::Relaxed);
            b
        }
    }
}

/// Forces `isa` (or the best one for `None`); an ISA this CPU lacks is an error and changes nothing.
pub fn set_isa(isa: Option<Isa>) -> Result<()> {
    let isa = isa.unwrap_or_else(best);
    if !isa.is_supported() {
        return Err(KernelError::Invalid {
            what: format!(
                "ISA '{}' is not supported by this CPU (supported: {})",
                isa.name(),
                supported().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    Ok(())
}

/// Whether the AVX-512 path may use byte expansion (VBMI2) and `vpdpbusd` (VNNI): the int8 sparse kernels'
/// integer dot products.
pub fn has_vnni_vbmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vbmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this is an AMD (or Hygon) x86-64 CPU, from the CPUID vendor string (read once). Where the vendors
/// differ for the kernels: the CPUID leaf that describes the caches (`cache`), and the GEMV tiles' software
/// prefetch, which AMD's hardware prefetchers make a cost ([`stream_prefetch_in_software`]).
pub fn is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMD.get_or_init(|| {
            let vendor = std::arch::x86_64::__cpuid(0); // leaf 0 exists on every x86-64 CPU
            vendor.ebx == u32::from_le_bytes(*b"Auth") || vendor.ebx == u32::from_le_bytes(*b"Hygo")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Instruction-set extensions found on this CPU, e.g. `["avx2", "fma", "avx512f", ...]`.
pub fn features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        probe!("sse4.1", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni", "avx512vbmi2", "avx512bf16");
    }
    found
}

/// Whether the GEMV tiles, which read their weights once in memory order (int4 at every M, int8 at one and two rows),
/// prefetch that stream in software ahead of their loads: everywhere but on AMD CPUs. Why: on Zen 4 the hardware
/// prefetchers keep a sequential stream in flight by themselves (weights on 2 MiB pages, [`crate::huge`]), and the
/// software prefetches, one per line, only take load slots. int4 4096² GEMV from DRAM, interleaved rounds, medians: one
/// thread (CPU time) 19.5 GB/s at 4 KiB ahead, 24.6 at 1.5 KiB, 26.0 at 512 bytes, 27-28 without; two threads 31.3
/// against 32.8-33.6 without (17.1 against 24.4 in a loaded run). int8 4096² at one and two rows (`vnni_small`;
/// `int8_linear`, interleaved rounds, 40 of each, medians; without ÷ with, time): weights hot in the L3, one thread
/// 0.82-0.88 (M = 1), 0.74 (M = 2), two threads 0.82-0.85 (M = 1), 0.85 (M = 2); from DRAM one thread 0.95-0.97 (M =
/// 1), 0.89 (M = 2), two threads 1.00-1.02 (M = 1), 0.95 (M = 2). On the Intel part the prefetch measured 1.05× (int8,
/// M = 1, DRAM) to 1.39× (int4) faster, so it stays there. The tiles that read a panel in another order or reuse it
/// (int8 at 3 rows or more) keep theirs on every CPU: without it the tall tile (13-28 rows) took 1.5-1.9× as long on
/// Zen 4 (M = 16 and 24, hot and cold, one and two threads).
pub fn stream_prefetch_in_software() -> bool {
    !is_amd()
}
