//! CUDA backend: lowers a [`Kernel`] to self-contained CUDA C++ for NVRTC.
//!
//! The generated translation unit contains the device prelude (`prelude.cu`: bf16 conversion,
//! exp2/log2, warp reductions, `cp.async`, `ldmatrix`, `mma.sync`) followed by one
//! `extern "C" __global__` function. It includes no toolkit header, so compiling it needs only
//! libnvrtc (and its builtins library).
//!
//! # Passes
//!
//! [`emit`] validates the kernel, reads its [`Schedule`](crate::schedule::Schedule) knobs
//! (`WARPS`, `WGMMA`, `WG_SPLIT`: a bad value is an [`IrError::BadConfig`] naming the knob) and
//! runs one list of named passes, `pipeline::PASSES`, over a lowering state (`TPLA_DUMP=<pass>`
//! or `TPLA_DUMP=all` prints the state after each pass named):
//!
//! 0. (before the list, a rewrite of the tile IR) `loads_first.rs`: each `for` body's tile loads
//!    move to the start of the iteration, so they go out together, and are prefetched one
//!    iteration ahead where the loop is not a short reduction (those are unrolled);
//! 1. `analysis` (`analysis.rs`): assignments and uses per tile, exact bf16 values, gemm
//!    operands and shapes (through the IR walker [`crate::visit`]);
//! 2. `layout` (`layout.rs`): where each tile lives (the lattice below);
//! 3. `geometry` (`geometry.rs`): warps per block, warpgroups, the fragment split of each tile;
//! 4. `memory` (`memory.rs`): shared-memory buffers (swizzle, column blocking, paged rings),
//!    placed as they are created, and every tile's representation (`repr.rs`);
//! 5. `lower` (`lower/`): statements and tile ops to code nodes (`node.rs`), one module per op
//!    family: `elementwise`, `reduce`, `memory` (loads, stores), `paged` (block loops, paged
//!    stores), `gemm` (`fma`, `mma` for `mma.sync`, `wgmma`);
//! 6. `sync` (`sync.rs`): `__syncthreads()` between conflicting accesses;
//! 7. `print` (`print.rs`): the translation unit. Nothing is patched after it is printed.
//!
//! If the result needs more shared memory than the target has, the pipeline runs again with
//! fewer pipeline stages, then with f32 gemm operands rounded to bf16.
//!
//! # Execution model
//!
//! One program (one cell of [`Kernel::grid`]) is one thread block of
//! [`CudaSource::block_threads`] threads; `ProgramId(0|1|2)` is `blockIdx.x|y|z`, so the launch
//! grid is `(grid[0], grid[1], grid[2])` (CUDA limits axes 1 and 2 to 65535). Tiles live in one of
//! four places, chosen per tile variable by a layout analysis:
//!
//! - **fragment registers**: rank-2 `[M, N]` tiles produced by a gemm (and elementwise results of
//!   the same shape) are distributed over the warps in the `mma.sync` accumulator layout;
//! - **row registers**: `[M]` / `[M, 1]` tiles that pair with the rows of a fragment tile
//!   (row reductions, online-softmax statistics) are held by the threads owning those rows;
//! - **shared memory**: everything else (loaded tiles, paged cache blocks, operands of a gemm),
//!   row-major, bf16 tiles XOR-swizzled in 16-byte chunks so `ldmatrix` is conflict free;
//! - **inline**: constant tiles (`full`, `iota`) and the `valid` mask of a paged block loop are
//!   never stored, their elements are recomputed where read.
//!
//! Register arrays are indexed only inside fully unrolled loops (compile-time indices), so nothing
//! is demoted to local memory. `__syncthreads()` is inserted between statements that touch the
//! same shared (or global) buffer from different threads, including around loop back edges;
//! dependencies a thread has only on its own elements (flat elementwise loops over one shape)
//! need none.
//!
//! # Hopper (sm_90a): warpgroup gemms
//!
//! Where [`Target::wgmma`] allows and every tensor-core gemm has 64 rows, the kernel uses the
//! warpgroup geometry: 4 warps along M form a warpgroup whose fragments are exactly the
//! `wgmma.mma_async` accumulator layout, and warpgroups split only tiles at least `WG_SPLIT`
//! (default 128) columns wide per group, so narrower tiles (q·kᵀ) are computed whole by each and
//! every warp owns whole rows. Such a gemm becomes `K / 16` `wgmma` instructions followed by a
//! commit and a wait:
//!
//! - shared-memory operands are bf16 tiles stored column-blocked (`[cols / 64][rows][64]`, 128-byte
//!   rows XOR-swizzled by `row & 7`, blocks 1024-byte aligned: the hardware's 128-byte swizzle) and
//!   described by one descriptor per gemm plus constant offsets per K step; K-major and M/N-major
//!   views (`kv.t()` and `kv.cols(..)`) are both direct;
//! - a register fragment whose warps own whole rows (P after the softmax) is fed as the register
//!   A operand, converted to bf16 pairs in place;
//! - every barrier carries `fence.proxy.async`, so generic-proxy writes (stores, `cp.async`) are
//!   visible to the tensor cores' async-proxy reads;
//! - a paged loop issues the next block's copy inside its first warpgroup gemm (between the
//!   commit and the wait), with one barrier per block;
//! - with the schedule knob `PRODUCER = 1` (warp specialisation, `warpspec.rs`) a producer
//!   warpgroup after the consumer warps issues every paged copy instead, into the same ring
//!   guarded by full / empty `mbarrier`s (`cp.async.mbarrier.arrive.noinc` / `try_wait.parity`);
//!   the consumers' barriers become `bar.sync 1` over the consumer threads and `setmaxnreg`
//!   moves registers from the producer (24) to them. Over an FP8 cache (`KV_FP8`) the producer
//!   `cp.async`s the raw rows into a staging ring (planned after every other buffer, the emitter
//!   trying the plans best first) and dequantises them into the ring (`lower/fp8_producer.rs`).
//! - with the schedule knob `SEESAW = 1` (`lower/seesaw/`, FlashMLA's two-consumer split) the
//!   two warpgroups take alternate blocks of the online-softmax paged loop, each with its own
//!   q·kᵀ, combine the row statistics and exchange P through shared memory, and each adds both
//!   blocks to its half of the accumulator (register-A `wgmma`s, one commit group); with
//!   `PRODUCER = 1` (and `TMA = 1`) the producer warpgroup feeds their pair ring, one mbarrier
//!   stage per slot.
//!
//! Other gemms (other shapes, f32 operands split into hi/lo parts) keep `mma.sync`.
//!
//! # Numerics
//!
//! Elementwise math follows the IR (f32 whatever the label; bf16 rounding to nearest even only when
//! a bf16 tensor or cache is written). Documented deviations: `exp2`/`log2` use the hardware
//! approximations `ex2.approx.ftz.f32` / `lg2.approx.f32` (about 2 ulp; `exp2` flushes a result
//! below 2^-126 to zero, as the host emulation does); sums reduce in tree order.
//! A gemm runs on tensor cores (`mma.sync.m16n8k16` bf16, f32 accumulation) on sm_80+ when
//! `M % 16 == 0`, `N % 8 == 0` and `K % 16 == 0`. A bf16-labelled operand is fed as bf16 (exact
//! for values loaded from bf16 memory, rounded otherwise); an f32-labelled operand is split into a
//! bf16 high part and a bf16 residual (`x = hi + lo`), and the product is accumulated from
//! `hi·hi + lo·hi + hi·lo` (about 16 significant bits per operand, relative error ~1e-5), unless
//! [`F32Gemm::RoundBf16`] is chosen. Other gemms, and every gemm before sm_80, use f32 FMA.
//!
//! # Kernel argument ABI
//!
//! Arguments are passed in [`Kernel::params`] order, each expanded as below, followed by one
//! `int` per runtime dimension in [`Kernel::dims`] order. [`CudaSource::params`] lists the slots.
//!
//! | parameter | slots |
//! |---|---|
//! | `Tensor` (f32 / bf16 / i32) | one device pointer to the dense row-major data (bf16 as raw `u16`) |
//! | `Paged` | `data` pointer (`[num_pages, page_size, row]`), `block_table` pointer (`i32 [batch, pages_per_seq]`), `seq_lens` pointer (`i32 [batch]`), the split-table pointer `chunk` (`i32 [batch]`) only when the parameter is `chunked`, then `int page_size, pages_per_seq, num_pages, batch` |
//! | `Paged`, streamed by a `TMA = 1` producer | the slots above, then its page pool's tensor map (`CUtensorMap`, 128 bytes by value, see [`tma`]) |
//! | `Scalar` f32 / i32 | the value (`float` / `int`) |
//! | runtime dim | its value as `int` |
//!
//! Pointers must be 16-byte aligned (any `cuMemAlloc` result is). Dynamic shared memory of
//! [`CudaSource::shared_bytes`] must be requested at launch; above 48 KiB the function attribute
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` must be raised first.
//! Index arithmetic is 32-bit (as the IR allows for GPUs); addresses are 64-bit.

mod analysis;
mod elem;
mod full_groups;
mod fusion;
mod geometry;
mod layout;
mod loads_first;
mod lower;
mod memory;
mod node;
mod pipeline;
mod print;
mod repr;
mod sync;
pub mod tma;
mod util;
mod warpspec;

use crate::error::IrError;
use crate::ir::{DType, Kernel, PagedFormat, ParamKind};

/// The device prelude every generated kernel starts with.
pub const PRELUDE: &str = include_str!("prelude.cu");

/// How a gemm with an f32-labelled operand uses the tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum F32Gemm {
    /// Split each f32 operand into bf16 `hi + lo` and accumulate three products (default).
    #[default]
    Split,
    /// Round f32 operands to bf16 (one product; relative error of the inputs ~4e-3).
    RoundBf16,
    /// Never use tensor cores for such a gemm: f32 FMA.
    Fma,
}

/// The GPU a kernel is generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for H100 / H200.
    pub sm: (u32, u32),
    /// Largest dynamic shared memory one block may use, in bytes.
    pub max_shared_bytes: u32,
    /// Policy for gemms with f32-labelled operands.
    pub f32_gemm: F32Gemm,
    /// Whether 64-row bf16 gemms may use Hopper's warpgroup `wgmma.mma_async` with operands in
    /// 128-byte-swizzled shared memory (default on sm_90a; a kernel config `WGMMA = 0` or
    /// `TPLA_CUDA_WGMMA=0` in the runtime turns it off).
    pub wgmma: bool,
    /// Whether a tile load outside every loop (the query tile) goes out as `cp.async` copies,
    /// all in flight, then one wait (default on sm_80+; `TPLA_CUDA_ASYNC_LOADS=0` in the runtime
    /// turns it off: a copy through registers, one round trip to memory per vector a thread
    /// moves, the code the kernels had before 2026-12-08).
    pub async_tile_loads: bool,
    /// Whether `for` loops get the loop-load rewrite of `loads_first.rs` before the passes run:
    /// each body's tile loads first, a short reduction under `#pragma unroll 4`, the leading
    /// loads of other loops prefetched one iteration ahead (default on;
    /// `TPLA_CUDA_LOADS_FIRST=0` in the runtime keeps the loops as written, the code the kernels
    /// had before 2026-12-08).
    pub loads_first: bool,
}

