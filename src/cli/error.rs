//! Errors the CLI reports (message on stderr, exit status 2).

use tpla_runtime::RuntimeError;

/// Everything a `tpla` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the runtime (bad shapes, unavailable backend, launch errors...).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Bad `tpla run` inputs (missing tensor, shape, dtype, value).
    #[error(transparent)]
    Run(#[from] tpla::run::RunError),
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
    /// A size past its fixed limit (see `limits`).
    #[error("{flag} {value} is past the limit of {limit}")]
    Limit {
        /// The flag (or input) that sets the size.
        flag: String,
        /// The value given.
        value: u128,
        /// The largest accepted.
        limit: u128,
    },
    /// A run that needs more memory than the host has.
    #[error("{flags} need about {} of host memory, but {} is available ({origin}): lower them", super::limits::human(*need), super::limits::human(*available))]
    Memory {
        /// The flags (with their values) that size the run.
        flags: String,
        /// Estimated peak bytes.
        need: u128,
        /// Bytes available.
        available: u128,
        /// Where the available figure comes from.
        origin: &'static str,
    },
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
