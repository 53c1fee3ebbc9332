//! tpla: Tensor-Parallel Latent Attention for long-context MLA decoding.
//!
//! MLA caches one 512-d latent plus a 64-d RoPE key per token. TPLA splits the latent across
//! `g` devices, keeps every head on every device, runs attention per shard with its own softmax
//! and sums the outputs with one all-reduce (see `shared/TPLA.md`). This crate is the facade:
//!
//! - [`codegen`]: the tile IR and its backends (Cranelift CPU JIT, CUDA C++ for NVRTC);
//! - [`runtime`]: executors, the paged latent cache, the f64 reference;
//! - [`model`]: checkpoints, Hadamard/PCA reparameterisation, sharding, the accuracy harness;
//! - [`kernels`]: the kernel library written in the `#[kernel]` DSL ([`kernel`]);
//! - [`decoder`]: MLA / TPLA decode attention over per-shard caches, for the CLI and tests;
//! - [`engine`]: decode, append and merge over memory a serving engine owns (its pool, block
//!   table, lengths, slot mapping), graph-capturable;
//! - [`run`]: decode attention on named tensors (what `tpla run` does), edge cases defined.
//!
//! Cargo features: `cuda` (the CUDA backend), `model` (the [`model`] module), `cli` (the `tpla`
//! binary; implies both; the default). With none, the decode API runs on the CPU backend.

pub mod baseline;
pub mod decoder;
pub mod engine;
#[cfg(feature = "model")]
pub mod layer;
pub mod run;
pub mod tp;

pub use tpla_codegen as codegen;
pub use tpla_kernels as kernels;
pub use tpla_macros::kernel;
#[cfg(feature = "model")]
pub use tpla_model as model;
pub use tpla_runtime as runtime;

/// What code emitted by `#[kernel]` names (`::tpla::__private::{codegen, runtime}`); not an API.
#[doc(hidden)]
pub mod __private {
    pub use tpla_codegen as codegen;
    pub use tpla_runtime as runtime;
}
