//! CPU backend: lowers the tile IR to Cranelift IR and JIT-compiles it to native code.
//!
//! One compiled function runs one program (grid cell); [`CpuKernel::run_program`] calls it.
//! Its arguments follow [`abi`]; tile variables live in a caller-provided scratch buffer laid out
//! by [`layout`] (f32 for float tiles, i32 for `I32` tiles, i32 0/1 for `Bool` tiles; views alias
//! their source with strides).
//!
//! What runs vectorized (F32X4 / I32X4): elementwise operations and row reductions whose
//! innermost axis is contiguous or broadcast, tensor and paged row loads (bf16 widened four at a
//! time) and stores (bf16 narrowed eight at a time), and gemm (register-blocked kernels for
//! `a @ b.t()`-style dot products and for `b` contiguous along N, see `lower/gemm.rs`); gemm tiles
//! of at least [`host_gemm::HOST_GEMM_MIN_MACS`] multiply-adds instead call a host-compiled
//! AVX-512 microkernel ([`host_gemm`], [`CpuOptions::host_gemm`]) where the CPU has AVX-512F.
//! Everything else takes a scalar path that handles arbitrary strides. An accumulator update fed by a gemm
//! (`acc = acc * alpha + gemm(p, v)`) is fused into the gemm (`lower/fuse.rs`), and a paged block
//! loop prefetches the next block's rows while the current one is computed (`prefetch.rs`). `exp2` is computed inline (polynomial,
//! vectorized); `log2` calls the host's `f32::log2`.
//!
//! Index arithmetic is i64 and never traps (division by zero yields 0). Out-of-range loads read
//! 0 and out-of-range stores are skipped, as the IR specifies.

pub mod abi;
pub mod host_gemm;
pub mod layout;
mod loops;
mod lower;
mod math;
mod prefetch;

use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::error::IrError;
use crate::ir::Kernel;
use layout::Layouts;
use lower::{backend_err, HostFns, Lower};

/// Signature of the generated function (see [`abi`]).
type ProgramFn = unsafe extern "C" fn(*const u64, *const i64, i64, i64, i64, *mut u8);

/// Code-generation choices of the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// Gemm tiles of at least [`host_gemm::HOST_GEMM_MIN_MACS`] multiply-adds call the
    /// host-compiled gemm ([`host_gemm`]) instead of the generated loops. Correct on any host;
    /// fast where [`host_gemm::host_gemm_available`] (AVX-512F, or AVX2 with FMA).
    pub host_gemm: bool,
}

impl CpuOptions {
    /// Environment variable that turns the host gemm off when set to `0` (for A/B timing).
    pub const HOST_GEMM_VAR: &'static str = "TPLA_CPU_HOST_GEMM";
}

impl Default for CpuOptions {
    /// The host gemm where this machine has its vector kernel, unless `TPLA_CPU_HOST_GEMM=0`.
    fn default() -> Self {
        let off = std::env::var_os(Self::HOST_GEMM_VAR).is_some_and(|v| v == "0");
        CpuOptions {
            host_gemm: !off && host_gemm::host_gemm_available(),
        }
    }
}

/// A kernel compiled to native code for this machine.
pub struct CpuKernel {
    /// Owns the executable memory; `None` only while dropping.
    module: Option<JITModule>,
    func: ProgramFn,
    scratch_bytes: usize,
    clif: String,
    slots: usize,
    dims: usize,
}

// SAFETY: after `finalize_definitions` the JIT module's code and data are immutable; the only
// thing shared between threads is the function pointer, which runs on caller-provided memory and
// keeps no state of its own. The module itself is only touched again in `Drop`, which has
// exclusive access.
unsafe impl Send for CpuKernel {}
// SAFETY: see `Send`: `&CpuKernel` only exposes immutable data and a reentrant function.
unsafe impl Sync for CpuKernel {}

impl Drop for CpuKernel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no reference to the generated code outlives `self`: `func` is private and
            // `run_program` borrows `self`.
            unsafe { m.free_memory() };
        }
    }
}

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernel")
            .field("scratch_bytes", &self.scratch_bytes)
            .finish_non_exhaustive()
    }
}

/// The Cranelift function name of `kernel`: its name and config, `name[K=V,..]`.
fn clif_name(kernel: &Kernel) -> String {
    let cfg: Vec<String> = kernel
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}[{}]", kernel.name, cfg.join(","))
}

