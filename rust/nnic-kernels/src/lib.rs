//! Pure-Rust compute kernels of nnic. No Python here: `cargo test -p nnic-kernels` runs without it.
//!
//! Every kernel has a portable scalar path (the readable ground truth) and SIMD paths chosen at run time
//! from [`cpu::active`]; parallel work runs on the crate's own rayon pool ([`pool`]).
//!
//! Modules, one algorithm each:
//! - [`threshold`]: exact k-th smallest |x| by a two-pass radix/histogram select (also over a list of slices).
//! - [`mask`]: masks with exactly k pruned entries, mask application, fused threshold pruning.
//! - [`quant`]: affine int8/uint8 quantization and dequantization, per tensor or per channel.
//! - [`pack`]: signed int4 packing.
//! - [`reduce`]: abs-max and min/max, per tensor or per channel.
//! - [`sparse`]: sparse × dense products for Linear weights (unstructured CSR and N:M layouts, f32 or int8 values).
pub mod cpu;
pub mod error;
pub mod gemm;
pub mod layout;
pub mod mask;
mod nt;
pub mod pack;
pub mod pool;
pub mod quant;
pub mod reduce;
mod select_range;
mod select_x86;
mod simd;
pub mod sparse;
mod split;
pub mod threshold;

pub use cpu::Isa;
pub use error::KernelError;
pub use layout::Layout;
