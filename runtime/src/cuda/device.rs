//! The CUDA executor: device discovery, device tensors, the paged cache on the device, and kernel
//! launches on one stream (the executor's own or one the caller provides).
//!
//! Buffers are cudarc [`CudaSlice`]s of bytes; a tensor also keeps its raw device address so
//! launch arguments can be built without a stream. All work an executor issues (copies and
//! launches) goes to its stream, in order; `download*` and [`Executor::synchronize`] wait for it.
//! Engines that share buffers with other streams must order those streams themselves.
//!
//! A missing driver or device is [`RuntimeError::BackendUnavailable`]; cudarc's dynamic loading
//! is probed first and every first call into the driver runs under `catch_unwind`, so nothing
//! panics. An allocation failure is [`RuntimeError::Device`] (`out of device memory`) and leaves
//! the executor, its kernel cache and every existing buffer usable.

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
};
use cudarc::nvrtc::Ptx;
use tpla_codegen::ir::Kernel;
use tpla_codegen::launch::check_launch;
use tpla_codegen::{Config, KernelDef};

use super::cache::KernelCache;
use super::nvrtc::Image;
use super::{compile_kernel, CompiledKernel, Target};
use crate::exec::{check_space, ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
use crate::paged::HostPagedCache;
use crate::tensor::{Element, HostTensor};
use crate::RuntimeError;
use tpla_codegen::cuda::{PagedInt, PagedPtr, ParamAbi};

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
        // `TPLA_CUDA_WGMMA=0` keeps every gemm on mma.sync (for comparisons and bisection).
        if std::env::var("TPLA_CUDA_WGMMA").is_ok_and(|v| v.trim() == "0") {
            t = t.with_wgmma(false);
        }
        t
    }
}

fn device_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo, RuntimeError> {
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

/// A dense row-major tensor in device memory.
#[derive(Debug)]
pub struct CudaTensor<T> {
    buf: CudaSlice<u8>,
    ptr: u64,
    shape: Vec<usize>,
    _t: PhantomData<T>,
}

impl CudaTensor<f32> {
    /// The buffer as a typed f32 view for cudarc APIs that take typed device slices (NCCL).
    pub(crate) fn f32_view_mut(&mut self) -> Option<cudarc::driver::CudaViewMut<'_, f32>> {
        let n = self.len();
        // SAFETY: the buffer was allocated for `n` f32 elements (`alloc`/`upload` size it as
        // `len * size_of::<T>()` bytes, at least 16) and holds f32 data; a `u8` -> `f32` view of
        // that many elements stays inside it, and device allocations are 256-byte aligned.
        unsafe { self.buf.transmute_mut::<f32>(n) }
    }
}

impl<T: Element> CudaTensor<T> {
    /// Gives the tensor another shape with the same number of elements (no data moves); on a
    /// count mismatch it is an error and the tensor is unchanged.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<(), RuntimeError> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "cannot reshape a tensor of shape {:?} ({} elements) to {shape:?} ({n})",
                self.shape,
                self.len()
            )));
        }
        self.shape = shape.to_vec();
        Ok(())
    }
    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Device address of element 0.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// The underlying cudarc buffer (bytes), for engines that pass it to other libraries.
    pub fn buffer(&self) -> &CudaSlice<u8> {
        &self.buf
    }
}

/// The paged latent cache in device memory, with host copies of the block table and lengths
/// (so every launch is validated against them).
#[derive(Debug)]
pub struct CudaPagedCache<T> {
    data: CudaSlice<u8>,
    data_ptr: u64,
    block_table: CudaSlice<u8>,
    block_table_ptr: u64,
    seq_lens: CudaSlice<u8>,
    seq_lens_ptr: u64,
    host_block_table: Vec<i32>,
    host_seq_lens: Vec<i32>,
    num_pages: usize,
    page_size: usize,
    row: usize,
    pages_per_seq: usize,
    _t: PhantomData<T>,
}

