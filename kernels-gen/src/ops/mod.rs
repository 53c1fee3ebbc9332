//! Multi-kernel operations built from the DSL kernels, generic over the executor.

use tpla_codegen::Config;
use tpla_runtime::{Executor, RuntimeError};

use crate::{combine_splits, latent_decode};

mod balanced;
mod split_partials;

pub use balanced::{
    choose_balanced, decode_attention_balanced, launch_schedule, schedule_probes, schedule_rounds,
    Balanced, BalancedWorkspace, BALANCED_WAVES, MAX_BALANCED_SPLITS,
};
pub use split_partials::{decode_attention_into, SplitPartials};

/// Shapes and tuning of one decode attention call.
#[derive(Clone, Debug)]
pub struct DecodeParams {
    /// Sequences.
    pub batch: usize,
    /// Query heads (of the model; the kernel's rows are `sq · heads`).
    pub heads: usize,
    /// Query tokens per sequence (1 to [`MAX_QUERY_LEN`]; MTP / speculative verify): the last `sq`
    /// tokens of each sequence, attended causally. With `sq > 1`, q, out and lse have `sq · heads`
    /// rows per sequence, row `j · heads + h` for token `j` and head `h` (a free reshape of
    /// `[batch, sq, heads, ..]`).
    pub sq: usize,
    /// Latent width of the cache rows (512 for MLA, 512/g for a TPLA shard).
    pub lat: usize,
    /// RoPE width (64 for DeepSeek).
    pub rope: usize,
    /// KV splits per sequence.
    pub splits: usize,
    /// Softmax scale (take the model's).
    pub scale: f32,
    /// Config of `latent_decode` (tune values; `LAT` and `ROPE` are filled in).
    pub decode: Config,
    /// Config of `combine_splits` (tune values; `LAT` is filled in).
    pub combine: Config,
}

impl DecodeParams {
    /// Default tune values for the given shapes.
    pub fn new(
        batch: usize,
        heads: usize,
        lat: usize,
        rope: usize,
        splits: usize,
        scale: f32,
    ) -> Self {
        use tpla_codegen::KernelDef;
        DecodeParams {
            batch,
            heads,
            sq: 1,
            lat,
            rope,
            splits,
            scale,
            decode: latent_decode
                .default_config(&[("LAT", lat as i64), ("ROPE", rope as i64)])
                .expect("latent_decode declares LAT and ROPE")
                .with("BLOCK_H", block_h_for(heads, lat)),
            combine: combine_splits
                .default_config(&[("LAT", lat as i64)])
                .expect("combine_splits declares LAT"),
        }
    }
    /// The same shapes with `sq` query tokens per sequence; `BLOCK_H` is re-chosen for the
    /// `sq · heads` rows (set tune values after this).
    pub fn with_query_len(mut self, sq: usize) -> Self {
        self.sq = sq;
        let bh = self.default_block_h();
        self.decode.set("BLOCK_H", bh);
        self
    }
    /// Makes the decode read an FP8 latent cache (`KV_FP8 = lat`, see
    /// `tpla_codegen::kv_format`), with head blocks of at most 64 rows: the FP8 row conversion
    /// has not been checked on the GPU with 128-row blocks (two warpgroups stacked along the
    /// rows), so the default stays on the geometry it was measured with.
    pub fn set_fp8_cache(&mut self) {
        self.decode.set("KV_FP8", self.lat as i64);
        let bh = self.decode.get("BLOCK_H").unwrap_or(16);
        self.decode.set("BLOCK_H", bh.min(self.default_block_h()));
    }
    /// The default `BLOCK_H` for these rows ([`block_h_for`]), at most 64 over an FP8 cache.
    fn default_block_h(&self) -> i64 {
        let bh = block_h_for(self.rows(), self.lat);
        if self.decode.get("KV_FP8").unwrap_or(0) > 0 {
            bh.min(64)
        } else {
            bh
        }
    }
    /// Query rows per sequence: `sq · heads`.
    pub fn rows(&self) -> usize {
        self.sq.saturating_mul(self.heads)
    }
    /// Checks the shapes: every size positive, `sq` at most [`MAX_QUERY_LEN`], the scale finite.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        if !(1..=MAX_QUERY_LEN).contains(&self.sq) {
            return Err(RuntimeError::InvalidInput(format!(
                "{} query tokens per sequence, expected 1 to {MAX_QUERY_LEN}",
                self.sq
            )));
        }
        for (what, v) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("latent width", self.lat),
            ("rope width", self.rope),
            ("splits", self.splits),
        ] {
            if v == 0 {
                return Err(RuntimeError::InvalidInput(format!(
                    "{what} must be at least 1"
                )));
            }
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(RuntimeError::InvalidInput(format!(
                "softmax scale {} must be finite and non-zero",
                self.scale
            )));
        }
        Ok(())
    }

    /// The decode kernel's full config: tune values plus `LAT`, `ROPE` and, for `sq > 1`, `SQ`
    /// (a single-token config leaves `SQ` out: the kernel's default, so its name and tune key are
    /// those of plain decode).
    pub fn decode_config(&self) -> Config {
        let c = self
            .decode
            .clone()
            .with("LAT", self.lat as i64)
            .with("ROPE", self.rope as i64);
        if self.sq > 1 {
            c.with("SQ", self.sq as i64)
        } else {
            c
        }
    }
    /// The decode config's KV block (`BLOCK_N`, the kernel's default 32 where unset).
    pub fn block_n(&self) -> usize {
        self.decode.get("BLOCK_N").unwrap_or(32).max(1) as usize
    }
    /// The combine kernel's full config: tune values plus `LAT`.
    pub fn combine_config(&self) -> Config {
        self.combine.clone().with("LAT", self.lat as i64)
    }
}

