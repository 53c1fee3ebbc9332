//! Errors raised while building, validating or compiling a kernel.

use crate::ir::DType;

/// A kernel description that cannot be built or lowered.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    /// The config lacks a tune parameter or shape constant the kernel needs.
    #[error("config has no value for `{0}`")]
    MissingConfig(String),
    /// A shape constant given to `KernelDef::default_config` that the kernel does not declare.
    #[error("kernel `{kernel}` has no shape constant `{name}` (its shape constants: {})", known_list(.known))]
    UnknownConstant {
        /// The kernel.
        kernel: String,
        /// The name given.
        name: String,
        /// The kernel's shape constants.
        known: Vec<String>,
    },
    /// `TPLA_DUMP` holds a name that is not a stage.
    #[error("TPLA_DUMP={value:?}: `{item}` is not a stage; expected a comma list of {}", crate::dump::ACCEPTED.join(", "))]
    BadDump {
        /// The whole value.
        value: String,
        /// The item not understood.
        item: String,
    },
    /// A config value is not among a tune parameter's candidates, or is not positive.
    #[error("config value {name} = {value} is invalid: {why}")]
    BadConfig {
        /// Parameter name.
        name: String,
        /// Offending value.
        value: i64,
        /// Why it is rejected.
        why: String,
    },
    /// Two operands of an operation have different dtypes.
    #[error("dtype mismatch in `{op}`: {left} vs {right}")]
    DTypeMismatch {
        /// The operation.
        op: String,
        /// Left dtype.
        left: DType,
        /// Right dtype.
        right: DType,
    },
    /// Two operands of an operation have incompatible shapes.
    #[error("shape mismatch in `{op}`: {left:?} vs {right:?}")]
    ShapeMismatch {
        /// The operation.
        op: String,
        /// Left shape.
        left: Vec<usize>,
        /// Right shape.
        right: Vec<usize>,
    },
    /// A tensor was indexed with the wrong number of slices.
    #[error("`{name}` has rank {expected} but was indexed with {got} slices")]
    Rank {
        /// Tensor name.
        name: String,
        /// Its rank.
        expected: usize,
        /// Slices given.
        got: usize,
    },
    /// A tile variable was reassigned with a different type.
    #[error("reassignment changes a tile's type: declared {expected}, got {got}")]
    Reassign {
        /// Declared type.
        expected: String,
        /// New type.
        got: String,
    },
    /// Reference to a tile id that does not exist.
    #[error("unknown tile #{0}")]
    UnknownTile(usize),
    /// Reference to a parameter id that does not exist.
    #[error("unknown parameter #{0}")]
    UnknownParam(usize),
    /// Anything else that makes the kernel invalid.
    #[error("invalid kernel: {0}")]
    Invalid(String),
    /// A backend could not lower or compile the kernel.
    #[error("backend `{backend}` failed on kernel `{kernel}`: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Which kernel.
        kernel: String,
        /// What went wrong.
        message: String,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}
