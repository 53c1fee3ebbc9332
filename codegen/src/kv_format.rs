//! Storage formats of a paged cache's token rows, chosen at build time by the schedule knob
//! `KV_FP8` (see [`crate::schedule`]).
//!
//! The kernel always sees bf16 rows of `row` elements; the format only says how a row is laid
//! out in the page pool:
//!
//! - [`PagedFormat::Plain`]: `row` elements of the parameter's dtype (the default).
//! - [`PagedFormat::Fp8`] with `lat` quantised columns (FlashMLA's FP8 latent cache): each token
//!   row is `lat` e4m3 bytes, then `lat / 128` f32 scales (one per group of 128 columns), zero
//!   padded to a multiple of 16 bytes, then the remaining `row − lat` columns (the RoPE part) as
//!   bf16, zero padded to a multiple of 16 bytes: every row and its RoPE part start 16-byte
//!   aligned (a 16-byte copy moves them). MLA (`576 = 512 + 64`): 512 + 16 + 128 = 656 bytes,
//!   FlashMLA's row, no padding; a g = 2 TPLA shard (`256 + 64`): 256 + 8 (+ 8 padding) + 128 =
//!   400; g = 4 (`128 + 64`): 128 + 4 (+ 12) + 128 = 272 (padding at the end instead would give
//!   the same sizes but an unaligned RoPE part). A shard's scales are its own slice of the full
//!   row's scales (groups of 128 columns never straddle a shard).
//!
//! The rule, shared by both backends and the reference ([`quantise_row`], [`dequantise_row`]):
//! a paged store quantises each row's 128-column group `x` with `amax = max |x|` (NaN
//! ignored), `scale = amax / 448` in f32 (a scale that is not positive, as for an all-zero
//! group, is 1), and byte `e4m3(x / scale)` (f32 division, round to nearest even, saturating
//! to ±448, NaN stays NaN). A paged block load reads `bf16(e4m3 · scale)`, so the kernel's bf16
//! tile and its math are unchanged.

use crate::error::IrError;

/// Columns that share one f32 scale.
pub const FP8_GROUP: usize = 128;

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// How a paged cache's token rows are stored in the page pool (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PagedFormat {
    /// `row` elements of the parameter's dtype.
    #[default]
    Plain,
    /// The first `lat` columns as e4m3 with one f32 scale per 128 columns, the rest bf16.
    Fp8 {
        /// Quantised columns: a positive multiple of [`FP8_GROUP`], at most the row.
        lat: usize,
    },
}

impl PagedFormat {
    /// Bytes of one token row of `row` elements of `dtype` in the page pool.
    pub fn row_bytes(self, dtype: crate::ir::DType, row: usize) -> usize {
        match self {
            PagedFormat::Plain => row * dtype.size_bytes(),
            PagedFormat::Fp8 { lat } => fp8_row_bytes(lat, row),
        }
    }

    /// Quantised columns (0 for [`PagedFormat::Plain`]).
    pub fn fp8_cols(self) -> usize {
        match self {
            PagedFormat::Plain => 0,
            PagedFormat::Fp8 { lat } => lat,
        }
    }
}

impl std::fmt::Display for PagedFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PagedFormat::Plain => write!(f, "plain rows"),
            PagedFormat::Fp8 { lat } => write!(f, "FP8 rows (KV_FP8 = {lat})"),
        }
    }
}

/// Bytes of an FP8 row of `row` columns whose first `lat` are quantised (16-byte padded).
pub fn fp8_row_bytes(lat: usize, row: usize) -> usize {
    (fp8_rope_offset(lat) + 2 * (row - lat)).next_multiple_of(16)
}

/// Byte offset of the bf16 RoPE part of an FP8 row with `lat` quantised columns: after the
/// e4m3 bytes and the scales, 16-byte aligned.
pub fn fp8_rope_offset(lat: usize) -> usize {
    (lat + 4 * (lat / FP8_GROUP)).next_multiple_of(16)
}

/// The `KV_FP8` knob of a kernel config for a paged parameter of `dtype` with `row` columns:
/// [`PagedFormat::Plain`] when absent or 0; `n > 0` is [`PagedFormat::Fp8`] with `n` quantised
/// columns, which needs a bf16 cache and `n` a multiple of 128 no wider than the row. Anything
/// else is an [`IrError::BadConfig`] naming the knob.
pub fn kv_fp8(
    config: &[(String, i64)],
    dtype: crate::ir::DType,
    row: usize,
) -> Result<PagedFormat, IrError> {
    let Some(v) = config.iter().find(|(n, _)| n == "KV_FP8").map(|(_, v)| *v) else {
        return Ok(PagedFormat::Plain);
    };
    let bad = |why: String| IrError::BadConfig {
        name: "KV_FP8".into(),
        value: v,
        why,
    };
    if v == 0 {
        return Ok(PagedFormat::Plain);
    }
    if v < 0 || !(v as usize).is_multiple_of(FP8_GROUP) {
        return Err(bad(format!(
            "must be 0 (bf16 rows) or the number of e4m3 columns, a positive multiple of {FP8_GROUP}"
        )));
    }
    if v as usize > row {
        return Err(bad(format!("is wider than the cache's {row}-column rows")));
    }
    if dtype != crate::ir::DType::BF16 {
        return Err(bad(format!("needs a bf16 cache, not {dtype}")));
    }
    Ok(PagedFormat::Fp8 { lat: v as usize })
}