/// Most query tokens per sequence that [`DecodeParams::validate`] accepts (MTP and speculative
/// verify use 1 to 4).
pub const MAX_QUERY_LEN: usize = 4;

/// The `BLOCK_H` candidate that covers `heads` in as few programs as possible: every program
/// streams the whole cache of its split, so heads per program divide the bytes read. Blocks
/// above 64 rows only at latent widths up to [`TALL_BLOCK_MAX_LAT`]: a 128-row block's
/// accumulators fit two warpgroups' registers there (the TPLA shards), not at MLA's 512, where
/// the CUDA backend refuses the config.
pub fn block_h_for(heads: usize, lat: usize) -> i64 {
    let cands: Vec<i64> = latent_decode_block_h()
        .into_iter()
        .filter(|&c| c <= 64 || lat <= TALL_BLOCK_MAX_LAT)
        .collect();
    cands
        .iter()
        .copied()
        .find(|&c| c as usize >= heads)
        .unwrap_or_else(|| *cands.iter().max().unwrap_or(&16))
}

/// The widest latent at which the default decode config takes 128-row head blocks.
pub const TALL_BLOCK_MAX_LAT: usize = 256;

fn latent_decode_block_h() -> Vec<i64> {
    use tpla_codegen::KernelDef;
    latent_decode
        .tune_params()
        .iter()
        .find(|t| t.name == "BLOCK_H")
        .map(|t| {
            let mut v = t.candidates.to_vec();
            v.sort_unstable();
            v
        })
        .unwrap_or_else(|| vec![16])
}

/// Latent decode attention: split-KV partials, then the log-sum-exp combine, into `out`
/// (`[batch, heads, lat]`) and `lse` (`[batch, heads]`, natural log). With `p.sq > 1` the rows
/// are `sq · heads` (q `[batch, sq · heads, lat + rope]`, see [`DecodeParams::sq`]).
pub fn decode_attention<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    q: &X::Tensor<tpla_runtime::half::bf16>,
    cache: &X::Paged<tpla_runtime::half::bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    p.validate()?;
    if p.splits == 1 {
        return decode_unsplit(exec, p, q, cache, out, lse);
    }
    let mut ws = SplitPartials::new(exec, p)?;
    decode_attention_into(exec, p, &mut ws, q, cache, out, lse)
}

