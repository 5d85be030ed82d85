//! Bindings of the decode-step kernels (RMSNorm, SiLU-gated product, one-query attention over an in-place KV
//! cache): argument checks, GIL release and error mapping only.
use crate::errors::{slice, slice_mut, to_py};
use crate::gemm::{act_quant, path, LinearWeight, PackedInt4Weight, PackedInt8Weight};
use nnic_kernels::decoder::{self, LayerStep, StepShape};
use nnic_kernels::gemm::{Activation, ActQuant, Path};
use nnic_kernels::prefetch::{self, Resident, Span};
use nnic_kernels::KernelError;
use numpy::{PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::Arc;

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

/// A packed int4 or int8 weight, shared with the Python object (and with prefetch walks).
enum Packed {
    Int4(Arc<nnic_kernels::gemm::int4::PackedInt4>),
    Int8(Arc<nnic_kernels::gemm::PackedLinear>),
}

impl Packed {
    fn of(w: &Bound<'_, PyAny>, what: &str) -> PyResult<Packed> {
        if let Ok(w) = w.cast::<PackedInt4Weight>() {
            return Ok(Packed::Int4(w.get().inner.clone()));
        }
        if let Ok(w) = w.cast::<PackedInt8Weight>() {
            return Ok(Packed::Int8(w.get().inner.clone()));
        }
        Err(PyTypeError::new_err(format!("{what} must be a PackedInt4Weight or PackedInt8Weight, got {}",
                                         w.get_type().name()?)))
    }

    fn linear(&self) -> &dyn LinearWeight {
        match self {
            Packed::Int4(w) => &**w,
            Packed::Int8(w) => &**w,
        }
    }

    fn resident(&self) -> Arc<dyn Resident> {
        match self {
            Packed::Int4(w) => w.clone(),
            Packed::Int8(w) => w.clone(),
        }
    }
}

/// One GEMM of a layer step: the weight, its bias and its activation settings.
struct StepGemm<'a> {
    weight: Packed,
    bias: Option<&'a [f32]>,
    path: Path,
    act: ActQuant,
    activation: Activation,
}

/// A layer GEMM's activation settings, as `kernel_args()` gives them: `(act, symmetric, act_scale,
/// act_zero_point, path, activation, reduce_range)`.
type GemmSettings = (String, bool, Option<f32>, Option<i32>, Option<String>, String, bool);

/// One decode step of a LLaMA-style decoder layer (`nnic_kernels::decoder::decode_layer`) in one call with the
/// GIL released once: RMSNorm, the q/k/v GEMM, rotary + key/value write at `pos` + grouped-query attention, the
/// output GEMM, residual add + RMSNorm, the gate/up GEMM, SiLU-gated product, the down GEMM and the residual add
/// into `out` (`[batch, hidden]`, like `x`). `weights`, `biases`, `settings`: the four GEMMs' packed weights,
/// biases (or None) and activation settings (`kernel_args()`'s seven values). `ahead` (optional): for each GEMM, the
/// packed weights to queue for the background prefetch walk after it (at most `budget` bytes each time).
#[pyfunction]
#[pyo3(signature = (x, out, input_norm, input_eps, post_norm, post_eps, weights, biases, settings, cos, sin,
                    k_cache, v_cache, heads, pos, scale, ahead=None, budget=None))]
