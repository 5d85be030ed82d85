//! int8 GEMM: exact `i32 = s8 · s8` products (like `torch._int_mm`) and a prepacked dynamic-quantization
//! linear layer `f32 = quant(x) · W_s8ᵀ` with a fused dequantization epilogue; and an int4-weight path
//! ([`int4`]).
//!
//! Structure (BLIS-like): weights are packed once ([`PackedB`]), activations per call into row panels;
//! the output is split into blocks of `mc × nc` that run on the kernel pool (a product whose rows form one
//! block: into per-thread ranges of 32-column panels, the column lanes); inside a block, K runs in
//! slices of [`KC`] (the partial sums live in the output buffer itself), then panels of 32 columns (the
//! weight micro-panel stays in L2 and is reused by every row panel; the next one is prefetched) and row
//! panels (the activation block stays in L2); the micro-kernel keeps an `mr × 32` tile in registers. The epilogue runs once per block, while it is in cache, or (VNNI, K within one slice) in
//! the tile's registers before the store.
//!
//! The code path ([`Path`]) follows the kernel-wide ISA switch ([`crate::cpu::active`]): `avx512` uses
//! VNNI when the CPU has it (else the AVX2 kernel), `avx2` the AVX2 kernel, `scalar` the portable one.
//!
//! Files, one job each:
//! - [`path`]: the [`Path`] enum (scalar / AVX2 / VNNI), path selection and micro-kernel dispatch;
//! - `micro`: the micro-kernels, one per path;
//! - `panels`: the packed operand layouts ([`PackedB`] weight panels, activation row panels);
//! - `act_pack`: activations into u8 row panels (s8 shifted, or f32 quantized on the fly: [`ActQuant`]);
//! - `driver`: blocking, the parallel blocked driver, exact `i32` products;
//! - `unpacked`: exact few-row products that read B in its own `[K, N]` layout (`int8_matmul` on VNNI);
//! - `lanes`: a one-row-block product's weight panels as one contiguous range per thread, walked in order and
//!   halved by a thread whose own range has run out (in place of column blocks from a shared counter);
//! - `epilogue`: the integer and float epilogues run on each finished block ([`Activation`]: GELU / ReLU);
//! - [`linear`]: [`PackedLinear`], [`int8_linear`] and [`int8_linear_skip_layer_norm`] (a block ending: the
//!   projection, residual add and LayerNorm in one region);
//! - [`conv`]: int8 conv2d by im2col into the activation panels; [`int4`]: int4 weights (tiles in
//!   `int4_micro`);
//! - [`par`]: where the parallel tasks run (OpenMP team or the kernel pool); `route`: the GEMM's choice between
//!   the two per shape class, from what each cost lately; `neighbours`: the probe of other processes' CPU use that
//!   ends the avoidance window of the team (for the other kernels' parallel runs) once they have left;
//! - [`profile`]: the stages of one linear layer timed apart, and the VNNI peak (for `examples/gemm_parts.rs`).
mod act_pack;
#[cfg(target_os = "linux")]
mod affinity;
pub mod conv;
mod driver;
mod epilogue;
pub mod int4;
mod int4_micro;
mod lanes;
pub mod linear;
mod micro;
mod neighbours;
mod panels;
pub mod par;
pub mod path;
pub mod profile;
mod route;
mod spread;
#[cfg(target_arch = "x86_64")]
mod unpacked;

pub use act_pack::{qparams as act_qparams, ActQuant};
pub(crate) use act_pack::RowCode;
pub use driver::{int8_matmul, matmul_i8, set_column_lanes, set_tail_pieces, KC};
pub use epilogue::Activation;
pub(crate) use epilogue::{gelu, relu};
pub use linear::{int8_linear, int8_linear_skip_layer_norm, PackedLinear};
pub use panels::{PackedB, MAX_K, NR};
pub use par::{set_routing, set_spread};
pub use path::{set_tall_tile, Path};

pub(crate) use driver::{plan, Block};
pub(crate) use linear::{check_linear, finish_linear};
pub(crate) use path::isa_of;
