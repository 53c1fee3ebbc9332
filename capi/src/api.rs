//! The plan entry points: create, destroy, decode, append, combine.

use std::ffi::{c_int, c_void};

use tpla::engine::{Capacities, KvDtype};
use tpla::runtime::cuda::CudaExecutor;
use tpla::runtime::half::bf16;
use tpla::runtime::CpuExecutor;

use crate::plan::{AppendArgs, Backend, CombineArgs, DecodeArgs, Engine};
use crate::status::{guard, tpla_status_t, Error};

/// Which executor a plan runs on (`TPLA_BACKEND_CPU` or `TPLA_BACKEND_CUDA`).
#[allow(non_camel_case_types)]
pub type tpla_backend_t = u32;

/// The Cranelift CPU backend: every buffer is host memory.
pub const TPLA_BACKEND_CPU: tpla_backend_t = 0;
/// The CUDA backend: every buffer is device memory of the device's primary context, and work is
/// queued on the plan's `CUstream`.
pub const TPLA_BACKEND_CUDA: tpla_backend_t = 1;

/// How the pool stores a token row (`TPLA_KV_BF16` or `TPLA_KV_FP8`).
#[allow(non_camel_case_types)]
pub type tpla_kv_dtype_t = u32;

/// `lat + rope` bf16 values a row (the default: a zero-initialised field).
pub const TPLA_KV_BF16: tpla_kv_dtype_t = 0;
/// The FP8 latent cache: `lat` e4m3 bytes, one float scale per 128 latent columns, then the RoPE
/// key as bf16, each part padded to 16 bytes (656 bytes for 512 + 64). The pool is still passed
/// as `uint16_t` rows, of `tpla_pool_row` elements; `tpla_append` quantises the bf16 rows it is
/// given; decode dequantises. `lat` must be a multiple of 128.
pub const TPLA_KV_FP8: tpla_kv_dtype_t = 1;

/// What a plan is sized for, fixed for its lifetime (the fields of tpla's `engine::Capacities`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct tpla_capacities_t {
    /// Most sequences in one decode.
    pub max_batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Latent width of the cache rows (512 for MLA, 512 / g for a TPLA shard).
    pub lat: usize,
    /// RoPE width (64).
    pub rope: usize,
    /// Tokens per page of the pool.
    pub page_size: usize,
    /// Most block-table entries per sequence (the longest sequence is
    /// `max_pages_per_seq * page_size` tokens).
    pub max_pages_per_seq: usize,
    /// Most token rows one `tpla_append` writes.
    pub max_append: usize,
    /// How the pool stores a row: `TPLA_KV_BF16` (0) or `TPLA_KV_FP8`.
    pub kv_dtype: tpla_kv_dtype_t,
}

/// The engine capacities of `c`, or an invalid-argument error for an unknown `kv_dtype`.
fn capacities(c: &tpla_capacities_t) -> Result<Capacities, Error> {
    let kv_dtype = match c.kv_dtype {
        TPLA_KV_BF16 => KvDtype::Bf16,
        TPLA_KV_FP8 => KvDtype::Fp8,
        other => return Err(Error::invalid(format!("unknown kv_dtype {other}"))),
    };
    Ok(Capacities {
        max_batch: c.max_batch,
        heads: c.heads,
        lat: c.lat,
        rope: c.rope,
        page_size: c.page_size,
        max_pages_per_seq: c.max_pages_per_seq,
        max_append: c.max_append,
        kv_dtype,
    })
}

/// Writes to `*row` the `uint16_t` elements of one pool row for `caps`: `lat + rope` for
/// `TPLA_KV_BF16`, the FP8 row's bytes / 2 for `TPLA_KV_FP8` (328 for 512 + 64).
///
/// # Safety
/// `caps` is NULL or readable; `row` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tpla_pool_row(
    caps: *const tpla_capacities_t,
    row: *mut usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract: null or a readable `tpla_capacities_t`.
        let c =
            *unsafe { caps.as_ref() }.ok_or_else(|| Error::invalid("`caps` is a null pointer"))?;
        // SAFETY: the caller's contract: null or writable.
        let out =
            unsafe { row.as_mut() }.ok_or_else(|| Error::invalid("`row` is a null pointer"))?;
        *out = capacities(&c)?.pool_row()?;
        Ok(())
    })
}

/// A decode plan: an executor plus its split workspace. Opaque; made by `tpla_plan_create`,
/// freed by `tpla_plan_destroy`. Used by one thread at a time.
#[allow(non_camel_case_types)]
pub struct tpla_plan_t {
    pub(crate) backend: Backend,
}