/// The value of an e4m3 (`e4m3fn`: bias 7, no infinities, `0x7f`/`0xff` NaN) byte.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let m = b & 0x7f;
    let v = if m == 0x7f {
        f32::NAN
    } else {
        // The exponent and mantissa bits at f32's positions, rebiased by 2^(127 − 7); exact,
        // subnormals included.
        f32::from_bits((m as u32) << 20) * f32::from_bits((127 + 120) << 23)
    };
    if b & 0x80 != 0 {
        -v
    } else {
        v
    }
}

/// `x` as e4m3: round to nearest even, saturating to ±448 (infinities too), NaN to NaN.
pub fn e4m3_from_f32(x: f32) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7f;
    }
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    if a < f32::from_bits((127 - 6) << 23) {
        // Subnormal steps of 2^-9; 8 steps is the smallest normal, code 0x08.
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    let e = (bits >> 23) - (127 - 7);
    let (keep, rem) = ((bits >> 20) & 7, bits & 0xf_ffff);
    let up = rem > 0x8_0000 || (rem == 0x8_0000 && keep & 1 == 1);
    sign | ((e << 3) + keep + u32::from(up)).min(0x7e) as u8
}

/// The scale of one group: `amax / 448`, or 1 where that is not positive.
pub fn group_scale(group: &[f32]) -> f32 {
    let amax = group
        .iter()
        .fold(0.0f32, |m, x| if x.abs() > m { x.abs() } else { m });
    let s = amax / E4M3_MAX;
    if s > 0.0 {
        s
    } else {
        1.0
    }
}

/// A token row of `x.len()` columns in the FP8 format with `lat` quantised columns (the rule
/// of the module docs; the RoPE columns are rounded to bf16).
pub fn quantise_row(x: &[f32], lat: usize) -> Vec<u8> {
    let groups = lat / FP8_GROUP;
    let mut out = vec![0u8; fp8_row_bytes(lat, x.len())];
    for g in 0..groups {
        let cols = &x[g * FP8_GROUP..(g + 1) * FP8_GROUP];
        let s = group_scale(cols);
        for (j, v) in cols.iter().enumerate() {
            out[g * FP8_GROUP + j] = e4m3_from_f32(v / s);
        }
        out[lat + 4 * g..lat + 4 * g + 4].copy_from_slice(&s.to_le_bytes());
    }
    let rope = fp8_rope_offset(lat);
    for (j, v) in x[lat..].iter().enumerate() {
        out[rope + 2 * j..rope + 2 * j + 2].copy_from_slice(&bf16_bits(*v).to_le_bytes());
    }
    out
}

/// The `row` columns a kernel reads from an FP8 row with `lat` quantised columns:
/// `bf16(e4m3 · scale)`, then the bf16 RoPE columns.
pub fn dequantise_row(bytes: &[u8], lat: usize, row: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(row);
    for c in 0..lat {
        let g = lat + 4 * (c / FP8_GROUP);
        let s = f32::from_le_bytes(bytes[g..g + 4].try_into().expect("4 bytes"));
        out.push(round_bf16(e4m3_to_f32(bytes[c]) * s));
    }
    let rope = fp8_rope_offset(lat);
    for j in 0..row - lat {
        let b = u16::from_le_bytes([bytes[rope + 2 * j], bytes[rope + 2 * j + 1]]);
        out.push(f32::from_bits((b as u32) << 16));
    }
    out
}

