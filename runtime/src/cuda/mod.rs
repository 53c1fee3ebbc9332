//! The CUDA side of the runtime.
//!
//! - [`nvrtc`]: locating libnvrtc (never panicking), compiling generated CUDA C++ to a CUBIN for
//!   the exact device (`sm_90a` on Hopper), PTX as fallback, and ptxas' resource report.
//! - [`cache`]: compiled kernels in memory and on disk, keyed by a hash of (source, NVRTC version,
//!   options).
//! - [`compile_kernel`]: IR + [`Target`] -> CUDA C++ ([`tpla_codegen::cuda::emit`]) -> image.
//! - [`device`]: [`CudaExecutor`] (device discovery, device tensors, the paged cache on the
//!   device, launches on the executor's or the caller's stream).
//! - [`blas`]: dense bf16 projections through cuBLAS on the executor's stream.
//! - [`bench`](mod@bench): event-timed medians, the same-process roofline, decode FLOP/byte counts, JSON
//!   reports.
//!
//! `TPLA_DUMP=cuda` (or any comma list containing `cuda`) prints each generated source to stderr;
//! a value naming no stage is an error ([`tpla_codegen::dump`]).

pub mod bench;
pub mod blas;
pub mod cache;
pub mod device;
pub mod nccl;
pub mod nvrtc;
mod sha256;
mod tmap;

pub use cache::{CacheSource, CachedKernel, KernelCache, Lookup};
pub use device::{
    with_env_switches, CudaExecutor, CudaPagedCache, CudaTensor, DeviceInfo, FunctionResources,
    LoadedKernel,
};
pub use nvrtc::{Image, NvrtcError, NvrtcLib, PtxasReport};
pub use tpla_codegen::cuda::{CudaSource, F32Gemm, Target};

use tpla_codegen::dump::{DumpStages, Stage};
use tpla_codegen::ir::Kernel;
use tpla_codegen::IrError;

use crate::RuntimeError;

/// An on/off switch read from environment variable `var` (the A/B switches `TPLA_PDL`,
/// `TPLA_BENCH_QUEUE_GUARD`): see [`parse_switch`].
pub(crate) fn env_switch(var: &str) -> Result<bool, RuntimeError> {
    parse_switch(var, std::env::var(var).ok().as_deref())
}

/// The value `v` of switch `var`: unset, `on` or `1` is on; `off` or `0` is off; anything else
/// is an error naming the variable and its value.
pub(crate) fn parse_switch(var: &str, v: Option<&str>) -> Result<bool, RuntimeError> {
    match v {
        None | Some("on") | Some("1") => Ok(true),
        Some("off") | Some("0") => Ok(false),
        Some(other) => Err(RuntimeError::InvalidInput(format!(
            "{var}={other}: expected on or off"
        ))),
    }
}

/// Failures of the CUDA backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    /// The kernel cannot be lowered to CUDA C++ (e.g. it needs too much shared memory).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// libnvrtc is missing or rejected the source.
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
}

impl From<CudaError> for RuntimeError {
    fn from(e: CudaError) -> RuntimeError {
        match e {
            CudaError::Ir(e) => RuntimeError::Ir(e),
            CudaError::Nvrtc(e @ (NvrtcError::NotFound { .. } | NvrtcError::Load { .. })) => {
                RuntimeError::BackendUnavailable {
                    backend: "cuda".into(),
                    reason: e.to_string(),
                }
            }
            CudaError::Nvrtc(NvrtcError::Compile {
                kernel,
                arch,
                log,
                source_path,
            }) => RuntimeError::Ir(IrError::Backend {
                backend: "cuda",
                kernel,
                message: format!(
                    "NVRTC failed for {arch} (source saved to {}):\n{log}",
                    source_path
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "<not saved>".into())
                ),
            }),
            CudaError::Nvrtc(e) => RuntimeError::Device(e.to_string()),
        }
    }
}

/// A kernel ready to load: its source and launch geometry plus the compiled image.
#[derive(Clone, Debug)]
pub struct CompiledKernel {
    /// Generated source, symbol, block size, shared memory, argument ABI.
    pub source: CudaSource,
    /// The image and ptxas report, with where it came from.
    pub lookup: Lookup,
    /// The NVRTC options used.
    pub options: Vec<String>,
}

/// Whether `TPLA_DUMP` asks for `stage` (parsed by [`tpla_codegen::dump::DumpStages`]); a value
/// naming no stage is an [`IrError::BadDump`].
pub fn dump_requested(stage: Stage) -> Result<bool, IrError> {
    Ok(DumpStages::from_env()?.wants(stage))
}

/// Emits CUDA C++ for `kernel` on `target` and compiles it through `cache`.
pub fn compile_kernel(
    kernel: &Kernel,
    target: Target,
    cache: &KernelCache,
) -> Result<CompiledKernel, CudaError> {
    let source = tpla_codegen::cuda::emit(kernel, target)?;
    if dump_requested(Stage::Cuda)? {
        eprintln!(
            "// ===== TPLA_DUMP=cuda: {} ({})\n{}",
            kernel.name, source.name, source.code
        );
    }
    let options = nvrtc::default_options(&target.arch_name());
    let lookup = cache.get_or_compile(&source.name, &source.code, &options)?;
    Ok(CompiledKernel {
        source,
        lookup,
        options,
    })
}
