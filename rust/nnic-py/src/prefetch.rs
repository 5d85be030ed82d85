//! Bindings of `nnic_kernels::prefetch`: warming packed weights into the cache in the background.
use crate::errors::to_py;
use crate::gemm::{PackedInt4Weight, PackedInt8Weight};
use nnic_kernels::prefetch::{self, Resident, Span, MAX_SPANS};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;
use std::time::Duration;

fn resident(w: &Bound<'_, PyAny>, i: usize) -> PyResult<Arc<dyn Resident>> {
    if let Ok(w) = w.cast::<PackedInt4Weight>() {
        return Ok(w.get().inner.clone());
    }
    if let Ok(w) = w.cast::<PackedInt8Weight>() {
        return Ok(w.get().inner.clone());
    }
    Err(PyTypeError::new_err(format!(
        "weights[{i}] must be a PackedInt4Weight or PackedInt8Weight, got {}",
        w.get_type().name()?
    )))
}

/// Queues `weights` (packed int4/int8 weights, at most 16) for a background thread that touches their bytes in
/// the order a GEMV reads them, at most `max_bytes` in all (None: everything), replacing what was queued; returns
/// at once. The queue holds the weights themselves, so freeing them meanwhile is safe. Any int4/int8 linear call
/// stops the walk first.
#[pyfunction]
#[pyo3(signature = (weights, max_bytes=None))]
pub fn prefetch_weights(weights: Vec<Bound<'_, PyAny>>, max_bytes: Option<i64>) -> PyResult<()> {
    if weights.len() > MAX_SPANS {
        return Err(PyValueError::new_err(format!(
            "weights: at most {MAX_SPANS} weights can be queued, got {}", weights.len()
        )));
    }
    let mut budget = match max_bytes {
        None => usize::MAX,
        Some(b) if b < 0 => return Err(PyValueError::new_err(format!("max_bytes must be >= 0, got {b}"))),
        Some(b) => b as usize,
    };
    let mut spans = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let owner = resident(w, i)?;
        let take = owner.resident_bytes().min(budget);
        budget -= take;
        spans.push(to_py(Span::new(owner, 0, take))?);
    }
    to_py(prefetch::warm(spans))
}

/// Stops the background walk and empties its queue (the int4/int8 linear calls do this themselves).
#[pyfunction]
pub fn cancel_prefetch() {
    prefetch::cancel(None);
}

/// Waits until the queued weights are walked (or the walk was cancelled), at most `timeout` seconds; returns
/// whether the walker is idle.
#[pyfunction]
#[pyo3(signature = (timeout=10.0))]
pub fn prefetch_wait(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    if !(timeout.is_finite() && timeout >= 0.0) {
        return Err(PyValueError::new_err(format!("timeout must be a finite number of seconds >= 0, got {timeout}")));
    }
    Ok(py.detach(|| prefetch::wait_idle(Duration::from_secs_f64(timeout))))
}

/// Counters of the walker since the process started: `jobs` (calls that queued bytes), `bytes` (walked),
/// `cancelled` (walks stopped early), `resumed_bytes` (skipped: already walked since the weight last ran).
#[pyfunction]
pub fn prefetch_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = prefetch::stats();
    let d = PyDict::new(py);
    d.set_item("jobs", s.jobs)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("cancelled", s.cancelled)?;
    d.set_item("resumed_bytes", s.resumed_bytes)?;
    Ok(d)
}
