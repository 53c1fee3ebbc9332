//! How generated kernels are launched: ordinarily, or as *programmatic dependents* of the kernel
//! before them on the stream (Hopper's programmatic dependent launch, PDL).
//!
//! A split-KV decode is two kernels, the decode and the log-sum-exp combine; an ordinary launch
//! starts the combine only after the decode's last block has ended, so the combine's launch and
//! the start of its blocks add to the step (at Kimi-K2 B32 32K on an H100 the combine's fixed
//! cost was 10-20 us of a 240-420 us call, 2026-12-07). Launched as a programmatic dependent, the
//! combine's blocks are placed on idle multiprocessors as soon as every block of the decode has
//! started and wait there (`griddepcontrol.wait`) until the decode has ended and its writes are
//! visible.
//!
//! That is safe for every generated kernel because each one begins with that wait and with the
//! trigger (`tpla_grid_dependency_wait`, `tpla_launch_dependents` in the CUDA prelude, printed
//! first by `tpla_codegen::cuda::print`): no generated kernel reads or writes memory before the
//! kernel before it has completed, whatever that kernel is (another library's kernel that never
//! triggers early simply completes first). Hand-written kernels ([`super::RawKernel`]) keep the
//! ordinary launch.
//!
//! `TPLA_PDL=off` turns it off (the A/B switch; `on` is the default on compute capability 9.0
//! and later, the first with PDL); another value is an error naming the variable.

use std::ffi::c_void;

use cudarc::driver::{sys, DriverError};

use crate::RuntimeError;

/// Whether an executor on a device of compute capability `sm` launches generated kernels as
/// programmatic dependents: on sm_90+ with a driver of CUDA 12.3 or later (the first whose
/// stream capture keeps such launches, for engines' CUDA graphs) unless `TPLA_PDL=off`; a bad
/// `TPLA_PDL` is an error.
pub(crate) fn dependent_launch_enabled(sm: (u32, u32)) -> Result<bool, RuntimeError> {
    let wanted = crate::cuda::env_switch(PDL_VAR)?;
    Ok(wanted && sm.0 >= 9 && driver_version() >= 12030)
}

/// The driver's CUDA version (e.g. 13000), 0 where it cannot be read.
fn driver_version() -> i32 {
    let mut v = 0;
    // SAFETY: `cuDriverGetVersion` writes one int through a valid pointer; a symbol missing from
    // an old driver library panics inside cudarc and is caught.
    let ok = super::catch("cuDriverGetVersion", || unsafe {
        sys::cuDriverGetVersion(&mut v)
    });
    match ok {
        Ok(sys::CUresult::CUDA_SUCCESS) => v,
        _ => 0,
    }
}

/// The switch's environment variable.
const PDL_VAR: &str = "TPLA_PDL";

/// One launch's geometry.
pub(crate) struct LaunchShape {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared_bytes: u32,
}

/// Launches `func` on `stream`, as a programmatic dependent of the stream's previous kernel when
/// `dependent` (`cuLaunchKernelEx` with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`),
/// else with `cuLaunchKernel`.
///
/// # Safety
/// As `cuLaunchKernel`: `func` is a loaded function of the stream's context, `params` holds one
/// pointer per kernel parameter to a value of that parameter's type, alive for the call; and
/// where `dependent`, the kernel begins with `griddepcontrol.wait` before any memory access (every
/// generated kernel does).
pub(crate) unsafe fn launch(
    func: sys::CUfunction,
    shape: &LaunchShape,
    stream: sys::CUstream,
    params: &mut [*mut c_void],
    dependent: bool,
) -> Result<(), DriverError> {
    let (gx, gy, gz) = shape.grid;
    let result = if dependent {
        // SAFETY: a zeroed attribute is a valid value of the C union; its id and the one field
        // that id reads are set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: gx,
            gridDimY: gy,
            gridDimZ: gz,
            blockDimX: shape.block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: shape.shared_bytes,
            hStream: stream,
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: the caller's promises cover `func`, `stream` and `params`; `config` and the
        // attribute it points to live until the call returns (the driver copies them).
        unsafe { sys::cuLaunchKernelEx(&config, func, params.as_mut_ptr(), std::ptr::null_mut()) }
    } else {
        // SAFETY: the caller's promises cover `func`, `stream` and `params`.
        unsafe {
            sys::cuLaunchKernel(
                func,
                gx,
                gy,
                gz,
                shape.block,
                1,
                1,
                shape.shared_bytes,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    };
    match result {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(DriverError(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pdl(v: Option<&str>) -> Result<bool, RuntimeError> {
        crate::cuda::parse_switch(PDL_VAR, v)
    }

    #[test]
    fn the_switch_defaults_on_and_refuses_a_bad_value() {
        assert!(parse_pdl(None).unwrap());
        assert!(parse_pdl(Some("on")).unwrap());
        assert!(!parse_pdl(Some("off")).unwrap());
        assert!(!parse_pdl(Some("0")).unwrap());
        let e = parse_pdl(Some("yes")).unwrap_err().to_string();
        assert!(e.contains("TPLA_PDL=yes"), "{e}");
    }
}