/// Merges attention states: `(parts[i], lses[i])` for `i` in `0..n` (`parts` is
/// `[n, batch, heads, lat]`, `lses` `[n, batch, heads]`, natural-log LSE) into `out`
/// (`[batch, heads, lat]`) and `lse` (`[batch, heads]`): the exact softmax merge, for split-KV,
/// cascade (shared prefix + suffix) and context-parallel attention. A state with no tokens must
/// carry a very negative finite LSE (decode writes about −6.9e29), not −∞.
pub fn merge_states<X: Executor>(
    exec: &X,
    parts: &X::Tensor<f32>,
    lses: &X::Tensor<f32>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    use tpla_codegen::KernelDef;
    let lat = match X::tensor_arg(parts).tensor_shape() {
        Some(&[_, _, _, lat]) => lat,
        s => {
            return Err(RuntimeError::InvalidInput(format!(
                "merge: states must be [n, batch, heads, lat], got {s:?}"
            )))
        }
    };
    let cfg = combine_splits.default_config(&[("LAT", lat as i64)])?;
    combine_splits::launch(exec, &cfg, parts, lses, out, lse)
}

/// One split: the decode kernel's partial output is already the normalised result, so it writes
/// `out` and `lse` directly (viewed with a leading split axis of 1) and no combine runs.
pub(super) fn decode_unsplit<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    q: &X::Tensor<tpla_runtime::half::bf16>,
    cache: &X::Paged<tpla_runtime::half::bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    let (b, h, lat) = (p.batch, p.rows(), p.lat);
    let shape_of = |a: tpla_runtime::KernelArg<'_>| {
        a.tensor_shape().map(<[usize]>::to_vec).unwrap_or_default()
    };
    // Exact shapes first: the reshape below must not accept a permuted layout.
    for (what, got, want) in [
        ("out", shape_of(X::tensor_arg(out)), vec![b, h, lat]),
        ("lse", shape_of(X::tensor_arg(lse)), vec![b, h]),
    ] {
        if got != want {
            return Err(RuntimeError::InvalidInput(format!(
                "decode: {what} has shape {got:?}, expected {want:?}"
            )));
        }
    }
    X::reshape(out, &[1, b, h, lat])?;
    if let Err(e) = X::reshape(lse, &[1, b, h]) {
        X::reshape(out, &[b, h, lat])?;
        return Err(e);
    }
    let r = latent_decode::launch(exec, &p.decode_config(), q, cache, out, lse, p.scale);
    X::reshape(out, &[b, h, lat])?;
    X::reshape(lse, &[b, h])?;
    r
}

/// Latent width of one TPLA shard: `lat / groups`, or a typed error when `groups` is zero or does
/// not divide `lat`.
pub fn shard_width(lat: usize, groups: usize) -> Result<usize, RuntimeError> {
    if groups == 0 || !lat.is_multiple_of(groups) {
        return Err(RuntimeError::InvalidInput(format!(
            "TP latent groups g = {groups} must divide the latent width {lat}"
        )));
    }
    Ok(lat / groups)
}

/// KV splits for a decode launch: the count whose grid wastes least of its last wave of
/// resident programs (time ~ waves / splits, with a 1% charge per split for the combine; ties go
/// to fewer splits), never giving a split fewer than `max(4 · BLOCK_N, 512)` tokens. The occupancy comes
/// from the executor (the driver's occupancy query on a GPU).
pub fn choose_splits<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    len: usize,
) -> Result<usize, RuntimeError> {
    p.validate()?;
    let per_unit = exec.resident_programs(&latent_decode, &p.decode_config())?;
    Ok(splits_for_occupancy(
        p,
        len,
        exec.compute_units() * per_unit,
    ))
}

