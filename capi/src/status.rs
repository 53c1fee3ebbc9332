//! Status codes, the thread-local last-error message, and the guard every entry point runs its
//! body in (no panic unwinds into C).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tpla::runtime::RuntimeError;

/// What a tpla call returns. On anything but `TPLA_STATUS_OK`, `tpla_last_error()` says why and
/// the call had no effect on the caller's memory unless its documentation says otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum tpla_status_t {
    /// Success.
    TPLA_STATUS_OK = 0,
    /// A null or misaligned pointer, a size out of range (batch past the plan's capacity, a
    /// zero count), overlapping buffers, or contents that fail a host-side check (a page id
    /// outside the pool, a slot repeated).
    TPLA_STATUS_INVALID_ARGUMENT = 1,
    /// The backend cannot run here (no CUDA driver, no such device, no NVRTC).
    TPLA_STATUS_UNAVAILABLE = 2,
    /// The CUDA driver reported an error (launch, copy, out of memory).
    TPLA_STATUS_CUDA_ERROR = 3,
    /// The kernels cannot be built for these sizes (e.g. a head or latent width the kernels do
    /// not support).
    TPLA_STATUS_UNSUPPORTED = 4,
    /// A bug in tpla (an internal panic, caught at the boundary). The plan should be destroyed.
    TPLA_STATUS_INTERNAL = 5,
}

pub use tpla_status_t::*;

/// An error on its way to C: the status and the message `tpla_last_error` returns.
#[derive(Debug)]
pub struct Error {
    pub status: tpla_status_t,
    pub message: String,
}

impl Error {
    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error {
            status: TPLA_STATUS_INVALID_ARGUMENT,
            message: message.into(),
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::InvalidInput(_)
            | RuntimeError::LengthPastCache { .. }
            | RuntimeError::Launch(_) => TPLA_STATUS_INVALID_ARGUMENT,
            RuntimeError::BackendUnavailable { .. } => TPLA_STATUS_UNAVAILABLE,
            RuntimeError::Device(_) | RuntimeError::Collective { .. } => TPLA_STATUS_CUDA_ERROR,
            RuntimeError::Ir(_) => TPLA_STATUS_UNSUPPORTED,
        };
        Error {
            status,
            message: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL is cut there rather than lost.
    let cut = message.split('\0').next().unwrap_or_default();
    let c = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last tpla call made on this thread: empty after a success, else why the
/// call failed. The pointer stays valid until the next tpla call on this thread.
#[no_mangle]
pub extern "C" fn tpla_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

/// Runs an entry point's body: a panic becomes `TPLA_STATUS_INTERNAL`, an error its status; the
/// last-error message is set either way (empty on success).
pub fn guard(body: impl FnOnce() -> Result<(), Error>) -> tpla_status_t {
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(Error {
            status: TPLA_STATUS_INTERNAL,
            message: format!("internal error (panic): {}", panic_message(&*payload)),
        })
    });
    match result {
        Ok(()) => {
            set_last_error("");
            TPLA_STATUS_OK
        }
        Err(e) => {
            set_last_error(&e.message);
            e.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: `tpla_last_error` returns a NUL-terminated string valid until the next call.
        unsafe { CStr::from_ptr(tpla_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_internal_with_its_message_and_a_success_clears_it() {
        let s = guard(|| panic!("boom {}", 7));
        assert_eq!(s, TPLA_STATUS_INTERNAL);
        assert!(last().contains("boom 7"), "{}", last());
        assert_eq!(guard(|| Ok(())), TPLA_STATUS_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn errors_map_to_their_status_and_a_nul_cuts_the_message() {
        let s = guard(|| Err(RuntimeError::Device("out of memory\0hidden".into()).into()));
        assert_eq!(s, TPLA_STATUS_CUDA_ERROR);
        assert_eq!(last(), "device error: out of memory");
        let unavailable = RuntimeError::BackendUnavailable {
            backend: "cuda".into(),
            reason: "no driver".into(),
        };
        assert_eq!(guard(|| Err(unavailable.into())), TPLA_STATUS_UNAVAILABLE);
        assert_eq!(
            guard(|| Err(Error::invalid("bad"))),
            TPLA_STATUS_INVALID_ARGUMENT
        );
        assert_eq!(last(), "bad");
    }
}