impl<T: Element> CudaPagedCache<T> {
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.host_seq_lens.len()
    }
    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Elements per token row.
    pub fn row(&self) -> usize {
        self.row
    }
    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    /// Block-table entries per sequence.
    pub fn pages_per_seq(&self) -> usize {
        self.pages_per_seq
    }
    /// Tokens each sequence can hold.
    pub fn capacity(&self) -> usize {
        self.pages_per_seq * self.page_size
    }
    /// Host copy of the block table.
    pub fn block_table(&self) -> &[i32] {
        &self.host_block_table
    }
    /// Host copy of the sequence lengths.
    pub fn seq_lens(&self) -> &[i32] {
        &self.host_seq_lens
    }
    /// Device address of the page pool.
    pub fn data_ptr(&self) -> u64 {
        self.data_ptr
    }
}

fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: `Element` is implemented only for f32, half::bf16 and i32: plain data without
    // padding or invalid bit patterns, so viewing them as bytes is sound.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn from_bytes<T: Element>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: as in `as_bytes`; every byte pattern is a valid value of these types, and `v` has
    // room for exactly `n * size_of::<T>()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            b.as_ptr(),
            v.as_mut_ptr() as *mut u8,
            n * std::mem::size_of::<T>(),
        )
    };
    v
}

/// A hand-written kernel loaded by [`CudaExecutor::load_source`].
pub struct RawKernel {
    func: CudaFunction,
    _module: Arc<CudaModule>,
}

