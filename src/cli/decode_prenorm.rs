//! The hidden states between the layers of `tpla decode --form`'s timed stack: normalised on
//! each rank's executor, so the stack moves nothing through the host from layer to layer.

use tpla::layer::TpLayer;
use tpla_runtime::{AllReduce, Executor, HostTensor, RuntimeError};

/// The RMSNorm between the layers of the timed stack (no gain, eps 1e-6: the next block's input
/// norm), on each rank's executor with [`tpla_kernels::rms_norm_rows`]; untimed, like the rest
/// of the model between attention blocks.
pub(crate) struct Prenorm<X: Executor> {
    cfg: tpla_codegen::Config,
    /// A gain of ones `[D]` per layer and rank, on that rank's executor.
    ones: Vec<Vec<X::Tensor<f32>>>,
}

impl<X: Executor> Prenorm<X> {
    pub(crate) fn new<C: AllReduce<X>>(
        stack: &[TpLayer<X, C>],
        d: usize,
    ) -> Result<Self, RuntimeError> {
        use tpla_codegen::KernelDef;
        let ones = stack
            .iter()
            .map(|s| {
                s.execs()
                    .iter()
                    .map(|e| e.upload(&HostTensor::full(&[d], 1.0f32)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = tpla_kernels::rms_norm_rows.default_config(&[("COLS", d as i64)])?;
        Ok(Prenorm { cfg, ones })
    }

    /// The normalised `ys` of layer `layer`, each on its rank's executor; `next` (the next
    /// layer's executors, rank for rank) is ordered after it on the device, so the next layer
    /// may read them without the host waiting.
    pub(crate) fn apply(
        &self,
        execs: &[X],
        layer: usize,
        ys: Vec<X::Tensor<f32>>,
        next: Option<&[X]>,
    ) -> Result<Vec<X::Tensor<f32>>, RuntimeError> {
        let mut out = Vec::with_capacity(ys.len());
        for ((exec, y), g) in execs.iter().zip(&ys).zip(&self.ones[layer]) {
            let shape = X::tensor_arg(y)
                .tensor_shape()
                .map(<[usize]>::to_vec)
                .unwrap_or_default();
            let mut x = exec.alloc::<f32>(&shape)?;
            tpla_kernels::rms_norm_rows::launch(exec, &self.cfg, y, g, &mut x, 1e-6)?;
            out.push(x);
        }
        if let Some(next) = next {
            for (n, e) in next.iter().zip(execs) {
                n.order_after(e)?;
            }
        }
        Ok(out)
    }
}
