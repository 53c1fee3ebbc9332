//! TMA tensor maps for kernels built with `TMA = 1`: the page pool of a streamed paged cache as
//! the 2-D tensor planned by [`tpla_codegen::cuda::tma::plan_paged_tmap`], encoded by the driver's
//! `cuTensorMapEncodeTiled` and passed by value as the kernel's `CUtensorMap` parameter (so a
//! CUDA graph captures the map with the launch; the same buffers on replay are fine).

use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use tpla_codegen::cuda::tma::TmapPlan;

use super::device::catch;
use crate::RuntimeError;

/// Encodes `plan` (bf16, 128-byte swizzle, zero out-of-bounds fill, 256-byte L2 promotion).
/// The plan was validated already; a driver refusal is a [`RuntimeError::Device`] naming the
/// map, and nothing is launched.
pub(crate) fn encode(plan: &TmapPlan) -> Result<Box<CUtensorMap>, RuntimeError> {
    let mut map = Box::new(CUtensorMap { opaque: [0; 16] });
    // Dimension 1's stride only (dimension 0 is contiguous).
    let strides = [plan.row_stride_bytes];
    let elem_strides = [1u32, 1u32];
    let out: *mut CUtensorMap = &mut *map;
    // A driver without the entry point (before CUDA 12) makes cudarc's loader panic: caught, and
    // reported as the backend being unavailable.
    // SAFETY: `out` is a writable, 64/128-byte aligned CUtensorMap; the dimension, stride, box
    // and element-stride arrays have the lengths rank 2 requires (rank - 1 = 1 stride), and live
    // across the call. The global address is only recorded in the map, not dereferenced here.
    let r = catch("cuTensorMapEncodeTiled", || unsafe {
        cuTensorMapEncodeTiled(
            out,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            plan.global_address as *mut std::ffi::c_void,
            plan.dims.as_ptr(),
            strides.as_ptr(),
            plan.box_dims.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    })?;
    if r != CUresult::CUDA_SUCCESS {
        return Err(RuntimeError::Device(format!(
            "cuTensorMapEncodeTiled refused the page-pool tensor map {plan:?}: {r:?}"
        )));
    }
    Ok(map)
}
