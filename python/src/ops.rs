//! The module-level calls: `tpla.append` (rows into an engine's pool at its slots) and
//! `tpla.combine` (exact merge of attention states).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use tpla::codegen::{Config, KernelDef};
use tpla::engine::merge;
use tpla::kernels::{append_rows, combine_splits};
use tpla::runtime::half::bf16;
use tpla::runtime::view::ViewExecutor;
use tpla::runtime::{KernelArg, RuntimeError};

use crate::backend::{preload, py_err, with_exec, Mem};
use crate::decode::shard_latent;
use crate::tensor::{
    expect_device, expect_disjoint, expect_rank, expect_shape, tensor, torch, Dt, Tensor,
};

/// Writes `rows` into `cache` at `slots` on the cache's device (torch's current stream on a GPU).
///
/// - MLA: `cache` `[num_pages, page_size, row]`, `rows` `[n, row]`.
/// - TPLA: `cache` `[g, num_pages, page_size, w + rope]` (one pool per shard), `rows` either
///   per shard `[g, n, w + rope]` or full width `[n, g·w + rope]` (split with `rope`).
///
/// `slots` is `[n]` int32, distinct, each `page · page_size + offset`. On the CPU bad slots are a
/// `ValueError` and nothing is written; on a GPU they are not checked (no host sync): a slot
/// outside the pool is skipped by the kernel, a repeated one gets one of its rows.
#[pyfunction]
#[pyo3(signature = (cache, rows, slots, *, rope=64))]
pub fn append(
    py: Python<'_>,
    cache: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    slots: &Bound<'_, PyAny>,
    rope: usize,
) -> PyResult<()> {
    let ct = tensor(cache, "cache", Dt::Bf16)?;
    let (lead, pages, ps, row) = match ct.shape[..] {
        [p, s, r] if p > 0 => (None, p, s, r),
        [g, p, s, r] if g > 0 && p > 0 => (Some(g), p, s, r),
        _ => {
            return Err(PyValueError::new_err(format!(
                "cache must be [num_pages, page_size, row] or [groups, num_pages, page_size, row] \
                 with num_pages >= 1, got {:?}",
                ct.shape
            )))
        }
    };
    let rows = match lead {
        Some(g) if crate::tensor::ndim(rows) == Some(2) => {
            let full = rows.getattr("shape")?.get_item(1)?.extract::<usize>()?;
            let w = row.checked_sub(rope).filter(|&w| w > 0);
            if w.map(|w| w * g + rope) != Some(full) {
                return Err(PyValueError::new_err(format!(
                    "rows of width {full} are not {g} shards of {row} - {rope} latent columns plus \
                     {rope} rope columns"
                )));
            }
            shard_latent(py, rows, g, rope)?
        }
        _ => rows.clone(),
    };
    let rt = tensor(&rows, "rows", Dt::Bf16)?;
    let st = tensor(slots, "slots", Dt::I32)?;
    expect_rank("slots", &st, 1, "[n]")?;
    let n = st.shape[0];
    let lead: Vec<usize> = lead.into_iter().collect();
    expect_shape("rows", &rt, &[&lead[..], &[n, row]].concat())?;
    expect_device(ct.dev, &[("rows", &rt), ("slots", &st)])?;
    let all = [("cache", &ct), ("rows", &rt), ("slots", &st)];
    expect_disjoint(&all[..1], &all)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = append_rows
        .default_config(&[("ROW", row as i64)])
        .map_err(|e| py_err(e.into()))?
        .with("BLOCK_T", 1);
    preload(ct.dev, &append_rows, &cfg)?;
    // The kernel reads a length per slot (all 1): a torch tensor, ordered on the same stream.
    let ones_obj = torch(py)?.make(py, &torch(py)?.ones, &[n], Dt::I32, ct.dev)?;
    let ones = tensor(&ones_obj, "ones", Dt::I32)?;
    let shards = lead.first().copied().unwrap_or(1);
    let a = Append {
        cache: &ct,
        rows: &rt,
        slots: &st,
        ones: &ones,
        pages,
        ps,
        row,
        shards,
        cfg: &cfg,
    };
    with_exec(
        py,
        ct.dev,
        |x| append_with(x, &a).map_err(py_err),
        |_, x| append_with(x, &a).map_err(py_err),
    )
}

struct Append<'t> {
    cache: &'t Tensor,
    rows: &'t Tensor,
    slots: &'t Tensor,
    ones: &'t Tensor,
    pages: usize,
    ps: usize,
    row: usize,
    shards: usize,
    cfg: &'t Config,
}

