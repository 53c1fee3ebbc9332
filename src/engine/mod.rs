//! The engine front door: decode and append over memory the engine owns.
//!
//! A serving engine (vLLM, SGLang, TensorRT-LLM, mistral.rs) keeps its own KV page pool, block
//! table, sequence lengths and slot mapping, and calls attention on its own stream, often inside
//! a CUDA graph. [`EnginePlan`] is made once from fixed [`Capacities`]: it sizes the KV split
//! grid from them and the device, and allocates its split workspace once, at addresses that
//! never change. By default the splits are balanced per step on the device: a schedule kernel
//! reads the device-resident lengths and gives every sequence pieces of about equal token counts
//! across the whole batch ([`tpla_kernels::split_schedule`]), so no host work depends on the
//! lengths; a fixed count of uniform splits per sequence can be asked for instead. After that:
//!
//! - [`EnginePlan::append`] writes new token rows into the pool at the engine's slots
//!   (vLLM's `slot_mapping`: `page · page_size + offset`), so every sequence grows by its own
//!   count; the engine then bumps its own lengths. Freeing or resetting a sequence is the
//!   engine's business: set its length to 0 (and reuse its pages elsewhere).
//! - [`EnginePlan::decode`] runs decode attention over views of the pool, block table, lengths,
//!   queries, outputs and LSE: launches only, with no allocation, no copy and no host sync, so
//!   it can be captured in a CUDA graph and replayed with new table contents.
//! - [`merge`] combines attention states `(out_i, lse_i)` exactly (cascade, context parallel).
//!
//! Views live in [`tpla_runtime::view`]: safe host-slice views for the CPU executor, `unsafe`
//! device-pointer views for CUDA (use `CudaExecutor::with_stream` with the engine's stream).

use std::borrow::Cow;

use tpla_codegen::{Config, KernelDef};
use tpla_kernels::ops::{Balanced, DecodeParams, BALANCED_WAVES, MAX_QUERY_LEN};
use tpla_kernels::{append_rows, combine_counted, combine_splits, latent_decode, split_schedule};
use tpla_runtime::half::bf16;
use tpla_runtime::view::{KvPool, MemorySpace, TensorView, TensorViewMut, ViewExecutor};
use tpla_runtime::{HostTensor, KernelArg, RuntimeError};

mod append;
mod kv_dtype;
mod merge;
mod step_schedule;
use kv_dtype::fp8_decode_schedule;
pub use kv_dtype::KvDtype;
pub use merge::merge;

/// What an [`EnginePlan`] is sized for; fixed for its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct Capacities {
    /// Most sequences in one decode call.
    pub max_batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Latent width of the cache rows (512 for MLA, 512 / g for a TPLA shard).
    pub lat: usize,
    /// RoPE width (64).
    pub rope: usize,
    /// Tokens per page of the pool.
    pub page_size: usize,
    /// Most block-table entries a sequence uses (so the longest sequence is
    /// `max_pages_per_seq · page_size` tokens).
    pub max_pages_per_seq: usize,
    /// Most token rows one [`EnginePlan::append`] writes.
    pub max_append: usize,
    /// How the pool stores a row: bf16 `lat + rope` columns, or the FP8 latent cache (rows of
    /// [`KvDtype::pool_row`] bf16 carrier elements; appends quantise, decode dequantises).
    pub kv_dtype: KvDtype,
}

impl Capacities {
    /// bf16 elements per row of the pool the plan reads and writes (`lat + rope` for bf16, the
    /// FP8 row's bytes / 2 for FP8).
    pub fn pool_row(&self) -> Result<usize, RuntimeError> {
        self.kv_dtype.pool_row(self.lat, self.rope)
    }
}

/// Output views of one decode: `[batch, heads, lat]` and `[batch, heads]`.
pub type DecodeOut<'o, 'a, S> = (
    &'o mut TensorViewMut<'a, f32, S>,
    &'o mut TensorViewMut<'a, f32, S>,
);

/// Split count, kernel configs and device workspace for decode over engine-owned memory.
pub struct EnginePlan<X: ViewExecutor> {
    caps: Capacities,
    params: DecodeParams,
    append: Config,
    part: X::Tensor<f32>,
    part_lse: X::Tensor<f32>,
    ones: X::Tensor<i32>,
    ones_host: Vec<i32>,
    balanced: Option<Tables<X>>,
    /// Most query tokens per sequence a decode takes (see [`EnginePlan::reserve_query_len`]).
    max_q_len: usize,
}

