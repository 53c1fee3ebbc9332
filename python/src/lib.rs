//! `tpla` for Python: MLA and TPLA decode attention over an engine's own paged KV cache, on
//! torch tensors (CPU tensors on the Cranelift backend, CUDA tensors on torch's current stream).
//!
//! The Python package (`python/tpla/`) re-exports this extension module `tpla._tpla`:
//! `MlaDecode`, `TplaDecode` (FlashInfer-shaped `plan` / `run`), `append`, `combine` and
//! `cuda_available`. Every failure is a Python exception (`TypeError` for a wrong type or dtype,
//! `ValueError` for wrong shapes, devices, strides or table contents, `RuntimeError` for the
//! backend); a Rust panic would surface as `pyo3_runtime.PanicException`, never an abort.

mod backend;
mod decode;
mod ops;
mod shards;
mod tensor;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _tpla(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<decode::MlaDecode>()?;
    m.add_class::<decode::TplaDecode>()?;
    m.add_function(wrap_pyfunction!(ops::append, m)?)?;
    m.add_function(wrap_pyfunction!(ops::combine, m)?)?;
    m.add_function(wrap_pyfunction!(backend::cuda_available, m)?)?;
    Ok(())
}
