//! The FP8 latent cache: the same [`latent_decode`] and [`append_rows`] kernels built with the
//! schedule knob `KV_FP8 = lat`, over a pool whose rows are FP8 (`lat` e4m3 bytes, one f32 scale
//! per 128 columns, bf16 RoPE: 656 bytes for MLA instead of 1152; see
//! [`tpla_codegen::kv_format`]).
//!
//! The pool is an ordinary bf16 paged cache of any executor used as a byte *carrier*: its rows
//! have [`fp8_carrier_row`] bf16 elements, whose bytes are the FP8 rows (allocate, upload and
//! grow it as any cache; fill it with [`write_fp8_token`] or [`append_rows_fp8`]).

use tpla_codegen::kv_format::{dequantise_row, fp8_row_bytes, quantise_row};
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostPagedCache, KernelArg, RuntimeError};

use crate::ops::DecodeParams;
use crate::{append_rows, combine_splits, latent_decode};

/// bf16 elements per carrier row holding one FP8 row of `lat + rope` columns.
pub fn fp8_carrier_row(lat: usize, rope: usize) -> usize {
    fp8_row_bytes(lat, lat + rope) / 2
}

/// `values` (`lat + rope` columns) quantised with the FP8 rule, as the bf16 carrier elements
/// of one pool row ([`fp8_carrier_row`] of them).
pub fn fp8_carrier_values(values: &[f32], lat: usize) -> Vec<bf16> {
    quantise_row(values, lat)
        .chunks_exact(2)
        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

fn bytes_of(row: &[bf16]) -> Vec<u8> {
    row.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}

/// Quantises `values` (`lat + rope` columns) with the FP8 rule and writes them as token `t` of
/// sequence `b` of a host carrier pool (rows of [`fp8_carrier_row`]).
pub fn write_fp8_token(
    cache: &mut HostPagedCache<bf16>,
    b: usize,
    t: usize,
    values: &[f32],
    lat: usize,
) -> Result<(), RuntimeError> {
    if lat > values.len() || fp8_row_bytes(lat, values.len()) != cache.row() * 2 {
        return Err(RuntimeError::InvalidInput(format!(
            "FP8 row of {} columns ({lat} quantised) does not fit carrier rows of {} bf16",
            values.len(),
            cache.row()
        )));
    }
    cache.write_token(b, t, &fp8_carrier_values(values, lat))
}

/// The `lat + rope` columns a kernel reads from token `t` of sequence `b` of a host carrier pool
/// (dequantised).
pub fn read_fp8_token(
    cache: &HostPagedCache<bf16>,
    b: usize,
    t: usize,
    lat: usize,
    rope: usize,
) -> Result<Vec<f32>, RuntimeError> {
    let row = cache.token(b, t)?;
    if row.len() != fp8_carrier_row(lat, rope) {
        return Err(RuntimeError::InvalidInput(format!(
            "carrier rows of {} bf16 do not hold FP8 rows of {lat} + {rope} columns",
            row.len()
        )));
    }
    Ok(dequantise_row(&bytes_of(row), lat, lat + rope))
}

/// One [`latent_decode`] launch (`out` / `lse` the split partials, as the typed launcher takes
/// them), reading `cache` as an FP8 carrier pool when `cfg` sets `KV_FP8` (its `LAT` and `ROPE`
/// give the row) and as bf16 rows otherwise.
pub fn launch_decode<X: Executor>(
    exec: &X,
    cfg: &Config,
    q: &X::Tensor<bf16>,
    cache: &X::Paged<bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
    scale: f32,
) -> Result<(), RuntimeError> {
    let Some(lat) = cfg.try_get("KV_FP8").filter(|&v| v > 0) else {
        return latent_decode::launch(exec, cfg, q, cache, out, lse, scale);
    };
    let row = cfg.get("LAT")? + cfg.get("ROPE")?;
    let KernelArg::Paged(c) = X::paged_arg(cache) else {
        unreachable!("a paged cache argument")
    };
    let args = [
        X::tensor_arg(q),
        KernelArg::Paged(c.fp8_view(lat as usize, row as usize)?),
        X::tensor_arg_mut(out),
        X::tensor_arg_mut(lse),
        KernelArg::F32(scale),
    ];
    exec.launch(&latent_decode, cfg, &args)
}

/// [`crate::ops::decode_attention`] over an FP8 carrier pool: `out` `[batch, rows, lat]` and
/// `lse` `[batch, rows]`. The decode config is `p.decode_config()` with `KV_FP8 = lat` and head
/// blocks of at most 64 rows ([`DecodeParams::set_fp8_cache`]).
pub fn decode_attention_fp8<X: Executor>(
    exec: &X,
    p: &DecodeParams,
    q: &X::Tensor<bf16>,
    cache: &X::Paged<bf16>,
    out: &mut X::Tensor<f32>,
    lse: &mut X::Tensor<f32>,
) -> Result<(), RuntimeError> {
    p.validate()?;
    let mut fp8 = p.clone();
    fp8.set_fp8_cache();
    let cfg = fp8.decode_config();
    let (b, h, lat) = (p.batch, p.rows(), p.lat);
    let launch = |part: &mut X::Tensor<f32>, part_lse: &mut X::Tensor<f32>| {
        launch_decode(exec, &cfg, q, cache, part, part_lse, p.scale)
    };
    if p.splits > 1 {
        let mut part = exec.alloc::<f32>(&[p.splits, b, h, lat])?;
        let mut part_lse = exec.alloc::<f32>(&[p.splits, b, h])?;
        launch(&mut part, &mut part_lse)?;
        return combine_splits::launch(exec, &p.combine_config(), &part, &part_lse, out, lse);
    }
    // One split: the partial is the result; view out / lse with a leading split axis.
    X::reshape(out, &[1, b, h, lat])?;
    if let Err(e) = X::reshape(lse, &[1, b, h]) {
        X::reshape(out, &[b, h, lat])?;
        return Err(e);
    }
    let r = launch(out, lse);
    X::reshape(out, &[b, h, lat])?;
    X::reshape(lse, &[b, h])?;
    r
}

/// [`append_rows`] into an FP8 carrier pool: `rows` `[batch, new_tokens, lat + rope]` (bf16)
/// quantised into token `seq_lens[b] − new_tokens + j` (the caller has grown the lengths).
/// `config` holds the tune values (`BLOCK_T`); `ROW` and `KV_FP8` are filled in.
pub fn append_rows_fp8<X: Executor>(
    exec: &X,
    config: &Config,
    rows: &X::Tensor<bf16>,
    cache: &mut X::Paged<bf16>,
    lat: usize,
    rope: usize,
) -> Result<(), RuntimeError> {
    let row = lat + rope;
    let mut cfg = append_rows.default_config(&[("ROW", row as i64)])?;
    for (k, v) in config.iter() {
        cfg = cfg.with(k, v);
    }
    let cfg = cfg.with("ROW", row as i64).with("KV_FP8", lat as i64);
    let KernelArg::Paged(c) = X::paged_arg_mut(cache) else {
        unreachable!("a paged cache argument")
    };
    let args = [X::tensor_arg(rows), KernelArg::Paged(c.fp8_view(lat, row)?)];
    exec.launch(&append_rows, &cfg, &args)
}
