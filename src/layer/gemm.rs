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

/// A tensor argument either borrowed as it was given or converted into a new one.
pub(crate) enum Held<'a, T> {
    /// The caller's tensor.
    Borrowed(&'a T),
    /// A converted copy.
    Owned(T),
}

impl<T> Held<'_, T> {
    /// The tensor.
    pub(crate) fn get(&self) -> &T {
        match self {
            Held::Borrowed(t) => t,
            Held::Owned(t) => t,
        }
    }
}

/// The element type of a projection's input or output: f32, or bf16 (what cuBLAS reads, and
/// what a bf16 producer writes so that no cast kernel runs between them). The DSL gemm reads
/// and writes f32, so there a bf16 activation is widened (exact) or its f32 result rounded.
pub(crate) trait Activation: tpla_runtime::Element {
    /// `x` (`[rows, mid, cols]`) as bf16 for cuBLAS.
    #[cfg(feature = "cuda")]
    fn as_bf16<'a, X: Executor>(
        exec: &X,
        x: &'a X::Tensor<Self>,
        shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<bf16>>, RuntimeError>;
    /// `x` (`[rows, mid, cols]`) as f32 for the DSL gemm.
    fn as_f32<'a, X: Executor>(
        exec: &X,
        x: &'a X::Tensor<Self>,
        shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<f32>>, RuntimeError>;
    /// The DSL gemm's f32 result `y` (`[rows, mid, cols]`) as this type.
    fn from_gemm<X: Executor>(
        exec: &X,
        y: X::Tensor<f32>,
        shape: [usize; 3],
        poison: bool,
    ) -> Result<X::Tensor<Self>, RuntimeError>;
    /// An output buffer (NaN-filled when `poison`), for cuBLAS to write.
    #[cfg(feature = "cuda")]
    fn out<X: Executor>(
        exec: &X,
        shape: &[usize],
        poison: bool,
    ) -> Result<X::Tensor<Self>, RuntimeError>;
}

impl Activation for f32 {
    #[cfg(feature = "cuda")]
    fn as_bf16<'a, X: Executor>(
        exec: &X,
        x: &'a X::Tensor<f32>,
        shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<bf16>>, RuntimeError> {
        let cast = cast_bf16.default_config(&[("COLS", shape[2] as i64)])?;
        let mut xb = exec.alloc::<bf16>(&shape)?;
        cast_bf16::launch(exec, &cast, x, &mut xb)?;
        Ok(Held::Owned(xb))
    }
    fn as_f32<'a, X: Executor>(
        _exec: &X,
        x: &'a X::Tensor<f32>,
        _shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<f32>>, RuntimeError> {
        Ok(Held::Borrowed(x))
    }
    fn from_gemm<X: Executor>(
        _exec: &X,
        y: X::Tensor<f32>,
        _shape: [usize; 3],
        _poison: bool,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        Ok(y)
    }
    #[cfg(feature = "cuda")]
    fn out<X: Executor>(
        exec: &X,
        shape: &[usize],
        poison: bool,
    ) -> Result<X::Tensor<f32>, RuntimeError> {
        out_buf(exec, shape, poison)
    }
}

impl Activation for bf16 {
    #[cfg(feature = "cuda")]
    fn as_bf16<'a, X: Executor>(
        _exec: &X,
        x: &'a X::Tensor<bf16>,
        _shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<bf16>>, RuntimeError> {
        Ok(Held::Borrowed(x))
    }
    fn as_f32<'a, X: Executor>(
        exec: &X,
        x: &'a X::Tensor<bf16>,
        shape: [usize; 3],
    ) -> Result<Held<'a, X::Tensor<f32>>, RuntimeError> {
        let widen = widen_f32.default_config(&[("COLS", shape[2] as i64)])?;
        let mut xf = exec.alloc::<f32>(&shape)?;
        widen_f32::launch(exec, &widen, x, &mut xf)?;
        Ok(Held::Owned(xf))
    }
    fn from_gemm<X: Executor>(
        exec: &X,
        y: X::Tensor<f32>,
        shape: [usize; 3],
        poison: bool,
    ) -> Result<X::Tensor<bf16>, RuntimeError> {
        let round = cast_bf16.default_config(&[("COLS", shape[2] as i64)])?;
        let mut yb = out_buf_bf16(exec, &shape, poison)?;
        cast_bf16::launch(exec, &round, &y, &mut yb)?;
        Ok(yb)
    }
    #[cfg(feature = "cuda")]
    fn out<X: Executor>(
        exec: &X,
        shape: &[usize],
        poison: bool,
    ) -> Result<X::Tensor<bf16>, RuntimeError> {
        out_buf_bf16(exec, shape, poison)
    }
}

/// A matrix `[heads, in, out]` on the executor with the gemm that multiplies by it.
pub(crate) struct Proj<X: Executor> {
    w: X::Tensor<bf16>,
    cfg: Config,
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
        Ok(Proj {
            w: exec.upload(w)?,
            cfg,
            engine: engine.clone(),
            shape,
            poison,
        })
    }

    /// `x` `[batch, heads, in]` (f32 or bf16) times the per-head matrices: `[batch, heads,
    /// out]` in `O` (f32, or bf16 rounded once from the f32 accumulation). On cuBLAS a bf16
    /// input is read as it is and a bf16 output written by the gemm (an f32 input is cast
    /// first); the DSL gemm widens a bf16 input and rounds a bf16 output.
    pub(crate) fn apply<I: Activation, O: Activation>(
        &self,
        exec: &X,
        x: &X::Tensor<I>,
        batch: usize,
    ) -> Result<X::Tensor<O>, RuntimeError> {
        let (h, k, n) = (self.shape[0], self.shape[1], self.shape[2]);
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Cublas(blas) => {
                let xb = I::as_bf16(exec, x, [batch, h, k])?;
                let mut y = O::out(exec, &[batch, h, n], self.poison)?;
                cublas_gemm::<X, O>(blas, xb.get(), &self.w, &mut y)?;
                // A cast input must live until the gemm has read it: the executor's stream
                // orders the free after the gemm (cudarc frees stream-ordered).
                drop(xb);
                Ok(y)
            }
            Engine::Dsl { .. } => {
                let xf = I::as_f32(exec, x, [batch, h, k])?;
                let mut y = out_buf(exec, &[batch, h, n], self.poison)?;
                head_proj::launch(exec, &self.cfg, xf.get(), &self.w, &mut y)?;
                O::from_gemm(exec, y, [batch, h, n], self.poison)
            }
        }
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
