//! Thin PyO3 bindings: argument checks, GIL release and error mapping only; the work is in `nnic_kernels`.
//!
//! Every function takes C-contiguous numpy arrays of one dtype (the torch/numpy adaptation, dtype checks
//! and output allocation live in the `nnic.kernels` package); outputs are written into caller-provided arrays so
//! that torch tensors can be filled without a copy. The GIL is released around every kernel.
mod decoder;
mod encoder;
mod errors;
mod gemm;
mod prefetch;
mod sparse;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _kernels {
    #[pymodule_export]
    use crate::gemm::{
        gemm_backend, gemm_openmp_stats, gemm_path, gemm_paths, gemm_pool_stats, gemm_route_stats, gemm_spin_us,
        gemm_team_stats, gemm_vnni_peak, int8_matmul, set_gemm_backend, set_gemm_column_lanes, set_gemm_routing,
        set_gemm_spin_us, set_gemm_spread, set_gemm_tail_pieces, set_gemm_tall_tile, PackedInt4Weight, PackedInt8Weight,
    };
    #[pymodule_export]
    use crate::decoder::{add_rms_norm, decode_attention, decode_layer_step, rms_norm, silu_mul};
    #[pymodule_export]
    use crate::encoder::{attention, embed_layer_norm, encoder_layers, skip_layer_norm};
    #[pymodule_export]
    use crate::prefetch::{cancel_prefetch, prefetch_stats, prefetch_wait, prefetch_weights};
    #[pymodule_export]
    use crate::sparse::{flush_caches, set_sparse_bitmask_break_even, sparse_bitmask_break_even, SparseWeight};
    use crate::errors::{isa, slice, slice_mut, to_py};
    use nnic_kernels::quant::Params;
    use nnic_kernels::{cache, cpu, mask, nibbles, pool, quant, reduce, select, Layout};
    use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
    use pyo3::prelude::*;

    /// k-th smallest |x| (1-based) of a contiguous float32 array.
    #[pyfunction]
    fn kth_smallest_abs(py: Python<'_>, x: PyReadonlyArrayDyn<'_, f32>, k: u64) -> PyResult<f32> {
        let x = slice(&x, "x")?;
        to_py(py.detach(|| select::kth_smallest_abs(x, k)))
    }

    /// k-th smallest |x| over a list of contiguous float32 arrays.
    #[pyfunction]
    fn global_kth_smallest_abs(py: Python<'_>, xs: Vec<PyReadonlyArrayDyn<'_, f32>>, k: u64) -> PyResult<f32> {
        let xs = xs.iter().enumerate().map(|(i, x)| slice(x, &format!("xs[{i}]"))).collect::<PyResult<Vec<_>>>()?;
        to_py(py.detach(|| select::global_kth_smallest_abs(&xs, k)))
    }

    /// Writes the keep-mask with exactly k pruned entries of `x` into `out` (bool, same size).
    #[pyfunction]
    fn smallest_abs_mask(
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        k: u64,
        mut out: PyReadwriteArrayDyn<'_, bool>,
    ) -> PyResult<()> {
        let x = slice(&x, "x")?;
        let out = slice_mut(&mut out, "out")?;
        to_py(py.detach(|| mask::smallest_abs_mask(x, k, out)))
    }

    /// Keep-masks with exactly k pruned entries over the list `xs`, written into `outs`.
    #[pyfunction]
    fn global_smallest_abs_masks(
        py: Python<'_>,
        xs: Vec<PyReadonlyArrayDyn<'_, f32>>,
        k: u64,
        mut outs: Vec<PyReadwriteArrayDyn<'_, bool>>,
    ) -> PyResult<()> {
        let xs = xs.iter().enumerate().map(|(i, x)| slice(x, &format!("xs[{i}]"))).collect::<PyResult<Vec<_>>>()?;
        let outs = outs.iter_mut().map(|o| slice_mut(o, "outs")).collect::<PyResult<Vec<_>>>()?;
        to_py(py.detach(|| mask::global_smallest_abs_masks(&xs, k, outs)))
    }

    /// In place `w[mask == 0] = 0`; `check_binary` rejects mask bytes other than 0/1 before writing.
    #[pyfunction]
    fn apply_mask(
        py: Python<'_>,
        mut w: PyReadwriteArrayDyn<'_, f32>,
        mask: PyReadonlyArrayDyn<'_, u8>,
        check_binary: bool,
    ) -> PyResult<()> {
        let m = slice(&mask, "mask")?;
        let w = slice_mut(&mut w, "w")?;
        to_py(py.detach(|| mask::apply_mask(w, m, check_binary)))
    }

    /// In place `w[|w| <= t] = 0`; returns the number of entries kept.
    #[pyfunction]
    fn prune_by_threshold(py: Python<'_>, mut w: PyReadwriteArrayDyn<'_, f32>, t: f32) -> PyResult<u64> {
        let w = slice_mut(&mut w, "w")?;
        to_py(py.detach(|| mask::prune_by_threshold(w, t)))
    }

