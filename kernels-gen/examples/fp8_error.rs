//! Error of the FP8 latent cache beside TPLA's, on random data: prints the markdown table of
//! `bench/NOTES-fp8.md`.
//!
//! For MLA (latent 512 + RoPE 64) and decode over one sequence per seed, relative errors (L2
//! norm of the difference over the norm of the exact output) against the f64 exact-MLA output on
//! unrounded inputs: the bf16 cache, the FP8 cache (per-token per-128-column scales, the
//! format `KV_FP8` stores; and a per-tensor scale, FlashInfer's choice), TPLA with g = 2 and 4
//! shards (bf16 and FP8 caches), and the CPU JIT decode over the FP8 cache against the f64
//! reference over the same dequantised rows (the kernel's own error).
//!
//! Data: `uniform`, every value in [-1, 1); `outlier channels`, each latent column scaled by
//! `exp(N(0, 1))` (a few channels ten times the others, as trained latents have).
//!
//! Run: `cargo run -p tpla-kernels --example fp8_error [len]` (default 2048 tokens).

use rand::{Rng, SeedableRng};
use tpla_codegen::kv_format::{
    dequantise_row, e4m3_from_f32, e4m3_to_f32, quantise_row, round_bf16,
};
use tpla_kernels::fp8::{decode_attention_fp8, fp8_carrier_row, write_fp8_token};
use tpla_kernels::ops::DecodeParams;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention, rel_error, tpla_attention};
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor};

const LAT: usize = 512;
const ROPE: usize = 64;
const D: usize = LAT + ROPE;
const HEADS: usize = 16;

/// The cache rows as the FP8 format stores them (dequantised), per-token group scales.
fn fp8_rows(rows: &[f32]) -> Vec<f32> {
    rows.chunks(D)
        .flat_map(|r| dequantise_row(&quantise_row(r, LAT), LAT, D))
        .collect()
}

/// One scale for the whole latent part (`amax / 448` over every token), RoPE bf16.
fn fp8_rows_per_tensor(rows: &[f32]) -> Vec<f32> {
    let amax = rows
        .chunks(D)
        .flat_map(|r| r[..LAT].iter())
        .fold(0.0f32, |m, x| m.max(x.abs()));
    let s = if amax > 0.0 { amax / 448.0 } else { 1.0 };
    rows.chunks(D)
        .flat_map(|r| {
            let lat = r[..LAT]
                .iter()
                .map(|&x| round_bf16(e4m3_to_f32(e4m3_from_f32(x / s)) * s));
            lat.chain(r[LAT..].iter().map(|&x| round_bf16(x)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

struct Errors {
    bf16: f64,
    fp8: f64,
    fp8_tensor: f64,
    fp8_vs_bf16: f64,
    tpla: [f64; 2],
    tpla_fp8: [f64; 2],
    kernel: f64,
}

fn case(len: usize, outliers: bool, seed: u64, ex: &CpuExecutor) -> Errors {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let col_scale: Vec<f32> = (0..D)
        .map(|c| {
            if outliers && c < LAT {
                // exp(N(0, 1)) from a Box-Muller pair.
                let (u, v): (f32, f32) = (rng.gen_range(1e-6..1.0), rng.gen_range(0.0..1.0));
                ((-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()).exp()
            } else {
                1.0
            }
        })
        .collect();
    let rows: Vec<f32> = (0..len * D)
        .map(|i| rng.gen_range(-1.0f32..1.0) * col_scale[i % D])
        .collect();
    let q: Vec<f32> = (0..HEADS * D)
        .map(|_| round_bf16(rng.gen_range(-1.0f32..1.0)))
        .collect();
    let scale = 1.0 / (D as f64).sqrt();
    let (qd, exact_rows) = (f64s(&q), f64s(&rows));
    let exact = latent_attention(&qd, &exact_rows, HEADS, LAT, ROPE, scale).out;
    let bf16_rows: Vec<f32> = rows.iter().map(|&x| round_bf16(x)).collect();
    let fp8 = fp8_rows(&bf16_rows);
    let attend = |r: &[f32]| latent_attention(&qd, &f64s(r), HEADS, LAT, ROPE, scale).out;
    let (o_bf16, o_fp8) = (attend(&bf16_rows), attend(&fp8));
    let o_tensor = attend(&fp8_rows_per_tensor(&bf16_rows));
    let tpla = |r: &[f32], g| {
        rel_error(
            &tpla_attention(&qd, &f64s(r), HEADS, LAT, ROPE, scale, g),
            &exact,
        )
    };
    // The kernel: CPU JIT over the FP8 carrier pool, against the f64 decode of the same rows.
    let mut cache = HostPagedCache::<bf16>::new(1, len, 64, fp8_carrier_row(LAT, ROPE)).unwrap();
    for (t, r) in bf16_rows.chunks(D).enumerate() {
        write_fp8_token(&mut cache, 0, t, r, LAT).unwrap();
    }
    cache.set_seq_lens(&[len]).unwrap();
    let p = DecodeParams::new(1, HEADS, LAT, ROPE, 2, scale as f32);
    let qt = HostTensor::<bf16>::from_f32(&[1, HEADS, D], &q).unwrap();
    let mut out = HostTensor::<f32>::full(&[1, HEADS, LAT], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[1, HEADS], f32::NAN);
    decode_attention_fp8(ex, &p, &qt, &cache, &mut out, &mut lse).unwrap();
    Errors {
        bf16: rel_error(&o_bf16, &exact),
        fp8: rel_error(&o_fp8, &exact),
        fp8_tensor: rel_error(&o_tensor, &exact),
        fp8_vs_bf16: rel_error(&o_fp8, &o_bf16),
        tpla: [tpla(&bf16_rows, 2), tpla(&bf16_rows, 4)],
        tpla_fp8: [tpla(&fp8, 2), tpla(&fp8, 4)],
        kernel: rel_error(&f64s(out.data()), &o_fp8),
    }
}

fn main() {
    let len: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    let ex = CpuExecutor::new(0).unwrap();
    println!("MLA 512 + 64, H {HEADS}, {len} tokens, 4 seeds (worst); relative L2 errors vs f64 exact MLA\n");
    println!("| data | bf16 cache | FP8 cache | FP8 per-tensor scale | FP8 vs bf16 cache | TPLA g=2 (bf16) | TPLA g=2 (FP8) | TPLA g=4 (bf16) | TPLA g=4 (FP8) | kernel vs dequantised ref |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, outliers) in [("uniform", false), ("outlier channels", true)] {
        let all: Vec<Errors> = (0..4).map(|s| case(len, outliers, 40 + s, &ex)).collect();
        let w = |f: &dyn Fn(&Errors) -> f64| all.iter().map(f).fold(0.0f64, f64::max);
        println!(
            "| {name} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} |",
            w(&|e| e.bf16),
            w(&|e| e.fp8),
            w(&|e| e.fp8_tensor),
            w(&|e| e.fp8_vs_bf16),
            w(&|e| e.tpla[0]),
            w(&|e| e.tpla_fp8[0]),
            w(&|e| e.tpla[1]),
            w(&|e| e.tpla_fp8[1]),
            w(&|e| e.kernel),
        );
    }
}
