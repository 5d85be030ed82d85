//! Bindings of the encoder kernels (attention, skip LayerNorm, embedding LayerNorm, a whole BERT-style layer as
//! their sequence): argument checks, GIL release and error mapping only.
use crate::errors::{not_contiguous, slice, slice_mut, to_py};
use crate::gemm::{act_quant, path, PackedInt8Weight};
use nnic_kernels::attention::{attention_with, Operand, Products, Shape};
use nnic_kernels::gemm::{self, Activation};
use nnic_kernels::{norm, prefetch};
use numpy::{IxDyn, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
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

/// One int8 GEMM of [`encoder_layer`]: the packed weight, its bias, and the settings its layer passes after the bias
/// (`Int8Linear.kernel_args()`: act, symmetric, act_scale, act_zero_point, path, activation).
type LayerGemm<'py> = (
    PyRef<'py, PackedInt8Weight>,
    Option<PyReadonlyArray1<'py, f32>>,
    String,
    bool,
    Option<f32>,
    Option<i32>,
    Option<String>,
    String,
);

/// A LayerNorm of [`encoder_layer`]: weight, bias, eps.
type LayerNorm<'py> = (PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>, f32);

/// A new C-contiguous float32 array for a kernel to write every element of (numpy's allocator: from 4 MiB up it
/// advises 2 MiB pages, as `nnic.kernels.adapters.float_output` relies on).
fn fresh<'py>(py: Python<'py>, dims: &[usize]) -> Bound<'py, PyArrayDyn<f32>> {
    // SAFETY: the array is new and nothing else refers to it; each caller's kernel writes every element before it
    // is read (on an error it is dropped unread).
    unsafe { PyArrayDyn::<f32>::new(py, IxDyn(dims), false) }
}

/// `out[m, n] = linear(x)` for one [`LayerGemm`] (the call `PackedInt8Weight.linear` makes), GIL released.
fn layer_linear(py: Python<'_>, g: &LayerGemm<'_>, x: &[f32], m: usize, out: &mut [f32]) -> PyResult<()> {
    let (w, bias, act, symmetric, act_scale, act_zero_point, p, activation) = g;
    let (p, aq) = (path(p.as_deref())?, act_quant(act, *symmetric, *act_scale, *act_zero_point)?);
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
    let (w, bias, act, symmetric, act_scale, act_zero_point, p, activation) = g;
    if activation != "none" {
        return Err(PyValueError::new_err(format!("encoder_layer: a block ending's GEMM has no activation, got {activation:?}")));
    }
    let (p, aq) = (path(p.as_deref())?, act_quant(act, *symmetric, *act_scale, *act_zero_point)?);
    let bias = bias.as_ref().map(|b| slice(b, "bias")).transpose()?;
    let (gamma, beta, eps) = (slice(&norm.0, "LayerNorm weight")?, slice(&norm.1, "LayerNorm bias")?, norm.2);
    let w = &*w.inner;
    prefetch::cancel(Some(w));
    to_py(py.detach(|| gemm::int8_linear_skip_layer_norm(p, x, m, w, bias, aq, residual, gamma, beta, eps, out)))
}

/// A BERT-style encoder layer on `x[batch, seq, hidden]` (float32, C-contiguous) as one call: the QKV GEMM
/// (`qkv`: `3 · hidden` outputs, query, key, value), the attention (`heads`, `scale`, the optional additive key
/// `mask[batch, seq]`, `bf16`: the products in bfloat16 where they run), the output GEMM + skip LayerNorm
/// (`attention_output`, `norm1`, residual `x`), the MLP up GEMM with its fused activation (`up`) and the down GEMM
/// + skip LayerNorm (`down`, `norm2`, residual the first LayerNorm's output). Returns a new `[batch, seq, hidden]`
/// array. Each step is the call its own binding makes, on arrays allocated at the same points and dropped when the
/// next step no longer needs them, so the result has the bits of the five calls; what it saves is the Python
/// between them (run with cold caches right after each GEMM).
#[pyfunction]
#[pyo3(signature = (x, qkv, heads, scale, mask, bf16, attention_output, norm1, up, down, norm2))]
#[allow(clippy::too_many_arguments)]
pub fn encoder_layer<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    qkv: LayerGemm<'py>,
    heads: usize,
    scale: f32,
    mask: Option<PyReadonlyArrayDyn<'py, f32>>,
    bf16: bool,
    attention_output: LayerGemm<'py>,
    norm1: LayerNorm<'py>,
    up: LayerGemm<'py>,
    down: LayerGemm<'py>,
    norm2: LayerNorm<'py>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let &[batch, seq, hidden] = x.shape() else {
        return Err(PyValueError::new_err(format!("encoder_layer: x must be [batch, seq, hidden], got {:?}", x.shape())));
    };
    let inner = up.0.inner.out_features();
    let sizes = |g: &LayerGemm<'_>| (g.0.inner.in_features(), g.0.inner.out_features());
    let want = [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)];
    let got = [sizes(&qkv), sizes(&attention_output), sizes(&up), sizes(&down)];
    if got != want || heads == 0 || hidden % heads != 0 {
        return Err(PyValueError::new_err(format!(
            "encoder_layer: for hidden {hidden} and {heads} heads the GEMMs (in, out) must be {want:?}, got {got:?}"
        )));
    }
    let m = batch * seq;
    let xs = slice(&x, "x")?;
    let mask = mask.as_ref().map(|a| slice(a, "mask")).transpose()?;
    let qkv_out = fresh(py, &[batch, seq, 3 * hidden]);
    {
        let out = unsafe { qkv_out.as_slice_mut() }.map_err(|_| not_contiguous("qkv"))?;
        layer_linear(py, &qkv, xs, m, out)?;
    }
    let context = fresh(py, &[batch, seq, hidden]);
    {
        // SAFETY (both): fresh arrays of this function, no other reference to them.
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
        layer_ending(py, &attention_output, c, m, xs, &norm1, out)?;
    }
    drop(context);
    let mlp = fresh(py, &[batch, seq, inner]);
    let a = unsafe { attended.as_slice() }.map_err(|_| not_contiguous("attention output"))?;
    {
        let out = unsafe { mlp.as_slice_mut() }.map_err(|_| not_contiguous("mlp"))?;
        layer_linear(py, &up, a, m, out)?;
    }
    let y = fresh(py, &[batch, seq, hidden]);
    {
        let h = unsafe { mlp.as_slice() }.map_err(|_| not_contiguous("mlp"))?;
        let out = unsafe { y.as_slice_mut() }.map_err(|_| not_contiguous("out"))?;
        layer_ending(py, &down, h, m, a, &norm2, out)?;
    }
    Ok(y)
}
