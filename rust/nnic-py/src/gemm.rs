//! Bindings of the int8/int4 GEMM: shape and contiguity checks, GIL release, error mapping only.
//! Outputs are caller-provided (see `nnic/kernels/gemm.py`, which allocates torch tensors and passes numpy views).
use crate::errors::{not_contiguous, slice, slice_mut, to_py};
use nnic_kernels::gemm::conv::{int8_conv2d, ConvGeom};
use nnic_kernels::gemm::{self, int4, ActQuant, Activation, PackedLinear, Path};
use nnic_kernels::prefetch::{self, Resident};
use numpy::{
    Element, IxDyn, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArrayDyn, PyReadwriteArray2, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::Arc;

fn ro<'a, T: Element>(a: &'a PyReadonlyArray2<'_, T>, name: &str) -> PyResult<&'a [T]> {
    slice(a, name)
}

/// A new C-contiguous float32 array for a kernel to write every element of (numpy's allocator: from 4 MiB up it
/// advises 2 MiB pages, as `nnic.kernels.adapters.float_output` relies on).
pub(crate) fn fresh<'py>(py: Python<'py>, dims: &[usize]) -> Bound<'py, PyArrayDyn<f32>> {
    // SAFETY: the array is new and nothing else refers to it; every caller's kernel writes every element before it
    // is read (on an error it is dropped unread).
    unsafe { PyArrayDyn::<f32>::new(py, IxDyn(dims), false) }
}

fn ro1<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    slice(a, name)
}

fn rw<'a, T: Element>(a: &'a mut PyReadwriteArray2<'_, T>, name: &str) -> PyResult<&'a mut [T]> {
    slice_mut(a, name)
}

/// `None`: the path of the active ISA; else a path or ISA name that this CPU supports.
pub(crate) fn path(name: Option<&str>) -> PyResult<Path> {
    let p = match name {
        None => Path::active(),
        Some(n) => to_py(Path::parse(n))?,
    };
    if !p.is_supported() {
        return Err(PyValueError::new_err(format!("GEMM path {:?} is not supported by this CPU", p.name())));
    }
    Ok(p)
}

fn shape_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// The activation quantization that `act`, `symmetric`, `act_scale`, `act_zero_point` and `reduce_range` (7-bit
/// codes, dynamic modes only) name.
pub(crate) fn act_quant(
    act: &str,
    symmetric: bool,
    scale: Option<f32>,
    zero_point: Option<i32>,
    reduce_range: bool,
) -> PyResult<ActQuant> {
    match act {
        "per_tensor" => Ok(ActQuant::DynamicPerTensor { symmetric, reduce_range }),
        "per_token" => Ok(ActQuant::DynamicPerRow { symmetric, reduce_range }),
        "static" if reduce_range => Err(PyValueError::new_err(
            "reduce_range (7-bit activation codes) applies to dynamic activations ('per_token', 'per_tensor'), not \
             act='static': calibrate the static scale and zero point for the codes you want",
        )),
        "static" => match (scale, zero_point) {
            (Some(scale), Some(zero_point)) => Ok(ActQuant::Static { scale, zero_point }),
            _ => Err(PyValueError::new_err("act='static' needs act_scale and act_zero_point (u8 domain, 0..255)")),
        },
        _ => Err(PyValueError::new_err(format!("act must be 'per_tensor', 'per_token' or 'static', got {act:?}"))),
    }
}

/// Names of the GEMM paths this CPU supports, slowest first.
#[pyfunction]
pub fn gemm_paths() -> Vec<&'static str> {
    Path::ALL.into_iter().filter(|p| p.is_supported()).map(|p| p.name()).collect()
}

/// Where the GEMM's threads come from: `"openmp"` (the process's OpenMP team, i.e. PyTorch's) or `"rayon"`.
#[pyfunction]
pub fn gemm_backend() -> &'static str {
    gemm::par::backend()
}

/// Forces where the GEMM's threads come from: `"openmp"` (when libgomp is loaded) or `"rayon"`.
#[pyfunction]
pub fn set_gemm_backend(name: &str) -> PyResult<()> {
    to_py(gemm::par::set_backend(name))
}

