//! NCCL all-reduce across the GPUs of one process (one [`CudaExecutor`] per rank), and one rank
//! of a group that spans processes ([`NcclRank`]), whose waits are bounded.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use cudarc::driver::{CudaStream, DevicePtrMut};
use cudarc::nccl::safe::{group_end, group_start, Comm, ReduceOp};
use cudarc::nccl::{result, sys};

use super::device::{catch, CudaExecutor, CudaTensor};
use crate::bounded::{disagreeing_ranks, fingerprint, fingerprint_rows, wait_bounded};
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

/// `catch`'s "backend unavailable" (cudarc panics when libnccl cannot be loaded) named as
/// NCCL's; other errors as they are.
fn as_nccl_unavailable(e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::BackendUnavailable { reason, .. } => RuntimeError::BackendUnavailable {
            backend: "nccl".into(),
            reason,
        },
        other => other,
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
            .map_err(as_nccl_unavailable)?
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
        self.grouped_sum(execs, parts, CudaTensor::f32_view_mut, "all-reduce")
    }

    fn all_reduce_sum_bf16(
        &self,
        execs: &[CudaExecutor],
        parts: &mut [CudaTensor<half::bf16>],
    ) -> Result<(), RuntimeError> {
        self.grouped_sum(execs, parts, CudaTensor::bf16_view_mut, "all-reduce (bf16)")
    }
}