impl Target {
    /// A target for compute capability `major.minor` with that architecture's opt-in shared
    /// memory limit per block.
    pub fn new(major: u32, minor: u32) -> Target {
        let max_shared_bytes = match (major, minor) {
            (7, 0) | (7, 2) => 98_304,
            (7, 5) => 65_536,
            (8, 0) | (8, 7) => 166_912,
            (8, _) => 101_376,
            (9, 0) | (10, _) => 232_448,
            (11, _) | (12, _) => 101_376,
            _ => 49_152,
        };
        Target {
            sm: (major, minor),
            max_shared_bytes,
            f32_gemm: F32Gemm::default(),
            wgmma: (major, minor) == (9, 0),
            async_tile_loads: major >= 8,
            loads_first: true,
        }
    }

    /// Hopper (H100 / H200): compute capability 9.0.
    pub fn sm90() -> Target {
        Target::new(9, 0)
    }

    /// The same target with another f32 gemm policy.
    pub fn with_f32_gemm(mut self, f32_gemm: F32Gemm) -> Target {
        self.f32_gemm = f32_gemm;
        self
    }

    /// The same target with warpgroup gemms allowed or not (only effective on sm_90a).
    pub fn with_wgmma(mut self, wgmma: bool) -> Target {
        self.wgmma = wgmma && self.sm == (9, 0);
        self
    }

