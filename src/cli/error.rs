//! Errors the CLI reports (message on stderr, exit status 2).

use tpla_runtime::RuntimeError;

/// Everything a `tpla` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the runtime (bad shapes, unavailable backend, launch errors...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A named input tensor is missing from a file.
    #[error("input file has no tensor named `{0}`")]
    MissingTensor(String),
    /// A named input tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A named input tensor has the wrong dtype.
    #[error("tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDType {
        /// Tensor name.
        name: String,
        /// Its dtype.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
    /// File input/output.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// From the model tools (convert, accuracy).
    #[error(transparent)]
    Model(#[from] tpla_model::error::ModelError),
}
