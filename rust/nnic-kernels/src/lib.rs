//! Pure-Rust compute kernels of nnic. No Python here: `cargo test -p nnic-kernels` runs without it.
pub mod cpu;