/// Turns the VNNI path's tall tile (13 to 28 rows as one row panel) on (the default) or off (two or three row
/// panels of the 12-row tile, as before it): the same bits either way; for timing the two in the same rounds.
#[pyfunction]
pub fn set_gemm_tall_tile(on: bool) {
    gemm::set_tall_tile(on)
}

/// Turns the int8 GEMM's column lanes (a one-row-block product as one contiguous range of weight panels per
/// thread, halved by a thread that runs out) on (the default) or off (the planned column blocks, as before them):
/// the same bits either way; for timing the two in the same rounds.
#[pyfunction]
pub fn set_gemm_column_lanes(on: bool) {
    gemm::set_column_lanes(on)
}

/// Turns the int8 GEMM's tail pieces (the last two planned blocks per thread of a block-planned product run as single
/// 32-column panels, so that the threads still on their cores take them while one is descheduled) on (the default)
/// or off (every block one task, as before them): the same bits either way; for timing the two in the same rounds.
#[pyfunction]
pub fn set_gemm_tail_pieces(on: bool) {
    gemm::set_tail_pieces(on)
}

/// Turns the parallel runs' spreading (a caller that another thread of its run has shared a CPU with for 2 ms moves
/// to another CPU of its mask) on (the default) or off: the same bits either way; for timing the two in the same
/// rounds.
#[pyfunction]
pub fn set_gemm_spread(on: bool) {
    gemm::set_spread(on)
}

/// Turns the int8 GEMM's routing by measured cost (each run on torch's OpenMP team or nnic's helpers, whichever
/// cost its shape class less lately) on, or off (the default: the avoidance window after a late team thread): the
/// same bits either way (see `gemm::par::set_routing` for why it is off by default).
#[pyfunction]
pub fn set_gemm_routing(on: bool) {
    gemm::set_routing(on)
}

/// How long the GEMM's helper threads poll for the next GEMM before parking, in microseconds.
#[pyfunction]
pub fn gemm_spin_us() -> f64 {
    nnic_kernels::team::spin().as_secs_f64() * 1e6
}

/// Sets the helpers' poll bound in microseconds (0 ..= 10000; 0: park after each GEMM).
#[pyfunction]
pub fn set_gemm_spin_us(us: f64) -> PyResult<()> {
    if !(us.is_finite() && us >= 0.0) {
        return Err(PyValueError::new_err(format!("spin must be a finite number of microseconds >= 0, got {us}")));
    }
    to_py(nnic_kernels::team::set_spin(std::time::Duration::from_nanos((us * 1e3) as u64)))
}

/// Counters of the GEMM's helper threads: `(jobs, taken_spinning, taken_parked, spin_ns)`; `reset` zeroes
/// them after reading.
#[pyfunction]
#[pyo3(signature = (reset=false))]
pub fn gemm_team_stats(reset: bool) -> (u64, u64, u64, u64) {
    let s = nnic_kernels::team::stats();
    if reset {
        nnic_kernels::team::reset_stats();
    }
    (s.jobs, s.taken_spinning, s.taken_parked, s.spin_ns)
}

/// Counters of the parallel runs on the OpenMP team: `(runs, late, windows, tasks, tasks_by_team, arrival_ns,
/// tail_ns, region_ns, wait_ns, moves)`; `reset` zeroes them after reading.
#[pyfunction]
#[pyo3(signature = (reset=false))]
pub fn gemm_openmp_stats(reset: bool) -> (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) {
    let s = gemm::par::team_stats();
    if reset {
        gemm::par::reset_team_stats();
    }
    stats_tuple(s)
}

/// The same counters for the runs on nnic's own helpers (`late`: runs no helper took a task of; `windows`: 0).
#[pyfunction]
#[pyo3(signature = (reset=false))]
pub fn gemm_pool_stats(reset: bool) -> (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) {
    let s = gemm::par::pool_stats();
    if reset {
        gemm::par::reset_pool_stats();
    }
    stats_tuple(s)
}

/// Where the GEMMs' routed parallel runs went: `(team, helpers, probes, switches)` (see `gemm::route`); `reset`
/// zeroes them after reading.
#[pyfunction]
#[pyo3(signature = (reset=false))]
pub fn gemm_route_stats(reset: bool) -> (u64, u64, u64, u64) {
    let s = gemm::par::route_stats();
    if reset {
        gemm::par::reset_route_stats();
    }
    (s.team, s.helpers, s.probes, s.switches)
}

