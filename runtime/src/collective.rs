//! Collectives of a tensor-parallel group, one rank per executor.
//!
//! TPLA's one communication per attention layer is an all-reduce (sum) of the ranks' projected
//! outputs. [`AllReduce`] abstracts it over the executor type: [`HostAllReduce`] for CPU ranks
//! (a sum in host memory, so the tensor-parallel path runs and is tested where no GPU is), and
//! `cuda::nccl::NcclGroup` for GPUs.

use crate::{CpuExecutor, Executor, HostTensor, RuntimeError};

/// Element-wise sum over the ranks, in place: afterwards every rank's tensor holds the sum.
///
/// A collective may drive every rank of its group from this process (`ranks() == world()`:
/// the host sum, a sum on one device, NCCL over the GPUs of one process), or only some of them,
/// the others living in other processes or threads (`ranks() < world()`, e.g. one NCCL rank per
/// process): a call then passes this process's parts, ranks `first_rank()..first_rank() +
/// ranks()` of the group.
pub trait AllReduce<X: Executor> {
    /// Ranks this process passes to each call (its executors and parts).
    fn ranks(&self) -> usize;
    /// Ranks in the whole group (by default [`Self::ranks`]: all of them here).
    fn world(&self) -> usize {
        self.ranks()
    }
    /// The group index of this process's first rank (0 by default).
    fn first_rank(&self) -> usize {
        0
    }
    /// Waits, within the collective's own bound, for the collectives queued so far, so that a
    /// later blocking wait cannot hang on a rank that left; a typed error if one did. The
    /// default has nothing to wait for.
    fn settle(&self, execs: &[X]) -> Result<(), RuntimeError> {
        let _ = execs;
        Ok(())
    }
    /// Sums `parts[r]` (a tensor of `execs[r]`) over all ranks. Every part must have the same
    /// shape; on error nothing has been changed where that can be checked beforehand (count and
    /// shapes), and the error says which rank or shape was wrong.
    fn all_reduce_sum(&self, execs: &[X], parts: &mut [X::Tensor<f32>])
        -> Result<(), RuntimeError>;
    /// Whether the sum moves data between devices over their link (NCCL), so that its time is
    /// the collective's and worth measuring; `false` (the default) for stand-ins: a host sum of
    /// CPU ranks, or a sum on the one device that ranks share.
    fn crosses_devices(&self) -> bool {
        false
    }
    /// [`Self::all_reduce_sum`] with a bf16 payload (half the bytes on the link): every part
    /// holds the bf16 sum afterwards. The default refuses (a typed error, nothing changed).
    fn all_reduce_sum_bf16(
        &self,
        execs: &[X],
        parts: &mut [X::Tensor<half::bf16>],
    ) -> Result<(), RuntimeError> {
        let _ = (execs, parts);
        Err(RuntimeError::InvalidInput(format!(
            "{} has no bf16 payload",
            std::any::type_name::<Self>()
        )))
    }
}

/// The all-reduce of CPU ranks: the sum of host tensors.
#[derive(Clone, Copy, Debug)]
pub struct HostAllReduce {
    /// Ranks in the group.
    pub ranks: usize,
}

impl AllReduce<CpuExecutor> for HostAllReduce {
    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_reduce_sum(
        &self,
        execs: &[CpuExecutor],
        parts: &mut [HostTensor<f32>],
    ) -> Result<(), RuntimeError> {
        host_sum(self.ranks, execs, parts, |x| x, |s| s)
    }

    /// Sums in f32 in rank order and rounds once to bf16: what NCCL's bf16 ring gives at two
    /// ranks (one addition per element); with more ranks NCCL rounds at every hop, so its
    /// error is somewhat larger than this.
    fn all_reduce_sum_bf16(
        &self,
        execs: &[CpuExecutor],
        parts: &mut [HostTensor<half::bf16>],
    ) -> Result<(), RuntimeError> {
        host_sum(
            self.ranks,
            execs,
            parts,
            half::bf16::to_f32,
            half::bf16::from_f32,
        )
    }
}

/// The host sum of `parts` in f32 (rank order), written back into every part through `from`.
fn host_sum<T: crate::Element>(
    ranks: usize,
    execs: &[CpuExecutor],
    parts: &mut [HostTensor<T>],
    to: fn(T) -> f32,
    from: fn(f32) -> T,
) -> Result<(), RuntimeError> {
    check_group(ranks, execs.len(), parts.iter().map(|p| p.shape().to_vec()))?;
    let mut sum = vec![0.0f32; parts[0].data().len()];
    for p in parts.iter() {
        for (s, x) in sum.iter_mut().zip(p.data()) {
            *s += to(*x);
        }
    }
    let sum: Vec<T> = sum.into_iter().map(from).collect();
    for p in parts.iter_mut() {
        p.data_mut().copy_from_slice(&sum);
    }
    Ok(())
}

/// Checks that a group of `ranks` got one executor and one part per rank, all parts of one shape.
pub fn check_group(
    ranks: usize,
    execs: usize,
    shapes: impl Iterator<Item = Vec<usize>>,
) -> Result<(), RuntimeError> {
    let shapes: Vec<Vec<usize>> = shapes.collect();
    if ranks == 0 || execs != ranks || shapes.len() != ranks {
        return Err(RuntimeError::InvalidInput(format!(
            "all-reduce over {ranks} ranks got {execs} executors and {} parts",
            shapes.len()
        )));
    }
    if let Some((r, s)) = shapes.iter().enumerate().find(|(_, s)| **s != shapes[0]) {
        return Err(RuntimeError::InvalidInput(format!(
            "all-reduce: rank {r} has shape {s:?}, rank 0 has {:?}",
            shapes[0]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_all_reduce_sums_every_rank_and_rejects_mismatches() {
        let execs: Vec<CpuExecutor> = (0..3).map(|_| CpuExecutor::new(1).unwrap()).collect();
        let g = HostAllReduce { ranks: 3 };
        let mut parts: Vec<HostTensor<f32>> = (0..3)
            .map(|r| HostTensor::from_vec(&[2, 2], vec![r as f32 + 0.5; 4]).unwrap())
            .collect();
        g.all_reduce_sum(&execs, &mut parts).unwrap();
        for p in &parts {
            assert!(p.data().iter().all(|&x| x == 0.5 + 1.5 + 2.5));
        }
        let mut bad = vec![
            HostTensor::from_vec(&[4], vec![1.0; 4]).unwrap(),
            HostTensor::from_vec(&[2, 2], vec![1.0; 4]).unwrap(),
            HostTensor::from_vec(&[4], vec![1.0; 4]).unwrap(),
        ];
        assert!(matches!(
            g.all_reduce_sum(&execs, &mut bad),
            Err(RuntimeError::InvalidInput(_))
        ));
        assert!(
            bad[0].data().iter().all(|&x| x == 1.0),
            "unchanged on error"
        );
        assert!(g.all_reduce_sum(&execs[..2], &mut parts[..2]).is_err());
    }
}
