//! The CPU executor: DSL kernels compiled by the Cranelift backend, grid programs spread over
//! threads with rayon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use tpla_codegen::cpu::CpuKernel;
use tpla_codegen::dump::{DumpStages, Stage};
use tpla_codegen::ir::{Kernel, ParamKind};
use tpla_codegen::launch::check_launch;
use tpla_codegen::{Config, KernelDef};

use crate::exec::{check_space, ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
use crate::paged::HostPagedCache;
use crate::tensor::{Element, HostTensor};
use crate::RuntimeError;

/// A kernel built and compiled for one config.
pub struct CompiledCpu {
    /// The IR it was compiled from.
    pub ir: Kernel,
    /// The native code.
    pub code: CpuKernel,
}

/// Runs kernels on the host CPU. Compiled kernels are cached in memory per (kernel, config).
pub struct CpuExecutor {
    cache: Mutex<HashMap<(String, Config), Arc<CompiledCpu>>>,
    pool: rayon::ThreadPool,
}

impl CpuExecutor {
    /// An executor using `threads` worker threads (0 = one per core).
    pub fn new(threads: usize) -> Result<Self, RuntimeError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| RuntimeError::BackendUnavailable {
                backend: "cpu".into(),
                reason: e.to_string(),
            })?;
        Ok(CpuExecutor {
            cache: Mutex::new(HashMap::new()),
            pool,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Builds and compiles `kernel` for `config`, or returns the cached result.
    ///
    /// With `TPLA_DUMP=ir` (or `clif`, or a comma list) the IR and the Cranelift IR are printed to
    /// stderr the first time a specialisation is compiled; a value that names no stage is an
    /// error ([`tpla_codegen::IrError::BadDump`]).
    pub fn compile(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
    ) -> Result<Arc<CompiledCpu>, RuntimeError> {
        let key = (kernel.name().to_string(), config.clone());
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let dump = DumpStages::from_env()?;
        let ir = kernel.build(config)?;
        let code = CpuKernel::compile(&ir)?;
        if dump.wants(Stage::Ir) {
            eprintln!("{ir}");
        }
        if dump.wants(Stage::Clif) {
            eprintln!("{}", code.clif());
        }
        let compiled = Arc::new(CompiledCpu { ir, code });
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Number of compiled specialisations held.
    pub fn cached_kernels(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Packs arguments into the CPU ABI's u64 slots (see `tpla_codegen::cpu::abi`).
fn pack_args(ir: &Kernel, args: &[KernelArg<'_>]) -> Vec<u64> {
    let mut slots = Vec::new();
    for (p, a) in ir.params.iter().zip(args) {
        match (&p.kind, a) {
            (ParamKind::Tensor { .. }, KernelArg::Tensor(t)) => {
                slots.push(t.ptr());
                slots.extend(t.shape().iter().map(|&d| d as u64));
            }
            (ParamKind::Paged { chunked, .. }, KernelArg::Paged(c)) => {
                let g = c.geometry();
                slots.extend([
                    c.data(),
                    c.block_table(),
                    c.seq_lens(),
                    g.page_size as u64,
                    g.pages_per_seq as u64,
                    g.num_pages as u64,
                    g.batch as u64,
                ]);
                if *chunked {
                    // check_launch matched the kernel's table with the argument's.
                    slots.push(c.split_table().map_or(0, |t| t.ptr()));
                }
            }
            (_, KernelArg::F32(v)) => slots.push(v.to_bits() as u64),
            (_, KernelArg::I32(v)) => slots.push(*v as i64 as u64),
            _ => unreachable!("check_launch matched kinds"),
        }
    }
    slots
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

impl Executor for CpuExecutor {
    type Tensor<T: Element> = HostTensor<T>;
    type Paged<T: Element> = HostPagedCache<T>;

    fn tensor_arg<T: Element>(t: &HostTensor<T>) -> KernelArg<'_> {
        // SAFETY: the borrowed tensor's host buffer holds exactly `shape` elements of `T` and
        // cannot be written while the shared borrow lives.
        KernelArg::Tensor(unsafe {
            TensorArg::new(
                t.data().as_ptr() as u64,
                T::DTYPE,
                t.shape(),
                false,
                ArgSpace::Host,
            )
        })
    }
    fn tensor_arg_mut<T: Element>(t: &mut HostTensor<T>) -> KernelArg<'_> {
        let ptr = t.data_mut().as_mut_ptr() as u64;
        // SAFETY: as above; the exclusive borrow makes this the only access while it lives.
        KernelArg::Tensor(unsafe { TensorArg::new(ptr, T::DTYPE, t.shape(), true, ArgSpace::Host) })
    }
    fn paged_arg<T: Element>(c: &HostPagedCache<T>) -> KernelArg<'_> {
        paged(c, c.data().as_ptr() as u64, false)
    }
    fn paged_arg_mut<T: Element>(c: &mut HostPagedCache<T>) -> KernelArg<'_> {
        let ptr = c.data_mut().as_mut_ptr() as u64;
        paged(c, ptr, true)
    }

    fn launch(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
        args: &[KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        check_space(args, ArgSpace::Host)?;
        let compiled = self.compile(kernel, config)?;
        let descs: Vec<_> = args.iter().map(|a| a.desc()).collect();
        let plan = check_launch(&compiled.ir, &descs)?;
        // Paged caches reaching the CPU executor always carry host tables, so every page the
        // kernel can touch was checked above.
        let slots = pack_args(&compiled.ir, args);
        let n = plan.programs();
        let [g0, g1, _] = plan.grid;
        let lines = compiled.code.scratch_bytes().div_ceil(64).max(1);
        let code = &compiled.code;
        let dims = &plan.dims;
        self.pool.install(|| {
            (0..n).into_par_iter().for_each_init(
                || vec![Line([0; 64]); lines],
                |scratch, p| {
                    let pid = [
                        (p % g0) as i64,
                        ((p / g0) % g1) as i64,
                        (p / (g0 * g1)) as i64,
                    ];
                    // SAFETY: a Vec<Line> is 64-byte aligned and `lines * 64 >= scratch_bytes()`.
                    let bytes = unsafe {
                        std::slice::from_raw_parts_mut(scratch.as_mut_ptr() as *mut u8, lines * 64)
                    };
                    // SAFETY: `check_launch` verified every argument against the kernel's
                    // parameters (dtypes, ranks, constant dims, block-table entries for all pages
                    // covering the sequence lengths); the pointers come from borrows that outlive
                    // this call, writable ones exclusively (`&mut`). Programs write disjoint
                    // elements by the kernel's construction.
                    unsafe { code.run_program(&slots, dims, pid, bytes) };
                },
            )
        });
        Ok(())
    }

    fn alloc<T: Element>(&self, shape: &[usize]) -> Result<HostTensor<T>, RuntimeError> {
        Ok(HostTensor::zeros(shape))
    }

    fn reshape<T: Element>(t: &mut HostTensor<T>, shape: &[usize]) -> Result<(), RuntimeError> {
        t.reshape(shape)
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))
    }

    fn upload<T: Element>(&self, t: &HostTensor<T>) -> Result<HostTensor<T>, RuntimeError> {
        Ok(t.clone())
    }

    fn download<T: Element>(&self, t: &HostTensor<T>) -> Result<HostTensor<T>, RuntimeError> {
        Ok(t.clone())
    }

    fn upload_paged<T: Element>(
        &self,
        c: &HostPagedCache<T>,
    ) -> Result<HostPagedCache<T>, RuntimeError> {
        Ok(c.clone())
    }

    fn download_paged<T: Element>(
        &self,
        c: &HostPagedCache<T>,
    ) -> Result<HostPagedCache<T>, RuntimeError> {
        Ok(c.clone())
    }

    fn set_seq_lens<T: Element>(
        &self,
        c: &mut HostPagedCache<T>,
        lens: &[usize],
    ) -> Result<(), RuntimeError> {
        c.set_seq_lens(lens)
    }

    fn synchronize(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn device_identity(&self) -> String {
        format!("cpu {} {} threads", std::env::consts::ARCH, self.threads())
    }

    fn backend_name(&self) -> String {
        format!("cpu ({} threads, Cranelift JIT)", self.threads())
    }
}

fn paged<T: Element>(c: &HostPagedCache<T>, data: u64, writable: bool) -> KernelArg<'_> {
    let geometry = PagedGeometry {
        dtype: T::DTYPE,
        num_pages: c.num_pages(),
        page_size: c.page_size(),
        row: c.row(),
        batch: c.batch(),
        pages_per_seq: c.pages_per_seq(),
    };
    // SAFETY: `data` is the pool of `c` (borrowed by the caller, mutably when `writable`), sized
    // `num_pages · page_size · row`; the tables are `c`'s own, passed as the host tables too, so
    // every launch checks the entries the lengths reach.
    KernelArg::Paged(unsafe {
        PagedArg::new(
            data,
            c.block_table().as_ptr() as u64,
            c.seq_lens().as_ptr() as u64,
            geometry,
            Some((c.block_table(), c.seq_lens())),
            writable,
            ArgSpace::Host,
        )
    })
}
