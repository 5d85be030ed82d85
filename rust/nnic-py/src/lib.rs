//! Thin PyO3 bindings: argument checks, GIL release and error mapping only; the work is in `nnic_kernels`.
use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _kernels {
    use pyo3::prelude::*;

    /// Instruction-set extensions found on this CPU.
    #[pyfunction]
    fn cpu_features() -> Vec<&'static str> {
        nnic_kernels::cpu::features()
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
