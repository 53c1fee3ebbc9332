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
use tpla_kernels::{cast_bf16, head_proj, widen_f32};
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

    /// `x` `[batch, heads, in]` in bf16 times the per-head matrices: `[batch, heads, out]`.
    /// cuBLAS reads `x` as it is (no cast kernel: its producer wrote bf16); the DSL kernel,
    /// which takes f32, gets it widened (exact).
    pub(crate) fn apply_bf16(
        &self,
        exec: &X,
        x: &X::Tensor<bf16>,
        batch: usize,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        let mut y = out_buf(exec, &[batch, self.shape[0], self.shape[2]], self.poison)?;
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Cublas(blas) => cublas_gemm::<X, f32>(blas, x, &self.w, &mut y)?,
            _ => {
                let cols = self.shape[1];
                let widen = widen_f32.default_config(&[("COLS", cols as i64)])?;
                let mut xf = exec.alloc::<f32>(&[batch, self.shape[0], cols])?;
                widen_f32::launch(exec, &widen, x, &mut xf)?;
                head_proj::launch(exec, &self.cfg, &xf, &self.w, &mut y)?;
            }
        }
        Ok(y)
    }

    /// [`Self::apply`] with the product rounded to bf16 (the input of the next bf16 gemm):
    /// cuBLAS writes bf16 itself (no cast kernel after it), the DSL path casts its f32 result.
    pub(crate) fn apply_to_bf16(
        &self,
        exec: &X,
        x: &X::Tensor<f32>,
        batch: usize,
    ) -> Result<X::Tensor<bf16>, RuntimeError> {
        let shape = [batch, self.shape[0], self.shape[2]];
        let mut y = out_buf_bf16(exec, &shape, self.poison)?;
        match (&self.engine, &self.cast) {
            #[cfg(feature = "cuda")]
            (Engine::Cublas(blas), Some(cast)) => {
                let mut xb = exec.alloc::<bf16>(&[batch, self.shape[0], self.shape[1]])?;
                cast_bf16::launch(exec, cast, x, &mut xb)?;
                cublas_gemm::<X, bf16>(blas, &xb, &self.w, &mut y)?;
                drop(xb);
            }
            _ => {
                let yf = self.apply(exec, x, batch)?;
                let round = cast_bf16.default_config(&[("COLS", self.shape[2] as i64)])?;
                cast_bf16::launch(exec, &round, &yf, &mut y)?;
            }
        }
        Ok(y)
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
                cublas_gemm::<X, f32>(blas, &xb, &self.w, &mut y)?;
                // `xb` must live until the gemm has read it: the executor's stream orders the
                // free after the gemm (cudarc frees stream-ordered).
                drop(xb);
            }
            _ => head_proj::launch(exec, &self.cfg, x, &self.w, &mut y)?,
        }
        Ok(y)
    }
}

/// `y = x · w` per head on cuBLAS (`x`, `w` bf16; `y` f32 or bf16), queued on the stream.
#[cfg(feature = "cuda")]
fn cublas_gemm<X: Executor, T: tpla_runtime::Element>(
    blas: &tpla_runtime::cuda::blas::Cublas,
    x: &X::Tensor<bf16>,
    w: &X::Tensor<bf16>,
    y: &mut X::Tensor<T>,
) -> Result<(), RuntimeError> {
    let (xa, wa) = (X::tensor_arg(x), X::tensor_arg(w));
    let ya = X::tensor_arg_mut(y);
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
    Ok(())
}
