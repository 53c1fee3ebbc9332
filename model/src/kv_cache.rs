//! The KV-cache storage formats the accuracy harness evaluates (issue 11 point 2): what a decode
//! kernel reads back from a cache row, so that TPLA's error and the cache format's error are
//! measured on the same layer, tokens and queries and shown side by side.
//!
//! The harness's stored row is what a converted checkpoint caches: the rotated latent times its
//! norm factor (exact RMS, or the shard's corrected local RMS under TPLA), with γ folded into the
//! up-projections, followed by the RoPE key. The formats:
//! - [`KvCache::F64`]: exact (the harness's original rows);
//! - [`KvCache::Bf16`]: latent and RoPE key rounded to bf16 (the kernels' cache today);
//! - [`KvCache::Fp8`]: the latent in e4m3 with one f32 scale per token per 128 columns, the RoPE
//!   key in bf16: `tpla_codegen::kv_format`'s rule, bit for bit the one both backends use. A TPLA
//!   shard stores its own slice, whose scale groups are the full row's (a shard narrower than
//!   128 columns cannot hold the format, so such `g` get no FP8 rows).
//!
//! Queries stay f64 so that only the cache's rounding is measured.

use serde::{Deserialize, Serialize};
use tpla_codegen::kv_format::{dequantise_row, quantise_row, round_bf16, FP8_GROUP};

/// How the cache stores the latent and the RoPE key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvCache {
    /// Exact f64 values.
    #[default]
    F64,
    /// bf16 latent and RoPE key.
    Bf16,
    /// e4m3 latent with per-token, per-128-column f32 scales; bf16 RoPE key.
    Fp8,
}

impl KvCache {
    /// Spelling in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KvCache::F64 => "f64",
            KvCache::Bf16 => "bf16",
            KvCache::Fp8 => "fp8",
        }
    }

    /// The format named `s` (`f64`, `bf16`, `fp8`), if any.
    pub fn parse(s: &str) -> Option<Self> {
        [KvCache::F64, KvCache::Bf16, KvCache::Fp8]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// Whether a latent slice of `width` columns can be stored in this format.
    pub fn holds_width(self, width: usize) -> bool {
        self != KvCache::Fp8 || (width > 0 && width.is_multiple_of(FP8_GROUP))
    }

    /// The latent slice `x` as a kernel reads it back from the cache.
    pub fn read_back_latent(self, x: &[f64]) -> Vec<f64> {
        match self {
            KvCache::F64 => x.to_vec(),
            KvCache::Bf16 => x.iter().map(|&v| round_bf16(v as f32) as f64).collect(),
            KvCache::Fp8 => {
                let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let bytes = quantise_row(&xf, x.len());
                dequantise_row(&bytes, x.len(), x.len())
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
        }
    }

    /// The RoPE key `x` as a kernel reads it back (bf16 in both quantised formats).
    pub fn read_back_rope(self, x: &[f64]) -> Vec<f64> {
        match self {
            KvCache::F64 => x.to_vec(),
            KvCache::Bf16 | KvCache::Fp8 => {
                x.iter().map(|&v| round_bf16(v as f32) as f64).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_none() {
        for k in [KvCache::F64, KvCache::Bf16, KvCache::Fp8] {
            assert_eq!(KvCache::parse(k.name()), Some(k));
        }
        assert_eq!(KvCache::parse("fp16"), None);
    }

    #[test]
    fn fp8_needs_whole_scale_groups() {
        assert!(KvCache::Fp8.holds_width(256));
        assert!(!KvCache::Fp8.holds_width(64));
        assert!(KvCache::Bf16.holds_width(64));
    }

    #[test]
    fn read_back_errors_are_those_of_the_formats() {
        let x: Vec<f64> = (0..256)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect();
        let amax = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = |y: &[f64]| {
            x.iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        assert_eq!(KvCache::F64.read_back_latent(&x), x);
        let b = err(&KvCache::Bf16.read_back_latent(&x));
        let f = err(&KvCache::Fp8.read_back_latent(&x));
        // bf16: 8 mantissa bits; e4m3: 3 bits (half an ulp at the group's top binade, plus bf16).
        assert!(b > 0.0 && b <= amax * 2f64.powi(-8), "bf16 {b}");
        assert!(f > b && f <= amax * 2f64.powi(-4) * 1.01, "fp8 {f}");
    }
}