    /// The same target with top-level tile loads as `cp.async` or not (only effective on sm_80+).
    pub fn with_async_tile_loads(mut self, on: bool) -> Target {
        self.async_tile_loads = on && self.sm.0 >= 8;
        self
    }

    /// The same target with the loads of `for` bodies moved first or not (`loads_first.rs`).
    pub fn with_loads_first(mut self, on: bool) -> Target {
        self.loads_first = on;
        self
    }

    /// The NVRTC architecture name: `sm_90a` on Hopper (arch-specific features enabled),
    /// `sm_XY` otherwise.
    pub fn arch_name(&self) -> String {
        let (major, minor) = self.sm;
        if (major, minor) == (9, 0) {
            "sm_90a".to_string()
        } else {
            format!("sm_{major}{minor}")
        }
    }

    /// Whether `mma.sync` bf16 and `cp.async` are available (sm_80+).
    pub fn has_tensor_cores(&self) -> bool {
        self.sm.0 >= 8
    }
}

/// What a paged parameter's pointer slot points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagedPtr {
    /// `data [num_pages, page_size, row]` of the cache dtype.
    Data,
    /// `block_table [batch, pages_per_seq]` of i32 page ids.
    BlockTable,
    /// `seq_lens [batch]` of i32.
    SeqLens,
    /// The split table `chunk [batch]` of i32 (only for a `chunked` parameter).
    Chunks,
}

