//! tpla-model: TPLA reparameterisation and fidelity (issue 3), pure CPU, f64 where the math is
//! checked. Kept out of `tpla-runtime` so an engine linking the runtime builds no faer or plotters.
//!
//! - [`config`]: presets (deepseek-v3, kimi-k2, deepseek-v2-lite) and the softmax scale.
//! - [`weights`] / [`tensors`]: one MLA layer, loaded from / stored to safetensors by DeepSeek names.
//! - [`synthetic`]: seeded layers and hidden states with realistic structure.
//! - [`hadamard`], [`pca`]: the two orthogonal transforms; [`reparam`]: γ folding, rotation, m_i, μ_i.
//! - [`layer_ref`]: f64 reference decode of MLA and TPLA; [`shard`]: per-rank weights for g groups
//!   and k devices; [`pdsep`]: prefill/decode separation.
//! - [`accuracy`]: the fidelity harness behind `tpla accuracy` ([`report`]: its table, JSON, PNG);
//!   [`convert`](mod@convert): `tpla convert`.
//! - [`fsio`]: atomic output files and directories; [`limits`]: bounds on user-given sizes;
//!   [`progress`]: progress reporting of long work.

#![allow(clippy::needless_range_loop)]

pub mod accuracy;
pub mod config;
pub mod convert;
pub mod error;
pub mod fsio;
pub mod hadamard;
pub mod kv_cache;
pub mod layer_ref;
pub mod limits;
pub mod linalg;
pub mod pca;
pub mod pdsep;
pub mod plot;
pub mod progress;
pub mod reparam;
pub mod report;
pub mod shard;
pub mod synthetic;
pub mod tensors;
pub mod weights;

pub use accuracy::{run_accuracy, AccuracyOptions, AccuracyReport};
pub use config::{MlaConfig, Preset};
pub use convert::{convert, ConvertManifest, ConvertOptions};
pub use error::{ModelError, Result};
pub use progress::Progress;
pub use reparam::{Corrections, MuConvention, Transform};
pub use weights::MlaLayer;
