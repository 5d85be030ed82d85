//! Error mapping, in one place: kernel errors and array access errors become Python `ValueError`s.
use nnic_kernels::KernelError;
use numpy::ndarray::Dimension;
use numpy::{Element, PyReadonlyArray, PyReadwriteArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

/// `Result<T, KernelError>` -> `PyResult<T>`.
pub fn to_py<T>(r: Result<T, KernelError>) -> pyo3::PyResult<T> {
    r.map_err(|e| PyValueError::new_err(e.to_string()))
}

pub(crate) fn not_contiguous(name: &str) -> PyErr {
    PyValueError::new_err(format!("{name} must be a C-contiguous array (nnic.kernels makes contiguous copies)"))
}

/// The data of a read-only array as a slice in C order; any other layout is a `ValueError` naming `name`
/// (numpy's `as_slice` also accepts Fortran order, whose elements it would hand over transposed).
pub fn slice<'a, T: Element, D: Dimension>(a: &'a PyReadonlyArray<'_, T, D>, name: &str) -> pyo3::PyResult<&'a [T]> {
    if !a.is_c_contiguous() {
        return Err(not_contiguous(name));
    }
    a.as_slice().map_err(|_| not_contiguous(name))
}

/// The data of a writable array as a mutable slice in C order (see [`slice`]).
pub fn slice_mut<'a, T: Element, D: Dimension>(
    a: &'a mut PyReadwriteArray<'_, T, D>,
    name: &str,
) -> pyo3::PyResult<&'a mut [T]> {
    if !a.is_c_contiguous() {
        return Err(not_contiguous(name));
    }
    a.as_slice_mut().map_err(|_| not_contiguous(name))
}

/// The ISA named `name` (`None`: best supported) or a `ValueError`.
pub fn isa(name: Option<&str>) -> pyo3::PyResult<Option<nnic_kernels::Isa>> {
    name.map(|n| to_py(nnic_kernels::Isa::parse(n))).transpose()
}
