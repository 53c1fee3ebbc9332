//! How an engine's page pool stores a token row: bf16, or the FP8 latent cache (issue 11
//! point 2), chosen once in [`super::Capacities`].

use tpla_codegen::kv_format::{fp8_row_bytes, FP8_GROUP};
use tpla_kernels::ops::DecodeParams;
use tpla_runtime::{Executor, RuntimeError};

/// The pool's row format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// `lat + rope` bf16 columns a row.
    #[default]
    Bf16,
    /// FlashMLA's FP8 row: `lat` e4m3 bytes, one f32 scale per 128 latent columns, then the
    /// RoPE key in bf16, each part padded to 16 bytes (656 bytes for MLA's 512 + 64 instead of
    /// 1152; `tpla_codegen::kv_format` has the rule). The pool is a bf16 tensor used as a byte
    /// carrier: [`KvDtype::pool_row`] bf16 elements a row (a byte tensor of twice that many
    /// bytes a row, seen as bf16). Appends quantise; decode dequantises in the kernel. Needs
    /// `lat` a multiple of 128 (MLA 512, TPLA shards 256 and 128). A capacity choice, not a
    /// speed one: on an H200 (2026-12-07) its decode took 1.13x the bf16 cache's time at 16
    /// heads and 1.8x at 64 (the in-kernel conversion bounds it; `bench/NOTES-fp8.md`).
    Fp8,
}

impl KvDtype {
    /// Spelling on the command line and in Python (`bf16`, `fp8`).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
        }
    }

    /// The format named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [KvDtype::Bf16, KvDtype::Fp8]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// bf16 elements per pool row for rows of `lat + rope` columns; for FP8 a typed error
    /// unless `lat` is a positive multiple of 128.
    pub fn pool_row(self, lat: usize, rope: usize) -> Result<usize, RuntimeError> {
        match self {
            KvDtype::Bf16 => lat
                .checked_add(rope)
                .ok_or_else(|| RuntimeError::InvalidInput("lat + rope overflows".into())),
            KvDtype::Fp8 => {
                if lat == 0 || !lat.is_multiple_of(FP8_GROUP) {
                    return Err(RuntimeError::InvalidInput(format!(
                        "an FP8 cache needs the latent width to be a multiple of {FP8_GROUP}, \
                         got {lat}"
                    )));
                }
                Ok(fp8_row_bytes(lat, lat + rope) / 2)
            }
        }
    }

    /// Bytes a row takes in the pool.
    pub fn row_bytes(self, lat: usize, rope: usize) -> Result<usize, RuntimeError> {
        Ok(self.pool_row(lat, rope)? * 2)
    }
}

/// Sets an FP8 plan's decode config: `KV_FP8 = lat`, and on a device with the Hopper schedules
/// ([`Executor::hopper_schedules`]) the producer-fed form, where a producer warpgroup converts
/// the rows into a shared-memory ring read by the consumers. Its shape follows the heads, as
/// the H200 measured it (2026-12-04, `tpla bench`, MLA B128 x 4K and B64 x 32K,
/// `bench/NOTES-fp8.md`):
/// - up to 16 heads: 16-row `mma.sync` consumer warps, a three-stage ring of 64-token blocks
///   (`BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1`): 240 / 906 us where 64-row blocks took
///   318-328 / 1254-1256 us; converted by two producer warpgroups (`FP8_PRODUCERS=2`; H100,
///   2026-12-05: 181 / 674 us against 219 / 840 us with one, bf16 223 / 809 us in the same run,
///   `bench/results/fp8-producers-2026-12-05-h100/`);
/// - more heads: 64-row `wgmma` consumers, a two-stage ring of 32-token blocks
///   (`BLOCK_H=64,BLOCK_N=32,STAGES=2,PRODUCER=1`): 337-345 us at H64 B128 x 4K, where the
///   consumer-loaded configs took 480-700 us; one converting warpgroup (`FP8_PRODUCERS=1`: a
///   second is untimed beside the shard's one consumer warpgroup, and does not apply beside
///   latent 512's two).
///
/// A config set later (`set_decode_config`, e.g. from the tune database) replaces it.
pub(super) fn fp8_decode_schedule<X: Executor>(exec: &X, params: &mut DecodeParams, lat: usize) {
    debug_assert_eq!(params.lat, lat);
    params.set_fp8_cache();
    if exec.hopper_schedules() {
        for (knob, value) in fp8_hopper_knobs(params.heads) {
            params.decode.set(knob, value);
        }
    }
}

/// The producer-fed FP8 schedule's knobs for `heads` query rows ([`fp8_decode_schedule`]).
pub(super) fn fp8_hopper_knobs(heads: usize) -> [(&'static str, i64); 5] {
    if heads <= 16 {
        [
            ("BLOCK_H", 16),
            ("BLOCK_N", 64),
            ("STAGES", 3),
            ("PRODUCER", 1),
            ("FP8_PRODUCERS", 2),
        ]
    } else {
        [
            ("BLOCK_H", 64),
            ("BLOCK_N", 32),
            ("STAGES", 2),
            ("PRODUCER", 1),
            ("FP8_PRODUCERS", 1),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_formats() {
        assert_eq!(KvDtype::Bf16.pool_row(512, 64).unwrap(), 576);
        assert_eq!(KvDtype::Fp8.row_bytes(512, 64).unwrap(), 656);
        assert_eq!(KvDtype::Fp8.row_bytes(256, 64).unwrap(), 400);
        assert_eq!(KvDtype::Fp8.row_bytes(128, 64).unwrap(), 272);
        let e = KvDtype::Fp8.pool_row(64, 64).unwrap_err().to_string();
        assert!(e.contains("multiple of 128"), "{e}");
        assert_eq!(KvDtype::parse("fp8"), Some(KvDtype::Fp8));
        assert_eq!(KvDtype::parse("e4m3"), None);
    }

    #[test]
    fn the_hopper_fp8_schedule_follows_the_heads() {
        let h = |heads| fp8_hopper_knobs(heads)[0].1;
        assert_eq!((h(8), h(16), h(32), h(128)), (16, 16, 64, 64));
        assert!(fp8_hopper_knobs(16).contains(&("STAGES", 3)));
        assert!(fp8_hopper_knobs(64).contains(&("BLOCK_N", 32)));
        // Two converting warpgroups beside the 16-row consumers; one for the 64-row blocks
        // (which the multi-token plans switch to, resetting it).
        assert!(fp8_hopper_knobs(16).contains(&("FP8_PRODUCERS", 2)));
        assert!(fp8_hopper_knobs(64).contains(&("FP8_PRODUCERS", 1)));
    }
}