fn stats_tuple(s: gemm::par::TeamStats) -> (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) {
    (s.runs, s.late, s.windows, s.tasks, s.tasks_by_team, s.arrival_ns, s.tail_ns, s.region_ns, s.wait_ns, s.moves)
}

/// The GEMM path used now (follows `set_isa`).
#[pyfunction]
pub fn gemm_path() -> &'static str {
    Path::active().name()
}

/// Runs `iters` rounds of 24 independent `vpdpbusd` on registers (no loads) on the calling thread and returns
/// the multiply-adds done, or `None` without AVX-512 VNNI; the caller times the call: the int8 peak of one core.
#[pyfunction]
pub fn gemm_vnni_peak(py: Python<'_>, iters: usize) -> Option<u64> {
    py.detach(|| gemm::profile::vnni_peak(iters))
}

/// Exact `out[m, n] = a[m, k] @ b[k, n]` in int32 (s8 inputs).
#[pyfunction]
#[pyo3(signature = (a, b, out, path=None))]
pub fn int8_matmul(
    py: Python<'_>,
    a: PyReadonlyArray2<'_, i8>,
    b: PyReadonlyArray2<'_, i8>,
    mut out: PyReadwriteArray2<'_, i32>,
    path: Option<&str>,
) -> PyResult<()> {
    let p = self::path(path)?;
    let ([m, k], [k2, n]) = (dims(&a), dims(&b));
    if k != k2 {
        return Err(shape_err(format!("a is [{m}, {k}] but b is [{k2}, {n}]: inner dimensions differ")));
    }
    let od = [out.shape()[0], out.shape()[1]];
    if od != [m, n] {
        return Err(shape_err(format!("out must be [{m}, {n}], got {od:?}")));
    }
    let (a, b) = (ro(&a, "a")?, ro(&b, "b")?);
    let out = rw(&mut out, "out")?;
    to_py(py.detach(|| gemm::int8_matmul(p, a, m, k, b, n, out)))
}

fn dims<T: Element>(a: &PyReadonlyArray2<'_, T>) -> [usize; 2] {
    [a.shape()[0], a.shape()[1]]
}

/// Checks the input `x[m, k]` (named `name`) against the weight's `k` and `out` against `[m, n]`; returns `m`.
fn check_linear_shapes<T: Element, U: Element>(
    name: &str,
    x: &PyReadonlyArray2<'_, T>,
    out: &PyReadwriteArray2<'_, U>,
    k_weight: usize,
    n: usize,
) -> PyResult<usize> {
    let [m, k] = dims(x);
    if k != k_weight {
        return Err(shape_err(format!("{name} has {k} columns, the weight expects {k_weight}")));
    }
    let od = [out.shape()[0], out.shape()[1]];
    if od != [m, n] {
        return Err(shape_err(format!("out must be [{m}, {n}], got {od:?}")));
    }
    Ok(m)
}

/// The surface the int8 and int4 weight classes share: their shape and the float linear layer. Each class's
/// `linear` is one call to [`linear_into`], so argument checks and GIL handling are written once.
pub(crate) trait LinearWeight: Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    #[allow(clippy::too_many_arguments)]
    fn run(&self, path: Path, x: &[f32], m: usize, bias: Option<&[f32]>, act: ActQuant, activation: Activation,
        out: &mut [f32]) -> nnic_kernels::error::Result<()>;
}

impl LinearWeight for PackedLinear {
    fn in_features(&self) -> usize {
        PackedLinear::in_features(self)
    }
    fn out_features(&self) -> usize {
        PackedLinear::out_features(self)
    }
    fn run(&self, path: Path, x: &[f32], m: usize, bias: Option<&[f32]>, act: ActQuant, activation: Activation,
        out: &mut [f32]) -> nnic_kernels::error::Result<()> {
        gemm::int8_linear(path, x, m, self, bias, act, activation, out)
    }
}

impl LinearWeight for int4::PackedInt4 {
    fn in_features(&self) -> usize {
        int4::PackedInt4::in_features(self)
    }
    fn out_features(&self) -> usize {
        int4::PackedInt4::out_features(self)
    }
    fn run(&self, path: Path, x: &[f32], m: usize, bias: Option<&[f32]>, act: ActQuant, activation: Activation,
        out: &mut [f32]) -> nnic_kernels::error::Result<()> {
        if activation != Activation::Identity {
            return Err(nnic_kernels::error::KernelError::Invalid {
                what: format!("int4 linear has no fused activation (got {activation:?}); apply it after the layer"),
            });
        }
        int4::int4_linear(path, x, m, self, bias, act, out)
    }
}