/// The balanced schedule's sizes and its device tables `chunk`, `nsplits` (`[max_batch]` i32).
struct Tables<X: ViewExecutor> {
    sched: Balanced,
    chunk: X::Tensor<i32>,
    nsplits: X::Tensor<i32>,
    /// What the tables were last computed for, `None` before the first schedule (or after a
    /// failed one): [`EnginePlan::decode_scheduled`] reuses them only for the same.
    scheduled: Option<step_schedule::Stamp>,
}

type Space<X> = <X as ViewExecutor>::Space;

/// Most KV splits a plan takes (a launch grid axis on a GPU holds 65535).
const MAX_SPLITS: usize = 1024;

impl<X: ViewExecutor> EnginePlan<X> {
    /// A plan for `caps` with softmax `scale`. `splits = 0` balances the splits per step on the
    /// device ([`EnginePlan::new_balanced`] with sizes from the capacities and the device's
    /// occupancy); any other value gives every sequence that many uniform splits. Allocates the
    /// split workspace (`splits · max_batch · heads · (lat + 1)` f32) once.
    pub fn new(
        exec: &X,
        caps: Capacities,
        scale: f32,
        splits: usize,
    ) -> Result<Self, RuntimeError> {
        if splits == 0 {
            return Self::new_balanced(exec, caps, scale, None);
        }
        Self::build(exec, caps, scale, splits, None)
    }

    /// A plan whose every decode first runs the balanced schedule on the device: sequence `b`
    /// gets `nsplits[b]` pieces of `chunk[b]` tokens, about equal across the batch and about
    /// filling the device, on a grid of `sched.max_splits` splits (see
    /// [`tpla_kernels::split_schedule`]). `None` sizes the schedule from the capacities (the
    /// longest sequence they allow) and the decode kernel's occupancy. A grid of one split is
    /// the unsplit decode (no schedule runs).
    pub fn new_balanced(
        exec: &X,
        caps: Capacities,
        scale: f32,
        sched: Option<Balanced>,
    ) -> Result<Self, RuntimeError> {
        let sched = match sched {
            Some(s) => s,
            None => {
                check_caps(&caps)?;
                let mut p =
                    DecodeParams::new(caps.max_batch, caps.heads, caps.lat, caps.rope, 1, scale);
                p.validate()?;
                if caps.kv_dtype == KvDtype::Fp8 {
                    fp8_decode_schedule(exec, &mut p, caps.lat);
                }
                let per_unit =
                    exec.resident_programs(&latent_decode, &p.balanced_decode_config())?;
                Balanced::for_occupancy(&p, max_len(&caps)?, exec.compute_units() * per_unit)
                    .with_waves(BALANCED_WAVES)
            }
        };
        if sched.max_splits == 0 || sched.max_splits > MAX_SPLITS || sched.units == 0 {
            return Err(RuntimeError::InvalidInput(format!(
                "balanced schedule {sched:?}: max_splits must be in 1..={MAX_SPLITS}, units at \
                 least 1"
            )));
        }
        if sched.max_splits == 1 {
            return Self::build(exec, caps, scale, 1, None);
        }
        Self::build(exec, caps, scale, sched.max_splits, Some(sched))
    }

