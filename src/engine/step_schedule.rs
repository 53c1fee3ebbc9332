//! The balanced schedule once per step: [`EnginePlan::schedule`] computes the split tables from
//! the step's lengths, and [`EnginePlan::decode_scheduled`] decodes through them, so the layers
//! of one decode step (which share the batch's lengths) run the schedule kernel once instead of
//! once each: what FlashMLA's `get_mla_metadata` and FlashInfer's `plan` are to their kernels.
//!
//! The tables live on the device and the lengths never leave it, so the plan cannot see whether
//! the lengths changed since the schedule: the caller promises they did not (the same contract
//! as FlashMLA's metadata). What the plan can check, it does: a reuse is refused unless the last
//! schedule ran for the same batch and the same kernel block (`BLOCK_N`, which a new decode
//! config or another query length may change).

use tpla_kernels::ops::DecodeParams;
use tpla_runtime::half::bf16;
use tpla_runtime::view::{KvPool, TensorView, ViewExecutor};
use tpla_runtime::RuntimeError;

use super::{query_params, tensor, Capacities, DecodeOut, EnginePlan, Space, Tables};

/// What a schedule computed the tables for: the batch and the decode kernel's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    batch: usize,
    block_n: i64,
}

impl Stamp {
    /// The stamp of a decode of `batch` sequences with `p` (its `BLOCK_N`, as the schedule's
    /// config takes it: `tpla_kernels::ops::Balanced::schedule_config`).
    pub(super) fn of(p: &DecodeParams, batch: usize) -> Stamp {
        Stamp {
            batch,
            block_n: p.decode_config().get("BLOCK_N").unwrap_or(32),
        }
    }
}

/// Refuses a reuse of tables computed for something else (or never computed).
pub(super) fn check_reuse(have: Option<Stamp>, want: Stamp) -> Result<(), RuntimeError> {
    match have {
        Some(h) if h == want => Ok(()),
        Some(h) => Err(RuntimeError::InvalidInput(format!(
            "decode_scheduled: the last schedule was for a batch of {} with blocks of {} tokens, \
             this decode is a batch of {} with blocks of {}: call schedule again",
            h.batch, h.block_n, want.batch, want.block_n
        ))),
        None => Err(RuntimeError::InvalidInput(
            "decode_scheduled: no schedule has run for these tables: call schedule first".into(),
        )),
    }
}

/// Launches the schedule kernel over `seq_lens` (`[batch]`) into `t`'s tables and stamps them;
/// on an error the tables count as not computed.
pub(super) fn run<X: ViewExecutor>(
    exec: &X,
    p: &DecodeParams,
    t: &mut Tables<X>,
    seq_lens: &TensorView<'_, i32, Space<X>>,
    batch: usize,
    caps: &Capacities,
) -> Result<(), RuntimeError> {
    let bshape = [batch];
    t.scheduled = None;
    tpla_kernels::ops::launch_schedule(
        exec,
        p,
        &t.sched,
        tensor(seq_lens.arg())?,
        tensor(X::tensor_arg_mut(&mut t.chunk))?.prefix(&bshape)?,
        tensor(X::tensor_arg_mut(&mut t.nsplits))?.prefix(&bshape)?,
        caps.max_pages_per_seq * caps.page_size,
    )?;
    t.scheduled = Some(Stamp::of(p, batch));
    Ok(())
}

impl<X: ViewExecutor> EnginePlan<X> {
    /// Computes the balanced split tables for a step's lengths (`seq_lens`, `[batch]` i32 in the
    /// executor's space) and decodes of `query_len` tokens per sequence, on the executor's
    /// stream: one launch, no host sync. Every [`decode_scheduled`](Self::decode_scheduled)
    /// after it, until the lengths change, reuses them. A plan with uniform splits (or a grid of
    /// one split) has no tables: this does nothing.
    pub fn schedule(
        &mut self,
        exec: &X,
        seq_lens: &TensorView<'_, i32, Space<X>>,
        query_len: usize,
    ) -> Result<(), RuntimeError> {
        if query_len == 0 || query_len > self.max_q_len {
            return Err(RuntimeError::InvalidInput(format!(
                "schedule: {query_len} query tokens per sequence, the plan allows 1 to {} \
                 (reserve_query_len)",
                self.max_q_len
            )));
        }
        let batch = match seq_lens.shape() {
            [b] if (1..=self.caps.max_batch).contains(b) => *b,
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "schedule: seq_lens must be [batch] with batch in 1..={}, got {s:?}",
                    self.caps.max_batch
                )))
            }
        };
        let p = &*query_params(&self.params, query_len);
        match &mut self.balanced {
            Some(t) if p.splits > 1 => run(exec, p, t, seq_lens, batch, &self.caps),
            _ => Ok(()),
        }
    }

    /// [`decode`](Self::decode) through the tables of the last [`schedule`](Self::schedule)
    /// instead of computing them: the decode and the combine only. `seq_lens` must hold the
    /// lengths that schedule read (the plan cannot check device memory); a schedule for another
    /// batch, block size or query length, or none at all, is a typed error and nothing runs. On
    /// a plan with uniform splits it is [`decode`](Self::decode).
    pub fn decode_scheduled(
        &mut self,
        exec: &X,
        pool: &KvPool<'_, bf16, Space<X>>,
        block_table: &TensorView<'_, i32, Space<X>>,
        seq_lens: &TensorView<'_, i32, Space<X>>,
        q: &TensorView<'_, bf16, Space<X>>,
        outs: DecodeOut<'_, '_, Space<X>>,
    ) -> Result<(), RuntimeError> {
        self.decode_with(exec, pool, block_table, seq_lens, q, outs, true)
    }
}
