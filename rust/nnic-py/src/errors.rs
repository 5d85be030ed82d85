//! Error mapping, in one place: kernel errors and array access errors become Python `ValueError`s.
use nnic_kernels::KernelError;
use numpy::{Element, PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

/// `Result<T, KernelError>` -> `PyResult<T>`.
pub fn to_py<T>(r: Result<T, KernelError>) -> pyo3::PyResult<T> {
    r.map_err(|e| PyValueError::new_err(e.to_string()))
}

fn not_contiguous(name: &str) -> PyErr {
    PyValueError::new_err(format!("{name} must be a C-contiguous array (nnic.kernels makes contiguous copies)"))
}

/// The data of a read-only array as a slice; non-contiguous arrays are a `ValueError` naming `name`.
pub fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> pyo3::PyResult<&'a [T]> {
    a.as_slice().map_err(|_| not_contiguous(name))
}

/// The data of a writable array as a mutable slice.
pub fn slice_mut<'a, T: Element>(a: &'a mut PyReadwriteArrayDyn<'_, T>, name: &str) -> pyo3::PyResult<&'a mut [T]> {
    a.as_slice_mut().map_err(|_| not_contiguous(name))
}

/// The ISA named `name` (`None`: best supported) or a `ValueError`.
pub fn isa(name: Option<&str>) -> pyo3::PyResult<Option<nnic_kernels::Isa>> {
    name.map(|n| to_py(nnic_kernels::Isa::parse(n))).transpose()
}