#[allow(clippy::too_many_arguments)]
pub fn decode_layer_step(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    mut out: PyReadwriteArrayDyn<'_, f32>,
    input_norm: PyReadonlyArrayDyn<'_, f32>,
    input_eps: f32,
    post_norm: PyReadonlyArrayDyn<'_, f32>,
    post_eps: f32,
    weights: Vec<Bound<'_, PyAny>>,
    biases: Vec<Option<PyReadonlyArray1<'_, f32>>>,
    settings: Vec<GemmSettings>,
    cos: PyReadonlyArrayDyn<'_, f32>,
    sin: PyReadonlyArrayDyn<'_, f32>,
    mut k_cache: PyReadwriteArrayDyn<'_, f32>,
    mut v_cache: PyReadwriteArrayDyn<'_, f32>,
    heads: usize,
    pos: usize,
    scale: f32,
    ahead: Option<Vec<Vec<Bound<'_, PyAny>>>>,
    budget: Option<i64>,
) -> PyResult<()> {
    if weights.len() != 4 || biases.len() != 4 || settings.len() != 4 {
        return Err(PyValueError::new_err(format!(
            "weights, biases and settings must have 4 entries (q/k/v, o, gate/up, down), got {}, {} and {}",
            weights.len(), biases.len(), settings.len()
        )));
    }
    let shape = k_cache.shape().to_vec();
    if shape.len() != 4 || v_cache.shape() != shape.as_slice() {
        return Err(PyValueError::new_err(format!(
            "k_cache and v_cache must both be [batch, kv_heads, capacity, head_dim], got {:?} and {:?}",
            shape, v_cache.shape()
        )));
    }
    let mut gemms = Vec::with_capacity(4);
    for (i, ((w, b), s)) in weights.iter().zip(&biases).zip(&settings).enumerate() {
        let (act, symmetric, act_scale, act_zero_point, p, activation, reduce_range) = s;
        gemms.push(StepGemm {
            weight: Packed::of(w, &format!("weights[{i}]"))?,
            bias: b.as_ref().map(|b| slice(b, "bias")).transpose()?,
            path: path(p.as_deref())?,
            act: act_quant(act, *symmetric, *act_scale, *act_zero_point, *reduce_range)?,
            activation: to_py(Activation::parse(activation))?,
        });
    }
    let mut queued: Vec<Vec<Span>> = vec![Vec::new(); 4];
    if let Some(ahead) = ahead {
        if ahead.len() != 4 {
            return Err(PyValueError::new_err(format!("ahead must have 4 lists, got {}", ahead.len())));
        }
        let total = match budget {
            None => usize::MAX,
            Some(b) if b < 0 => return Err(PyValueError::new_err(format!("budget must be >= 0, got {b}"))),
            Some(b) => b as usize,
        };
        for (spans, list) in queued.iter_mut().zip(&ahead) {
            let mut left = total;
            for w in list {
                let owner = Packed::of(w, "ahead's entries")?.resident();
                let take = owner.resident_bytes().min(left);
                left -= take;
                spans.push(to_py(Span::new(owner, 0, take))?);
            }
        }
    }
    let inner = gemms[3].weight.linear().in_features();
    let step_shape = StepShape { batch: shape[0], heads, kv_heads: shape[1], head_dim: shape[3], capacity: shape[2] };
    let (input_norm, post_norm) = (slice(&input_norm, "input_norm")?, slice(&post_norm, "post_norm")?);
    let step = LayerStep { input_norm, input_eps, post_norm, post_eps, inner, shape: step_shape, pos, scale };
    let (x, c, s) = (slice(&x, "x")?, slice(&cos, "cos")?, slice(&sin, "sin")?);
    let (k, v) = (slice_mut(&mut k_cache, "k_cache")?, slice_mut(&mut v_cache, "v_cache")?);
    let out = slice_mut(&mut out, "out")?;
    const NAMES: [&str; 4] = ["q/k/v", "o", "gate/up", "down"];
    let mut run = |i: usize, a: &[f32], y: &mut [f32]| -> nnic_kernels::error::Result<()> {
        let g = &gemms[i];
        let w = g.weight.linear();
        let rows = step_shape.batch;
        if a.len() != rows * w.in_features() || y.len() != rows * w.out_features() {
            return Err(KernelError::Mismatch { what: format!(
                "the {} weight is [{}, {}]: the layer step gives it {} inputs and {} outputs per row",
                NAMES[i], w.out_features(), w.in_features(), a.len() / rows, y.len() / rows) });
        }
        prefetch::cancel(Some(&*g.weight.resident()));
        w.run(g.path, a, rows, g.bias, g.act, g.activation, y)?;
        let spans = std::mem::take(&mut queued[i]);
        if !spans.is_empty() {
            prefetch::warm(spans)?;
        }
        Ok(())
    };
    to_py(py.detach(|| decoder::decode_layer(&step, x, c, s, k, v, &mut run, out)))
}