/// The most KV splits a decode of `len` tokens in blocks of `block_n` is given (by
/// [`choose_splits`] and by `tpla tune`'s search): a split shorter than `max(4 · block_n, 512)`
/// tokens costs more in launch and combine than it adds in parallelism; at most 64.
pub fn max_splits_for(block_n: usize, len: usize) -> usize {
    (len / (4 * block_n.max(1)).max(512)).clamp(1, 64)
}

/// The uniform split counts a search times beside the occupancy rule's `s0` (`tpla tune`,
/// `tpla bench`): half, once, two, three and four times `s0`, each within `1..=max_s`, once
/// each, ascending. The rule counts waves of resident programs, not what a split's start, its
/// tail on the slowest unit or the combine cost on a device.
pub fn uniform_split_candidates(s0: usize, max_s: usize) -> Vec<usize> {
    let s0 = s0.max(1);
    let mut v: Vec<usize> = [s0 / 2, s0, 2 * s0, 3 * s0, 4 * s0]
        .into_iter()
        .map(|n| n.clamp(1, max_s.max(1)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The split rule of [`choose_splits`] for a known number of program slots (compute units ×
/// resident programs per unit), so a caller that launches the same config every step can query
/// the occupancy once.
pub fn splits_for_occupancy(p: &DecodeParams, len: usize, slots: usize) -> usize {
    let cfg = p.decode_config();
    let bh = cfg.get("BLOCK_H").unwrap_or(16).max(1) as usize;
    let bn = p.block_n();
    let programs = p.batch * p.rows().div_ceil(bh);
    let slots = slots.max(1);
    let max_s = max_splits_for(bn, len);
    let cost =
        |s: usize| (programs * s).div_ceil(slots) as f64 / s as f64 * (1.0 + 0.01 * s as f64);
    (1..=max_s)
        .min_by(|&x, &y| cost(x).total_cmp(&cost(y)).then(x.cmp(&y)))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::{block_h_for, DecodeParams};

    /// The default head block covers the rows in as few programs as possible, with 128-row
    /// blocks only at the shard widths (MLA's latent 512 would not fit their registers).
    #[test]
    fn split_candidates_surround_the_rule_within_the_cap() {
        use super::{max_splits_for, uniform_split_candidates};
        assert_eq!(uniform_split_candidates(4, 64), [2, 4, 8, 12, 16]);
        assert_eq!(uniform_split_candidates(1, 64), [1, 2, 3, 4]);
        assert_eq!(uniform_split_candidates(2, 4), [1, 2, 4]);
        assert_eq!(uniform_split_candidates(3, 1), [1]);
        assert_eq!(uniform_split_candidates(0, 0), [1]);
        // 32K tokens in 64-token blocks: splits of at least 512 tokens, at most 64.
        assert_eq!(max_splits_for(64, 32768), 64);
        assert_eq!(max_splits_for(64, 2048), 4);
        assert_eq!(max_splits_for(256, 4096), 4);
        assert_eq!(max_splits_for(64, 100), 1);
    }

    #[test]
    fn default_head_blocks_are_tall_only_at_the_shard_widths() {
        assert_eq!(block_h_for(16, 512), 16);
        assert_eq!(block_h_for(128, 512), 64);
        assert_eq!(block_h_for(128, 256), 128);
        assert_eq!(block_h_for(100, 128), 128);
        assert_eq!(block_h_for(64, 256), 64);
        let rows = |p: DecodeParams| p.decode.get("BLOCK_H").unwrap();
        assert_eq!(
            rows(DecodeParams::new(4, 64, 512, 64, 1, 0.1).with_query_len(2)),
            64
        );
        assert_eq!(
            rows(DecodeParams::new(4, 64, 256, 64, 1, 0.1).with_query_len(2)),
            128
        );
        // Not over an FP8 cache, before or after the query length is set.
        let mut fp8 = DecodeParams::new(4, 128, 256, 64, 1, 0.1);
        fp8.set_fp8_cache();
        assert_eq!(rows(fp8.clone()), 64);
        assert_eq!(fp8.decode.get("KV_FP8").unwrap(), 256);
        assert_eq!(rows(fp8.with_query_len(2)), 64);
    }
}
