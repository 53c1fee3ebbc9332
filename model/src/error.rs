//! Typed errors of the model layer: loading, reparameterisation, sharding, conversion, accuracy.
//!
//! Every variant names the tensor or the value at fault, so a CLI can print it as is.

use thiserror::Error;

/// Errors raised by [`crate`]. No function of the module panics on bad input.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A tensor the preset needs is not in the checkpoint.
    #[error("checkpoint is missing tensor `{name}`")]
    MissingTensor {
        /// Full tensor name, e.g. `model.layers.0.self_attn.kv_b_proj.weight`.
        name: String,
    },
    /// A tensor has a shape other than the preset implies.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape {
        /// Full tensor name.
        name: String,
        /// Shape the preset implies.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A tensor has a dtype the loader does not convert (only bf16, f16, f32, f64).
    #[error("tensor `{name}` has unsupported dtype {dtype}; expected bf16, f16, f32 or f64")]
    UnsupportedDtype {
        /// Full tensor name.
        name: String,
        /// Dtype as the file names it.
        dtype: String,
    },
    /// The checkpoint does not fit the preset (e.g. it has `q_a_proj` but the preset has no q_lora).
    #[error("checkpoint does not match preset `{preset}`: {detail}")]
    PresetMismatch {
        /// Preset name.
        preset: String,
        /// What differs, naming the tensor.
        detail: String,
    },
    /// Unknown preset name.
    #[error("unknown preset `{0}` (expected deepseek-v3, kimi-k2, deepseek-v2-lite)")]
    UnknownPreset(String),
    /// Unknown transform name.
    #[error("unknown transform `{0}` (expected none, hadamard, pca)")]
    UnknownTransform(String),
    /// PCA needs at least as many calibration samples as latent dims.
    #[error("calibration set `{source_name}` has {samples} samples, fewer than the {dims} latent dims PCA needs")]
    TooFewCalibrationSamples {
        /// Where the samples came from (file or tensor name).
        source_name: String,
        /// Samples given.
        samples: usize,
        /// Latent dims (kv_lora_rank).
        dims: usize,
    },
    /// The PCA transform needs a calibration set and none was given.
    #[error("transform `pca` of a --checkpoint needs a calibration file (--calib FILE); without --checkpoint the synthetic calibration stream is used")]
    MissingCalibration,
    /// g latent groups must divide the latent width.
    #[error("groups g = {groups} does not divide the latent width {latent}")]
    GroupsNotDividingLatent {
        /// g.
        groups: usize,
        /// kv_lora_rank.
        latent: usize,
    },
    /// g latent groups must divide the device count k.
    #[error("groups g = {groups} does not divide the device count k = {devices}")]
    GroupsNotDividingDevices {
        /// g.
        groups: usize,
        /// k.
        devices: usize,
    },
    /// The k/g devices of a group must split the heads evenly.
    #[error("{shards} head shards per group do not divide {heads} heads")]
    ShardsNotDividingHeads {
        /// k/g.
        shards: usize,
        /// Heads of the preset.
        heads: usize,
    },
    /// A size argument is zero or otherwise out of range.
    #[error("invalid value for `{name}`: {detail}")]
    InvalidValue {
        /// Argument name.
        name: &'static str,
        /// Why it is rejected.
        detail: String,
    },
    /// A user-given size is above what the tool can hold; names the flag and the limit.
    #[error("{flag} {value} is above the limit {limit}: {detail}")]
    TooLarge {
        /// The flag (`--devices`, `--decode`, ...).
        flag: &'static str,
        /// The value given.
        value: usize,
        /// The largest accepted value.
        limit: usize,
        /// Why the limit exists.
        detail: String,
    },
    /// The work would need more memory than the machine has available.
    #[error("{what} needs about {need_mib} MiB of memory, more than the {avail_mib} MiB available; {hint}")]
    OutOfMemory {
        /// What was asked for.
        what: String,
        /// Estimated need, MiB.
        need_mib: u64,
        /// Available, MiB.
        avail_mib: u64,
        /// Which flags to lower.
        hint: String,
    },
    /// An output path cannot be written (checked before the work).
    #[error("cannot write output `{path}`: {detail}")]
    OutputPath {
        /// The path given.
        path: String,
        /// What is wrong (a directory, missing parent, not empty, ...).
        detail: String,
    },
    /// The Hadamard transform needs a power-of-two width.
    #[error("Hadamard width {0} is not a power of two")]
    NotPowerOfTwo(usize),
    /// The eigendecomposition did not converge.
    #[error("eigendecomposition of the {dims}x{dims} calibration moment failed to converge")]
    Eigen {
        /// Matrix size.
        dims: usize,
    },
    /// Safetensors parse/serialise error, with the file.
    #[error("safetensors error in `{path}`: {detail}")]
    Safetensors {
        /// File path.
        path: String,
        /// Library message.
        detail: String,
    },
    /// File system error, with the path.
    #[error("I/O error on `{path}`: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// JSON error (manifest or report).
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// PNG plotting error.
    #[error("plot error: {0}")]
    Plot(String),
}

/// Result alias of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
