//! The executors behind the Python objects, and views of torch memory for each.
//!
//! CPU tensors run on one process-wide Cranelift [`CpuExecutor`] (its compiled kernels shared by
//! every object). CUDA tensors run on the device's primary context (the one torch uses): one base
//! executor per device loads the kernels and allocates plan workspace (on the legacy default
//! stream), and each call launches through an executor on torch's *current* stream, made from
//! the base with [`CudaExecutor::on_raw_stream`] and kept per stream. Those carry the base's
//! loaded kernels, so a launch on a stream being captured into a CUDA graph loads nothing.

use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use tpla::runtime::cuda::CudaExecutor;
use tpla::runtime::half::bf16;
use tpla::runtime::view::{Device, Host, KvPool, MemorySpace, TensorView, TensorViewMut};
use tpla::runtime::{CpuExecutor, Element, Executor, RuntimeError};

use crate::tensor::{Dev, Tensor, Torch};

/// A runtime error as a Python exception: bad input is `ValueError`, anything the backend or
/// the device reports is `RuntimeError`.
pub fn py_err(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::InvalidInput(_)
        | RuntimeError::LengthPastCache { .. }
        | RuntimeError::Launch(_) => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

static CPU: OnceLock<Result<CpuExecutor, String>> = OnceLock::new();

/// The process-wide CPU executor (one worker per core).
pub fn cpu() -> PyResult<&'static CpuExecutor> {
    CPU.get_or_init(|| CpuExecutor::new(0).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(e.clone()))
}

/// Executors per stream kept for one device (older ones are dropped past this).
const STREAMS_KEPT: usize = 16;

/// One CUDA device's base executor and its per-stream executors.
pub struct CudaDevice {
    /// The device ordinal.
    pub ordinal: usize,
    /// Loads kernels and allocates; its stream is the legacy default stream (0).
    pub base: CudaExecutor,
    /// (stream, kernels the base had loaded when it was made, executor).
    streams: Mutex<Vec<(u64, usize, Arc<CudaExecutor>)>>,
}

static CUDA: Mutex<Vec<Arc<CudaDevice>>> = Mutex::new(Vec::new());

/// The device `ordinal` (made on first use).
pub fn cuda_device(ordinal: usize) -> PyResult<Arc<CudaDevice>> {
    let mut devs = CUDA.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = devs.iter().find(|d| d.ordinal == ordinal) {
        return Ok(d.clone());
    }
    // SAFETY: stream 0 is the legacy default stream of the primary context, which exists as
    // long as the context does (the executor keeps the context retained).
    let base = unsafe { CudaExecutor::from_raw_stream(ordinal, 0) }.map_err(py_err)?;
    let d = Arc::new(CudaDevice {
        ordinal,
        base,
        streams: Mutex::new(Vec::new()),
    });
    devs.push(d.clone());
    Ok(d)
}

impl CudaDevice {
    /// An executor issuing its work on torch's current stream of this device.
    pub fn current(&self, py: Python<'_>, torch: &Torch) -> PyResult<Arc<CudaExecutor>> {
        let stream = torch.current_stream(py, self.ordinal)?;
        let generation = self.base.loaded_kernels();
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, x)) = streams
            .iter()
            .find(|(s, g, _)| *s == stream && *g == generation)
        {
            return Ok(x.clone());
        }
        streams.retain(|(s, _, _)| *s != stream);
        if streams.len() >= STREAMS_KEPT {
            streams.remove(0);
        }
        // SAFETY: `stream` is torch's current stream of this device at this call: torch keeps it
        // alive while it is current, and every launch through this executor happens during a
        // call that found it current again (an executor is only looked up by the current
        // stream). Dropping the executor never destroys the borrowed stream.
        let x = Arc::new(unsafe { self.base.on_raw_stream(stream) });
        streams.push((stream, generation, x.clone()));
        Ok(x)
    }

    /// Waits for all work on the device's context (before freeing plan workspace that work on
    /// another stream may still read).
    pub fn synchronize_all(&self) {
        let _ = self.base.context().synchronize();
    }
}

/// Is a CUDA device usable (driver present, at least one device)?
#[pyfunction]
pub fn cuda_available() -> bool {
    tpla::runtime::cuda::device::device_count() > 0
}

/// Parses a `device` argument (`None`, `"cpu"`, `"cuda"`, `"cuda:N"` or a `torch.device`).
pub fn parse_device(py: Python<'_>, device: Option<&Bound<'_, PyAny>>) -> PyResult<Dev> {
    let Some(d) = device else {
        return Ok(Dev::Cpu);
    };
    let text = d.str()?.to_string();
    match text.as_str() {
        "cpu" => Ok(Dev::Cpu),
        "cuda" => Ok(Dev::Cuda(crate::tensor::torch(py)?.current_device(py)?)),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Dev::Cuda(i)),
            _ => Err(PyTypeError::new_err(format!(
                "device must be 'cpu', 'cuda' or 'cuda:N', got {text:?}"
            ))),
        },
    }
}