/// A kernel compiled and loaded for one config.
pub struct LoadedKernel {
    /// The IR.
    pub ir: Kernel,
    /// Source, geometry and image (with its cache provenance and ptxas report).
    pub compiled: CompiledKernel,
    func: CudaFunction,
    _module: Arc<CudaModule>,
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

/// Runs DSL kernels on one CUDA device, on one stream.
pub struct CudaExecutor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    target: Target,
    cache: Arc<KernelCache>,
    loaded: Mutex<HashMap<(String, Config), Arc<LoadedKernel>>>,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl CudaExecutor {
    /// An executor on device `ordinal` with a new stream of its own and the default kernel cache
    /// directory.
    pub fn new(ordinal: usize) -> Result<CudaExecutor, RuntimeError> {
        driver_available()?;
        let n = device_count();
        if ordinal >= n {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({n} present)"
            )));
        }
        let ctx = catch("creating a CUDA context", || CudaContext::new(ordinal))?.map_err(|e| {
            unavailable(format!(
                "cannot create a context on device {ordinal}: {e:?}"
            ))
        })?;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating a stream", e))?;
        CudaExecutor::with_stream(stream, Arc::new(KernelCache::with_default_dir()))
    }

    /// An executor on device `ordinal`'s primary context (the one PyTorch and the CUDA runtime
    /// use) that issues all its work on `stream`, a `CUstream` another library owns: torch's
    /// current stream, a C caller's stream, or 0 for the legacy default stream. Kernels it
    /// launches are ordered with the owner's work on that stream and can be captured in the
    /// owner's CUDA graph.
    ///
    /// # Safety
    /// `stream` is 0 or a live stream of device `ordinal`'s primary context, and its owner keeps
    /// it alive while this executor, or anything made from it, is used.
    pub unsafe fn from_raw_stream(
        ordinal: usize,
        stream: u64,
    ) -> Result<CudaExecutor, RuntimeError> {
        driver_available()?;
        let n = device_count();
        if ordinal >= n {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({n} present)"
            )));
        }
        let ctx = catch("retaining the primary context", || {
            CudaContext::new(ordinal)
        })?
        .map_err(|e| {
            unavailable(format!(
                "cannot use the primary context of device {ordinal}: {e:?}"
            ))
        })?;
        // SAFETY: the caller guarantees `stream` is 0 or a live stream of this primary context
        // that outlives the executor; the wrapper never destroys it.
        let stream = unsafe { ctx.wrap_borrowed_stream(stream as cudarc::driver::sys::CUstream) };
        CudaExecutor::with_stream(stream, Arc::new(KernelCache::with_default_dir()))
    }

    /// An executor on this one's context, device, kernel cache and already loaded kernels that
    /// issues its work on `stream`, a `CUstream` another library owns (e.g. whatever stream is
    /// torch's current one at a call). No driver call and no module load: kernels this executor
    /// has loaded are launched as they are (modules belong to the context, not to a stream), so
    /// launches on a stream being captured into a CUDA graph load nothing.
    ///
    /// # Safety
    /// As [`CudaExecutor::from_raw_stream`]: `stream` is 0 or a live stream of this executor's
    /// context, kept alive by its owner while the new executor, or anything made from it, is used.
    pub unsafe fn on_raw_stream(&self, stream: u64) -> CudaExecutor {
        // SAFETY: the caller guarantees `stream` is 0 or a live stream of this context that
        // outlives the executor; the wrapper never destroys it.
        let stream = unsafe {
            self.ctx
                .wrap_borrowed_stream(stream as cudarc::driver::sys::CUstream)
        };
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        CudaExecutor {
            ctx: self.ctx.clone(),
            stream,
            info: self.info.clone(),
            target: self.target,
            cache: self.cache.clone(),
            loaded: Mutex::new(loaded),
        }
    }

    /// Kernels loaded so far (what [`CudaExecutor::on_raw_stream`] hands on).
    pub fn loaded_kernels(&self) -> usize {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// An executor that issues all its work on `stream` (e.g. an engine's decode stream, so the
    /// kernels can be captured in the engine's CUDA graph), using `cache` for compiled kernels.
    pub fn with_stream(
        stream: Arc<CudaStream>,
        cache: Arc<KernelCache>,
    ) -> Result<CudaExecutor, RuntimeError> {
        let ctx = stream.context().clone();
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        let info = device_info(&ctx)?;
        let target = info.target();
        Ok(CudaExecutor {
            ctx,
            stream,
            info,
            target,
            cache,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    /// The codegen target kernels are generated for.
    pub fn target(&self) -> Target {
        self.target
    }
    /// Uses another f32-gemm policy for kernels compiled from now on.
    pub fn set_f32_gemm(&mut self, policy: super::F32Gemm) {
        self.target.f32_gemm = policy;
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
    /// The stream all work is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The kernel cache.
    pub fn kernel_cache(&self) -> &Arc<KernelCache> {
        &self.cache
    }

    /// Builds, compiles (through the kernel cache) and loads `kernel` for `config`; cached per
    /// (kernel, config) in this executor.
    pub fn compile(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
    ) -> Result<Arc<LoadedKernel>, RuntimeError> {
        let key = (kernel.name().to_string(), config.clone());
        if let Some(k) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(k.clone());
        }
        let ir = kernel.build(config)?;
        let k = Arc::new(self.load(ir)?);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, k.clone());
        Ok(k)
    }

    /// Compiles and loads a kernel given as IR (not cached in the executor).
    ///
    /// The loaded function's registers and local memory come from the driver
    /// ([`LoadedKernel::resources`]), also where NVRTC's log has no ptxas report.
    pub fn load(&self, ir: Kernel) -> Result<LoadedKernel, RuntimeError> {
        if super::dump_requested(tpla_codegen::dump::Stage::Ir)? {
            eprintln!("{ir}");
        }
        let compiled = compile_kernel(&ir, self.target, &self.cache).map_err(RuntimeError::from)?;
        let ptx = match &compiled.lookup.kernel.image {
            Image::Cubin(b) => Ptx::from_binary(b.clone()),
            Image::Ptx(s) => Ptx::from_src(s.clone()),
        };
        let module = catch("loading a module", || self.ctx.load_module(ptx))?
            .map_err(|e| driver_err("cuModuleLoadData", e))?;
        let func = module
            .load_function(&compiled.source.name)
            .map_err(|e| driver_err("cuModuleGetFunction", e))?;
        let smem = compiled.source.shared_bytes;
        if smem > 48 * 1024 {
            func.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| driver_err("raising the dynamic shared memory limit", e))?;
        }
        Ok(LoadedKernel {
            ir,
            compiled,
            func,
            _module: module,
        })
    }

    /// Checks `args` against a loaded kernel and launches it on the executor's stream.
    pub fn launch_loaded(
        &self,
        k: &LoadedKernel,
        args: &[KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        check_space(args, ArgSpace::Device)?;
        let descs: Vec<_> = args.iter().map(|a| a.desc()).collect();
        let plan = check_launch(&k.ir, &descs)?;
        if plan.programs() == 0 {
            return Ok(());
        }
        if plan.grid[1] > 65_535 || plan.grid[2] > 65_535 {
            return Err(RuntimeError::InvalidInput(format!(
                "grid {:?} exceeds CUDA's 65535 limit on axes 1 and 2",
                plan.grid
            )));
        }
        // Argument values, then pointers to them (cuLaunchKernel's kernelParams).
        enum V {
            U64(u64),
            I32(i32),
            F32(f32),
            Map(Box<cudarc::driver::sys::CUtensorMap>),
        }
        let mut vals = Vec::with_capacity(k.compiled.source.params.len());
        for slot in &k.compiled.source.params {
            vals.push(match slot {
                ParamAbi::Tensor { param, .. } => match args[*param] {
                    KernelArg::Tensor(t) => V::U64(t.ptr()),
                    _ => unreachable!("checked by check_launch"),
                },
                ParamAbi::PagedPtr { param, what } => match args[*param] {
                    KernelArg::Paged(c) => V::U64(match what {
                        PagedPtr::Data => c.data(),
                        PagedPtr::BlockTable => c.block_table(),
                        PagedPtr::SeqLens => c.seq_lens(),
                        // check_launch matched the kernel's table with the argument's.
                        PagedPtr::Chunks => c.split_table().map_or(0, |t| t.ptr()),
                    }),
                    _ => unreachable!("checked by check_launch"),
                },
                ParamAbi::PagedInt { param, what } => match args[*param] {
                    KernelArg::Paged(c) => V::I32(to_i32({
                        let g = c.geometry();
                        match what {
                            PagedInt::PageSize => g.page_size,
                            PagedInt::PagesPerSeq => g.pages_per_seq,
                            PagedInt::NumPages => g.num_pages,
                            PagedInt::Batch => g.batch,
                        }
                    })?),
                    _ => unreachable!("checked by check_launch"),
                },
                ParamAbi::Scalar { param, .. } => match args[*param] {
                    KernelArg::F32(v) => V::F32(v),
                    KernelArg::I32(v) => V::I32(v),
                    _ => unreachable!("checked by check_launch"),
                },
                ParamAbi::Dim { dim } => V::I32(to_i32(plan.dims[*dim] as usize)?),
                ParamAbi::PagedTmap { param, box_rows } => match args[*param] {
                    KernelArg::Paged(c) => {
                        let g = c.geometry();
                        let tp = tpla_codegen::cuda::tma::plan_paged_tmap(
                            &k.ir.params[*param].name,
                            c.data(),
                            g.dtype,
                            g.num_pages,
                            g.page_size,
                            g.row,
                            *box_rows,
                        )?;
                        V::Map(super::tmap::encode(&tp)?)
                    }
                    _ => unreachable!("checked by check_launch"),
                },
            });
        }
        let mut ptrs: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|v| match v {
                V::U64(x) => x as *mut u64 as *mut c_void,
                V::I32(x) => x as *mut i32 as *mut c_void,
                V::F32(x) => x as *mut f32 as *mut c_void,
                V::Map(m) => &mut **m as *mut cudarc::driver::sys::CUtensorMap as *mut c_void,
            })
            .collect();
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: `func` belongs to a module kept alive by `k`; `ptrs` has one pointer per kernel
        // parameter, in the order and with the types of `CudaSource::params` (u64 device
        // addresses, i32, f32, 128-byte tensor maps), each pointing into `vals`, which outlives the call (the driver
        // copies the values at launch). Device addresses come from `TensorArg`/`PagedArg`, whose
        // (unsafe) constructors promise live buffers of the described sizes and the aliasing
        // rules; `check_launch` matched those sizes against the kernel's shapes (and, where host
        // tables are given, every block table entry the sequence lengths reach).
        unsafe {
            result::launch_kernel(
                k.func.cu_function(),
                (
                    plan.grid[0] as u32,
                    plan.grid[1] as u32,
                    plan.grid[2] as u32,
                ),
                (k.compiled.source.block_threads, 1, 1),
                k.compiled.source.shared_bytes,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(|e| driver_err(&format!("launching {}", k.compiled.source.name), e))
    }

    fn alloc_bytes(&self, n: usize) -> Result<(CudaSlice<u8>, u64), RuntimeError> {
        // SAFETY: uninitialised device memory is only ever written before being read by our
        // kernels, or documented as unspecified (`Executor::alloc`).
        let buf = unsafe { self.stream.alloc::<u8>(n.max(16)) }
            .map_err(|e| driver_err("allocation", e))?;
        let (ptr, guard) = buf.device_ptr(&self.stream);
        drop(guard);
        Ok((buf, ptr))
    }

    fn upload_bytes(&self, bytes: &[u8]) -> Result<(CudaSlice<u8>, u64), RuntimeError> {
        let (mut buf, ptr) = self.alloc_bytes(bytes.len())?;
        if !bytes.is_empty() {
            let mut view = buf.slice_mut(0..bytes.len());
            self.stream
                .memcpy_htod(bytes, &mut view)
                .map_err(|e| driver_err("host-to-device copy", e))?;
        }
        Ok((buf, ptr))
    }

    fn download_bytes(&self, buf: &CudaSlice<u8>, n: usize) -> Result<Vec<u8>, RuntimeError> {
        let mut host = vec![0u8; n];
        if n > 0 {
            let view = buf.slice(0..n);
            self.stream
                .memcpy_dtoh(&view, &mut host[..])
                .map_err(|e| driver_err("device-to-host copy", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))?;
        Ok(host)
    }

    /// Replaces a device paged cache's block table (`[batch, pages_per_seq]` page ids below
    /// `num_pages`); on error nothing changes.
    pub fn set_block_table<T: Element>(
        &self,
        c: &mut CudaPagedCache<T>,
        table: &[i32],
    ) -> Result<(), RuntimeError> {
        if table.len() != c.host_block_table.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "block table has {} entries, expected {}",
                table.len(),
                c.host_block_table.len()
            )));
        }
        if let Some(&p) = table.iter().find(|&&p| p < 0 || p as usize >= c.num_pages) {
            return Err(RuntimeError::InvalidInput(format!(
                "page id {p} outside the pool of {} pages",
                c.num_pages
            )));
        }
        let mut view = c.block_table.slice_mut(0..table.len() * 4);
        self.stream
            .memcpy_htod(as_bytes(table), &mut view)
            .map_err(|e| driver_err("host-to-device copy", e))?;
        c.host_block_table = table.to_vec();
        Ok(())
    }

    /// Compiles hand-written CUDA C++ (symbol `name`) through the kernel cache and loads it
    /// (used by the benchmarks' roofline kernels).
    pub fn load_source(&self, name: &str, code: &str) -> Result<RawKernel, RuntimeError> {
        let options = super::nvrtc::default_options(&self.target.arch_name());
        let lookup = self
            .cache
            .get_or_compile(name, code, &options)
            .map_err(|e| RuntimeError::from(super::CudaError::from(e)))?;
        let ptx = match &lookup.kernel.image {
            Image::Cubin(b) => Ptx::from_binary(b.clone()),
            Image::Ptx(s) => Ptx::from_src(s.clone()),
        };
        let module = catch("loading a module", || self.ctx.load_module(ptx))?
            .map_err(|e| driver_err("cuModuleLoadData", e))?;
        let func = module
            .load_function(name)
            .map_err(|e| driver_err("cuModuleGetFunction", e))?;
        Ok(RawKernel {
            func,
            _module: module,
        })
    }

    /// Launches a [`RawKernel`] on the executor's stream.
    ///
    /// # Safety
    /// `params` must hold one pointer per kernel parameter, to values of the parameter's type,
    /// and every device address passed must be valid for what the kernel accesses.
    pub unsafe fn launch_raw(
        &self,
        k: &RawKernel,
        grid: (u32, u32, u32),
        block: u32,
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), RuntimeError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            result::launch_kernel(
                k.func.cu_function(),
                grid,
                (block, 1, 1),
                shared_bytes,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(|e| driver_err("launch", e))
    }

    /// Device memory of `bytes` bytes, uninitialised (benchmarks).
    pub fn alloc_raw(&self, bytes: usize) -> Result<(CudaSlice<u8>, u64), RuntimeError> {
        self.alloc_bytes(bytes)
    }

    /// A device tensor filled with `value`.
    pub fn full<T: Element>(
        &self,
        shape: &[usize],
        value: T,
    ) -> Result<CudaTensor<T>, RuntimeError> {
        self.upload(&HostTensor::full(shape, value))
    }
}