/// `out[m, n] = linear(x)` with weight `w`: shape checks, then the kernel with the GIL released. A background
/// prefetch walk is stopped first (`nnic_kernels::prefetch`: it must not take a core from the GEMM), and `w`'s
/// walked record forgotten. `out = None`: a new C-contiguous `[m, n]` array is allocated here and returned.
///
/// Why allocate here: after a weight stream has pushed numpy's code and data out of the caches, a Python-level
/// `np.empty` costs 35-60 µs of CPU; numpy's C allocator called from here skips its argument parsing and dtype
/// conversion (the same allocator, so outputs from 4 MiB up still get numpy's 2 MiB-page advice).
#[allow(clippy::too_many_arguments)]
fn linear_into<'py, W: LinearWeight + Resident>(
    py: Python<'py>,
    w: &W,
    x: PyReadonlyArrayDyn<'py, f32>,
    out: Option<PyReadwriteArray2<'py, f32>>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    act: ActQuant,
    activation: &str,
    path: Option<&str>,
) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
    let p = self::path(path)?;
    let activation = to_py(Activation::parse(activation))?;
    let (k, n) = (w.in_features(), w.out_features());
    let shape = x.shape();
    let Some((&kx, lead)) = shape.split_last() else {
        return Err(shape_err(format!("x must have shape [..., {k}], got a 0-d array")));
    };
    if kx != k {
        return Err(shape_err(format!("x has {kx} columns, the weight expects {k}")));
    }
    let m = lead.iter().product::<usize>();
    let xs = slice(&x, "x")?;
    let bias = bias.as_ref().map(|b| ro1(b, "bias")).transpose()?;
    match out {
        Some(mut out) => {
            let od = [out.shape()[0], out.shape()[1]];
            if od != [m, n] {
                return Err(shape_err(format!("out must be [{m}, {n}], got {od:?}")));
            }
            let out = rw(&mut out, "out")?;
            prefetch::cancel(Some(w));
            to_py(py.detach(|| w.run(p, xs, m, bias, act, activation, out)))?;
            Ok(None)
        }
        None => {
            let dims: Vec<usize> = lead.iter().copied().chain([n]).collect();
            let fresh = fresh(py, &dims);
            let out = unsafe { fresh.as_slice_mut() }.map_err(|_| not_contiguous("out"))?;
            prefetch::cancel(Some(w));
            to_py(py.detach(|| w.run(p, xs, m, bias, act, activation, out)))?;
            Ok(Some(fresh))
        }
    }
}

/// Defines a weight class's `#[pymethods]`: the surface both classes share (`in_features`, `out_features`,
/// `nbytes` and `linear`, which runs through [`linear_into`]) plus the class's own methods (`$own`).
/// `$symmetric` is the default of `linear`'s `symmetric` argument; `$linear_doc` its docstring.
macro_rules! packed_weight_methods {
    ($class:ident, symmetric = $symmetric:tt, $linear_doc:literal, { $($own:tt)* }) => {
        #[pymethods]
        impl $class {
            #[getter]
            fn in_features(&self) -> usize {
                LinearWeight::in_features(&*self.inner)
            }
            #[getter]
            fn out_features(&self) -> usize {
                LinearWeight::out_features(&*self.inner)
            }
            /// Bytes held by the packed weights.
            #[getter]
            fn nbytes(&self) -> usize {
                self.inner.nbytes()
            }

            #[doc = $linear_doc]
            #[doc = ""]
            #[doc = "`x` may have any leading dimensions (`m` is their product) with `out=None`: the result then goes to"]
            #[doc = "a new array `[..., n]`, which is returned (else `x` is `[m, k]`, and `None` is returned)."]
            #[pyo3(signature = (x, out, bias=None, act="per_token", symmetric=$symmetric, act_scale=None,
                                act_zero_point=None, path=None, activation="none", reduce_range=false))]
            #[allow(clippy::too_many_arguments)]
            fn linear<'py>(
                &self,
                py: Python<'py>,
                x: PyReadonlyArrayDyn<'py, f32>,
                out: Option<PyReadwriteArray2<'py, f32>>,
                bias: Option<PyReadonlyArray1<'py, f32>>,
                act: &str,
                symmetric: bool,
                act_scale: Option<f32>,
                act_zero_point: Option<i32>,
                path: Option<&str>,
                activation: &str,
                reduce_range: bool,
            ) -> PyResult<Option<Bound<'py, PyArrayDyn<f32>>>> {
                let aq = act_quant(act, symmetric, act_scale, act_zero_point, reduce_range)?;
                linear_into(py, &*self.inner, x, out, bias, aq, activation, path)
            }

            $($own)*
        }
    };
}