    /// Quantizes `x` into the byte array `out` (same shape) with per-channel (`axis`) or per-tensor params.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    fn quantize(
        py: Python<'_>,
        x: PyReadonlyArrayDyn<'_, f32>,
        mut out: PyReadwriteArrayDyn<'_, u8>,
        scale: PyReadonlyArray1<'_, f32>,
        zero_point: PyReadonlyArray1<'_, i32>,
        axis: Option<usize>,
        qmin: i32,
        qmax: i32,
    ) -> PyResult<()> {
        let layout = to_py(Layout::from_shape(x.shape(), axis))?;
        let (scale, zero_point) = (scale.as_slice()?, zero_point.as_slice()?);
        let x = slice(&x, "x")?;
        let out = slice_mut(&mut out, "out")?;
        to_py(py.detach(|| quant::quantize(x, layout, Params { scale, zero_point, qmin, qmax }, out)))
    }

    /// Dequantizes the bytes `q` (int8 when `signed`, else uint8) into the float32 array `out`.
    #[pyfunction]
    fn dequantize(
        py: Python<'_>,
        q: PyReadonlyArrayDyn<'_, u8>,
        signed: bool,
        mut out: PyReadwriteArrayDyn<'_, f32>,
        scale: PyReadonlyArray1<'_, f32>,
        zero_point: PyReadonlyArray1<'_, i32>,
        axis: Option<usize>,
    ) -> PyResult<()> {
        let layout = to_py(Layout::from_shape(q.shape(), axis))?;
        let (scale, zero_point) = (scale.as_slice()?, zero_point.as_slice()?);
        let q = slice(&q, "q")?;
        let out = slice_mut(&mut out, "out")?;
        to_py(py.detach(|| quant::dequantize(q, signed, layout, scale, zero_point, out)))
    }

    /// Packs int8 values in [-8, 7] two per byte into `out` (ceil(n/2) bytes).
    #[pyfunction]
    fn pack_int4(py: Python<'_>, q: PyReadonlyArrayDyn<'_, i8>, mut out: PyReadwriteArrayDyn<'_, u8>) -> PyResult<()> {
        let q = slice(&q, "q")?;
        let out = slice_mut(&mut out, "out")?;
        to_py(py.detach(|| nibbles::pack_int4(q, out)))
    }

    /// Unpacks `out.size` sign-extended int4 values from `p`.
    #[pyfunction]
    fn unpack_int4(py: Python<'_>, p: PyReadonlyArrayDyn<'_, u8>, mut out: PyReadwriteArrayDyn<'_, i8>) -> PyResult<()> {
        let p = slice(&p, "p")?;
        let out = slice_mut(&mut out, "out")?;
        to_py(py.detach(|| nibbles::unpack_int4(p, out)))
    }

    /// max |x| per tensor (`axis=None`, 1 value) or per slice along `axis`.
    #[pyfunction]
    #[pyo3(signature = (x, axis=None))]
    fn abs_max<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>, axis: Option<usize>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let layout = to_py(Layout::from_shape(x.shape(), axis))?;
        let xs = slice(&x, "x")?;
        let r = to_py(py.detach(|| reduce::abs_max(xs, layout)))?;
        Ok(PyArray1::from_vec(py, r))
    }

    /// (min, max) per tensor or per slice along `axis`.
    #[pyfunction]
    #[pyo3(signature = (x, axis=None))]
    #[allow(clippy::type_complexity)]
    fn min_max<'py>(
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
        axis: Option<usize>,
    ) -> PyResult<(Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>)> {
        let layout = to_py(Layout::from_shape(x.shape(), axis))?;
        let xs = slice(&x, "x")?;
        let (lo, hi) = to_py(py.detach(|| reduce::min_max(xs, layout)))?;
        Ok((PyArray1::from_vec(py, lo), PyArray1::from_vec(py, hi)))
    }

    /// Bytes of one core's L1 data cache, of its L2 and of the L3 (0 where unknown), as the kernels' blocking
    /// reads them: sysfs, else CPUID.
    #[pyfunction]
    fn cache_sizes() -> (usize, usize, usize) {
        let s = cache::sizes();
        (s.l1d, s.l2, s.l3)
    }

    /// Instruction-set extensions found on this CPU.
    #[pyfunction]
    fn cpu_features() -> Vec<&'static str> {
        cpu::features()
    }

    /// Kernel code paths this CPU supports, slowest first.
    #[pyfunction]
    fn supported_isas() -> Vec<&'static str> {
        cpu::supported().into_iter().map(|i| i.name()).collect()
    }

    /// The code path the kernels use now.
    #[pyfunction]
    fn active_isa() -> &'static str {
        cpu::active().name()
    }

    /// Forces a code path (`None`: the best supported one).
    #[pyfunction]
    #[pyo3(signature = (name=None))]
    fn set_isa(name: Option<&str>) -> PyResult<()> {
        to_py(cpu::set_isa(isa(name)?))
    }

    /// Resizes the kernels' thread pool.
    #[pyfunction]
    fn set_num_threads(n: usize) -> PyResult<()> {
        to_py(pool::set_num_threads(n))
    }

    /// Threads of the kernels' pool.
    #[pyfunction]
    fn get_num_threads() -> usize {
        pool::num_threads()
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
