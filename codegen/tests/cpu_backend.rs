//! CPU backend tests: small kernels built with `KernelBuilder`, JIT-compiled, run program by
//! program on host buffers and compared with straightforward Rust.

#![allow(clippy::needless_range_loop)]

#[path = "cpu_backend/helpers.rs"]
mod helpers;

#[path = "cpu_backend/control.rs"]
mod control;
#[path = "cpu_backend/elementwise.rs"]
mod elementwise;
#[path = "cpu_backend/gemm.rs"]
mod gemm;
#[path = "cpu_backend/paged.rs"]
mod paged;
#[path = "cpu_backend/reductions.rs"]
mod reductions;
#[path = "cpu_backend/values.rs"]
mod values;