    fn build(
        exec: &X,
        caps: Capacities,
        scale: f32,
        splits: usize,
        balanced: Option<Balanced>,
    ) -> Result<Self, RuntimeError> {
        check_caps(&caps)?;
        let mut params =
            DecodeParams::new(caps.max_batch, caps.heads, caps.lat, caps.rope, 1, scale);
        params.validate()?;
        let fp8 = caps.kv_dtype == KvDtype::Fp8;
        if fp8 {
            fp8_decode_schedule(exec, &mut params, caps.lat);
        }
        params.splits = if splits == 0 {
            return Err(RuntimeError::InvalidInput(
                "a plan needs at least one split".into(),
            ));
        } else if splits > MAX_SPLITS {
            return Err(RuntimeError::InvalidInput(format!(
                "{splits} KV splits, at most {MAX_SPLITS}"
            )));
        } else {
            splits
        };
        let (s, b, h, l) = (params.splits, caps.max_batch, caps.heads, caps.lat);
        [s, b, h, l + caps.rope]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize / 4)
            .ok_or_else(|| RuntimeError::InvalidInput(format!("capacities {caps:?} overflow")))?;
        // With one split the decode writes the caller's out/lse directly: no workspace.
        let (ws, ws_lse) = if s > 1 {
            (vec![s, b, h, l], vec![s, b, h])
        } else {
            (vec![1], vec![1])
        };
        let part = exec.alloc::<f32>(&ws)?;
        let part_lse = exec.alloc::<f32>(&ws_lse)?;
        let ones_host = vec![1i32; caps.max_append];
        let ones = exec.upload(
            &HostTensor::from_vec(&[caps.max_append], ones_host.clone())
                .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
        )?;
        let mut append = append_rows
            .default_config(&[("ROW", (caps.lat + caps.rope) as i64)])?
            .with("BLOCK_T", 1);
        if fp8 {
            append.set("KV_FP8", caps.lat as i64);
        }
        // Load every kernel now (the occupancy query builds and loads it on a GPU), so no
        // compilation or module load happens inside a later graph capture.
        exec.resident_programs(&latent_decode, &params.decode_config())?;
        exec.resident_programs(&combine_splits, &params.combine_config())?;
        exec.resident_programs(&append_rows, &append)?;
        let balanced = match balanced {
            None => None,
            Some(sched) => {
                exec.resident_programs(&latent_decode, &params.balanced_decode_config())?;
                exec.resident_programs(&combine_counted, &params.combine_config())?;
                exec.resident_programs(&split_schedule, &Balanced::schedule_config(&params)?)?;
                Some(Tables {
                    sched,
                    chunk: exec.alloc::<i32>(&[b])?,
                    nsplits: exec.alloc::<i32>(&[b])?,
                    scheduled: None,
                })
            }
        };
        Ok(EnginePlan {
            caps,
            params,
            append,
            part,
            part_lse,
            ones,
            ones_host,
            balanced,
            max_q_len: 1,
        })
    }

    /// Lets [`decode`](Self::decode) take up to `max_q_len` query tokens per sequence (MTP,
    /// speculative verify; 1 to [`MAX_QUERY_LEN`]): sizes the split workspace for `max_q_len ·
    /// heads` rows once and loads the multi-token kernels now, so nothing is allocated or
    /// compiled inside a later graph capture. Call it before capturing: with several splits it
    /// replaces the workspace (new addresses). A plan starts at 1. On error nothing changes.
    pub fn reserve_query_len(&mut self, exec: &X, max_q_len: usize) -> Result<(), RuntimeError> {
        if !(1..=MAX_QUERY_LEN).contains(&max_q_len) {
            return Err(RuntimeError::InvalidInput(format!(
                "{max_q_len} query tokens per sequence, expected 1 to {MAX_QUERY_LEN}"
            )));
        }
        for sq in 2..=max_q_len {
            let p = query_params(&self.params, sq);
            exec.resident_programs(&latent_decode, &p.decode_config())?;
            if self.balanced.is_some() {
                exec.resident_programs(&latent_decode, &p.balanced_decode_config())?;
            }
        }
        let (s, b, h, l) = (
            self.params.splits,
            self.caps.max_batch,
            self.caps.heads,
            self.caps.lat,
        );
        if s > 1 && max_q_len > self.max_q_len {
            let rows = max_q_len * h;
            let part = exec.alloc::<f32>(&[s, b, rows, l])?;
            let part_lse = exec.alloc::<f32>(&[s, b, rows])?;
            (self.part, self.part_lse) = (part, part_lse);
        }
        self.max_q_len = self.max_q_len.max(max_q_len);
        Ok(())
    }

    /// Most query tokens per sequence [`decode`](Self::decode) takes.
    pub fn max_query_len(&self) -> usize {
        self.max_q_len
    }

    /// The decode kernel's config for one query token (the tune values, `LAT`, `ROPE` and, for
    /// an FP8 pool, `KV_FP8`): what to log, or to compare with the tune database.
    pub fn decode_config(&self) -> Config {
        self.params.decode_config()
    }

    /// The capacities.
    pub fn capacities(&self) -> &Capacities {
        &self.caps
    }
    /// KV splits of the decode grid: every sequence's count with uniform splits, the most any
    /// sequence gets with the balanced schedule.
    pub fn splits(&self) -> usize {
        self.params.splits
    }
    /// The balanced schedule's sizes, `None` for uniform splits (or a grid of one split).
    pub fn balanced(&self) -> Option<Balanced> {
        self.balanced.as_ref().map(|t| t.sched)
    }
    /// Replaces the decode kernel's tune values (e.g. from the tune database) and loads that
    /// kernel. Call before capturing a graph: the kernel is chosen at launch. On error nothing
    /// changes.
    pub fn set_decode_config(&mut self, exec: &X, config: Config) -> Result<(), RuntimeError> {
        let mut params = self.params.clone();
        params.decode = config;
        if self.caps.kv_dtype == KvDtype::Fp8 {
            // `KV_FP8 = lat`, head blocks of at most 64 rows.
            params.set_fp8_cache();
        }
        exec.resident_programs(&latent_decode, &params.decode_config())?;
        if self.balanced.is_some() {
            exec.resident_programs(&latent_decode, &params.balanced_decode_config())?;
            exec.resident_programs(&split_schedule, &Balanced::schedule_config(&params)?)?;
        }
        self.params = params;
        Ok(())
    }

    /// Decode attention of one query per sequence: `q` `[batch, heads, lat + rope]` bf16 over
    /// the pool read through `block_table` (`[batch, pages_per_seq]` i32) and `seq_lens`
    /// (`[batch]` i32), into `out` (`[batch, heads, lat]` f32) and `lse` (`[batch, heads]` f32,
    /// natural log; about −6.9e29 for an empty sequence, whose output is zero). `batch` may be
    /// anything up to `max_batch`. Only kernel launches reach the executor's stream.
    ///
    /// Several query tokens per sequence (MTP, speculative verify): `q` `[batch, s_q, heads,
    /// lat + rope]`, `out` `[batch, s_q, heads, lat]`, `lse` `[batch, s_q, heads]`, with `s_q`
    /// up to [`max_query_len`](Self::max_query_len) (raise it with
    /// [`reserve_query_len`](Self::reserve_query_len)). They are the last `s_q` tokens of each
    /// sequence (already appended): token `j` sees the cache up to position `len − s_q + j`; a
    /// token that sees nothing (`len < s_q − j`) gets a zero output and lse ≈ −6.9e29.
    ///
    /// A balanced plan runs its schedule kernel first, every call; where several layers decode
    /// over the same lengths in a step, [`schedule`](Self::schedule) once and
    /// [`decode_scheduled`](Self::decode_scheduled) per layer run it once instead.
    pub fn decode(
        &mut self,
        exec: &X,
        pool: &KvPool<'_, bf16, Space<X>>,
        block_table: &TensorView<'_, i32, Space<X>>,
        seq_lens: &TensorView<'_, i32, Space<X>>,
        q: &TensorView<'_, bf16, Space<X>>,
        outs: DecodeOut<'_, '_, Space<X>>,
    ) -> Result<(), RuntimeError> {
        self.decode_with(exec, pool, block_table, seq_lens, q, outs, false)
    }

    /// [`decode`](Self::decode), with `reuse` the balanced tables of the last schedule
    /// instead of computing them (refused unless they were computed for this batch and block).
    #[allow(clippy::too_many_arguments)]
    fn decode_with(
        &mut self,
        exec: &X,
        pool: &KvPool<'_, bf16, Space<X>>,
        block_table: &TensorView<'_, i32, Space<X>>,
        seq_lens: &TensorView<'_, i32, Space<X>>,
        q: &TensorView<'_, bf16, Space<X>>,
        (out, lse): DecodeOut<'_, '_, Space<X>>,
        reuse: bool,
    ) -> Result<(), RuntimeError> {
        let c = &self.caps;
        let (heads, lat, row) = (c.heads, c.lat, c.lat + c.rope);
        // Rank 4: s_q tokens per sequence, packed with the heads into `s_q · heads` rows.
        let sq = match q.shape() {
            [_, sq, _, _] => *sq,
            _ => 1,
        };
        if sq == 0 || sq > self.max_q_len {
            return Err(RuntimeError::InvalidInput(format!(
                "{sq} query tokens per sequence, the plan allows 1 to {} (reserve_query_len)",
                self.max_q_len
            )));
        }
        let h = sq * heads;
        let b = match seq_lens.shape() {
            [b] => *b,
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "seq_lens must be [batch], got {s:?}"
                )))
            }
        };
        if b == 0 || b > c.max_batch {
            return Err(RuntimeError::InvalidInput(format!(
                "batch {b} outside 1..={}",
                c.max_batch
            )));
        }
        if let [_, pps] = block_table.shape() {
            if *pps > c.max_pages_per_seq {
                return Err(RuntimeError::InvalidInput(format!(
                    "block table of {pps} pages per sequence, the plan allows {}",
                    c.max_pages_per_seq
                )));
            }
        }
        let (qs, os, ls) = if q.shape().len() == 4 {
            (
                vec![b, sq, heads, row],
                vec![b, sq, heads, lat],
                vec![b, sq, heads],
            )
        } else {
            (vec![b, heads, row], vec![b, heads, lat], vec![b, heads])
        };
        for (what, got, want) in [
            ("q", q.shape(), &qs[..]),
            ("out", out.shape(), &os[..]),
            ("lse", lse.shape(), &ls[..]),
        ] {
            if got != want {
                return Err(RuntimeError::InvalidInput(format!(
                    "decode: {what} has shape {got:?}, expected {want:?}"
                )));
            }
        }
        self.check_pool(pool)?;
        let cache = self.cache_format(pool.paged(block_table, seq_lens)?)?;
        let p = &*query_params(&self.params, sq);
        let s = p.splits;
        let scale = KernelArg::F32(p.scale);
        let (ps, pls) = ([s, b, h, lat], [s, b, h]);
        let q_rows = [b, h, row];
        let q_arg = KernelArg::Tensor(tensor(q.arg())?.prefix(&q_rows)?);
        if s == 1 {
            // One split is already normalised: write the caller's buffers, seen with a leading
            // split axis of 1.
            let o = tensor(out.arg_mut())?.prefix(&ps)?;
            let l = tensor(lse.arg_mut())?.prefix(&pls)?;
            let args = [
                q_arg,
                cache,
                KernelArg::Tensor(o),
                KernelArg::Tensor(l),
                scale,
            ];
            return exec.launch(&latent_decode, &p.decode_config(), &args);
        }
        let bshape = [b];
        if let Some(t) = &mut self.balanced {
            let stamp = step_schedule::Stamp::of(p, b);
            if reuse {
                step_schedule::check_reuse(t.scheduled, stamp)?;
            } else {
                // The schedule, from the device-resident lengths, into the plan's tables.
                step_schedule::run(exec, p, t, seq_lens, b, &self.caps)?;
            }
        }
        let (cache, config) = match &self.balanced {
            None => (cache, p.decode_config()),
            Some(t) => {
                let KernelArg::Paged(pa) = cache else {
                    return Err(RuntimeError::InvalidInput("the pool is not paged".into()));
                };
                let chunk = tensor(X::tensor_arg(&t.chunk))?.prefix(&bshape)?;
                (
                    KernelArg::Paged(pa.with_split_table(chunk)?),
                    p.balanced_decode_config(),
                )
            }
        };
        {
            let part = tensor(X::tensor_arg_mut(&mut self.part))?.prefix(&ps)?;
            let part_lse = tensor(X::tensor_arg_mut(&mut self.part_lse))?.prefix(&pls)?;
            let args = [
                q_arg,
                cache,
                KernelArg::Tensor(part),
                KernelArg::Tensor(part_lse),
                scale,
            ];
            exec.launch(&latent_decode, &config, &args)?;
        }
        let part = KernelArg::Tensor(tensor(X::tensor_arg(&self.part))?.prefix(&ps)?);
        let part_lse = KernelArg::Tensor(tensor(X::tensor_arg(&self.part_lse))?.prefix(&pls)?);
        // `[batch, s_q, heads, ..]` outputs seen as `[batch, s_q · heads, ..]` rows.
        let (o_rows, l_rows) = ([b, h, lat], [b, h]);
        let out_arg = KernelArg::Tensor(tensor(out.arg_mut())?.prefix(&o_rows)?);
        let lse_arg = KernelArg::Tensor(tensor(lse.arg_mut())?.prefix(&l_rows)?);
        match &self.balanced {
            None => {
                let args = [part, part_lse, out_arg, lse_arg];
                exec.launch(&combine_splits, &p.combine_config(), &args)
            }
            Some(t) => {
                // Only the pieces the schedule gave each sequence were written.
                let n = tensor(X::tensor_arg(&t.nsplits))?.prefix(&bshape)?;
                let args = [part, part_lse, KernelArg::Tensor(n), out_arg, lse_arg];
                exec.launch(&combine_counted, &p.combine_config(), &args)
            }
        }
    }

    fn check_pool(&self, pool: &KvPool<'_, bf16, Space<X>>) -> Result<(), RuntimeError> {
        let row = self.caps.pool_row()?;
        if pool.page_size() != self.caps.page_size || pool.row() != row {
            return Err(RuntimeError::InvalidInput(format!(
                "pool of [{}, {}] rows per page, the plan expects [{}, {row}] ({} rows)",
                pool.page_size(),
                pool.row(),
                self.caps.page_size,
                self.caps.kv_dtype.name()
            )));
        }
        Ok(())
    }

    /// The pool argument as the kernels read it: as is for bf16, as FP8 rows of `lat + rope`
    /// columns for FP8.
    fn cache_format<'a>(&self, cache: KernelArg<'a>) -> Result<KernelArg<'a>, RuntimeError> {
        match (self.caps.kv_dtype, cache) {
            (KvDtype::Fp8, KernelArg::Paged(pa)) => Ok(KernelArg::Paged(
                pa.fp8_view(self.caps.lat, self.caps.lat + self.caps.rope)?,
            )),
            (_, cache) => Ok(cache),
        }
    }

    /// `n` ones (the lengths of a slot append), in the executor's space.
    fn ones_view(&self, n: usize) -> Result<TensorView<'_, i32, Space<X>>, RuntimeError> {
        if <Space<X> as MemorySpace>::HOST {
            // SAFETY: host space with its own slice (owned by the plan, never written).
            unsafe {
                TensorView::from_raw(self.ones_host.as_ptr() as u64, &[n], Some(&self.ones_host))
            }
        } else {
            let ptr = tensor(X::tensor_arg(&self.ones))?.ptr();
            // SAFETY: `ones` is the plan's device buffer of `max_append >= n` i32 ones, allocated
            // on this executor, alive as long as `self` is borrowed, never written after upload.
            unsafe { TensorView::from_raw(ptr, &[n], None) }
        }
    }
}

