//! Bindings of the decode-step kernels (RMSNorm, SiLU-gated product, one-query attention over an in-place KV
//! cache): argument checks, GIL release and error mapping only.
use crate::errors::{slice, slice_mut, to_py};
use nnic_kernels::decoder::{self, StepShape};
use numpy::{PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// `out = x / sqrt(mean(x²) + eps) * weight` over rows of `weight.size` values (all float32, C-contiguous).
#[pyfunction]
pub fn rms_norm(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    weight: PyReadonlyArrayDyn<'_, f32>,
    eps: f32,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let (x, w) = (slice(&x, "x")?, slice(&weight, "weight")?);
    let out = slice_mut(&mut out, "out")?;
    to_py(py.detach(|| decoder::rms_norm(x, w, eps, out)))
}

/// `sum = x + residual; out = rms_norm(sum)` over rows of `weight.size` values.
#[pyfunction]
pub fn add_rms_norm(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    residual: PyReadonlyArrayDyn<'_, f32>,
    weight: PyReadonlyArrayDyn<'_, f32>,
    eps: f32,
    mut sum: PyReadwriteArrayDyn<'_, f32>,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let (x, r, w) = (slice(&x, "x")?, slice(&residual, "residual")?, slice(&weight, "weight")?);
    let (sum, out) = (slice_mut(&mut sum, "sum")?, slice_mut(&mut out, "out")?);
    to_py(py.detach(|| decoder::add_rms_norm(x, r, w, eps, sum, out)))
}

/// `out[r] = silu(gate_up[r, :inner]) * gate_up[r, inner:]`.
#[pyfunction]
pub fn silu_mul(
    py: Python<'_>,
    gate_up: PyReadonlyArrayDyn<'_, f32>,
    inner: usize,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let g = slice(&gate_up, "gate_up")?;
    let out = slice_mut(&mut out, "out")?;
    to_py(py.detach(|| decoder::silu_mul(g, inner, out)))
}

/// One query token's attention (rotary, key/value written at `pos` of the caches, grouped-query softmax
/// attention over positions `0..=pos`) into `out` (`[batch, heads * head_dim]`); see `nnic_kernels::decoder`.
#[pyfunction]
#[pyo3(signature = (qkv, cos, sin, k_cache, v_cache, heads, kv_heads, head_dim, pos, scale, out))]
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    py: Python<'_>,
    qkv: PyReadonlyArrayDyn<'_, f32>,
    cos: PyReadonlyArrayDyn<'_, f32>,
    sin: PyReadonlyArrayDyn<'_, f32>,
    mut k_cache: PyReadwriteArrayDyn<'_, f32>,
    mut v_cache: PyReadwriteArrayDyn<'_, f32>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    pos: usize,
    scale: f32,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let shape = k_cache.shape().to_vec();
    if shape.len() != 4 || shape[1] != kv_heads || shape[3] != head_dim || v_cache.shape() != shape.as_slice() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "k_cache and v_cache must both be [batch, kv_heads={kv_heads}, capacity, head_dim={head_dim}], got {:?} and {:?}",
            shape,
            v_cache.shape()
        )));
    }
    let step = StepShape { batch: shape[0], heads, kv_heads, head_dim, capacity: shape[2] };
    let (q, c, s) = (slice(&qkv, "qkv")?, slice(&cos, "cos")?, slice(&sin, "sin")?);
    let (k, v) = (slice_mut(&mut k_cache, "k_cache")?, slice_mut(&mut v_cache, "v_cache")?);
    let out = slice_mut(&mut out, "out")?;
    to_py(py.detach(|| decoder::decode_attention(q, c, s, k, v, step, pos, scale, out)))
}
