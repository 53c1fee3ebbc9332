//! Loaded kernels: DSL kernels compiled for one config ([`LoadedKernel`]), hand-written ones
//! ([`RawKernel`]) and their per-function resources.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaFunction, CudaModule};
use tpla_codegen::ir::Kernel;

use super::driver_err;
use crate::cuda::CompiledKernel;
use crate::RuntimeError;

/// A hand-written kernel loaded by [`CudaExecutor::load_source`](super::CudaExecutor::load_source).
pub struct RawKernel {
    pub(super) func: CudaFunction,
    pub(super) _module: Arc<CudaModule>,
}

/// A kernel compiled and loaded for one config.
pub struct LoadedKernel {
    /// The IR.
    pub ir: Kernel,
    /// Source, geometry and image (with its cache provenance and ptxas report).
    pub compiled: CompiledKernel,
    pub(super) func: CudaFunction,
    pub(super) _module: Arc<CudaModule>,
}

/// What the driver reports for a loaded function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionResources {
    /// Registers per thread.
    pub registers: u32,
    /// Local memory per thread in bytes (stack frame plus spills; 0 for a spill-free kernel).
    pub local_bytes: u32,
}

impl LoadedKernel {
    /// Registers and local memory of the loaded function, from the driver.
    pub fn resources(&self) -> Result<FunctionResources, RuntimeError> {
        let attr = |a| {
            self.func
                .get_attribute(a)
                .map_err(|e| driver_err("cuFuncGetAttribute", e))
        };
        Ok(FunctionResources {
            registers: attr(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NUM_REGS)? as u32,
            local_bytes: attr(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?
                as u32,
        })
    }
}

impl std::fmt::Debug for LoadedKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKernel")
            .field("name", &self.compiled.source.name)
            .field("block_threads", &self.compiled.source.block_threads)
            .field("shared_bytes", &self.compiled.source.shared_bytes)
            .finish_non_exhaustive()
    }
}
