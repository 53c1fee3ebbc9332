//! The layer's dense projections (`Proj`) and which gemm runs them ([`GemmPath`]).
//!
//! On a CUDA executor the projections go through cuBLAS ([`tpla_runtime::cuda::blas`]: bf16 in,
//! f32 accumulate, on the executor's stream) after a DSL cast of the f32 activations to bf16
//! ([`tpla_kernels::cast_bf16`]); on the CPU, and wherever libcublas is missing, through the DSL kernel
//! [`head_proj`] (which casts inside). [`GemmPath::Dsl`] keeps the DSL kernel everywhere (for
//! comparisons), [`GemmPath::Cublas`] insists on cuBLAS.

#[cfg(feature = "cuda")]
use std::any::Any;
#[cfg(feature = "cuda")]
use std::sync::Arc;

use tpla_codegen::{Config, KernelDef};
#[cfg(feature = "cuda")]
use tpla_kernels::cast_bf16;
use tpla_kernels::head_proj;
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostTensor, RuntimeError};

/// Which gemm runs the layer's projections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmPath {
    /// cuBLAS on a CUDA executor when libcublas loads, else the DSL kernel.
    #[default]
    Auto,
    /// The DSL kernel `head_proj` on every executor.
    Dsl,
    /// cuBLAS; an error on an executor without it (the CPU, or no libcublas).
    Cublas,
}

/// The gemm an executor runs (one per rank, shared by its projections).
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    /// The DSL kernel; `why` says why not cuBLAS.
    Dsl { why: String },
    /// A cuBLAS handle on the executor's stream.
    #[cfg(feature = "cuda")]
    Cublas(Arc<tpla_runtime::cuda::blas::Cublas>),
}

impl Engine {
    /// The engine for `exec` under `path`.
    pub(crate) fn for_executor<X: Executor + 'static>(
        exec: &X,
        path: GemmPath,
    ) -> Result<Engine, RuntimeError> {
        if path == GemmPath::Dsl {
            return Ok(Engine::Dsl {
                why: "DSL chosen".into(),
            });
        }
        // Only a CUDA build looks at the executor.
        #[cfg(not(feature = "cuda"))]
        let _ = exec;
        #[cfg(feature = "cuda")]
        if let Some(cuda) = (exec as &dyn Any).downcast_ref::<tpla_runtime::cuda::CudaExecutor>() {
            return match tpla_runtime::cuda::blas::Cublas::new(cuda) {
                Ok(b) => Ok(Engine::Cublas(Arc::new(b))),
                Err(e @ RuntimeError::BackendUnavailable { .. }) if path == GemmPath::Auto => {
                    Ok(Engine::Dsl { why: e.to_string() })
                }
                Err(e) => Err(e),
            };
        }
        match path {
            GemmPath::Cublas => Err(RuntimeError::BackendUnavailable {
                backend: "cublas".into(),
                reason: format!("{} is not a CUDA executor", std::any::type_name::<X>()),
            }),
            _ => Ok(Engine::Dsl {
                why: "not a CUDA executor".into(),
            }),
        }
    }

    /// A one-line description (for the CLI).
    pub(crate) fn describe(&self) -> String {
        match self {
            Engine::Dsl { why } => format!("DSL head_proj ({why})"),
            #[cfg(feature = "cuda")]
            Engine::Cublas(_) => "cuBLAS (bf16 in, f32 accumulate)".into(),
        }
    }
}

/// An output buffer of `shape`: NaN-filled when `poison`, else as the executor allocates.
pub(crate) fn out_buf<X: Executor>(
    exec: &X,
    shape: &[usize],
    poison: bool,
) -> Result<X::Tensor<f32>, RuntimeError> {
    if poison {
        exec.upload(&HostTensor::full(shape, f32::NAN))
    } else {
        exec.alloc::<f32>(shape)
    }
}

/// A bf16 output buffer of `shape`: NaN-filled when `poison`, else as the executor allocates.
pub(crate) fn out_buf_bf16<X: Executor>(
    exec: &X,
    shape: &[usize],
    poison: bool,
) -> Result<X::Tensor<bf16>, RuntimeError> {
    if poison {
        exec.upload(&HostTensor::full(shape, bf16::NAN))
    } else {
        exec.alloc::<bf16>(shape)
    }
}

/// A matrix `[heads, in, out]` on the executor with the gemm that multiplies by it.
pub(crate) struct Proj<X: Executor> {
    w: X::Tensor<bf16>,
    cfg: Config,
    cast: Option<Config>,
    engine: Engine,
    shape: [usize; 3],
    poison: bool,
}

impl<X: Executor> Proj<X> {
    pub(crate) fn new(
        exec: &X,
        w: &HostTensor<bf16>,
        engine: &Engine,
        poison: bool,
    ) -> Result<Self, RuntimeError> {
        let shape = [w.shape()[0], w.shape()[1], w.shape()[2]];
        let cfg = head_proj.default_config(&[("LAT", shape[1] as i64), ("DV", shape[2] as i64)])?;
        let cast = match engine {
            Engine::Dsl { .. } => None,
            #[cfg(feature = "cuda")]
            Engine::Cublas(_) => Some(cast_bf16.default_config(&[("COLS", shape[1] as i64)])?),
        };
        Ok(Proj {
            w: exec.upload(w)?,
            cfg,
            cast,
            engine: engine.clone(),
            shape,
            poison,
        })
    }

    /// `x` `[batch, heads, in]` times the per-head matrices: `[batch, heads, out]`.
    pub(crate) fn apply(
        &self,
        exec: &X,
        x: &X::Tensor<f32>,
        batch: usize,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let mut y = out_buf(exec, &[batch, self.shape[0], self.shape[2]], self.poison)?;
        match (&self.engine, &self.cast) {
            #[cfg(feature = "cuda")]
            (Engine::Cublas(blas), Some(cast)) => {
                let mut xb = exec.alloc::<bf16>(&[batch, self.shape[0], self.shape[1]])?;
                cast_bf16::launch(exec, cast, x, &mut xb)?;
                let (xa, wa) = (X::tensor_arg(&xb), X::tensor_arg(&self.w));
                let ya = X::tensor_arg_mut(&mut y);
                let (
                    tpla_runtime::KernelArg::Tensor(xa),
                    tpla_runtime::KernelArg::Tensor(wa),
                    tpla_runtime::KernelArg::Tensor(ya),
                ) = (xa, wa, ya)
                else {
                    return Err(RuntimeError::InvalidInput(
                        "cuBLAS projection: the executor's tensors are not dense".into(),
                    ));
                };
                blas.head_gemm(xa, wa, ya)?;
                // `xb` must live until the gemm has read it: the executor's stream orders the
                // free after the gemm (cudarc frees stream-ordered).
                drop(xb);
            }
            _ => head_proj::launch(exec, &self.cfg, x, &self.w, &mut y)?,
        }
        Ok(y)
    }
}
