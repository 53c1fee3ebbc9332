//! Device discovery: the properties of one CUDA device ([`DeviceInfo`]).

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::CudaContext;

use super::driver_err;
use crate::cuda::Target;
use crate::RuntimeError;

/// What a device is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Global memory in bytes.
    pub total_memory: u64,
    /// L2 cache in bytes.
    pub l2_bytes: u64,
    /// Opt-in shared memory per block in bytes.
    pub max_shared_per_block: u32,
    /// Driver version as reported by `cuDriverGetVersion` (e.g. 13000).
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The codegen target for this device (its shared-memory limit included).
    pub fn target(&self) -> Target {
        let mut t = Target::new(self.compute_capability.0, self.compute_capability.1);
        if self.max_shared_per_block > 0 {
            t.max_shared_bytes = self.max_shared_per_block;
        }
        with_env_switches(t)
    }
}

/// `t` with the environment's code-generation switches applied, as every kernel this process
/// compiles for a device sees them (`--compile-only` too, so a kernel cache built under the same
/// variables holds the same kernels): `TPLA_CUDA_WGMMA=0` keeps every gemm on mma.sync (for
/// comparisons and bisection); `TPLA_CUDA_ASYNC_LOADS=0` copies the query tile through
/// registers (the same-binary before / after of the `cp.async` query load, and a way back if it
/// misbehaves); `TPLA_CUDA_LOADS_FIRST=0` prints `for` loops as the kernel wrote them.
pub fn with_env_switches(t: Target) -> Target {
    let off = |var: &str| std::env::var(var).is_ok_and(|v| v.trim() == "0");
    t.with_wgmma(t.wgmma && !off("TPLA_CUDA_WGMMA"))
        .with_async_tile_loads(t.async_tile_loads && !off("TPLA_CUDA_ASYNC_LOADS"))
        .with_loads_first(t.loads_first && !off("TPLA_CUDA_LOADS_FIRST"))
}

pub(super) fn device_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo, RuntimeError> {
    let attr = |a: CUdevice_attribute| {
        ctx.attribute(a)
            .map_err(|e| driver_err("cuDeviceGetAttribute", e))
    };
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| driver_err("compute capability", e))?;
    let mut driver = 0i32;
    // SAFETY: valid out-pointer; the driver library is loaded (a context exists).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(|e| driver_err("device name", e))?,
        compute_capability: (major as u32, minor as u32),
        sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        total_memory: ctx.total_mem().map_err(|e| driver_err("total memory", e))? as u64,
        l2_bytes: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64,
        max_shared_per_block: attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )? as u32,
        driver_version: driver,
    })
}
