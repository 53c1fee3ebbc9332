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

    fn crosses_devices(&self) -> bool {
        true
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

/// An NCCL unique id: rank 0 creates it and the engine hands it to every process of the group
/// (as bytes or hex).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; 128]);

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclId({}..)", &self.to_hex()[..16])
    }
}

impl NcclId {
    /// A fresh id (`ncclGetUniqueId`); a missing libnccl is a typed error.
    pub fn new() -> Result<Self, RuntimeError> {
        let id = catch("loading libnccl", cudarc::nccl::safe::Id::new)
            .map_err(|e| RuntimeError::BackendUnavailable {
                backend: "nccl".into(),
                reason: e.to_string(),
            })?
            .map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        let mut bytes = [0u8; 128];
        for (b, c) in bytes.iter_mut().zip(id.internal()) {
            *b = *c as u8;
        }
        Ok(NcclId(bytes))
    }
    /// The 128 bytes.
    pub fn bytes(&self) -> &[u8; 128] {
        &self.0
    }
    /// Lower-case hex (256 characters), e.g. to pass in an environment variable.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    /// Parses [`Self::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Result<Self, RuntimeError> {
        let s = s.trim();
        if s.len() != 256 || !s.is_ascii() {
            return Err(RuntimeError::InvalidInput(
                "an NCCL id is 256 hex characters".into(),
            ));
        }
        let mut bytes = [0u8; 128];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| {
                RuntimeError::InvalidInput("an NCCL id is 256 hex characters".into())
            })?;
        }
        Ok(NcclId(bytes))
    }
}

/// This process's rank of an NCCL group that spans processes (one GPU each), as serving engines
/// run: `ncclCommInitRank` on the executor's stream, which returns once every rank has joined.
pub struct NcclRank {
    comm: Comm,
}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclRank({}/{})",
            self.comm.rank(),
            self.comm.world_size()
        )
    }
}

impl NcclRank {
    /// Joins the group `id` as `rank` of `world` on `exec`'s device and stream.
    pub fn new(
        exec: &CudaExecutor,
        id: &NcclId,
        rank: usize,
        world: usize,
    ) -> Result<Self, RuntimeError> {
        if world == 0 || rank >= world || world > i32::MAX as usize {
            return Err(RuntimeError::InvalidInput(format!(
                "rank {rank} of a group of {world}"
            )));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(id.bytes()) {
            *c = *b as std::ffi::c_char;
        }
        let nid = cudarc::nccl::safe::Id::uninit(internal);
        let stream = exec.stream().clone();
        let comm = catch("loading libnccl", || {
            Comm::from_rank(stream, rank, world, nid)
        })
        .map_err(|e| RuntimeError::BackendUnavailable {
            backend: "nccl".into(),
            reason: e.to_string(),
        })?
        .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(NcclRank { comm })
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Sums `part` over the group in place (queued on the executor's stream).
    pub fn all_reduce_sum(&self, part: &mut CudaTensor<f32>) -> Result<(), RuntimeError> {
        let mut view = part
            .f32_view_mut()
            .ok_or_else(|| RuntimeError::Device("a tensor smaller than its shape".into()))?;
        self.comm
            .all_reduce_in_place(&mut view, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(|e| nccl_err("all-reduce", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_ids_round_trip_through_hex_and_reject_bad_text() {
        let hex: String = (0..128u32)
            .map(|i| format!("{:02x}", (i * 7 + 3) % 256))
            .collect();
        let id = NcclId::from_hex(&hex).unwrap();
        assert_eq!(id.to_hex(), hex);
        assert_eq!(id.bytes()[1], 10);
        assert!(NcclId::from_hex("abc").is_err());
        assert!(NcclId::from_hex(&"zz".repeat(128)).is_err());
    }
}