/// The decode parameters for `sq` query tokens per sequence: `BLOCK_H` re-chosen for the
/// `sq · heads` rows, except under the FP8 producer schedule ([`fp8_decode_schedule`]),
/// which runs 64-row blocks (the form measured and emulated with several query tokens): a
/// plan whose one-token blocks are narrower (16 heads or fewer) takes the 64-row schedule.
/// One token is the plan's own parameters, borrowed.
fn query_params(params: &DecodeParams, sq: usize) -> Cow<'_, DecodeParams> {
    if sq <= 1 {
        return Cow::Borrowed(params);
    }
    let mut p = params.clone().with_query_len(sq);
    let fp8_producer =
        |c: &Config| c.try_get("KV_FP8").is_some_and(|v| v > 0) && c.try_get("PRODUCER") == Some(1);
    if fp8_producer(&params.decode) {
        if params.decode.try_get("BLOCK_H").is_some_and(|b| b < 64) {
            for (knob, value) in kv_dtype::fp8_hopper_knobs(64) {
                p.decode.set(knob, value);
            }
        }
        p.decode.set("BLOCK_H", 64);
    }
    Cow::Owned(p)
}

fn check_caps(caps: &Capacities) -> Result<(), RuntimeError> {
    for (what, v) in [
        ("max_batch", caps.max_batch),
        ("page_size", caps.page_size),
        ("max_pages_per_seq", caps.max_pages_per_seq),
        ("max_append", caps.max_append),
    ] {
        if v == 0 {
            return Err(RuntimeError::InvalidInput(format!(
                "capacity {what} must be at least 1"
            )));
        }
    }
    caps.pool_row()?;
    Ok(())
}

/// The longest sequence the capacities allow.
fn max_len(caps: &Capacities) -> Result<usize, RuntimeError> {
    caps.max_pages_per_seq
        .checked_mul(caps.page_size)
        .ok_or_else(|| RuntimeError::InvalidInput("capacity overflows".into()))
}

fn tensor(a: KernelArg<'_>) -> Result<tpla_runtime::TensorArg<'_>, RuntimeError> {
    match a {
        KernelArg::Tensor(t) => Ok(t),
        _ => Err(RuntimeError::InvalidInput(
            "expected a tensor argument".into(),
        )),
    }
}
