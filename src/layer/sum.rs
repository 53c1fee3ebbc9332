//! [`DeviceSum`]: the all-reduce of ranks that share one device (run one after another), as a
//! sum on that device: what stands in for NVLink when a one-GPU run measures per-rank work.

use tpla_codegen::KernelDef;
use tpla_kernels::{add_rows, cast_bf16, copy_rows, widen_f32};
use tpla_runtime::half::bf16;
use tpla_runtime::{collective::check_group, AllReduce, Executor, RuntimeError};

/// The element type the layer's output collectives carry (the all-reduce of `[batch, D]` and,
/// TPLA reduced after `W_UV`, the values' reduce-scatter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// f32: the projections' own precision.
    #[default]
    F32,
    /// bf16: half the bytes on the link; each rank's part is rounded to bf16 before the sum and
    /// the sum rounded once more (what engines send).
    Bf16,
}

impl Payload {
    /// Bytes of one element.
    pub fn bytes(self) -> f64 {
        match self {
            Payload::F32 => 4.0,
            Payload::Bf16 => 2.0,
        }
    }
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Payload::F32 => "f32",
            Payload::Bf16 => "bf16",
        }
    }
}

/// Sums `[rows, cols]` tensors of ranks that all live on one device with [`add_rows`]; every
/// part then holds the sum ([`copy_rows`]). Nothing moves through the host. The executors must share that device (e.g. one CUDA device opened
/// once per rank, or CPU executors).
#[derive(Clone, Copy, Debug)]
pub struct DeviceSum {
    /// Ranks in the group.
    pub ranks: usize,
}

fn shape_of<X: Executor>(t: &X::Tensor<f32>) -> Vec<usize> {
    X::tensor_arg(t)
        .tensor_shape()
        .map(<[usize]>::to_vec)
        .unwrap_or_default()
}

impl<X: Executor> AllReduce<X> for DeviceSum {
    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_reduce_sum(
        &self,
        execs: &[X],
        parts: &mut [X::Tensor<f32>],
    ) -> Result<(), RuntimeError> {
        check_group(self.ranks, execs.len(), parts.iter().map(shape_of::<X>))?;
        let shape = shape_of::<X>(&parts[0]);
        let [rows, cols] = shape[..] else {
            return Err(RuntimeError::InvalidInput(format!(
                "device sum takes [rows, cols] tensors, got {shape:?}"
            )));
        };
        if parts.len() < 2 {
            return Ok(());
        }
        let exec = &execs[0];
        // Ordered on the device, not by the host: the sum on `exec` after every rank's queued
        // work, and every rank's later work after the sum (the executors share one device).
        for e in &execs[1..] {
            exec.order_after(e)?;
        }
        let add = add_rows.default_config(&[("COLS", cols as i64)])?;
        let copy = copy_rows.default_config(&[("COLS", cols as i64)])?;
        let mut acc = exec.alloc::<f32>(&[rows, cols])?;
        add_rows::launch(exec, &add, &parts[0], &parts[1], &mut acc)?;
        for p in &parts[2..] {
            let mut next = exec.alloc::<f32>(&[rows, cols])?;
            add_rows::launch(exec, &add, &acc, p, &mut next)?;
            acc = next;
        }
        for p in parts.iter_mut() {
            copy_rows::launch(exec, &copy, &acc, p)?;
        }
        for e in &execs[1..] {
            e.order_after(exec)?;
        }
        Ok(())
    }

    /// The bf16 payload: every part widened to f32, summed as above, the sum rounded once to
    /// bf16 into every part (as the host sum; what NCCL's bf16 ring gives at two ranks).
    fn all_reduce_sum_bf16(
        &self,
        execs: &[X],
        parts: &mut [X::Tensor<bf16>],
    ) -> Result<(), RuntimeError> {
        let shape_b = |t: &X::Tensor<bf16>| {
            X::tensor_arg(t)
                .tensor_shape()
                .map(<[usize]>::to_vec)
                .unwrap_or_default()
        };
        check_group(self.ranks, execs.len(), parts.iter().map(shape_b))?;
        let shape = shape_b(&parts[0]);
        let [rows, cols] = shape[..] else {
            return Err(RuntimeError::InvalidInput(format!(
                "device sum takes [rows, cols] tensors, got {shape:?}"
            )));
        };
        let mut wide = Vec::with_capacity(parts.len());
        for (p, e) in parts.iter_mut().zip(execs) {
            let mut w = e.alloc::<f32>(&[rows, cols])?;
            widen_rows(e, p, &mut w)?;
            wide.push(w);
        }
        self.all_reduce_sum(execs, &mut wide)?;
        for ((p, mut w), e) in parts.iter_mut().zip(wide).zip(execs) {
            round_rows(e, &mut w, p)?;
        }
        Ok(())
    }
}

/// `[rows, cols]` of a rank-2 tensor, or a typed error naming `what`.
fn rows_cols<X: Executor, T: tpla_runtime::Element>(
    t: &X::Tensor<T>,
    what: &str,
) -> Result<[usize; 2], RuntimeError> {
    match X::tensor_arg(t).tensor_shape() {
        Some(&[rows, cols]) => Ok([rows, cols]),
        s => Err(RuntimeError::InvalidInput(format!(
            "{what} takes [rows, cols] tensors, got {s:?}"
        ))),
    }
}

/// Runs `f` on `a` and `b` (both `[rows, cols]`) seen as `[rows, 1, cols]`, the shape the cast
/// kernels take; both shapes are restored whatever `f` returns.
fn as_rows3<X: Executor, A: tpla_runtime::Element, B: tpla_runtime::Element>(
    a: &mut X::Tensor<A>,
    b: &mut X::Tensor<B>,
    f: impl FnOnce(&mut X::Tensor<A>, &mut X::Tensor<B>, usize) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    let [rows, cols] = rows_cols::<X, A>(a, "a row cast")?;
    X::reshape(a, &[rows, 1, cols])?;
    X::reshape(b, &[rows, 1, cols])?;
    let r = f(a, b, cols);
    X::reshape(a, &[rows, cols])?;
    X::reshape(b, &[rows, cols])?;
    r
}

/// `dst = bf16(src)`, both `[rows, cols]` on `exec` (the bf16 payload's rounding).
pub(crate) fn round_rows<X: Executor>(
    exec: &X,
    src: &mut X::Tensor<f32>,
    dst: &mut X::Tensor<bf16>,
) -> Result<(), RuntimeError> {
    as_rows3::<X, f32, bf16>(src, dst, |s, d, cols| {
        let cfg = cast_bf16.default_config(&[("COLS", cols as i64)])?;
        cast_bf16::launch(exec, &cfg, s, d)
    })
}

/// `dst = f32(src)` (exact), both `[rows, cols]` on `exec`.
pub(crate) fn widen_rows<X: Executor>(
    exec: &X,
    src: &mut X::Tensor<bf16>,
    dst: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    as_rows3::<X, bf16, f32>(src, dst, |s, d, cols| {
        let cfg = widen_f32.default_config(&[("COLS", cols as i64)])?;
        widen_f32::launch(exec, &cfg, s, d)
    })
}