/// The plan behind `plan`, or an invalid-argument error when it is null.
///
/// # Safety
/// `plan` is null or a live plan from `tpla_plan_create` no other thread uses meanwhile.
unsafe fn plan_mut<'a>(plan: *mut tpla_plan_t) -> Result<&'a mut tpla_plan_t, Error> {
    // SAFETY: the caller's contract: null or a live, unshared plan.
    unsafe { plan.as_mut() }.ok_or_else(|| Error::invalid("`plan` is a null pointer"))
}

/// Makes a plan for `caps` with softmax `scale` (e.g. `1 / sqrt(192)` for MLA).
///
/// `splits` is the number of KV splits every decode uses: 0 lets tpla choose from the capacities
/// and the device. On `TPLA_BACKEND_CPU`, `device` must be 0 and `cu_stream` NULL. On
/// `TPLA_BACKEND_CUDA`, the plan uses device `device`'s primary context (the one the CUDA runtime
/// and PyTorch use) and queues all its work on `cu_stream` (a `CUstream`, or NULL for the legacy
/// default stream). Every kernel is compiled and loaded here, so later calls only launch (a
/// decode can be captured in a CUDA graph). On success `*out` is the new plan; on failure it is
/// left unchanged.
///
/// # Safety
/// `caps` is null or points to a `tpla_capacities_t`; `out` is null or points to writable
/// storage for a pointer. On CUDA, `cu_stream` is NULL or a live stream of that device's primary
/// context that outlives the plan.
#[no_mangle]
pub unsafe extern "C" fn tpla_plan_create(
    caps: *const tpla_capacities_t,
    scale: f32,
    splits: usize,
    backend: tpla_backend_t,
    device: c_int,
    cu_stream: *mut c_void,
    out: *mut *mut tpla_plan_t,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract: null or a readable `tpla_capacities_t`.
        let c =
            *unsafe { caps.as_ref() }.ok_or_else(|| Error::invalid("`caps` is a null pointer"))?;
        if out.is_null() {
            return Err(Error::invalid("`out` is a null pointer"));
        }
        let caps = capacities(&c)?;
        let backend = match backend {
            TPLA_BACKEND_CPU => {
                if device != 0 || !cu_stream.is_null() {
                    return Err(Error::invalid(
                        "the CPU backend takes device 0 and a NULL stream",
                    ));
                }
                let exec = CpuExecutor::new(0)?;
                Backend::Cpu(Engine::new(exec, caps, scale, splits)?)
            }
            TPLA_BACKEND_CUDA => {
                let ordinal = usize::try_from(device)
                    .map_err(|_| Error::invalid(format!("device {device} is negative")))?;
                // SAFETY: the caller's contract: NULL or a live stream of this device's primary
                // context that outlives the plan (which owns the executor).
                let exec = unsafe { CudaExecutor::from_raw_stream(ordinal, cu_stream as u64) }?;
                Backend::Cuda(Engine::new(exec, caps, scale, splits)?)
            }
            other => return Err(Error::invalid(format!("unknown backend {other}"))),
        };
        let plan = Box::into_raw(Box::new(tpla_plan_t { backend }));
        // SAFETY: `out` is non-null and, by the caller's contract, writable.
        unsafe { out.write(plan) };
        Ok(())
    })
}

/// Frees a plan (NULL is ignored). On CUDA, the caller first makes sure no work queued with the
/// plan is still running (synchronise the stream).
///
/// # Safety
/// `plan` is NULL or a plan from `tpla_plan_create` not yet destroyed; it is not used after.
#[no_mangle]
pub unsafe extern "C" fn tpla_plan_destroy(plan: *mut tpla_plan_t) {
    if plan.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: the caller's contract: a live plan made by `Box::into_raw`, destroyed once.
        drop(unsafe { Box::from_raw(plan) });
        Ok(())
    });
}

/// Writes the KV split count every decode of `plan` uses to `*splits`.
///
/// # Safety
/// `plan` is NULL or a live plan; `splits` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tpla_plan_splits(
    plan: *const tpla_plan_t,
    splits: *mut usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract: null or a live plan.
        let plan =
            unsafe { plan.as_ref() }.ok_or_else(|| Error::invalid("`plan` is a null pointer"))?;
        // SAFETY: the caller's contract: null or writable.
        let s = unsafe { splits.as_mut() }
            .ok_or_else(|| Error::invalid("`splits` is a null pointer"))?;
        *s = plan.backend.splits();
        Ok(())
    })
}