fn to_i32(v: usize) -> Result<i32, RuntimeError> {
    i32::try_from(v).map_err(|_| {
        RuntimeError::InvalidInput(format!("{v} does not fit a 32-bit kernel argument"))
    })
}

fn paged_arg<T: Element>(c: &CudaPagedCache<T>, writable: bool) -> KernelArg<'_> {
    let geometry = PagedGeometry {
        dtype: T::DTYPE,
        num_pages: c.num_pages,
        page_size: c.page_size,
        row: c.row,
        batch: c.host_seq_lens.len(),
        pages_per_seq: c.pages_per_seq,
    };
    // SAFETY: the addresses are `c`'s own device buffers (borrowed by the caller, mutably when
    // `writable`), sized for this geometry; the host tables mirror the device tables (every
    // write goes through `set_seq_lens`/`set_block_table`, which update both), so each launch
    // checks the entries the lengths reach.
    KernelArg::Paged(unsafe {
        PagedArg::new(
            c.data_ptr,
            c.block_table_ptr,
            c.seq_lens_ptr,
            geometry,
            Some((&c.host_block_table, &c.host_seq_lens)),
            writable,
            ArgSpace::Device,
        )
    })
}

impl Executor for CudaExecutor {
    fn compute_units(&self) -> usize {
        self.info.sm_count as usize
    }

