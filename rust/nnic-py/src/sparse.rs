//! Bindings of the sparse Linear kernels: argument checks, GIL release and error mapping only.
use crate::errors::{slice, slice_mut, to_py};
use nnic_kernels::gemm::{ActQuant, Activation};
use nnic_kernels::sparse::{csr, nm, Index, SparseLinear, Values};
use numpy::{
    PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyReadwriteArray2,
    PyUntypedArrayMethods,
};
use std::borrow::Cow;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    slice(a, name)
}

/// f32 or i8 values (numpy 1-D), as the kernels' value type.
fn values(v: &Bound<'_, PyAny>) -> PyResult<Values> {
    if let Ok(a) = v.extract::<PyReadonlyArray1<'_, f32>>() {
        return Ok(Values::F32(contiguous(&a, "values")?.to_vec()));
    }
    if let Ok(a) = v.extract::<PyReadonlyArray1<'_, i8>>() {
        return Ok(Values::I8(contiguous(&a, "values")?.to_vec()));
    }
    Err(PyTypeError::new_err("values must be a 1-D float32 or int8 numpy array"))
}

fn scale(s: Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Vec<f32>> {
    s.map(|s| contiguous(&s, "scale").map(|v| v.to_vec())).transpose().map(Option::unwrap_or_default)
}

fn act(act: Option<&str>, scale: Option<f32>, zero_point: Option<i32>) -> PyResult<Option<ActQuant>> {
    Ok(match act {
        None | Some("none") => None,
        Some("per_token") => Some(ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }),
        Some("per_token_symmetric") => Some(ActQuant::DynamicPerRow { symmetric: true, reduce_range: false }),
        Some("per_tensor") => Some(ActQuant::DynamicPerTensor { symmetric: false, reduce_range: false }),
        Some("per_tensor_symmetric") => Some(ActQuant::DynamicPerTensor { symmetric: true, reduce_range: false }),
        Some("static") => match (scale, zero_point) {
            (Some(scale), Some(zero_point)) => Some(ActQuant::Static { scale, zero_point }),
            _ => return Err(PyValueError::new_err("act='static' needs act_scale and act_zero_point")),
        },
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "act must be None, 'per_token', 'per_token_symmetric', 'per_tensor', 'per_tensor_symmetric' or 'static', got {other:?}"
            )))
        }
    })
}

/// The element-wise function after the bias: None / "none", "relu" or "gelu" (the exact, erf form).
fn activation(name: Option<&str>) -> PyResult<Activation> {
    name.map_or(Ok(Activation::Identity), |n| to_py(Activation::parse(n)))
}

/// A sparse Linear weight `[out_features, in_features]` in a compute layout (CSR or N:M), f32 or int8 values.
#[pyclass(frozen, module = "nnic._kernels")]
pub struct SparseWeight {
    inner: SparseLinear,
}

#[pymethods]
impl SparseWeight {
    /// Unstructured: `bits` is the row-major bitmask `[rows, ceil(k / 8)]` (uint8, little bit order), `values` the
    /// stored values in row-major order (float32, or int8 codes with `scale`, one per row).
    #[staticmethod]
    #[pyo3(signature = (bits, k, values, scale=None))]
    fn csr(py: Python<'_>, bits: PyReadonlyArray2<'_, u8>, k: usize, values: &Bound<'_, PyAny>, scale: Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Self> {
        let rows = bits.shape()[0];
        let b = slice(&bits, "bits")?;
        let (v, s) = (self::values(values)?, self::scale(scale)?);
        Ok(SparseWeight { inner: to_py(py.detach(|| csr::from_bitmask(rows, k, b, v, s)))? })
    }

    /// N:M: `values` `[rows * L]` and nibble-packed in-group positions `idx` `[rows, ceil(L / 2)]`, `L = k / m * n`.
    #[staticmethod]
    #[pyo3(signature = (idx, k, n, m, values, scale=None))]
    fn nm(py: Python<'_>, idx: PyReadonlyArray2<'_, u8>, k: usize, n: usize, m: usize, values: &Bound<'_, PyAny>, scale: Option<PyReadonlyArray1<'_, f32>>) -> PyResult<Self> {
        let rows = idx.shape()[0];
        let i = slice(&idx, "idx")?.to_vec();
        let (v, s) = (self::values(values)?, self::scale(scale)?);
        Ok(SparseWeight { inner: to_py(py.detach(|| nm::from_parts(rows, k, n, m, i, v, s)))? })
    }

