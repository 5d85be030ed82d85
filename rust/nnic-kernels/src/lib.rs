//! Pure-Rust compute kernels of nnic. No Python here: `cargo test -p nnic-kernels` runs without it.
//!
//! Every kernel has a portable scalar path (the readable ground truth) and SIMD paths chosen at run time
//! from [`cpu::active`]; parallel work runs on the crate's own rayon pool ([`pool`]).
//!
//! # Modules
//!
//! Kernels, one algorithm each:
//! - [`select`]: exact k-th smallest |x| by a two-pass radix/histogram select (also over a list of slices);
//!   `select/range.rs` is the sampled pass, `select/hist_lo.rs` the SIMD second pass.
//! - [`mask`]: masks with exactly k pruned entries, mask application, fused threshold pruning.
//! - [`quant`]: affine int8/uint8 quantization and dequantization, per tensor or per channel.
//! - [`nibbles`]: signed int4 values two per byte (the storage format of int4 tensors).
//! - [`half`]: IEEE half-precision bits to `f32` (the 16-bit group scales of int4 weights).
//! - [`reduce`]: abs-max and min/max, per tensor or per channel.
//! - [`sparse`]: sparse × dense products for Linear weights (unstructured CSR and N:M layouts, f32 or int8 values).
//! - [`attention`]: an encoder's multi-head self-attention, read from the projections' rows and written into the
//!   output projection's rows; [`norm`]: LayerNorm of a residual sum (skip LayerNorm).
//! - [`decoder`]: the small ops of a one-token decoder step (RMSNorm, SiLU-gated product, rotary + in-place
//!   KV cache + grouped-query attention of one query).
//! - [`gemm`]: int8 / int4 GEMM: path dispatch, the blocked driver, `PackedLinear`, epilogues, conv2d (see
//!   its module doc for its files).
//!
//! Infrastructure:
//! - [`cpu`]: CPU feature detection and the process-wide ISA switch ([`Isa`]).
//! - [`prefetch`]: a background thread that warms the next weights into the cache while small ops run between
//!   GEMVs (decoding), cancelled by every int4/int8 linear call.
//! - [`pool`]: the kernels' own rayon pool (resizable); [`team`]: the GEMM's helper threads (a bounded poll
//!   for the next GEMM, then park). [`error`]: [`KernelError`]. [`layout`]: per-tensor / per-channel walks
//!   ([`Layout`]).
//! - [`huge`]: zeroed buffers on 2 MiB pages for packed weights (fewer TLB misses in a weight stream).
//! - `simd` (private): the `multiversion!` macro and bit helpers; `nt`: streaming stores for large outputs;
//!   `split`: a list of slices split into groups of the concatenated index space.
//!
//! # SIMD style (how to add a kernel)
//!
//! One style, three tools, chosen in this order:
//!
//! 1. **`multiversion!`** (`simd.rs`) for element-wise and reduction loops: write the loop once as an
//!    `#[inline(always)]` scalar function over slices, and `multiversion!(fn name(..) = body;)` compiles it for
//!    baseline, AVX2 and AVX-512 and dispatches on the active [`Isa`]. LLVM vectorises the wider copies; the
//!    baseline copy is the scalar path. Most kernels (quant, reduce, mask, epilogues) are only this.
//! 2. **Hand-written intrinsics** only where the compiler cannot find the instruction sequence (scatter into a
//!    histogram for matching lanes, `vpdpbusd`, popcounts of compare masks). Put them in a `mod x86` inside
//!    the kernel's file, each `#[target_feature]` function beside the scalar function that is its ground
//!    truth, and dispatch with a `match isa { .. }` whose scalar arm calls that function
//!    (`select/hist_lo.rs` is the model). Every SIMD function must be tested against its scalar twin on
//!    every [`Isa`] (`tests/` loop over `cpu::supported()`).
//! 3. **The GEMM [`gemm::Path`] enum** only for micro-kernel families whose data layout or register tile
//!    differs per ISA (rows per tile, VNNI vs widened multiplies): the packing and the driver ask the `Path`
//!    for its shape. A new family is a `Path` variant and a kernel in `gemm/micro.rs`, nothing else.
//!
//! Never detect CPU features in a kernel: [`cpu::active`] is the one switch (the Python side sets it from
//! `NNIC_KERNEL_ISA`), so the tests can run every path on one machine.
pub mod attention;
pub mod cache;
pub mod clock;
pub mod cpu;
pub mod decoder;
pub mod error;
pub mod gemm;
pub mod half;
pub mod huge;
pub mod layout;
pub mod mask;
mod nt;
pub mod nibbles;
pub mod norm;
pub mod pool;
pub mod prefetch;
pub mod quant;
pub mod reduce;
pub mod select;
mod simd;
pub mod sparse;
pub mod team;
mod split;

pub use cpu::Isa;
pub use error::KernelError;
pub use layout::Layout;