/// `x` rounded to bf16 bits (nearest even; NaN stays NaN).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value, as f32.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::DType;

    fn cfg(v: i64) -> Vec<(String, i64)> {
        vec![("KV_FP8".to_string(), v)]
    }

    #[test]
    fn row_bytes_follow_the_format() {
        assert_eq!(fp8_row_bytes(512, 576), 656);
        assert_eq!(fp8_row_bytes(256, 320), 400);
        assert_eq!(fp8_row_bytes(128, 192), 272);
        assert_eq!(PagedFormat::Plain.row_bytes(DType::BF16, 576), 1152);
    }

    #[test]
    fn the_knob_is_validated_and_names_itself() {
        assert_eq!(kv_fp8(&[], DType::BF16, 576).unwrap(), PagedFormat::Plain);
        assert_eq!(
            kv_fp8(&cfg(0), DType::BF16, 576).unwrap(),
            PagedFormat::Plain
        );
        assert_eq!(
            kv_fp8(&cfg(512), DType::BF16, 576).unwrap(),
            PagedFormat::Fp8 { lat: 512 }
        );
        for (v, dt, row) in [
            (1, DType::BF16, 576),
            (-128, DType::BF16, 576),
            (640, DType::BF16, 576),
            (128, DType::F32, 576),
        ] {
            let e = kv_fp8(&cfg(v), dt, row).unwrap_err();
            assert!(
                matches!(&e, IrError::BadConfig { name, .. } if name == "KV_FP8"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_finite_code_round_trips_and_nan_is_nan() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if b & 0x7f == 0x7f {
                assert!(v.is_nan());
                assert_eq!(e4m3_from_f32(v) & 0x7f, 0x7f);
            } else {
                assert_eq!(e4m3_from_f32(v), b, "code {b:#x} = {v}");
            }
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn encoding_rounds_to_nearest_even_and_saturates() {
        // Midpoints between neighbouring codes go to the even code.
        for b in 0..0x7du8 {
            let (lo, hi) = (e4m3_to_f32(b), e4m3_to_f32(b + 1));
            let even = if b % 2 == 0 { b } else { b + 1 };
            assert_eq!(
                e4m3_from_f32((lo + hi) / 2.0),
                even,
                "between {lo} and {hi}"
            );
            assert_eq!(e4m3_from_f32(lo + (hi - lo) * 0.26), b);
            assert_eq!(e4m3_from_f32(lo + (hi - lo) * 0.74), b + 1);
        }
        assert_eq!(e4m3_from_f32(1000.0), 0x7e);
        assert_eq!(e4m3_from_f32(f32::NEG_INFINITY), 0xfe);
        assert_eq!(e4m3_from_f32(-460.0), 0xfe);
    }

    #[test]
    fn rows_quantise_by_group_and_dequantise() {
        let mut x: Vec<f32> = (0..320)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[128..256].iter_mut().for_each(|v| *v = 0.0);
        x[5] = 900.0;
        let bytes = quantise_row(&x, 256);
        assert_eq!(bytes.len(), 400);
        assert_eq!(fp8_rope_offset(256), 272);
        assert!(bytes[264..272].iter().all(|&b| b == 0));
        assert_eq!(&bytes[256 + 4..264], &1.0f32.to_le_bytes());
        assert_eq!(bytes[5], 0x7e);
        let y = dequantise_row(&bytes, 256, 320);
        assert_eq!(y[5], 900.0);
        assert!(y[128..256].iter().all(|&v| v == 0.0));
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 900.0 / 448.0 * 16.0, "{a} {b}");
        }
        assert_eq!(
            &y[256..],
            &x[256..].iter().map(|v| round_bf16(*v)).collect::<Vec<_>>()[..]
        );
    }

    /// `cvt.rn.f16x2.e4m3x2` modelled in software (e4m3 fields -> IEEE f16 bits), as the CUDA
    /// path on sm_89+ uses it.
    fn e4m3_to_f16_bits(b: u8) -> u16 {
        let (sign, e, m) = (
            ((b >> 7) as u16) << 15,
            ((b >> 3) & 15) as i32,
            (b & 7) as u16,
        );
        if b & 0x7f == 0x7f {
            return sign | 0x7e00;
        }
        if e == 0 {
            if m == 0 {
                return sign;
            }
            // m * 2^-9: normalise the 3-bit mantissa into an f16 normal.
            let shift = m.leading_zeros() as i32 - 13; // 0..=2 for m in 1..=7
            let exp = -6 - shift - 1 + 15;
            let frac = ((m << (shift + 1)) & 7) << 7;
            return sign | ((exp as u16) << 10) | frac;
        }
        sign | (((e - 7 + 15) as u16) << 10) | (m << 7)
    }

    /// IEEE f16 bits widened to f32 (exact).
    fn f16_bits_to_f32(h: u16) -> f32 {
        let sign = if h >> 15 == 1 { -1.0f32 } else { 1.0 };
        let (e, f) = ((h >> 10) & 31, (h & 1023) as f32);
        match e {
            0 => sign * f * 2f32.powi(-24),
            31 if f != 0.0 => f32::NAN,
            31 => sign * f32::INFINITY,
            _ => sign * (1.0 + f / 1024.0) * 2f32.powi(e as i32 - 15),
        }
    }

    #[test]
    fn the_hardware_e4m3_conversion_through_f16_is_the_software_rule() {
        for b in 0..=255u8 {
            let (sw, hw) = (e4m3_to_f32(b), f16_bits_to_f32(e4m3_to_f16_bits(b)));
            if sw.is_nan() {
                assert!(hw.is_nan(), "{b:#04x}");
            } else {
                assert_eq!(sw.to_bits(), hw.to_bits(), "{b:#04x}: {sw} vs {hw}");
                // Times any scale, one rounding to bf16: identical on both paths.
                for s in [1.0f32, 0.013_671_875, 3.7e-3, 1.0e-30] {
                    assert_eq!(round_bf16(sw * s).to_bits(), round_bf16(hw * s).to_bits());
                }
            }
        }
    }
}