    #[getter]
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }
    #[getter]
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }
    /// Stored values (N:M padding slots included).
    #[getter]
    fn nnz(&self) -> usize {
        self.inner.nnz()
    }
    /// Bytes held (values, indices, bitmask, row pointers, scales).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    /// Bytes of the weight a batch-1 product reads on the active code path (values and the index it uses).
    #[getter]
    fn stream_bytes(&self) -> usize {
        self.inner.stream_bytes()
    }
    /// The batch-1 kernel on the active ISA: "vnni", "bitmask", "gather" or "n:m" (see the Rust docs).
    #[pyo3(signature = (int8_activations=false))]
    fn gemv_kernel(&self, int8_activations: bool) -> &'static str {
        self.inner.gemv_kernel(int8_activations)
    }
    /// The batched kernel (4 rows and more) on the active ISA: "quad" (int8 values with int8 activations: integer
    /// dot products over the nonzero K-quads) or "tiled" (see the Rust docs).
    #[pyo3(signature = (int8_activations=false))]
    fn batched_kernel(&self, int8_activations: bool) -> &'static str {
        self.inner.batched_kernel(int8_activations)
    }
    /// Evicts everything a product reads from the CPU caches, so that the next product reads the weight from
    /// memory, as in a model whose weights do not fit in the caches.
    fn flush_caches(&self, py: Python<'_>) {
        py.detach(|| self.inner.flush_caches())
    }
    /// `"csr"` or `"n:m"` (e.g. `"2:4"`).
    #[getter]
    fn layout(&self) -> String {
        match self.inner.index() {
            Index::Csr { .. } => "csr".into(),
            Index::Nm { n, m, .. } => format!("{n}:{m}"),
        }
    }
    /// `"float32"` or `"int8"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.inner.values() {
            Values::F32(_) => "float32",
            Values::I8(_) => "int8",
        }
    }

    /// The dense float32 weight (int8 codes times their scales).
    fn to_dense<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (n, k) = (self.inner.out_features(), self.inner.in_features());
        PyArray1::from_vec(py, py.detach(|| self.inner.to_dense())).reshape([n, k])
    }

    /// `out[m, n] = activation(act(x) @ W.T (· scales) + bias)` for float32 `x[m, k]`.
    #[pyo3(signature = (x, out, bias=None, act=None, act_scale=None, act_zero_point=None, activation=None))]
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        mut out: PyReadwriteArray2<'_, f32>,
        bias: Option<PyReadonlyArray1<'_, f32>>,
        act: Option<&str>,
        act_scale: Option<f32>,
        act_zero_point: Option<i32>,
        activation: Option<&str>,
    ) -> PyResult<()> {
        let aq = self::act(act, act_scale, act_zero_point)?;
        let activation = self::activation(activation)?;
        let (m, k) = (x.shape()[0], x.shape()[1]);
        if k != self.inner.in_features() {
            return Err(PyValueError::new_err(format!("x has {k} columns, the weight expects {}", self.inner.in_features())));
        }
        let od = [out.shape()[0], out.shape()[1]];
        if od != [m, self.inner.out_features()] {
            return Err(PyValueError::new_err(format!("out must be [{m}, {}], got {od:?}", self.inner.out_features())));
        }
        let x = slice(&x, "x")?;
        let bias = bias.as_ref().map(|b| contiguous(b, "bias")).transpose()?;
        let out = slice_mut(&mut out, "out")?;
        let w = &self.inner;
        to_py(py.detach(|| w.linear_act(x, m, bias, aq, activation, out)))
    }

    /// The same product as a new float32 array: `x[..., in_features]` of any strides (copied when not
    /// C-contiguous) gives `[..., out_features]`. One native call per product, for `SparseLinear`: the
    /// Python and torch calls around a kernel (allocate, view, reshape) cost more than the kernel's own
    /// hand-off to its second thread, and more still right after a product that evicted their code and data from
    /// the caches (see docs/sparse.md).
    #[pyo3(signature = (x, bias=None, act=None, act_scale=None, act_zero_point=None, activation=None))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        act: Option<&str>,
        act_scale: Option<f32>,
        act_zero_point: Option<i32>,
        activation: Option<&str>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let aq = self::act(act, act_scale, act_zero_point)?;
        let activation = self::activation(activation)?;
        let (k, n) = (self.inner.in_features(), self.inner.out_features());
        let shape = x.shape();
        if shape.last() != Some(&k) {
            return Err(PyValueError::new_err(format!("x must have shape [..., {k}], got {shape:?}")));
        }
        let m: usize = shape[..shape.len() - 1].iter().product();
        let xs: Cow<'_, [f32]> = match slice(&x, "x") {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(x.as_array().iter().copied().collect()), // in C order, whatever the strides
        };
        let bias = bias.as_ref().map(|b| contiguous(b, "bias")).transpose()?;
        let mut dims = shape.to_vec();
        *dims.last_mut().expect("x has a last axis") = n;
        // SAFETY: every element is written by the product before Python sees the array (m rows of n outputs).
        let y = unsafe { PyArrayDyn::<f32>::new(py, dims, false) };
        {
            let mut rw = y.readwrite();
            let out = rw.as_slice_mut().expect("a new array is C-contiguous");
            let w = &self.inner;
            to_py(py.detach(|| w.linear_act(&xs, m, bias, aq, activation, out)))?;
        }
        Ok(y)
    }
}

/// Evicts the bytes of a contiguous uint8 array (any buffer viewed as bytes) from the CPU caches.
#[pyfunction]
pub fn flush_caches(py: Python<'_>, data: PyReadonlyArray1<'_, u8>) -> PyResult<()> {
    let bytes = contiguous(&data, "data")?;
    py.detach(|| nnic_kernels::cache::flush(bytes));
    Ok(())
}

/// The density from which batch-1 CSR products read the bitmask on the active ISA (`inf`: never).
#[pyfunction]
pub fn sparse_bitmask_break_even() -> f64 {
    nnic_kernels::sparse::bitmask_break_even(nnic_kernels::cpu::active())
}

/// Sets that density (None: the default, 1/8).
#[pyfunction]
#[pyo3(signature = (density=None))]
pub fn set_sparse_bitmask_break_even(density: Option<f64>) -> PyResult<()> {
    to_py(nnic_kernels::sparse::set_bitmask_break_even(density))
}
