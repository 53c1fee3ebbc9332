//! Small device-memory helpers for C programs that have no CUDA toolkit of their own (tests,
//! examples): allocate, free, copy and synchronise in a CUDA plan's context. An engine keeps
//! using its own allocator and stream; these are conveniences.

use std::ffi::c_void;

use tpla::runtime::cuda::device::driver_err;
use tpla::runtime::cudarc::driver::result;
use tpla::runtime::Executor;

use crate::plan::{Backend, Engine};
use crate::status::{guard, tpla_status_t, Error};
use crate::tpla_plan_t;

/// The CUDA engine of `plan` (context bound to this thread), or an error for a null or CPU plan.
///
/// # Safety
/// `plan` is null or a live plan no other thread uses meanwhile.
unsafe fn cuda<'a>(
    plan: *const tpla_plan_t,
) -> Result<&'a Engine<tpla::runtime::cuda::CudaExecutor>, Error> {
    // SAFETY: the caller's contract: null or a live plan.
    let plan =
        unsafe { plan.as_ref() }.ok_or_else(|| Error::invalid("`plan` is a null pointer"))?;
    match &plan.backend {
        Backend::Cuda(e) => {
            e.bind()?;
            Ok(e)
        }
        Backend::Cpu(_) => Err(Error::invalid("device memory needs a CUDA plan")),
    }
}

fn driver(what: &str) -> impl Fn(tpla::runtime::cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::from(driver_err(what, e))
}

/// Allocates `bytes` (at least 1) of device memory in the context of CUDA plan `plan` and
/// writes its address to `*out` (256-byte aligned). Free it with `tpla_cuda_free`.
///
/// # Safety
/// `plan` is NULL or a live plan; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tpla_cuda_malloc(
    plan: *const tpla_plan_t,
    bytes: usize,
    out: *mut *mut c_void,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        unsafe { cuda(plan) }?;
        if out.is_null() {
            return Err(Error::invalid("`out` is a null pointer"));
        }
        if bytes == 0 {
            return Err(Error::invalid("an allocation of 0 bytes"));
        }
        // SAFETY: the plan's context is current on this thread (`cuda` bound it).
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(driver("cuMemAlloc"))?;
        // SAFETY: `out` is non-null and writable by the caller's contract.
        unsafe { out.write(ptr as usize as *mut c_void) };
        Ok(())
    })
}

/// Frees device memory from `tpla_cuda_malloc` (NULL is ignored). Work using it must be done.
///
/// # Safety
/// `plan` is NULL or a live plan; `ptr` is NULL or an allocation of `tpla_cuda_malloc` with the
/// same plan's context, not yet freed, that no queued work still uses.
#[no_mangle]
pub unsafe extern "C" fn tpla_cuda_free(
    plan: *const tpla_plan_t,
    ptr: *mut c_void,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        unsafe { cuda(plan) }?;
        if ptr.is_null() {
            return Ok(());
        }
        // SAFETY: the caller's contract: a live allocation of this context, unused.
        unsafe { result::free_sync(ptr as u64) }.map_err(driver("cuMemFree"))
    })
}

/// Waits until every piece of work queued on the plan's stream has finished (a no-op on the
/// CPU backend, whose calls return when done).
///
/// # Safety
/// `plan` is NULL or a live plan no other thread uses meanwhile.
#[no_mangle]
pub unsafe extern "C" fn tpla_synchronize(plan: *const tpla_plan_t) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract: null or a live plan.
        let p =
            unsafe { plan.as_ref() }.ok_or_else(|| Error::invalid("`plan` is a null pointer"))?;
        match &p.backend {
            Backend::Cpu(_) => Ok(()),
            Backend::Cuda(_) => {
                // SAFETY: as above.
                let e = unsafe { cuda(plan) }?;
                Ok(e.exec().synchronize()?)
            }
        }
    })
}

/// Copies `bytes` from host memory `src` to device memory `dst`, after the work queued on the
/// plan's stream has finished; returns when the copy is done.
///
/// # Safety
/// `plan` is NULL or a live plan; `src` is NULL or `bytes` readable host bytes; `dst` is NULL or
/// `bytes` device bytes of the plan's context that nothing else uses meanwhile.
#[no_mangle]
pub unsafe extern "C" fn tpla_cuda_upload(
    plan: *const tpla_plan_t,
    dst: *mut c_void,
    src: *const c_void,
    bytes: usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let e = unsafe { cuda(plan) }?;
        if dst.is_null() || src.is_null() {
            return Err(Error::invalid("`dst` or `src` is a null pointer"));
        }
        e.exec().synchronize()?;
        // SAFETY: `src` holds `bytes` readable bytes (the caller's contract; non-null).
        let host = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), bytes) };
        // SAFETY: `dst` holds `bytes` device bytes of this (current) context, unused meanwhile.
        unsafe { result::memcpy_htod_sync(dst as u64, host) }.map_err(driver("cuMemcpyHtoD"))
    })
}

/// Copies `bytes` from device memory `src` to host memory `dst`, after the work queued on the
/// plan's stream has finished; returns when the copy is done.
///
/// # Safety
/// `plan` is NULL or a live plan; `src` is NULL or `bytes` device bytes of the plan's context;
/// `dst` is NULL or `bytes` writable host bytes nothing else uses meanwhile.
#[no_mangle]
pub unsafe extern "C" fn tpla_cuda_download(
    plan: *const tpla_plan_t,
    dst: *mut c_void,
    src: *const c_void,
    bytes: usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let e = unsafe { cuda(plan) }?;
        if dst.is_null() || src.is_null() {
            return Err(Error::invalid("`dst` or `src` is a null pointer"));
        }
        e.exec().synchronize()?;
        // SAFETY: `dst` holds `bytes` writable host bytes nothing else uses (the caller's
        // contract; non-null).
        let host = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), bytes) };
        // SAFETY: `src` holds `bytes` device bytes of this (current) context.
        unsafe { result::memcpy_dtoh_sync(host, src as u64) }.map_err(driver("cuMemcpyDtoH"))
    })
}