/// `clif` with each imported host function's declaration line (`fn0 = u0:1 sig0`) followed by
/// its symbol as a comment (`; tpla_cpu_gemm`), so that a dump shows which host function a
/// `call fn0(..)` calls.
fn name_host_calls(clif: &str, host: &[(cranelift_module::FuncId, &str)]) -> String {
    let mut out = String::with_capacity(clif.len() + 64);
    for line in clif.lines() {
        out.push_str(line);
        let decl = line.trim_start();
        if decl.starts_with("fn") && decl.contains(" = ") {
            if let Some((_, sym)) = host.iter().find(|(id, _)| {
                let name = format!("u0:{}", id.as_u32());
                decl.split_whitespace().any(|w| w == name)
            }) {
                out.push_str(" ; ");
                out.push_str(sym);
            }
        }
        out.push('\n');
    }
    out
}

/// Appends `code` to `/tmp/perf-<pid>.map` (the file `perf report` reads to name JIT code) and
/// writes its bytes to `/tmp/tpla-jit-<pid>-<address>.bin` (for `objdump -b binary`). A
/// profiling aid (`TPLA_PERF_MAP=1`); failures are ignored.
fn perf_map(code: *const u8, len: usize, name: &str) {
    use std::io::Write;
    let pid = std::process::id();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("/tmp/perf-{pid}.map"))
    {
        let _ = writeln!(f, "{:x} {len:x} {name}", code as usize);
    }
    // SAFETY: `code` is the start of a finalized function of `len` bytes, readable (executable
    // memory is mapped read + execute) for as long as its module lives, which outlasts this call.
    let bytes = unsafe { std::slice::from_raw_parts(code, len) };
    let _ = std::fs::write(
        format!("/tmp/tpla-jit-{pid}-{:x}.bin", code as usize),
        bytes,
    );
}

impl CpuKernel {
    /// Lowers and compiles one kernel (already validated by the builder).
    ///
    /// Errors are `IrError::Backend { backend: "cpu", .. }`. With the environment variable
    /// `TPLA_CPU_ASM` set, the generated machine code is printed to stderr (debugging aid); with
    /// `TPLA_PERF_MAP` set, it is entered in `/tmp/perf-<pid>.map` for `perf report` and its
    /// bytes written beside it (profiling aid, see `perf_map`).
    pub fn compile(kernel: &Kernel) -> Result<CpuKernel, IrError> {
        Self::compile_with(kernel, &CpuOptions::default())
    }

    /// [`compile`](Self::compile) with explicit [`CpuOptions`].
    pub fn compile_with(kernel: &Kernel, opts: &CpuOptions) -> Result<CpuKernel, IrError> {
        let err = |m: String| backend_err(kernel, m);
        let mut flags = settings::builder();
        flags
            .set("opt_level", "speed")
            .map_err(|e| err(e.to_string()))?;
        flags
            .set("is_pic", "false")
            .map_err(|e| err(e.to_string()))?;
        flags
            .set("use_colocated_libcalls", "false")
            .map_err(|e| err(e.to_string()))?;
        let isa_builder = cranelift_native::builder().map_err(|e| err(e.to_string()))?;
        // cranelift-native enables `has_fma` exactly when the host reports it.
        #[cfg(target_arch = "x86_64")]
        let fma = std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let fma = true;
        let isa = isa_builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| err(e.to_string()))?;
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        jb.symbol(math::LOG2_SYMBOL, math::host_log2 as *const u8);
        jb.symbol(
            prefetch::PREFETCH_SYMBOL,
            prefetch::host_prefetch as *const u8,
        );
        jb.symbol(host_gemm::GEMM_SYMBOL, host_gemm::host_gemm as *const u8);
        let mut module = JITModule::new(jb);

