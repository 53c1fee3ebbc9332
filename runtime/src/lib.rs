//! tpla-runtime: executes DSL kernels (CPU JIT, CUDA), holds the paged latent cache, and carries
//! the f64 reference every backend is checked against.
//!
//! The CUDA backend ([`cuda`](mod@cuda), the device views' executor, NCCL, the `cudarc`
//! re-export) is behind the `cuda` feature (on by default). Without it the CPU backend, the views
//! and the references still build, and [`cuda_devices`] says why there is no GPU.

pub mod bounded;
pub mod collective;
pub mod cpu_exec;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod paged;
pub mod reference;
pub mod tensor;
pub mod tune;
pub mod view;

pub use collective::{AllReduce, HostAllReduce};
pub use cpu_exec::CpuExecutor;
/// The CUDA driver bindings the CUDA executor is built on (streams, graphs, device buffers), so
/// engines and tests use the very version tpla does.
#[cfg(feature = "cuda")]
pub use cudarc;
pub use error::RuntimeError;
pub use exec::{ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
pub use half;
pub use paged::HostPagedCache;
pub use tensor::{Element, HostTensor};

/// How many CUDA devices this process can use, or why it can use none: a
/// [`RuntimeError::BackendUnavailable`] when the driver cannot be loaded or initialised, or when
/// this build has no CUDA backend (the `cuda` feature is off). `Ok(0)` when the driver works but
/// reports no device.
pub fn cuda_devices() -> Result<usize, RuntimeError> {
    #[cfg(feature = "cuda")]
    {
        cuda::device::driver_available()?;
        Ok(cuda::device::device_count())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(RuntimeError::BackendUnavailable {
            backend: "cuda".into(),
            reason: "tpla was built without the `cuda` feature (enable it to use a GPU)".into(),
        })
    }
}

#[cfg(test)]
mod feature_tests {
    /// With the backend compiled out the answer names the missing feature; with it, the answer
    /// is a count or a driver problem, never the feature.
    #[test]
    fn cuda_devices_names_the_feature_only_when_it_is_off() {
        let r = super::cuda_devices();
        let says_feature = matches!(&r, Err(super::RuntimeError::BackendUnavailable { reason, .. })
            if reason.contains("without the `cuda` feature"));
        assert_eq!(says_feature, cfg!(not(feature = "cuda")), "{r:?}");
    }
}
