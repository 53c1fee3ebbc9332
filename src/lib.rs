//! tpla: Tensor-Parallel Latent Attention for long-context MLA decoding.
//!
//! MLA caches one 512-d latent plus a 64-d RoPE key per token. TPLA splits the latent across
//! `g` devices, keeps every head on every device, runs attention per shard with its own softmax
//! and sums the outputs with one all-reduce (see `shared/TPLA.md`). This crate is the facade:
//!
//! - [`codegen`]: the tile IR and its backends (Cranelift CPU JIT, CUDA C++ for NVRTC);
//! - [`runtime`]: executors, the paged latent cache, the f64 reference, model reparameterisation;
//! - [`kernels`]: the kernel library written in the `#[kernel]` DSL ([`kernel`]);
//! - [`decoder`]: MLA / TPLA decode attention over per-shard caches, for engines and the CLI.

pub mod baseline;
pub mod decoder;
pub mod tp;

pub use tpla_codegen as codegen;
pub use tpla_kernels as kernels;
pub use tpla_macros::kernel;
pub use tpla_runtime as runtime;

/// What code emitted by `#[kernel]` names (`::tpla::__private::{codegen, runtime}`); not an API.
#[doc(hidden)]
pub mod __private {
    pub use tpla_codegen as codegen;
    pub use tpla_runtime as runtime;
}
