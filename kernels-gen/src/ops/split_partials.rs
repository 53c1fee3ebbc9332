//! The uniform split schedule's partials kept between calls ([`SplitPartials`]) and the decode
//! over them ([`decode_attention_into`]).

use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, RuntimeError};

use super::{decode_unsplit, DecodeParams};
use crate::{combine_splits, latent_decode};

/// The partial outputs `[splits, batch, rows, lat]` and log-sum-exps `[splits, batch, rows]` of
/// a uniform split-KV decode, allocated once by a caller that decodes step after step (a
/// decoder) instead of per call as [`super::decode_attention`] does: a fresh allocation of tens
/// of MB maps device memory anew whenever the memory pool has handed it back (the pool keeps
/// little once a long cache fills it), which cost 70-150 us of host time per call at Kimi-K2
/// B32 32K on an H100 (2026-12-07). Every decode rewrites the buffers before reading them, so
/// one set serves any number of calls on one stream; calls on different streams must not share
/// one.
pub struct SplitPartials<X: Executor> {
    dims: [usize; 4],
    part: X::Tensor<f32>,
    part_lse: X::Tensor<f32>,
}

impl<X: Executor> SplitPartials<X> {
    /// Allocates the partials for `p` (its `splits`, `batch`, rows and `lat`).
    pub fn new(exec: &X, p: &DecodeParams) -> Result<Self, RuntimeError> {
        p.validate()?;
        let dims = Self::dims_for(p);
        Ok(SplitPartials {
            dims,
            part: exec.alloc::<f32>(&dims)?,
            part_lse: exec.alloc::<f32>(&dims[..3])?,
        })
    }

    /// Whether these partials have the sizes a decode with `p` writes.
    pub fn fits(&self, p: &DecodeParams) -> bool {
        self.dims == Self::dims_for(p)
    }

    fn dims_for(p: &DecodeParams) -> [usize; 4] {
        [p.splits, p.batch, p.rows(), p.lat]
    }
}

/// [`super::decode_attention`] over partials the caller keeps: the decode kernel writes `ws`,
/// the combine reads it into `out` and `lse`. One split writes `out` and `lse` directly and
/// leaves `ws` untouched. Partials of other sizes: a typed error, nothing launched.
pub fn decode_attention_into<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    ws: &mut SplitPartials<X>,
    q: &X::Tensor<bf16>,
    cache: &X::Paged<bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    p.validate()?;
    if p.splits == 1 {
        return decode_unsplit(exec, p, q, cache, out, lse);
    }
    if !ws.fits(p) {
        return Err(RuntimeError::InvalidInput(format!(
            "split partials are {:?}, the decode writes {:?} (splits, batch, rows, lat)",
            ws.dims,
            SplitPartials::<X>::dims_for(p)
        )));
    }
    latent_decode::launch(
        exec,
        &p.decode_config(),
        q,
        cache,
        &mut ws.part,
        &mut ws.part_lse,
        p.scale,
    )?;
    combine_splits::launch(exec, &p.combine_config(), &ws.part, &ws.part_lse, out, lse)
}
