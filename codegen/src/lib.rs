//! tpla-codegen: the tile IR, its validation, and the backends that lower it.
//!
//! - [`ir`]: typed tile operations with concrete tile shapes and symbolic launch-time indices.
//! - [`builder`]: what the `#[kernel]` macro's output calls to construct a [`ir::Kernel`].
//! - [`validate`]: structural checks; [`launch`]: checks of launch-time shapes.
//! - [`cpu`]: Cranelift JIT backend. [`cuda`]: CUDA C++ emitter for NVRTC, steered by the
//!   [`schedule`] knobs.
//! - [`visit`]: walkers over the IR's statements and operands.
//!
//! This crate links no CUDA library.

pub mod builder;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod dump;
pub mod error;
pub mod ir;
pub mod kv_format;
pub mod launch;
pub mod ops;
pub mod printer;
pub mod schedule;
pub mod shape;
pub mod validate;
pub mod visit;

pub use builder::KernelBuilder;
pub use config::{Config, KernelDef, TuneParam};
pub use error::IrError;