/// Views of torch memory in one memory space.
pub trait Mem: MemorySpace + Sized {
    /// A read-only view of `t` seen as `shape`, starting `offset` elements in.
    ///
    /// # Safety
    /// `t` was read from a live torch tensor that stays alive and unchanged in size for `'a`,
    /// `offset + shape.product()` elements lie inside it, and nothing writes them for `'a` (for
    /// device memory: until the work queued with the view has run).
    unsafe fn view<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Self>, RuntimeError>;
    /// A writable view, as [`Mem::view`].
    ///
    /// # Safety
    /// As [`Mem::view`], and no other view of the same call overlaps those elements.
    unsafe fn view_mut<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Self>, RuntimeError>;
    /// The page pool `[num_pages, page_size, row]` starting `offset` elements into `t`.
    ///
    /// # Safety
    /// As [`Mem::view_mut`].
    unsafe fn pool<'a>(
        t: &Tensor,
        offset: usize,
        num_pages: usize,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Self>, RuntimeError>;
}

fn addr<T>(t: &Tensor, offset: usize, n: usize) -> Result<u64, RuntimeError> {
    let end = offset
        .checked_add(n)
        .filter(|&e| e <= t.numel())
        .ok_or_else(|| {
            RuntimeError::InvalidInput(format!(
                "a view of {n} elements at {offset} past a tensor of {}",
                t.numel()
            ))
        })?;
    debug_assert!(end <= t.numel());
    if std::mem::size_of::<T>() != t.dt.size() {
        return Err(RuntimeError::InvalidInput("element size mismatch".into()));
    }
    Ok(t.ptr + (offset * t.dt.size()) as u64)
}

fn host_ptr<T>(ptr: u64, n: usize) -> *mut T {
    if n == 0 {
        std::ptr::NonNull::<T>::dangling().as_ptr()
    } else {
        ptr as *mut T
    }
}

impl Mem for Host {
    unsafe fn view<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Self>, RuntimeError> {
        let n = shape.iter().product();
        let p = addr::<T>(t, offset, n)?;
        // SAFETY: the caller promises `n` live, aligned (checked when read) elements of `T` at
        // `p` that nobody writes for 'a.
        let data = unsafe { std::slice::from_raw_parts(host_ptr::<T>(p, n), n) };
        TensorView::new(data, shape)
    }
    unsafe fn view_mut<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Self>, RuntimeError> {
        let n = shape.iter().product();
        let p = addr::<T>(t, offset, n)?;
        // SAFETY: as above, and the caller promises no other view overlaps them, so this is
        // the only reference to those elements for 'a.
        let data = unsafe { std::slice::from_raw_parts_mut(host_ptr::<T>(p, n), n) };
        TensorViewMut::new(data, shape)
    }
    unsafe fn pool<'a>(
        t: &Tensor,
        offset: usize,
        num_pages: usize,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Self>, RuntimeError> {
        let n = num_pages * page_size * row;
        let p = addr::<bf16>(t, offset, n)?;
        // SAFETY: as `view_mut`.
        let data = unsafe { std::slice::from_raw_parts_mut(host_ptr::<bf16>(p, n), n) };
        KvPool::new(data, page_size, row)
    }
}

impl Mem for Device {
    unsafe fn view<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Self>, RuntimeError> {
        let p = addr::<T>(t, offset, shape.iter().product())?;
        // SAFETY: a torch CUDA tensor of the primary context holding these elements, under the
        // caller's promise; table contents need no promise: the device kernels skip page ids
        // outside the pool and positions past the table.
        unsafe { TensorView::from_device(p, shape) }
    }
    unsafe fn view_mut<'a, T: Element>(
        t: &Tensor,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Self>, RuntimeError> {
        let p = addr::<T>(t, offset, shape.iter().product())?;
        // SAFETY: as `view`, and the caller promises no overlap with the call's other views.
        unsafe { TensorViewMut::from_device(p, shape) }
    }
    unsafe fn pool<'a>(
        t: &Tensor,
        offset: usize,
        num_pages: usize,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Self>, RuntimeError> {
        let p = addr::<bf16>(t, offset, num_pages * page_size * row)?;
        // SAFETY: as `view_mut`.
        unsafe { KvPool::from_device(p, num_pages, page_size, row) }
    }
}

/// Runs `f` with the executor for `dev`: the CPU executor, or the CUDA one on torch's current
/// stream.
pub fn with_exec<R>(
    py: Python<'_>,
    dev: Dev,
    cpu_f: impl FnOnce(&CpuExecutor) -> PyResult<R>,
    cuda_f: impl FnOnce(&CudaDevice, &CudaExecutor) -> PyResult<R>,
) -> PyResult<R> {
    match dev {
        Dev::Cpu => cpu_f(cpu()?),
        Dev::Cuda(i) => {
            let d = cuda_device(i)?;
            let x = d.current(py, crate::tensor::torch(py)?)?;
            cuda_f(&d, &x)
        }
    }
}

/// Loads `kernel` at `config` into the base executor of CUDA device `dev` (so executors made
/// for other streams carry it); nothing on the CPU, which compiles on first launch.
pub fn preload(
    dev: Dev,
    kernel: &dyn tpla::codegen::KernelDef,
    config: &tpla::codegen::Config,
) -> PyResult<()> {
    if let Dev::Cuda(i) = dev {
        cuda_device(i)?
            .base
            .resident_programs(kernel, config)
            .map_err(py_err)?;
    }
    Ok(())
}