/// s8 linear weights `[out_features, in_features]` packed for the GEMM, with their scales and zero points.
#[pyclass(frozen, module = "nnic._kernels")]
pub struct PackedInt8Weight {
    /// Shared with queued prefetch walks (`crate::prefetch`), which keep it alive until they are done.
    pub(crate) inner: Arc<PackedLinear>,
}

packed_weight_methods!(PackedInt8Weight, symmetric = false,
    "`out[m, n] = dequant(quant(x) @ w.T) + bias` for float32 `x[m, k]`.", {
    /// `w`: int8 `[n, k]`; `scale`: float32, 1 or `n` values; `zero_point`: int32, 0, 1 or `n` values.
    #[new]
    fn new(
        py: Python<'_>,
        w: PyReadonlyArray2<'_, i8>,
        scale: PyReadonlyArray1<'_, f32>,
        zero_point: PyReadonlyArray1<'_, i32>,
    ) -> PyResult<Self> {
        let [n, k] = dims(&w);
        let (w, s, z) = (ro(&w, "w")?, ro1(&scale, "scale")?, ro1(&zero_point, "zero_point")?);
        Ok(PackedInt8Weight { inner: Arc::new(to_py(py.detach(|| PackedLinear::new(w, n, k, s, z)))?) })
    }

    /// The int8 codes `[n, k]` (unpacked copy).
    fn weight<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<i8>>> {
        let (n, k) = (self.inner.out_features(), self.inner.in_features());
        PyArray1::from_vec(py, self.inner.weight()).reshape([n, k])
    }
    fn scale<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.scale())
    }
    fn zero_point<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        PyArray1::from_vec(py, self.inner.zero_point())
    }

    /// Convolution of NHWC float32 `x[n, h, w, c]` with this weight (packed as `[c_out, kh*kw*c]`, K ordered
    /// `(dy, dx, c)`) into `out[n*ho*wo, c_out]`; activations quantized per tensor or statically.
    #[pyo3(signature = (x, out, kernel_size, stride, padding, dilation, bias=None, act="per_tensor", symmetric=false,
                        act_scale=None, act_zero_point=None, path=None, reduce_range=false))]
    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray4<'_, f32>,
        mut out: PyReadwriteArray2<'_, f32>,
        kernel_size: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        bias: Option<PyReadonlyArray1<'_, f32>>,
        act: &str,
        symmetric: bool,
        act_scale: Option<f32>,
        act_zero_point: Option<i32>,
        path: Option<&str>,
        reduce_range: bool,
    ) -> PyResult<()> {
        let p = self::path(path)?;
        let aq = act_quant(act, symmetric, act_scale, act_zero_point, reduce_range)?;
        let sh = x.shape();
        let g = ConvGeom {
            n: sh[0],
            h: sh[1],
            w: sh[2],
            c: sh[3],
            kh: kernel_size.0,
            kw: kernel_size.1,
            stride,
            padding,
            dilation,
        };
        let (ho, wo) = to_py(g.out_hw())?;
        let od = [out.shape()[0], out.shape()[1]];
        if od != [g.n * ho * wo, self.inner.out_features()] {
            return Err(shape_err(format!(
                "out must be [{}, {}], got {od:?}",
                g.n * ho * wo,
                self.inner.out_features()
            )));
        }
        let x = slice(&x, "x (NHWC)")?;
        let bias = bias.as_ref().map(|b| ro1(b, "bias")).transpose()?;
        let out = rw(&mut out, "out")?;
        let w = &self.inner;
        to_py(py.detach(|| int8_conv2d(p, x, g, w, bias, aq, out)))
    }

    /// `LayerNorm(linear(x) + residual) * gamma + beta` per row, as a new array shaped like `residual`
    /// (`[..., n]`, float32, C-contiguous like `x[..., k]`): a BERT-style block ending in one parallel region
    /// (`nnic_kernels::gemm::int8_linear_skip_layer_norm`), the same bits as `linear` then `skip_layer_norm`.
    #[pyo3(signature = (x, residual, gamma, beta, eps, bias=None, act="per_token", symmetric=false, act_scale=None,
                        act_zero_point=None, path=None, reduce_range=false))]
    #[allow(clippy::too_many_arguments)]
    fn linear_skip_layer_norm<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        residual: PyReadonlyArrayDyn<'py, f32>,
        gamma: PyReadonlyArray1<'py, f32>,
        beta: PyReadonlyArray1<'py, f32>,
        eps: f32,
        bias: Option<PyReadonlyArray1<'py, f32>>,
        act: &str,
        symmetric: bool,
        act_scale: Option<f32>,
        act_zero_point: Option<i32>,
        path: Option<&str>,
        reduce_range: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let p = self::path(path)?;
        let aq = act_quant(act, symmetric, act_scale, act_zero_point, reduce_range)?;
        let (k, n) = (self.inner.in_features(), self.inner.out_features());
        let (xs, rs) = (x.shape(), residual.shape());
        let (Some((&kx, lead)), Some((&nr, rlead))) = (xs.split_last(), rs.split_last()) else {
            return Err(shape_err("x and residual must have at least one dimension".into()));
        };
        if kx != k || nr != n || lead != rlead {
            return Err(shape_err(format!(
                "x must be [..., {k}] and residual [..., {n}] with the same leading dimensions, got {xs:?} and {rs:?}"
            )));
        }
        let m = lead.iter().product::<usize>();
        let (xv, rv) = (slice(&x, "x")?, slice(&residual, "residual")?);
        let (g, b) = (ro1(&gamma, "gamma")?, ro1(&beta, "beta")?);
        let bias = bias.as_ref().map(|b| ro1(b, "bias")).transpose()?;
        let fresh = fresh(py, rs);
        let out = unsafe { fresh.as_slice_mut() }.map_err(|_| not_contiguous("out"))?;
        let w = &*self.inner;
        prefetch::cancel(Some(w));
        to_py(py.detach(|| gemm::int8_linear_skip_layer_norm(p, xv, m, w, bias, aq, rv, g, b, eps, out)))?;
        Ok(fresh)
    }

    /// Exact `out[m, n] = a[m, k] @ w.T` in int32.
    #[pyo3(signature = (a, out, path=None))]
    fn matmul(
        &self,
        py: Python<'_>,
        a: PyReadonlyArray2<'_, i8>,
        mut out: PyReadwriteArray2<'_, i32>,
        path: Option<&str>,
    ) -> PyResult<()> {
        let p = self::path(path)?;
        let m = check_linear_shapes("a", &a, &out, self.inner.in_features(), self.inner.out_features())?;
        let a = ro(&a, "a")?;
        let out = rw(&mut out, "out")?;
        let w = self.inner.packed();
        to_py(py.detach(|| gemm::matmul_i8(p, a, m, w, out)))
    }
});