/// Decode attention, one query per sequence, over the caller's page pool.
///
/// Layouts (row-major, `row = lat + rope`, bf16 values as their `uint16_t` bits):
/// - `pool`: `[num_pages, page_size, row]` bf16 (with `TPLA_KV_FP8`: rows of `tpla_pool_row`
///   `uint16_t` holding the FP8 bytes). Token `t` of sequence `b` is in page
///   `block_table[b][t / page_size]` at offset `t % page_size`. Only read.
/// - `block_table`: `[batch, pages_per_seq]` int32, `1 <= pages_per_seq <= max_pages_per_seq`.
/// - `seq_lens`: `[batch]` int32, each in `0..=pages_per_seq * page_size` (0: an empty
///   sequence, whose output is zero and LSE about -6.9e29).
/// - `q`: `[batch, heads, row]` bf16 (absorbed queries).
/// - `out`: `[batch, heads, lat]` float; `lse`: `[batch, heads]` float, the natural-log
///   log-sum-exp of the scaled scores (for `tpla_combine`).
///
/// `batch` is `1..=max_batch`. On the CPU backend the call runs to completion and the block
/// table and lengths are checked (a page outside the pool or a length past the table is
/// `TPLA_STATUS_INVALID_ARGUMENT`, with nothing written). On CUDA the call only queues kernels on
/// the plan's stream: no allocation, copy or host sync, so it can be captured in a CUDA graph;
/// the tables' contents are not checked.
///
/// # Safety
/// `plan` is NULL or a live plan used by no other thread meanwhile. Each non-null buffer holds
/// the elements its layout names, in host memory (CPU) or in device memory of the plan's context
/// (CUDA), stays allocated, and is written by no one else until the call returns (CPU) or the
/// queued work has finished (CUDA). Buffers tpla writes overlap no other argument (checked).
/// On CUDA the table contents meet the rules above.
#[no_mangle]
pub unsafe extern "C" fn tpla_decode(
    plan: *mut tpla_plan_t,
    pool: *mut u16,
    num_pages: usize,
    block_table: *const i32,
    pages_per_seq: usize,
    seq_lens: *const i32,
    q: *const u16,
    out: *mut f32,
    lse: *mut f32,
    batch: usize,
) -> tpla_status_t {
    let args = DecodeArgs {
        pool: pool.cast::<bf16>(),
        num_pages,
        block_table,
        pages_per_seq,
        seq_lens,
        q: q.cast::<bf16>(),
        out,
        lse,
        batch,
    };
    // SAFETY: the caller's contract is `decode_call`'s.
    unsafe { decode_call(plan, &args, false) }
}

/// `tpla_decode` (`reuse` false) or `tpla_decode_scheduled` (`reuse` true) on `args`.
///
/// # Safety
/// The contract of `tpla_decode` for `plan` and the buffers of `args`.
unsafe fn decode_call(plan: *mut tpla_plan_t, args: &DecodeArgs, reuse: bool) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let plan = unsafe { plan_mut(plan) }?;
        // SAFETY: the caller's contract is `Backend::decode`'s (bf16 is `repr(transparent)` u16).
        unsafe { plan.backend.decode(args, reuse) }
    })
}

/// Computes the split tables of a balanced plan (`splits = 0`) for one step's lengths, so that
/// every layer's `tpla_decode_scheduled` in that step reuses them instead of each running the
/// schedule kernel (`tpla_decode` runs it every call). `seq_lens` is `[batch]` int32 as in
/// `tpla_decode`, `batch` in `1..=max_batch`. On a plan with uniform splits it does nothing. On
/// CUDA it only queues one kernel on the plan's stream.
///
/// # Safety
/// `plan` is NULL or a live plan used by no other thread meanwhile; `seq_lens` is NULL or holds
/// `batch` int32 in the backend's memory, written by no one else until the call (CPU) or its
/// queued work (CUDA) is done.
#[no_mangle]
pub unsafe extern "C" fn tpla_schedule(
    plan: *mut tpla_plan_t,
    seq_lens: *const i32,
    batch: usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let plan = unsafe { plan_mut(plan) }?;
        // SAFETY: the caller's contract is `Backend::schedule`'s.
        unsafe { plan.backend.schedule(seq_lens, batch) }
    })
}

