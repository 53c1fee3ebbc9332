//! NCCL all-reduce across the GPUs of one process (one [`CudaExecutor`] per rank).

use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::safe::{group_end, group_start, Comm, ReduceOp};

use super::device::{catch, CudaExecutor, CudaTensor};
use crate::collective::{check_group, AllReduce};
use crate::RuntimeError;

/// An NCCL communicator per rank, each bound to its executor's stream (`ncclCommInitAll` over
/// the executors' devices, in rank order). Collectives are queued on those streams, after the
/// work already queued there, like kernel launches.
pub struct NcclGroup {
    comms: Vec<Comm>,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclGroup({} ranks)", self.comms.len())
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> RuntimeError {
    RuntimeError::Device(format!("NCCL {what}: {e:?}"))
}

impl NcclGroup {
    /// A group over `execs` (rank `r` = `execs[r]`); they must be on distinct devices. A missing
    /// libnccl or a failed initialisation is a typed error, never a panic.
    pub fn new(execs: &[CudaExecutor]) -> Result<Self, RuntimeError> {
        if execs.len() < 2 {
            return Err(RuntimeError::InvalidInput(format!(
                "an NCCL group needs at least 2 executors, got {}",
                execs.len()
            )));
        }
        let mut ordinals: Vec<usize> = execs.iter().map(|e| e.info().ordinal).collect();
        ordinals.sort_unstable();
        ordinals.dedup();
        if ordinals.len() != execs.len() {
            return Err(RuntimeError::InvalidInput(
                "the executors of an NCCL group must be on distinct devices".into(),
            ));
        }
        let streams: Vec<Arc<CudaStream>> = execs.iter().map(|e| e.stream().clone()).collect();
        // cudarc panics when libnccl cannot be loaded: report that as the backend being absent.
        let comms = catch("loading libnccl", || Comm::from_devices(streams))
            .map_err(|e| match e {
                RuntimeError::BackendUnavailable { reason, .. } => {
                    RuntimeError::BackendUnavailable {
                        backend: "nccl".into(),
                        reason,
                    }
                }
                other => other,
            })?
            .map_err(|e| nccl_err("ncclCommInitAll", e))?;
        Ok(NcclGroup { comms })
    }
}

impl AllReduce<CudaExecutor> for NcclGroup {
    fn ranks(&self) -> usize {
        self.comms.len()
    }

    fn all_reduce_sum(
        &self,
        execs: &[CudaExecutor],
        parts: &mut [CudaTensor<f32>],
    ) -> Result<(), RuntimeError> {
        check_group(
            self.comms.len(),
            execs.len(),
            parts.iter().map(|p| p.shape().to_vec()),
        )?;
        group_start().map_err(|e| nccl_err("group start", e))?;
        let mut result = Ok(());
        for (comm, part) in self.comms.iter().zip(parts.iter_mut()) {
            let Some(mut view) = part.f32_view_mut() else {
                result = Err(RuntimeError::Device(
                    "a tensor smaller than its shape".into(),
                ));
                break;
            };
            if let Err(e) = comm.all_reduce_in_place(&mut view, &ReduceOp::Sum) {
                result = Err(nccl_err("all-reduce", e));
                break;
            }
        }
        // The group is always closed, also after a failed enqueue.
        let end = group_end().map_err(|e| nccl_err("group end", e));
        result.and(end.map(|_| ()))
    }
}
