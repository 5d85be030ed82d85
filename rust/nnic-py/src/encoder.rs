//! Bindings of the encoder kernels (attention, skip LayerNorm, embedding LayerNorm, BERT-style layers as
//! their sequence): argument checks, GIL release and error mapping only.
use crate::errors::{not_contiguous, slice, slice_mut, to_py};
use crate::gemm::{act_quant, fresh, path, PackedInt8Weight};
use nnic_kernels::attention::{attention_with, Operand, Products, Shape};
use nnic_kernels::gemm::{self, Activation};
use nnic_kernels::{norm, prefetch};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
            PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
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

/// One int8 GEMM of [`encoder_layers`]: the packed weight, its bias, and the settings its layer passes after the bias
/// (`Int8Linear.kernel_args()`: act, symmetric, act_scale, act_zero_point, path, activation, reduce_range).
type LayerGemm<'py> = (
    PyRef<'py, PackedInt8Weight>,
    Option<PyReadonlyArray1<'py, f32>>,
    String,
    bool,
    Option<f32>,
    Option<i32>,
    Option<String>,
    String,
    bool,
);

/// A LayerNorm of [`encoder_layers`]: weight, bias, eps.
type LayerNorm<'py> = (PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>, f32);

/// `out[m, n] = linear(x)` for one [`LayerGemm`] (the call `PackedInt8Weight.linear` makes), GIL released.
fn layer_linear(py: Python<'_>, g: &LayerGemm<'_>, x: &[f32], m: usize, out: &mut [f32]) -> PyResult<()> {
    let (w, bias, act, symmetric, act_scale, act_zero_point, p, activation, reduce_range) = g;
    let (p, aq) = (path(p.as_deref())?, act_quant(act, *symmetric, *act_scale, *act_zero_point, *reduce_range)?);
    let activation = to_py(Activation::parse(activation))?;
    let bias = bias.as_ref().map(|b| slice(b, "bias")).transpose()?;
    let w = &*w.inner;
    prefetch::cancel(Some(w));
    to_py(py.detach(|| gemm::int8_linear(p, x, m, w, bias, aq, activation, out)))
}

/// `LayerNorm(linear(x) + residual)` for one [`LayerGemm`] without activation (the call
/// `PackedInt8Weight.linear_skip_layer_norm` makes), GIL released.
fn layer_ending(py: Python<'_>, g: &LayerGemm<'_>, x: &[f32], m: usize, residual: &[f32], norm: &LayerNorm<'_>,
                out: &mut [f32]) -> PyResult<()> {
    let (w, bias, act, symmetric, act_scale, act_zero_point, p, activation, reduce_range) = g;
    if activation != "none" {
        return Err(PyValueError::new_err(format!("encoder_layer: a block ending's GEMM has no activation, got {activation:?}")));
    }
    let (p, aq) = (path(p.as_deref())?, act_quant(act, *symmetric, *act_scale, *act_zero_point, *reduce_range)?);
    let bias = bias.as_ref().map(|b| slice(b, "bias")).transpose()?;
    let (gamma, beta, eps) = (slice(&norm.0, "LayerNorm weight")?, slice(&norm.1, "LayerNorm bias")?, norm.2);
    let w = &*w.inner;
    prefetch::cancel(Some(w));
    to_py(py.detach(|| gemm::int8_linear_skip_layer_norm(p, x, m, w, bias, aq, residual, gamma, beta, eps, out)))
}

/// One layer of [`encoder_layers`]: qkv, heads, scale, mask, bf16, attention_output, norm1, up, down, norm2 (see
/// there).
type LayerArgs<'py> = (
    LayerGemm<'py>,
    usize,
    f32,
    Option<PyReadonlyArrayDyn<'py, f32>>,
    bool,
    LayerGemm<'py>,
    LayerNorm<'py>,
    LayerGemm<'py>,
    LayerGemm<'py>,
    LayerNorm<'py>,
);