fn append_with<X: ViewExecutor>(exec: &X, a: &Append<'_>) -> Result<(), RuntimeError>
where
    X::Space: Mem,
{
    let n = a.slots.shape[0];
    let (row, per_pool) = (a.row, a.pages * a.ps * a.row);
    for i in 0..a.shards {
        // SAFETY: the tensors were read from torch tensors the caller holds for the call; shard
        // `i` lies inside each (shapes checked); the pool, the only thing written, shares no
        // memory with rows or slots (`expect_disjoint`); `ones` is a fresh tensor of `n` ones.
        unsafe {
            let mut pool = X::Space::pool(a.cache, i * per_pool, a.pages, a.ps, row)?;
            let slots = X::Space::view::<i32>(a.slots, 0, &[n])?;
            let ones = X::Space::view::<i32>(a.ones, 0, &[n])?;
            let rows = X::Space::view::<bf16>(a.rows, i * n * row, &[n, row])?;
            let cache = pool.slot_rows(&slots, &ones)?;
            let shape = [n, 1, row];
            let rows_arg = match rows.arg() {
                KernelArg::Tensor(t) => KernelArg::Tensor(t.prefix(&shape)?),
                _ => unreachable!("a tensor view's argument is a tensor"),
            };
            exec.launch(&append_rows, a.cfg, &[rows_arg, cache])?;
        }
    }
    Ok(())
}

/// Merges attention states exactly: `outs` `[n, batch, heads, lat]` (or a list of `n`
/// `[batch, heads, lat]`) and `lses` `[n, batch, heads]` (or a list) into `(out, lse)`.
#[pyfunction]
#[pyo3(signature = (outs, lses, *, out=None, lse=None))]
pub fn combine<'py>(
    py: Python<'py>,
    outs: &Bound<'py, PyAny>,
    lses: &Bound<'py, PyAny>,
    out: Option<Bound<'py, PyAny>>,
    lse: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let stacked = |x: &Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
        if x.is_instance_of::<PyList>() || x.is_instance_of::<PyTuple>() {
            if x.len()? == 0 {
                return Err(PyValueError::new_err("combine needs at least one state"));
            }
            torch(py)?.stack.bind(py).call1((x,))
        } else {
            Ok(x.clone())
        }
    };
    let (outs, lses) = (stacked(outs)?, stacked(lses)?);
    let pt = tensor(&outs, "outs", Dt::F32)?;
    let lt = tensor(&lses, "lses", Dt::F32)?;
    expect_rank("outs", &pt, 4, "[n, batch, heads, lat]")?;
    let (n, b, h, lat) = (pt.shape[0], pt.shape[1], pt.shape[2], pt.shape[3]);
    if n == 0 || b == 0 || h == 0 || lat == 0 {
        return Err(PyValueError::new_err(format!(
            "outs has shape {:?}; every dimension must be at least 1",
            pt.shape
        )));
    }
    expect_shape("lses", &lt, &[n, b, h])?;
    let dev = pt.dev;
    let t = torch(py)?;
    let out = match out {
        Some(o) => o,
        None => t.new_tensor(py, &[b, h, lat], Dt::F32, dev)?,
    };
    let lse = match lse {
        Some(o) => o,
        None => t.new_tensor(py, &[b, h], Dt::F32, dev)?,
    };
    let ot = tensor(&out, "out", Dt::F32)?;
    let st = tensor(&lse, "lse", Dt::F32)?;
    expect_shape("out", &ot, &[b, h, lat])?;
    expect_shape("lse", &st, &[b, h])?;
    expect_device(dev, &[("lses", &lt), ("out", &ot), ("lse", &st)])?;
    let all = [("outs", &pt), ("lses", &lt), ("out", &ot), ("lse", &st)];
    expect_disjoint(&all[2..], &all)?;
    let cfg = combine_splits
        .default_config(&[("LAT", lat as i64)])
        .map_err(|e| py_err(e.into()))?;
    preload(dev, &combine_splits, &cfg)?;
    let ts = [&pt, &lt, &ot, &st];
    with_exec(
        py,
        dev,
        |x| merge_with(x, ts).map_err(py_err),
        |_, x| merge_with(x, ts).map_err(py_err),
    )?;
    PyTuple::new(py, [out, lse])
}

fn merge_with<X: ViewExecutor>(exec: &X, [p, l, o, s]: [&Tensor; 4]) -> Result<(), RuntimeError>
where
    X::Space: Mem,
{
    // SAFETY: tensors read from torch tensors the caller holds for the call, viewed at their
    // own shapes; out and lse share no memory with any other (`expect_disjoint`).
    unsafe {
        let parts = X::Space::view::<f32>(p, 0, &p.shape)?;
        let lses = X::Space::view::<f32>(l, 0, &l.shape)?;
        let mut out = X::Space::view_mut::<f32>(o, 0, &o.shape)?;
        let mut lse = X::Space::view_mut::<f32>(s, 0, &s.shape)?;
        merge(exec, &parts, &lses, (&mut out, &mut lse))
    }
}