    fn resident_programs(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
    ) -> Result<usize, RuntimeError> {
        let k = self.compile(kernel, config)?;
        let n = k
            .func
            .occupancy_max_active_blocks_per_multiprocessor(
                k.compiled.source.block_threads,
                k.compiled.source.shared_bytes as usize,
                None,
            )
            .map_err(|e| driver_err("cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
        Ok((n as usize).max(1))
    }

    fn device_identity(&self) -> String {
        let i = &self.info;
        format!(
            "cuda {} sm_{}{} {} SMs driver {}",
            i.name, i.compute_capability.0, i.compute_capability.1, i.sm_count, i.driver_version
        )
    }

    type Tensor<T: Element> = CudaTensor<T>;
    type Paged<T: Element> = CudaPagedCache<T>;

    fn tensor_arg<T: Element>(t: &CudaTensor<T>) -> KernelArg<'_> {
        // SAFETY: `t.ptr` is `t`'s own device buffer of `len · size_of::<T>()` bytes (at least),
        // kept alive and unwritten by the shared borrow.
        KernelArg::Tensor(unsafe {
            TensorArg::new(t.ptr, T::DTYPE, &t.shape, false, ArgSpace::Device)
        })
    }
    fn tensor_arg_mut<T: Element>(t: &mut CudaTensor<T>) -> KernelArg<'_> {
        // SAFETY: as above; the exclusive borrow makes this the only access while it lives.
        KernelArg::Tensor(unsafe {
            TensorArg::new(t.ptr, T::DTYPE, &t.shape, true, ArgSpace::Device)
        })
    }
    fn paged_arg<T: Element>(c: &CudaPagedCache<T>) -> KernelArg<'_> {
        paged_arg(c, false)
    }
    fn paged_arg_mut<T: Element>(c: &mut CudaPagedCache<T>) -> KernelArg<'_> {
        paged_arg(c, true)
    }

    fn launch(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
        args: &[KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        let k = self.compile(kernel, config)?;
        self.launch_loaded(&k, args)
    }

    fn reshape<T: Element>(t: &mut CudaTensor<T>, shape: &[usize]) -> Result<(), RuntimeError> {
        t.reshape(shape)
    }

    fn alloc<T: Element>(&self, shape: &[usize]) -> Result<CudaTensor<T>, RuntimeError> {
        let n: usize = shape.iter().product();
        let (buf, ptr) = self.alloc_bytes(n * std::mem::size_of::<T>())?;
        Ok(CudaTensor {
            buf,
            ptr,
            shape: shape.to_vec(),
            _t: PhantomData,
        })
    }

    fn upload<T: Element>(&self, t: &HostTensor<T>) -> Result<CudaTensor<T>, RuntimeError> {
        let (buf, ptr) = self.upload_bytes(as_bytes(t.data()))?;
        Ok(CudaTensor {
            buf,
            ptr,
            shape: t.shape().to_vec(),
            _t: PhantomData,
        })
    }

    fn download<T: Element>(&self, t: &CudaTensor<T>) -> Result<HostTensor<T>, RuntimeError> {
        let bytes = self.download_bytes(&t.buf, t.len() * std::mem::size_of::<T>())?;
        HostTensor::from_vec(&t.shape, from_bytes(&bytes))
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))
    }

    fn upload_paged<T: Element>(
        &self,
        c: &HostPagedCache<T>,
    ) -> Result<CudaPagedCache<T>, RuntimeError> {
        let (data, data_ptr) = self.upload_bytes(as_bytes(c.data()))?;
        let (block_table, block_table_ptr) = self.upload_bytes(as_bytes(c.block_table()))?;
        let (seq_lens, seq_lens_ptr) = self.upload_bytes(as_bytes(c.seq_lens()))?;
        Ok(CudaPagedCache {
            data,
            data_ptr,
            block_table,
            block_table_ptr,
            seq_lens,
            seq_lens_ptr,
            host_block_table: c.block_table().to_vec(),
            host_seq_lens: c.seq_lens().to_vec(),
            num_pages: c.num_pages(),
            page_size: c.page_size(),
            row: c.row(),
            pages_per_seq: c.pages_per_seq(),
            _t: PhantomData,
        })
    }

    fn download_paged<T: Element>(
        &self,
        c: &CudaPagedCache<T>,
    ) -> Result<HostPagedCache<T>, RuntimeError> {
        let n = c.num_pages * c.page_size * c.row;
        let bytes = self.download_bytes(&c.data, n * std::mem::size_of::<T>())?;
        let lens: Vec<usize> = c.host_seq_lens.iter().map(|&l| l as usize).collect();
        HostPagedCache::from_parts(
            from_bytes(&bytes),
            c.page_size,
            c.row,
            c.host_block_table.clone(),
            &lens,
        )
    }

    fn set_seq_lens<T: Element>(
        &self,
        c: &mut CudaPagedCache<T>,
        lens: &[usize],
    ) -> Result<(), RuntimeError> {
        if lens.len() != c.host_seq_lens.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} sequence lengths for a batch of {}",
                lens.len(),
                c.host_seq_lens.len()
            )));
        }
        let capacity = c.capacity();
        if let Some(&len) = lens.iter().find(|&&l| l > capacity) {
            return Err(RuntimeError::LengthPastCache { len, capacity });
        }
        let v: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut view = c.seq_lens.slice_mut(0..v.len() * 4);
        self.stream
            .memcpy_htod(as_bytes(&v), &mut view)
            .map_err(|e| driver_err("host-to-device copy", e))?;
        c.host_seq_lens = v;
        Ok(())
    }

    fn synchronize(&self) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }

    fn backend_name(&self) -> String {
        format!(
            "cuda:{} ({}, {}, {} SMs)",
            self.info.ordinal,
            self.info.name,
            self.target.arch_name(),
            self.info.sm_count
        )
    }
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