        let lay = Layouts::plan(kernel)?;
        let mut ctx: Context = module.make_context();
        let mut sig = module.make_signature();
        for _ in 0..6 {
            sig.params.push(AbiParam::new(types::I64));
        }
        let mut unary = module.make_signature();
        unary.params.push(AbiParam::new(types::F32));
        unary.returns.push(AbiParam::new(types::F32));
        let mut binary = module.make_signature();
        binary.params.push(AbiParam::new(types::I64));
        binary.params.push(AbiParam::new(types::I64));
        let mut gemm_sig = module.make_signature();
        gemm_sig.params.push(AbiParam::new(types::I64));
        let name = format!("tpla_{}", kernel.name);
        let fid = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| err(e.to_string()))?;
        let log2 = module
            .declare_function(math::LOG2_SYMBOL, Linkage::Import, &unary)
            .map_err(|e| err(e.to_string()))?;
        let prefetch = module
            .declare_function(prefetch::PREFETCH_SYMBOL, Linkage::Import, &binary)
            .map_err(|e| err(e.to_string()))?;
        let gemm = module
            .declare_function(host_gemm::GEMM_SYMBOL, Linkage::Import, &gemm_sig)
            .map_err(|e| err(e.to_string()))?;
        ctx.func.signature = sig;
        // Named after the kernel and its config so that `TPLA_DUMP=clif` reads
        // `function %latent_decode[BLOCK_H=16,..]`, not `function u0:0`.
        ctx.func.name = UserFuncName::testcase(clif_name(kernel));
        let mut fctx = FunctionBuilderContext::new();
        let tcfg = module.target_config();
        {
            let host = HostFns {
                log2: module.declare_func_in_func(log2, &mut ctx.func),
                prefetch: module.declare_func_in_func(prefetch, &mut ctx.func),
                gemm: opts
                    .host_gemm
                    .then(|| module.declare_func_in_func(gemm, &mut ctx.func)),
            };
            let b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let lower = Lower::new(kernel, b, &lay, host, fma);
            lower.finish(tcfg)?;
        }
        let clif = name_host_calls(
            &ctx.func.display().to_string(),
            &[
                (log2, math::LOG2_SYMBOL),
                (prefetch, prefetch::PREFETCH_SYMBOL),
                (gemm, host_gemm::GEMM_SYMBOL),
            ],
        );
        let asm = std::env::var_os("TPLA_CPU_ASM").is_some();
        ctx.set_disasm(asm);
        module
            .define_function(fid, &mut ctx)
            .map_err(|e| err(format!("{e:?}")))?;
        if asm {
            if let Some(v) = ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
                eprintln!("{v}");
            }
        }
        let code_len = ctx.compiled_code().map_or(0, |c| c.code_buffer().len());
        module.clear_context(&mut ctx);
        module
            .finalize_definitions()
            .map_err(|e| err(e.to_string()))?;
        let code = module.get_finalized_function(fid);
        if std::env::var_os("TPLA_PERF_MAP").is_some() {
            perf_map(code, code_len, &clif_name(kernel));
        }
        // SAFETY: `code` is the finalized function defined with exactly `ProgramFn`'s signature
        // (six i64 parameters, no returns, the platform's C calling convention).
        let func = unsafe { std::mem::transmute::<*const u8, ProgramFn>(code) };
        Ok(CpuKernel {
            module: Some(module),
            func,
            scratch_bytes: lay.scratch_bytes,
            clif,
            slots: abi::total_slots(kernel),
            dims: kernel.dims.len(),
        })
    }

    /// Bytes of per-thread scratch one program needs (tile storage), 64-byte aligned size.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch_bytes
    }

    /// Textual Cranelift IR of the compiled function (for `TPLA_DUMP=clif`).
    pub fn clif(&self) -> &str {
        &self.clif
    }

    /// Runs one program (grid cell).
    ///
    /// # Safety
    /// `args` follows [`abi`] for this kernel's params, every pointer is valid for the shapes it
    /// describes (checked by `launch::check_launch`, including block-table entries for pages
    /// covering seq_lens), writable params are not aliased by other params, `scratch` has at
    /// least `scratch_bytes()` bytes and is 16-byte aligned.
    pub unsafe fn run_program(
        &self,
        args: &[u64],
        dims: &[i64],
        pid: [i64; 3],
        scratch: &mut [u8],
    ) {
        assert!(
            args.len() >= self.slots,
            "cpu kernel: {} argument slots, need {}",
            args.len(),
            self.slots
        );
        assert!(
            dims.len() >= self.dims,
            "cpu kernel: {} dims, need {}",
            dims.len(),
            self.dims
        );
        assert!(
            scratch.len() >= self.scratch_bytes,
            "cpu kernel: scratch of {} bytes, need {}",
            scratch.len(),
            self.scratch_bytes
        );
        // SAFETY: the caller guarantees the argument contract above; the slices outlive the call
        // and the generated code touches scratch only inside `scratch_bytes`.
        unsafe {
            (self.func)(
                args.as_ptr(),
                dims.as_ptr(),
                pid[0],
                pid[1],
                pid[2],
                scratch.as_mut_ptr(),
            )
        }
    }
}
