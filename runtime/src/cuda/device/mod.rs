//! The CUDA executor: device discovery, device tensors, the paged cache on the device, and kernel
//! launches on one stream (the executor's own or one the caller provides).
//!
//! Buffers are cudarc [`CudaSlice`](cudarc::driver::CudaSlice)s of bytes; a tensor also keeps its
//! raw device address so launch arguments can be built without a stream. All work an executor
//! issues (copies and launches) goes to its stream, in order; `download*` and
//! [`Executor::synchronize`](crate::exec::Executor::synchronize) wait for it. Engines that share
//! buffers with other streams must order those streams themselves.
//!
//! A missing driver or device is [`RuntimeError::BackendUnavailable`]; cudarc's dynamic loading
//! is probed first and every first call into the driver runs under `catch_unwind`, so nothing
//! panics. An allocation failure is [`RuntimeError::Device`] (`out of device memory`) and leaves
//! the executor, its kernel cache and every existing buffer usable.
//!
//! Modules: `info` (device properties), `buffers` (device tensors and the paged cache),
//! `kernel` (loaded kernels), `launch` (ordinary and programmatic dependent launches),
//! `executor` ([`CudaExecutor`]'s own methods) and `exec_impl`
//! (the backend-neutral [`Executor`](crate::exec::Executor) interface). This module keeps the
//! driver probing and error mapping, and the skip helpers for tests and benches.

mod buffers;
mod exec_impl;
mod executor;
mod info;
mod kernel;
mod launch;

pub use buffers::{CudaPagedCache, CudaTensor};
pub use executor::CudaExecutor;
pub use info::{with_env_switches, DeviceInfo};
pub use kernel::{FunctionResources, LoadedKernel, RawKernel};

use cudarc::driver::{result, DriverError};

use crate::RuntimeError;

pub(crate) fn unavailable(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BackendUnavailable {
        backend: "cuda".into(),
        reason: reason.into(),
    }
}

/// Maps a driver error to a runtime error; out-of-memory is named as such.
pub fn driver_err(what: &str, e: DriverError) -> RuntimeError {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        RuntimeError::Device(format!(
            "out of device memory during {what} ({name}: {text})"
        ))
    } else {
        RuntimeError::Device(format!("{what}: {name}: {text}"))
    }
}

pub(crate) fn catch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        unavailable(format!("{what}: {msg}"))
    })
}

/// Checks that the CUDA driver library can be loaded (without panicking).
pub fn driver_available() -> Result<(), RuntimeError> {
    // SAFETY: only tries to dlopen libcuda under its candidate names.
    let present = catch("loading libcuda", || unsafe {
        cudarc::driver::sys::is_culib_present()
    })?;
    if !present {
        return Err(unavailable(
            "the CUDA driver library (libcuda.so.1) is not on the loader path",
        ));
    }
    catch("cuInit", result::init)?.map_err(|e| unavailable(format!("cuInit failed: {e:?}")))
}

/// Number of CUDA devices (0 when the driver is absent).
pub fn device_count() -> usize {
    if driver_available().is_err() {
        return 0;
    }
    catch("cuDeviceGetCount", result::device::get_count)
        .ok()
        .and_then(|r| r.ok())
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// Prints a line that stays visible under the test harness's output capture (written straight to
/// the process's stderr).
pub fn skip_notice(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether `TPLA_REQUIRE_GPU=1` (tests and benches then fail instead of skipping).
pub fn gpu_required() -> bool {
    std::env::var("TPLA_REQUIRE_GPU").as_deref() == Ok("1")
}

/// An executor on device 0 for tests and benches, or `None` after printing a SKIP line (panics
/// instead when `TPLA_REQUIRE_GPU=1`).
pub fn executor_or_skip(what: &str) -> Option<CudaExecutor> {
    match CudaExecutor::new(0) {
        Ok(e) => Some(e),
        Err(e) => {
            if gpu_required() {
                panic!("{what}: TPLA_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            skip_notice(&format!("SKIP {what}: no CUDA GPU ({e})"));
            None
        }
    }
}
