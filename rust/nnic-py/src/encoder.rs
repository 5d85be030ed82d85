//! Bindings of the encoder kernels (attention, skip LayerNorm, embedding LayerNorm): argument checks, GIL release and error mapping only.
use crate::errors::{slice, slice_mut, to_py};
use nnic_kernels::attention::{attention_with, Operand, Products, Shape};
use nnic_kernels::norm;
use numpy::{PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::prelude::*;

/// `out = LayerNorm(x + residual) * gamma + beta` over rows of `gamma.size` values (all float32, C-contiguous).
#[pyfunction]
pub fn skip_layer_norm(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    residual: PyReadonlyArrayDyn<'_, f32>,
    gamma: PyReadonlyArrayDyn<'_, f32>,
    beta: PyReadonlyArrayDyn<'_, f32>,
    eps: f32,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let (x, r) = (slice(&x, "x")?, slice(&residual, "residual")?);
    let (g, b) = (slice(&gamma, "gamma")?, slice(&beta, "beta")?);
    let out = slice_mut(&mut out, "out")?;
    to_py(py.detach(|| norm::skip_layer_norm(x, r, g, b, eps, out)))
}

/// `out[t] = LayerNorm(sum_i tables[i][ids[i][t]]) * gamma + beta` (row sums in the order of `lookups`; tables
/// float32 `[entries, cols]`, ids int64, one per token; all C-contiguous).
#[pyfunction]
pub fn embed_layer_norm(
    py: Python<'_>,
    lookups: Vec<(PyReadonlyArrayDyn<'_, f32>, PyReadonlyArray1<'_, i64>)>,
    gamma: PyReadonlyArrayDyn<'_, f32>,
    beta: PyReadonlyArrayDyn<'_, f32>,
    eps: f32,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let lookups = lookups
        .iter()
        .map(|(table, ids)| Ok(norm::Lookup { table: slice(table, "table")?, ids: slice(ids, "ids")? }))
        .collect::<PyResult<Vec<_>>>()?;
    let (g, b) = (slice(&gamma, "gamma")?, slice(&beta, "beta")?);
    let out = slice_mut(&mut out, "out")?;
    to_py(py.detach(|| norm::embed_layer_norm(&lookups, g, b, eps, out)))
}

/// Multi-head attention into `out` (`[batch * seq, heads * head_dim]`). `q`, `k`, `v` are flat float32 buffers,
/// each with the offset of its first value and its row stride (one fused QKV buffer may be passed three times);
/// `mask`: optional additive `[batch, seq]` key mask; `bf16`: the products in bfloat16 where the CPU has them
/// (`Products::Bf16`).
#[pyfunction]
#[pyo3(signature = (q, q_offset, q_stride, k, k_offset, k_stride, v, v_offset, v_stride, batch, seq, heads, head_dim, scale, mask, out, bf16=false))]
#[allow(clippy::too_many_arguments)]
pub fn attention(
    py: Python<'_>,
    q: PyReadonlyArrayDyn<'_, f32>,
    q_offset: usize,
    q_stride: usize,
    k: PyReadonlyArrayDyn<'_, f32>,
    k_offset: usize,
    k_stride: usize,
    v: PyReadonlyArrayDyn<'_, f32>,
    v_offset: usize,
    v_stride: usize,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    mask: Option<PyReadonlyArrayDyn<'_, f32>>,
    mut out: PyReadwriteArrayDyn<'_, f32>,
    bf16: bool,
) -> PyResult<()> {
    let q = Operand { data: slice(&q, "q")?, offset: q_offset, row_stride: q_stride };
    let k = Operand { data: slice(&k, "k")?, offset: k_offset, row_stride: k_stride };
    let v = Operand { data: slice(&v, "v")?, offset: v_offset, row_stride: v_stride };
    let mask = mask.as_ref().map(|m| slice(m, "mask")).transpose()?;
    let out = slice_mut(&mut out, "out")?;
    let shape = Shape { batch, seq, heads, head_dim };
    let products = if bf16 { Products::Bf16 } else { Products::F32 };
    to_py(py.detach(|| attention_with(q, k, v, shape, scale, mask, products, out)))
}