/// What a paged parameter's integer slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagedInt {
    /// Tokens per page.
    PageSize,
    /// Block-table entries per sequence.
    PagesPerSeq,
    /// Pages in `data`.
    NumPages,
    /// Sequences.
    Batch,
}

/// One slot of the generated kernel's argument list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamAbi {
    /// Device pointer to a dense tensor parameter's data.
    Tensor {
        /// Index in [`Kernel::params`].
        param: usize,
        /// Element type.
        dtype: DType,
    },
    /// Device pointer belonging to a paged parameter.
    PagedPtr {
        /// Index in [`Kernel::params`].
        param: usize,
        /// Which array.
        what: PagedPtr,
    },
    /// `int` describing a paged parameter.
    PagedInt {
        /// Index in [`Kernel::params`].
        param: usize,
        /// Which value.
        what: PagedInt,
    },
    /// A scalar parameter by value (`float` for F32, `int` for I32).
    Scalar {
        /// Index in [`Kernel::params`].
        param: usize,
        /// F32 or I32.
        dtype: DType,
    },
    /// The TMA tensor map of a paged parameter's page pool (`TMA = 1`): a 128-byte
    /// `CUtensorMap` passed by value, planned by [`tma::plan_paged_tmap`] with these box rows.
    PagedTmap {
        /// Index in [`Kernel::params`].
        param: usize,
        /// Tokens of the loop's block: a box's rows, or a page's where pages are smaller.
        box_rows: u32,
    },
    /// A runtime dimension's value as `int`.
    Dim {
        /// Index in [`Kernel::dims`].
        dim: usize,
    },
}

/// Generated CUDA C++ and its launch geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaSource {
    /// The `extern "C" __global__` symbol.
    pub name: String,
    /// The complete translation unit (prelude included).
    pub code: String,
    /// Threads per block.
    pub block_threads: u32,
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// The argument slots, in order.
    pub params: Vec<ParamAbi>,
    /// Pipelining depth actually used by each paged block loop, in program order (the IR's
    /// `stages` hint, lowered where shared memory would not fit).
    pub stages: Vec<usize>,
    /// The f32 gemm policy actually used: [`Target::f32_gemm`], or [`F32Gemm::RoundBf16`] when
    /// the split operands would not fit in shared memory.
    pub f32_gemm: F32Gemm,
    /// Whether the two-consumer schedule (`SEESAW = 1`) was applied; false where the knob is
    /// off or changed nothing (its pattern, geometry or shared memory did not allow it), so a
    /// tuner can skip a config that emits its base config's kernel.
    pub seesaw: bool,
    /// Whether the kernel runs on the Hopper warpgroup geometry (`wgmma` where operands allow):
    /// a tuner skips a 128-row head block that does not (its accumulators would not fit the
    /// registers of two warpgroups stacked along the rows).
    pub warpgroups: bool,
    /// Whether two consumer warpgroups split the paged loop's blocks (`WG_KV_SPLIT = 1`); false
    /// where the knob is off or changed nothing, so a tuner can skip the config.
    pub kv_split: bool,
    /// Whether a score warpgroup feeds the value warpgroups (`SCORE_WG = 1`); false where the
    /// knob is off or changed nothing (its pattern or geometry did not allow it), so a tuner can
    /// skip the config.
    pub score_wg: bool,
    /// Whether the paged loop's q·kᵀ waits for the ring's column groups between its commit
    /// groups (`FULL_GROUPS > 1`); false where the knob is off or changed nothing.
    pub group_waits: bool,
    /// Whether each value warpgroup refills its own half of the ring (`SPLIT_RELEASE = 1`);
    /// false where the knob is off or changed nothing (one value warpgroup, no TMA ring), so a
    /// tuner can skip the config.
    pub split_release: bool,
}

/// Generates CUDA C++ for `kernel` on `target`.
///
/// Fails with [`IrError::Backend`] when the kernel cannot be lowered, e.g. when its tiles need
/// more shared memory than the target offers even without pipelining.
pub fn emit(kernel: &Kernel, target: Target) -> Result<CudaSource, IrError> {
    for p in &kernel.params {
        if let ParamKind::Paged {
            format: PagedFormat::Fp8 { lat },
            row,
            ..
        } = p.kind
        {
            if !(row - lat).is_multiple_of(8) {
                return Err(IrError::Backend {
                    backend: "cuda",
                    kernel: kernel.name.clone(),
                    message: format!(
                        "an FP8 paged cache needs its bf16 columns ({}) in chunks of 8",
                        row - lat
                    ),
                });
            }
        }
    }
    pipeline::emit(kernel, target)
}
