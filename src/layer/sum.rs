//! [`DeviceSum`]: the all-reduce of ranks that share one device (run one after another), as a
//! sum on that device: what stands in for NVLink when a one-GPU run measures per-rank work.

use tpla_codegen::KernelDef;
use tpla_kernels::{add_rows, copy_rows};
use tpla_runtime::{collective::check_group, AllReduce, Executor, RuntimeError};

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
}