/// BERT-style encoder layers on `x[batch, seq, hidden]` (float32, C-contiguous) as one call, each layer on the
/// previous one's output. A layer is: the QKV GEMM (`qkv`: `3 · hidden` outputs, query, key, value), the attention
/// (`heads`, `scale`, the optional additive key `mask[batch, seq]`, `bf16`: the products in bfloat16 where they
/// run), the output GEMM + skip LayerNorm (`attention_output`, `norm1`, residual the layer's input), the MLP up
/// GEMM with its fused activation (`up`) and the down GEMM + skip LayerNorm (`down`, `norm2`, residual the first
/// LayerNorm's output). Returns a new `[batch, seq, hidden]` array. Each step is the call its own binding makes,
/// on arrays allocated at the same points and dropped when the next step no longer needs them (a layer's input once
/// its output is written, as a Python loop over the layers drops it), so the result has the bits of the separate
/// calls; what it saves is the Python between them (run with cold caches right after each GEMM).
#[pyfunction]
pub fn encoder_layers<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    layers: Vec<LayerArgs<'py>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let dims = layer_dims(x.shape())?;
    let Some((first, rest)) = layers.split_first() else {
        return Err(PyValueError::new_err("encoder_layers: layers must hold at least one layer"));
    };
    let mut h = run_layer(py, slice(&x, "x")?, dims, first)?;
    for layer in rest {
        // SAFETY: `h` is this function's own array (from `run_layer`), nothing else refers to it.
        let hs = unsafe { h.as_slice() }.map_err(|_| not_contiguous("a layer's output"))?;
        let next = run_layer(py, hs, dims, layer)?;
        h = next;
    }
    Ok(h)
}

fn layer_dims(shape: &[usize]) -> PyResult<[usize; 3]> {
    match *shape {
        [batch, seq, hidden] => Ok([batch, seq, hidden]),
        _ => Err(PyValueError::new_err(format!("encoder_layers: x must be [batch, seq, hidden], got {shape:?}"))),
    }
}

/// One layer of [`encoder_layers`] on `xs` (`[batch, seq, hidden]` = `dims`).
fn run_layer<'py>(py: Python<'py>, xs: &[f32], [batch, seq, hidden]: [usize; 3], l: &LayerArgs<'py>)
    -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (qkv, heads, scale, mask, bf16, attention_output, norm1, up, down, norm2) = l;
    let (heads, scale, bf16) = (*heads, *scale, *bf16);
    let inner = up.0.inner.out_features();
    let sizes = |g: &LayerGemm<'_>| (g.0.inner.in_features(), g.0.inner.out_features());
    let want = [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)];
    let got = [sizes(qkv), sizes(attention_output), sizes(up), sizes(down)];
    if got != want || heads == 0 || hidden % heads != 0 {
        return Err(PyValueError::new_err(format!(
            "encoder_layer: for hidden {hidden} and {heads} heads the GEMMs (in, out) must be {want:?}, got {got:?}"
        )));
    }
    let m = batch * seq;
    let mask = mask.as_ref().map(|a| slice(a, "mask")).transpose()?;
    let qkv_out = fresh(py, &[batch, seq, 3 * hidden]);
    {
        // SAFETY (every `as_slice*` below): fresh arrays of this function, no other reference to them.
        let out = unsafe { qkv_out.as_slice_mut() }.map_err(|_| not_contiguous("qkv"))?;
        layer_linear(py, qkv, xs, m, out)?;
    }
    let context = fresh(py, &[batch, seq, hidden]);
    {
        let all = unsafe { qkv_out.as_slice() }.map_err(|_| not_contiguous("qkv"))?;
        let out = unsafe { context.as_slice_mut() }.map_err(|_| not_contiguous("context"))?;
        let part = |i: usize| Operand { data: all, offset: i * hidden, row_stride: 3 * hidden };
        let shape = Shape { batch, seq, heads, head_dim: hidden / heads };
        let products = if bf16 { Products::Bf16 } else { Products::F32 };
        to_py(py.detach(|| attention_with(part(0), part(1), part(2), shape, scale, mask, products, out)))?;
    }
    drop(qkv_out);
    let attended = fresh(py, &[batch, seq, hidden]);
    {
        let c = unsafe { context.as_slice() }.map_err(|_| not_contiguous("context"))?;
        let out = unsafe { attended.as_slice_mut() }.map_err(|_| not_contiguous("attention output"))?;
        layer_ending(py, attention_output, c, m, xs, norm1, out)?;
    }
    drop(context);
    let mlp = fresh(py, &[batch, seq, inner]);
    let a = unsafe { attended.as_slice() }.map_err(|_| not_contiguous("attention output"))?;
    {
        let out = unsafe { mlp.as_slice_mut() }.map_err(|_| not_contiguous("mlp"))?;
        layer_linear(py, up, a, m, out)?;
    }
    let y = fresh(py, &[batch, seq, hidden]);
    {
        let h = unsafe { mlp.as_slice() }.map_err(|_| not_contiguous("mlp"))?;
        let out = unsafe { y.as_slice_mut() }.map_err(|_| not_contiguous("out"))?;
        layer_ending(py, down, h, m, a, norm2, out)?;
    }
    Ok(y)
}