impl NcclGroup {
    /// Every rank's part summed in place, the ranks' calls in one NCCL group; `view` gives a
    /// part's typed device view.
    fn grouped_sum<E: crate::Element, T: cudarc::nccl::safe::NcclType>(
        &self,
        execs: &[CudaExecutor],
        parts: &mut [CudaTensor<E>],
        view: for<'a> fn(&'a mut CudaTensor<E>) -> Option<cudarc::driver::CudaViewMut<'a, T>>,
        what: &str,
    ) -> Result<(), RuntimeError> {
        check_group(
            self.comms.len(),
            execs.len(),
            parts.iter().map(|p| p.shape().to_vec()),
        )?;
        group_start().map_err(|e| nccl_err("group start", e))?;
        let mut result = Ok(());
        for (comm, part) in self.comms.iter().zip(parts.iter_mut()) {
            let Some(mut v) = view(part) else {
                result = Err(RuntimeError::Device(
                    "a tensor smaller than its shape".into(),
                ));
                break;
            };
            if let Err(e) = comm.all_reduce_in_place(&mut v, &ReduceOp::Sum) {
                result = Err(nccl_err(what, e));
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

/// How long [`NcclRank`] waits, by default, for the other ranks to join and for a collective
/// to finish before it aborts its communicator and returns [`RuntimeError::Collective`].
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// An NCCL communicator handle owned by [`NcclRank`].
struct RawComm(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread provided calls on it do not overlap;
// `NcclRank` keeps it behind a mutex, and the init thread hands it over through a channel
// without using it again.
unsafe impl Send for RawComm {}

/// This process's rank of an NCCL group that spans processes (one GPU each), as serving engines
/// run: `ncclCommInitRank` on the executor's device, every wait bounded.
///
/// A peer that never joins, or dies mid-step, must not hang this rank: joining runs on a helper
/// thread and is given up after the timeout, and [`NcclRank::wait`] polls the stream and the
/// communicator's asynchronous error instead of blocking, aborts the communicator when the
/// bound passes (which ends its kernels) and returns [`RuntimeError::Collective`]. After an
/// abort every call returns that error; the group must be formed again.
pub struct NcclRank {
    comm: Mutex<Option<RawComm>>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    timeout: Duration,
}

impl std::fmt::Debug for NcclRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclRank({}/{})", self.rank, self.world)
    }
}

impl NcclRank {
    /// Joins the group `id` as `rank` of `world` on `exec`'s device and stream, waiting at most
    /// [`DEFAULT_COLLECTIVE_TIMEOUT`] for the other ranks.
    pub fn new(
        exec: &CudaExecutor,
        id: &NcclId,
        rank: usize,
        world: usize,
    ) -> Result<Self, RuntimeError> {
        Self::with_timeout(exec, id, rank, world, DEFAULT_COLLECTIVE_TIMEOUT)
    }

    /// [`Self::new`] with `timeout` as the bound of joining and of every [`Self::wait`].
    pub fn with_timeout(
        exec: &CudaExecutor,
        id: &NcclId,
        rank: usize,
        world: usize,
        timeout: Duration,
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
        let nid = sys::ncclUniqueId { internal };
        let stream = exec.stream().clone();
        let ctx = stream.context().clone();
        let (tx, rx) = mpsc::channel::<Result<RawComm, RuntimeError>>();
        // `ncclCommInitRank` returns once every rank has joined: on a thread of its own, so a
        // rank that never comes costs this one the timeout, not forever.
        std::thread::spawn(move || {
            let joined = catch("loading libnccl", || -> Result<RawComm, RuntimeError> {
                ctx.bind_to_thread().map_err(|e| {
                    super::device::driver_err("binding the device to the NCCL init thread", e)
                })?;
                let mut comm = std::mem::MaybeUninit::<sys::ncclComm_t>::uninit();
                // SAFETY: `comm` is a valid out-pointer; `nid` is a 128-byte id; world and rank
                // were checked to fit an i32 above.
                unsafe {
                    result::comm_init_rank(comm.as_mut_ptr(), world as i32, nid, rank as i32)
                        .map_err(|e| nccl_err("ncclCommInitRank", e))?;
                    Ok(RawComm(comm.assume_init()))
                }
            })
            .map_err(as_nccl_unavailable)
            .and_then(|r| r);
            if let Err(mpsc::SendError(Ok(late))) = tx.send(joined) {
                // The caller gave up waiting: nobody will use this communicator.
                // SAFETY: `late.0` came from a successful `ncclCommInitRank` and is not used
                // anywhere else.
                let _ = unsafe { result::comm_abort(late.0) };
            }
        });
        let comm = match rx.recv_timeout(timeout) {
            Ok(joined) => joined?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(RuntimeError::Collective {
                    rank,
                    world,
                    detail: format!(
                        "not every rank joined the group within {:.1} s",
                        timeout.as_secs_f64()
                    ),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(RuntimeError::Device(
                    "the NCCL init thread ended without an answer".into(),
                ))
            }
        };
        Ok(NcclRank {
            comm: Mutex::new(Some(comm)),
            stream,
            rank,
            world,
            timeout,
        })
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The bound of [`Self::wait`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn failed(&self, detail: String) -> RuntimeError {
        RuntimeError::Collective {
            rank: self.rank,
            world: self.world,
            detail,
        }
    }

    /// Sums `part` over the group in place, queued on the executor's stream (the host does not
    /// wait: [`Self::wait`] does, within the bound).
    pub fn all_reduce_sum(&self, part: &mut CudaTensor<f32>) -> Result<(), RuntimeError> {
        let guard = self
            .comm
            .lock()
            .map_err(|_| self.failed("a thread panicked holding the communicator".into()))?;
        let Some(comm) = guard.as_ref() else {
            return Err(self.failed("the communicator was aborted by an earlier failure".into()));
        };
        let mut view = part
            .f32_view_mut()
            .ok_or_else(|| RuntimeError::Device("a tensor smaller than its shape".into()))?;
        let count = view.len();
        let (ptr, _record) = view.device_ptr_mut(&self.stream);
        // SAFETY: `ptr` addresses `count` f32 of device memory on this stream's device, kept
        // alive by `part` (and ordered by `_record`) until the stream has run the collective;
        // the communicator is live (not aborted: it is still in the mutex).
        unsafe {
            result::all_reduce(
                ptr as *const std::ffi::c_void,
                ptr as *mut std::ffi::c_void,
                count,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                comm.0,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(|_| ())
        .map_err(|e| nccl_err("all-reduce", e))
    }

    /// The communicator's asynchronous error, if it has one (a peer left, a network failure).
    fn async_error(&self) -> Option<String> {
        let guard = self.comm.lock().ok()?;
        let comm = guard.as_ref()?;
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator is live (in the mutex); `state` is a valid out-pointer.
        let asked = unsafe { sys::ncclCommGetAsyncError(comm.0, &mut state) };
        match (asked, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
            | (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => None,
            (sys::ncclResult_t::ncclSuccess, e) => Some(format!("{e:?}")),
            (e, _) => Some(format!("ncclCommGetAsyncError: {e:?}")),
        }
    }

    /// Aborts the communicator (its kernels end); later calls return an error.
    fn abort(&self) {
        if let Ok(mut guard) = self.comm.lock() {
            if let Some(comm) = guard.take() {
                // SAFETY: `comm.0` is a live communicator, taken out of the mutex so it is never
                // used again.
                let _ = unsafe { result::comm_abort(comm.0) };
            }
        }
    }

    /// Waits, at most [`Self::timeout`], for the work queued on the executor's stream (the
    /// collectives with it). On a timeout or an asynchronous NCCL error the communicator is
    /// aborted and the error says which bound passed; the rank never hangs on a dead peer.
    pub fn wait(&self) -> Result<(), RuntimeError> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);
        let done = self
            .stream
            .record_event(flags)
            .map_err(|e| super::device::driver_err("recording the collective's event", e))?;
        let waited = wait_bounded(
            self.timeout,
            || {
                done.try_is_complete()
                    .map_err(|e| super::device::driver_err("polling the collective's event", e))
            },
            || self.async_error(),
        );
        waited.map_err(|stall| {
            self.abort();
            self.failed(stall.to_string())
        })
    }

    /// Checks that every rank runs the same configuration (`config`: the text of whatever
    /// must agree, e.g. shapes and the form): one bounded all-reduce of a `[world, 4]` table of
    /// hashes ([`crate::bounded::fingerprint_rows`]). A rank that disagrees is named in the
    /// error, on every rank, before any step runs.
    pub fn agree(&self, exec: &CudaExecutor, config: &str) -> Result<(), RuntimeError> {
        use crate::Executor;
        let hash = fingerprint(config.as_bytes());
        let rows = fingerprint_rows(hash, self.rank, self.world);
        let mut t = exec.upload(
            &crate::HostTensor::from_vec(&[self.world, 4], rows)
                .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
        )?;
        self.all_reduce_sum(&mut t)?;
        self.wait()?;
        let summed = exec.download(&t)?;
        let bad = disagreeing_ranks(summed.data(), self.rank, self.world);
        if bad.is_empty() {
            return Ok(());
        }
        Err(self.failed(format!(
            "rank(s) {bad:?} run another configuration than this rank's ({config})"
        )))
    }
}

/// One process's rank as the layer's collective: each call passes this rank's one part, summed
/// over the group's processes; [`AllReduce::settle`] is [`NcclRank::wait`] (bounded).
impl AllReduce<CudaExecutor> for NcclRank {
    fn ranks(&self) -> usize {
        1
    }
    fn world(&self) -> usize {
        self.world
    }
    fn first_rank(&self) -> usize {
        self.rank
    }
    fn crosses_devices(&self) -> bool {
        true
    }
    fn settle(&self, _execs: &[CudaExecutor]) -> Result<(), RuntimeError> {
        self.wait()
    }
    fn all_reduce_sum(
        &self,
        execs: &[CudaExecutor],
        parts: &mut [CudaTensor<f32>],
    ) -> Result<(), RuntimeError> {
        let [part] = parts else {
            return Err(RuntimeError::InvalidInput(format!(
                "an NCCL rank sums one part of its own, got {} ({} executors)",
                parts.len(),
                execs.len()
            )));
        };
        NcclRank::all_reduce_sum(self, part)
    }
}

impl Drop for NcclRank {
    fn drop(&mut self) {
        // Abort rather than destroy: destroying waits for outstanding work, which a dead peer
        // never lets finish.
        self.abort();
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