/// int4 linear weights `[n, k]` (codes in [-8, 7], two per byte) with per-group scales `[n, groups]`
/// (float32, IEEE half-precision bits given as uint16, or uint8 codes times a float32 step per output column).
#[pyclass(frozen, module = "nnic._kernels")]
pub struct PackedInt4Weight {
    /// Shared with queued prefetch walks (`crate::prefetch`), which keep it alive until they are done.
    pub(crate) inner: Arc<int4::PackedInt4>,
}

packed_weight_methods!(PackedInt4Weight, symmetric = true,
    "`out[m, n] = quant(x) @ dequant(w).T + bias` (activations quantized on the fly, per token by default).", {
    /// `scales`: float32 `[n, groups]`, uint16 `[n, groups]` holding half-precision bits, or uint8 `[n, groups]`
    /// codes in [1, 255] with `scale_step` (float32 `[n]`, given only then): scale = code × step of its column.
    #[new]
    #[pyo3(signature = (q, scales, group_size, zero_points=None, scale_step=None))]
    fn new(
        py: Python<'_>,
        q: PyReadonlyArray2<'_, i8>,
        scales: &Bound<'_, PyAny>,
        group_size: usize,
        zero_points: Option<PyReadonlyArray2<'_, i8>>,
        scale_step: Option<PyReadonlyArray1<'_, f32>>,
    ) -> PyResult<Self> {
        let [n, k] = dims(&q);
        let q = ro(&q, "q")?;
        let z = zero_points.as_ref().map(|z| ro(z, "zero_points")).transpose()?.unwrap_or(&[]);
        let is_u8 = scales.extract::<PyReadonlyArray2<'_, u8>>().is_ok();
        if is_u8 != scale_step.is_some() {
            return Err(PyTypeError::new_err("scale_step goes with uint8 scale codes, and only with them"));
        }
        let inner = if let Some(step) = scale_step.as_ref() {
            let codes = scales.extract::<PyReadonlyArray2<'_, u8>>()?;
            let (codes, step) = (ro(&codes, "scales")?, ro1(step, "scale_step")?);
            py.detach(|| int4::PackedInt4::new(q, n, k, int4::GroupScales::U8 { codes, step }, z, group_size))
        } else if let Ok(s) = scales.extract::<PyReadonlyArray2<'_, f32>>() {
            let s = ro(&s, "scales")?;
            py.detach(|| int4::PackedInt4::new(q, n, k, s, z, group_size))
        } else if let Ok(s) = scales.extract::<PyReadonlyArray2<'_, u16>>() {
            let s = ro(&s, "scales")?;
            py.detach(|| int4::PackedInt4::new(q, n, k, int4::GroupScales::F16(s), z, group_size))
        } else {
            return Err(PyTypeError::new_err(
                "scales must be a 2-D float32 array, uint16 holding half-precision bits, or uint8 codes",
            ));
        };
        Ok(PackedInt4Weight { inner: Arc::new(to_py(inner)?) })
    }

    #[getter]
    fn group_size(&self) -> usize {
        self.inner.group_size()
    }

    #[getter]
    fn affine(&self) -> bool {
        self.inner.is_affine()
    }

    /// `"float16"` when the scales are stored as half-precision bits, `"uint8"` for 8-bit codes with per-column
    /// steps, else `"float32"`.
    #[getter]
    fn scale_dtype(&self) -> &'static str {
        if self.inner.has_f16_scales() {
            "float16"
        } else if self.inner.has_u8_scales() {
            "uint8"
        } else {
            "float32"
        }
    }

    /// `(codes [n, k] int8, scales [n, groups] float32, zero points [n, groups] int8 or None)`; half-precision
    /// scales come widened (exactly) to float32, their bits from `scale_bits`; 8-bit ones as the float32 products
    /// of code and step, the two from `scale_codes`.
    #[allow(clippy::type_complexity)]
    fn unpack<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyArray2<i8>>, Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray2<i8>>>)> {
        let (n, k) = (self.inner.out_features(), self.inner.in_features());
        let (q, s, z) = self.inner.unpack();
        let g = k.div_ceil(self.inner.group_size());
        let z = if z.is_empty() { None } else { Some(PyArray1::from_vec(py, z).reshape([n, g])?) };
        Ok((PyArray1::from_vec(py, q).reshape([n, k])?, PyArray1::from_vec(py, s).reshape([n, g])?, z))
    }

    /// The half-precision bits of the scales `[n, groups]` (uint16), or None when they are float32.
    fn scale_bits<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray2<u16>>>> {
        let (n, g) = (self.inner.out_features(), self.inner.in_features().div_ceil(self.inner.group_size()));
        self.inner.f16_scales().map(|b| PyArray1::from_vec(py, b).reshape([n, g])).transpose()
    }

    /// The 8-bit scale codes `[n, groups]` (uint8) and per-column steps `[n]` (float32), or None when the scales
    /// are stored otherwise.
    #[allow(clippy::type_complexity)]
    fn scale_codes<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyArray2<u8>>, Bound<'py, PyArray1<f32>>)>> {
        let (n, g) = (self.inner.out_features(), self.inner.in_features().div_ceil(self.inner.group_size()));
        self.inner
            .u8_scales()
            .map(|(c, s)| Ok((PyArray1::from_vec(py, c).reshape([n, g])?, PyArray1::from_vec(py, s))))
            .transpose()
    }
});
