//! The exact merge of attention states (cascade, context parallel).

use tpla_codegen::KernelDef;
use tpla_kernels::combine_splits;
use tpla_runtime::view::{TensorView, ViewExecutor};
use tpla_runtime::RuntimeError;

use super::{DecodeOut, Space};

/// Merges attention states exactly: `parts` `[n, batch, heads, lat]` and `lses`
/// `[n, batch, heads]` (natural log) into `out` `[batch, heads, lat]` and `lse` `[batch, heads]`.
/// E.g. decode over a shared prefix and over each suffix (cascade), or over the context shards of
/// several devices (context parallel), merged into attention over the whole context. A state
/// with no tokens must carry a very negative finite LSE (decode writes about −6.9e29).
pub fn merge<X: ViewExecutor>(
    exec: &X,
    parts: &TensorView<'_, f32, Space<X>>,
    lses: &TensorView<'_, f32, Space<X>>,
    (out, lse): DecodeOut<'_, '_, Space<X>>,
) -> Result<(), RuntimeError> {
    let lat = match parts.shape() {
        [_, _, _, lat] => *lat,
        s => {
            return Err(RuntimeError::InvalidInput(format!(
                "merge: states must be [n, batch, heads, lat], got {s:?}"
            )))
        }
    };
    let cfg = combine_splits.default_config(&[("LAT", lat as i64)])?;
    exec.launch(
        &combine_splits,
        &cfg,
        &[parts.arg(), lses.arg(), out.arg_mut(), lse.arg_mut()],
    )
}
