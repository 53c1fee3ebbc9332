//! Runtime errors: every failure a caller can cause or meet, as a value.

use tpla_codegen::launch::LaunchError;
use tpla_codegen::IrError;

/// Errors from the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The kernel could not be built or compiled for this config.
    #[error(transparent)]
    Ir(#[from] IrError),
    /// The arguments do not fit the kernel; nothing ran.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// An input is malformed (shape, value, option).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A sequence length or position lies past what the paged cache holds.
    #[error("length {len} is past the cache capacity of {capacity} tokens")]
    LengthPastCache {
        /// Requested length.
        len: usize,
        /// Tokens the cache holds per sequence.
        capacity: usize,
    },
    /// A backend is unavailable (no driver, no libnvrtc, no device), with the reason.
    #[error("backend `{backend}` unavailable: {reason}")]
    BackendUnavailable {
        /// Which backend.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A device-side failure (launch, copy, out of memory), with the driver's message.
    #[error("device error: {0}")]
    Device(String),
    /// A collective over the ranks of a group failed: a rank did not join or finish within the
    /// bound, left the group, or disagreed on the run's configuration. The communicator has been
    /// aborted (nothing of it is left running); the group must be formed again.
    #[error("collective failed on rank {rank} of {world}: {detail}")]
    Collective {
        /// This process's rank.
        rank: usize,
        /// Ranks in the group.
        world: usize,
        /// What happened, and within which bound.
        detail: String,
    },
}
