//! tpla-runtime: executes DSL kernels (CPU JIT, CUDA), holds the paged latent cache, and carries
//! the f64 reference every backend is checked against.

pub mod collective;
pub mod cpu_exec;
pub mod cuda;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod paged;
pub mod reference;
pub mod tensor;
pub mod tune;
pub mod view;

pub use collective::{AllReduce, HostAllReduce};
pub use cpu_exec::CpuExecutor;
/// The CUDA driver bindings the CUDA executor is built on (streams, graphs, device buffers), so
/// engines and tests use the very version tpla does.
pub use cudarc;
pub use error::RuntimeError;
pub use exec::{ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
pub use half;
pub use paged::HostPagedCache;
pub use tensor::{Element, HostTensor};