/// `tpla_decode` through the split tables of the last `tpla_schedule` instead of computing
/// them: the same arguments, and `seq_lens` must hold the lengths that schedule read (tpla
/// cannot check device memory). Without a schedule for this batch (or after one for another
/// batch) it is `TPLA_STATUS_INVALID_ARGUMENT` and nothing is written or queued. On a plan with
/// uniform splits it is `tpla_decode`.
///
/// # Safety
/// As `tpla_decode`.
#[no_mangle]
pub unsafe extern "C" fn tpla_decode_scheduled(
    plan: *mut tpla_plan_t,
    pool: *mut u16,
    num_pages: usize,
    block_table: *const i32,
    pages_per_seq: usize,
    seq_lens: *const i32,
    q: *const u16,
    out: *mut f32,
    lse: *mut f32,
    batch: usize,
) -> tpla_status_t {
    let args = DecodeArgs {
        pool: pool.cast::<bf16>(),
        num_pages,
        block_table,
        pages_per_seq,
        seq_lens,
        q: q.cast::<bf16>(),
        out,
        lse,
        batch,
    };
    // SAFETY: the caller's contract is `decode_call`'s.
    unsafe { decode_call(plan, &args, true) }
}

/// Writes `n` token rows into the pool at the engine's slots (vLLM's `slot_mapping`).
///
/// - `pool`: `[num_pages, page_size, row]` bf16, as in `tpla_decode` (FP8 rows with
///   `TPLA_KV_FP8`: the bf16 `rows` are quantised into them).
/// - `slots`: `[n]` int32, distinct, each `page * page_size + offset` in `0..num_pages *
///   page_size`.
/// - `rows`: `[n, row]` bf16; row `i` goes to slot `slots[i]`.
///
/// `n` is `0..=max_append` (0 does nothing; `slots` and `rows` may then be NULL). Each sequence
/// grows by the number of its tokens in the mapping; the caller then raises its own
/// `seq_lens`. On the CPU backend a slot outside the pool or repeated is
/// `TPLA_STATUS_INVALID_ARGUMENT` with nothing written; on CUDA the call only queues a kernel on
/// the plan's stream and the slots are not checked.
///
/// # Safety
/// As `tpla_decode`: `plan` NULL or live and unshared; each non-null buffer holds its layout's
/// elements in the backend's memory, written by no one else until the call (CPU) or its queued
/// work (CUDA) is done; the pool overlaps no other argument (checked); on CUDA the slots meet
/// the rules above.
#[no_mangle]
pub unsafe extern "C" fn tpla_append(
    plan: *mut tpla_plan_t,
    pool: *mut u16,
    num_pages: usize,
    slots: *const i32,
    rows: *const u16,
    n: usize,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let plan = unsafe { plan_mut(plan) }?;
        let args = AppendArgs {
            pool: pool.cast::<bf16>(),
            num_pages,
            slots,
            rows: rows.cast::<bf16>(),
            n,
        };
        // SAFETY: the caller's contract is `Backend::append`'s.
        unsafe { plan.backend.append(&args) }
    })
}

/// Merges `n` attention states exactly (cascade over a shared prefix, split KV, context
/// parallel): `outs` `[n, batch, heads, lat]` and `lses` `[n, batch, heads]` (natural log, as
/// `tpla_decode` writes) into `out` `[batch, heads, lat]` and `lse` `[batch, heads]`, all
/// float. A state over no tokens carries a very negative finite LSE. The sizes need not match
/// the plan's capacities; `plan` only gives the backend (and on CUDA the stream). A `lat` the
/// plan was not made with compiles a kernel on first use (outside a graph capture).
///
/// # Safety
/// As `tpla_decode`: `plan` NULL or live and unshared; each non-null buffer holds its layout's
/// elements in the backend's memory, written by no one else until the call (CPU) or its queued
/// work (CUDA) is done; `out` and `lse` overlap no other argument (checked).
#[no_mangle]
pub unsafe extern "C" fn tpla_combine(
    plan: *mut tpla_plan_t,
    outs: *const f32,
    lses: *const f32,
    n: usize,
    batch: usize,
    heads: usize,
    lat: usize,
    out: *mut f32,
    lse: *mut f32,
) -> tpla_status_t {
    guard(|| {
        // SAFETY: the caller's contract on `plan`.
        let plan = unsafe { plan_mut(plan) }?;
        let args = CombineArgs {
            outs,
            lses,
            n,
            batch,
            heads,
            lat,
            out,
            lse,
        };
        // SAFETY: the caller's contract is `Backend::combine`'s.
        unsafe { plan.backend.combine(&args) }
    })
}
