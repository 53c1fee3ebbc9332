//! The per-shard launches behind `MlaDecode` / `TplaDecode`: one [`EnginePlan`] per latent
//! group, each over its slice of the caller's tensors (the schedule, the decode, the append).

use tpla::engine::{Capacities, EnginePlan};
use tpla::runtime::half::bf16;
use tpla::runtime::view::ViewExecutor;
use tpla::runtime::RuntimeError;

use crate::backend::Mem;
use crate::decode::Args;
use crate::tensor::Tensor;

/// The balanced split schedule of every shard's plan for the lengths in `lens` (`[batch]`), on
/// the executor's stream (`plan(.., fixed_lengths=True)`).
pub(crate) fn schedule_shards<X: ViewExecutor>(
    exec: &X,
    plans: &mut [EnginePlan<X>],
    lens: &Tensor,
) -> Result<(), RuntimeError>
where
    X::Space: Mem,
{
    for plan in plans.iter_mut() {
        // SAFETY: `lens` was read from the live torch tensor the caller passed to `plan` (the
        // Python object is borrowed until it returns), `[batch]` int32 as `tables` checked; the
        // schedule only reads it, on torch's current stream (or the host for CPU tensors).
        unsafe {
            let view = X::Space::view::<i32>(lens, 0, &[lens.shape[0]])?;
            plan.schedule(exec, &view, 1)?;
        }
    }
    Ok(())
}

pub(crate) fn decode_shards<X: ViewExecutor>(
    exec: &X,
    plans: &mut [EnginePlan<X>],
    c: &Capacities,
    a: &Args,
    scheduled: bool,
) -> Result<(), RuntimeError>
where
    X::Space: Mem,
{
    let (b, h, w, row) = (a.lens.shape[0], c.heads, c.lat, c.lat + c.rope);
    let prow = c.pool_row()?;
    let pps = a.table.shape[1];
    for (i, plan) in plans.iter_mut().enumerate() {
        // SAFETY: every tensor was read from a live torch tensor the caller holds for this call
        // (the Python objects are borrowed until it returns); shard `i`'s elements lie inside it
        // (shapes checked against the leading group axis); the written ones (out, lse) and the
        // pool share no memory with any other argument (`expect_disjoint`); torch runs nothing
        // on these tensors meanwhile on the host, and on a device everything is ordered on
        // torch's current stream.
        unsafe {
            let pool = X::Space::pool(
                &a.cache,
                i * a.pages * c.page_size * prow,
                a.pages,
                c.page_size,
                prow,
            )?;
            let table = X::Space::view::<i32>(&a.table, 0, &[b, pps])?;
            let lens = X::Space::view::<i32>(&a.lens, 0, &[b])?;
            let q = X::Space::view::<bf16>(&a.q, i * b * h * row, &[b, h, row])?;
            let mut out = X::Space::view_mut::<f32>(&a.out, i * b * h * w, &[b, h, w])?;
            let mut lse = X::Space::view_mut::<f32>(&a.lse, i * b * h, &[b, h])?;
            if scheduled {
                plan.decode_scheduled(exec, &pool, &table, &lens, &q, (&mut out, &mut lse))?;
            } else {
                plan.decode(exec, &pool, &table, &lens, &q, (&mut out, &mut lse))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn append_shards<X: ViewExecutor>(
    exec: &X,
    plans: &mut [EnginePlan<X>],
    c: &Capacities,
    pages: usize,
    cache: &Tensor,
    rows: &Tensor,
    slots: &Tensor,
) -> Result<(), RuntimeError>
where
    X::Space: Mem,
{
    let row = c.lat + c.rope;
    let prow = c.pool_row()?;
    let n = slots.shape[0];
    for (i, plan) in plans.iter_mut().enumerate() {
        // SAFETY: as in `decode_shards`: live tensors held by the caller, shard `i` inside each,
        // the pool (written) disjoint from rows and slots.
        unsafe {
            let mut pool = X::Space::pool(
                cache,
                i * pages * c.page_size * prow,
                pages,
                c.page_size,
                prow,
            )?;
            let s = X::Space::view::<i32>(slots, 0, &[n])?;
            let r = X::Space::view::<bf16>(rows, i * n * row, &[n, row])?;
            plan.append(exec, &mut pool, &s, &r)?;
        }
    }
    Ok(())
}
