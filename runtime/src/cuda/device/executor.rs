//! The executor itself: construction on a device or a caller's stream, kernel compilation,
//! loading and launches, raw buffers.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{result, CudaContext, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;
use tpla_codegen::cuda::{PagedInt, PagedPtr, ParamAbi};
use tpla_codegen::ir::Kernel;
use tpla_codegen::launch::check_launch;
use tpla_codegen::{Config, KernelDef};

use super::buffers::as_bytes;
use super::info::device_info;
use super::{catch, device_count, driver_available, driver_err, unavailable};
use super::{CudaPagedCache, CudaTensor, DeviceInfo, LoadedKernel, RawKernel};
use crate::cuda::cache::KernelCache;
use crate::cuda::nvrtc::Image;
use crate::cuda::{compile_kernel, Target};
use crate::exec::{check_space, ArgSpace, Executor, KernelArg};
use crate::tensor::{Element, HostTensor};
use crate::RuntimeError;

/// Runs DSL kernels on one CUDA device, on one stream.
pub struct CudaExecutor {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) info: DeviceInfo,
    pub(super) target: Target,
    pub(super) cache: Arc<KernelCache>,
    pub(super) loaded: Mutex<HashMap<(String, Config), Arc<LoadedKernel>>>,
    /// Hand-written kernels loaded once by [`CudaExecutor::raw_kernel`], by symbol.
    pub(super) raw: Mutex<HashMap<&'static str, Arc<RawKernel>>>,
    /// Whether generated kernels are launched as programmatic dependents of the kernel before
    /// them (`launch.rs`: sm_90+, unless `TPLA_PDL=off`).
    pub(super) dependent_launch: bool,
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
            raw: Mutex::new(HashMap::new()),
            dependent_launch: self.dependent_launch,
        }
    }

    /// Kernels loaded so far (what [`CudaExecutor::on_raw_stream`] hands on).
    pub fn loaded_kernels(&self) -> usize {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// An executor that issues all its work on `stream` (e.g. an engine's decode stream, so the
    /// kernels can be captured in the engine's CUDA graph), using `cache` for compiled kernels.
    ///
    /// It sets the device's default memory pool to keep up to 2 GiB of freed memory for reuse
    /// (its release threshold; the driver's default is 0), a process-wide setting of that
    /// device's stream-ordered allocations. [`CudaExecutor::new`] and
    /// [`CudaExecutor::from_raw_stream`] come through here; [`CudaExecutor::on_raw_stream`]
    /// derives from an executor that did.
    pub fn with_stream(
        stream: Arc<CudaStream>,
        cache: Arc<KernelCache>,
    ) -> Result<CudaExecutor, RuntimeError> {
        let ctx = stream.context().clone();
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // Not fatal: memory handed back at every synchronisation is slower, not wrong.
        let _kept = retain_pool_memory(&ctx).is_ok();
        let info = device_info(&ctx)?;
        let target = info.target();
        let dependent_launch = super::launch::dependent_launch_enabled(target.sm)?;
        Ok(CudaExecutor {
            ctx,
            stream,
            info,
            target,
            cache,
            loaded: Mutex::new(HashMap::new()),
            raw: Mutex::new(HashMap::new()),
            dependent_launch,
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    /// Whether generated kernels are launched as programmatic dependents of the kernel before
    /// them on the stream (sm_90+ unless `TPLA_PDL=off`; `cuda/device/launch.rs`).
    pub fn dependent_launch(&self) -> bool {
        self.dependent_launch
    }
    /// The codegen target kernels are generated for.
    pub fn target(&self) -> Target {
        self.target
    }
    /// Uses another f32-gemm policy for kernels compiled from now on.
    pub fn set_f32_gemm(&mut self, policy: crate::cuda::F32Gemm) {
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
        if crate::cuda::dump_requested(tpla_codegen::dump::Stage::Ir)? {
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
                        V::Map(crate::cuda::tmap::encode(&tp)?)
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
        let shape = super::launch::LaunchShape {
            grid: (
                plan.grid[0] as u32,
                plan.grid[1] as u32,
                plan.grid[2] as u32,
            ),
            block: k.compiled.source.block_threads,
            shared_bytes: k.compiled.source.shared_bytes,
        };
        // SAFETY: `func` belongs to a module kept alive by `k`; `ptrs` has one pointer per kernel
        // parameter, in the order and with the types of `CudaSource::params` (u64 device
        // addresses, i32, f32, 128-byte tensor maps), each pointing into `vals`, which outlives the call (the driver
        // copies the values at launch). Device addresses come from `TensorArg`/`PagedArg`, whose
        // (unsafe) constructors promise live buffers of the described sizes and the aliasing
        // rules; `check_launch` matched those sizes against the kernel's shapes (and, where host
        // tables are given, every block table entry the sequence lengths reach). Every generated
        // kernel begins with `griddepcontrol.wait` (`tpla_codegen::cuda::print`), which a
        // programmatic dependent launch requires.
        unsafe {
            super::launch::launch(
                k.func.cu_function(),
                &shape,
                self.stream.cu_stream(),
                &mut ptrs,
                self.dependent_launch,
            )
        }
        .map_err(|e| driver_err(&format!("launching {}", k.compiled.source.name), e))
    }

    pub(super) fn alloc_bytes(&self, n: usize) -> Result<(CudaSlice<u8>, u64), RuntimeError> {
        // SAFETY: uninitialised device memory is only ever written before being read by our
        // kernels, or documented as unspecified (`Executor::alloc`).
        let buf = unsafe { self.stream.alloc::<u8>(n.max(16)) }
            .map_err(|e| driver_err("allocation", e))?;
        let (ptr, guard) = buf.device_ptr(&self.stream);
        drop(guard);
        Ok((buf, ptr))
    }

    pub(super) fn upload_bytes(&self, bytes: &[u8]) -> Result<(CudaSlice<u8>, u64), RuntimeError> {
        let (mut buf, ptr) = self.alloc_bytes(bytes.len())?;
        if !bytes.is_empty() {
            let mut view = buf.slice_mut(0..bytes.len());
            self.stream
                .memcpy_htod(bytes, &mut view)
                .map_err(|e| driver_err("host-to-device copy", e))?;
        }
        Ok((buf, ptr))
    }

    pub(super) fn download_bytes(
        &self,
        buf: &CudaSlice<u8>,
        n: usize,
    ) -> Result<Vec<u8>, RuntimeError> {
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
        if let Some(i) = tpla_codegen::launch::first_bad_page(table, c.num_pages) {
            return Err(RuntimeError::InvalidInput(format!(
                "page id {} (entry {i}) outside the pool of {} pages",
                table[i], c.num_pages
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
        let options = crate::cuda::nvrtc::default_options(&self.target.arch_name());
        let lookup = self
            .cache
            .get_or_compile(name, code, &options)
            .map_err(|e| RuntimeError::from(crate::cuda::CudaError::from(e)))?;
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

    /// [`CudaExecutor::load_source`] once per executor: the kernel of symbol `name` is compiled
    /// and loaded on the first call and handed out again after (for kernels a timing loop
    /// launches on every run).
    pub fn raw_kernel(
        &self,
        name: &'static str,
        code: &str,
    ) -> Result<Arc<RawKernel>, RuntimeError> {
        if let Some(k) = self.raw.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(k.clone());
        }
        let k = Arc::new(self.load_source(name, code)?);
        self.raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, k.clone());
        Ok(k)
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

/// Freed device memory the default pool keeps for reuse ([`retain_pool_memory`]): 2 GiB, above a
/// decode step's temporaries (tens of MB) and the layer check's largest benchmark (384 MB).
const POOL_KEEP_BYTES: u64 = 2 << 30;

/// Keeps device memory freed to the device's default memory pool (where stream-ordered
/// allocations come from) in the pool for reuse, instead of returning it to the driver at every
/// synchronisation (the pool's default release threshold, 0). Without it every decode step,
/// whose buffers are freed when it is waited for, maps its memory anew: slow host calls between
/// the step's kernels, and a matmul benchmark that allocated 384 MB per run measured 390-507
/// TFLOPS on one H100 from run to run. Up to [`POOL_KEEP_BYTES`] stay reserved for the process's
/// later stream-ordered allocations (every tensor and cache of this crate), as PyTorch's caching
/// allocator keeps memory; more than that (a large cache freed) still goes back at the next
/// synchronisation, so that memory other allocators take directly (cuBLAS's workspace, NCCL's
/// buffers, another library) is not held by the pool. A device without memory pools allocates
/// synchronously: nothing to do.
fn retain_pool_memory(ctx: &CudaContext) -> Result<(), RuntimeError> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    use cudarc::driver::sys;
    // SAFETY: `ctx.cu_device()` is the device of a live context, so its default pool exists;
    // the release threshold attribute takes a `u64`, which `threshold` is, alive for the call.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device())
            .map_err(|e| driver_err("getting the default memory pool", e))?;
        let mut threshold = POOL_KEEP_BYTES;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| driver_err("setting the memory pool's release threshold", e))?;
    }
    Ok(())
}

pub(super) fn to_i32(v: usize) -> Result<i32, RuntimeError> {
    i32::try_from(v).map_err(|_| {
        RuntimeError::InvalidInput(format!("{v} does not fit a 32-bit kernel argument"))
    })
}
