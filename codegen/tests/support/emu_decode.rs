//! The f64 decode reference and the emulated decode cases shared by the CUDA emulation tests
//! (`cuda_emu.rs`, `cuda_emu_seesaw.rs`). Include it after `support/samples.rs` (as `samples`)
//! and `support/emu.rs` (as `emu`): `#[path = "support/emu_decode.rs"] mod emu_decode;`.
#![allow(dead_code)]

use super::emu::*;
use super::samples::{latent_decode, DecodeParams};
use tpla_codegen::cuda::{emit, F32Gemm, Target};
use tpla_codegen::ir::*;

// ------------------------------------------------------------------------------------ decode

/// f64 reference of one split of the latent decode: `(out [lat], lse)`.
#[allow(clippy::too_many_arguments)]
pub fn decode_ref(
    q: &[f32],
    cache: &HostArg,
    b: usize,
    h: usize,
    heads: usize,
    split: usize,
    splits: usize,
    lat: usize,
    d: usize,
    bn: usize,
    scale: f32,
) -> (Vec<f64>, f64) {
    let HostArg::Paged { seq_lens, .. } = cache else {
        unreachable!()
    };
    let len = seq_lens[b] as i64;
    let per = (len + splits as i64 - 1) / splits as i64;
    let chunk = (per + bn as i64 - 1) / bn as i64 * bn as i64;
    let lo = split as i64 * chunk;
    let hi = len.min(lo + chunk);
    decode_ref_range(q, cache, b, h, heads, lo, hi, lat, d, scale)
}

/// f64 reference of the latent decode of tokens `lo..hi` of sequence `b`: `(out [lat], lse)`.
#[allow(clippy::too_many_arguments)]
pub fn decode_ref_range(
    q: &[f32],
    cache: &HostArg,
    b: usize,
    h: usize,
    heads: usize,
    lo: i64,
    hi: i64,
    lat: usize,
    d: usize,
    scale: f32,
) -> (Vec<f64>, f64) {
    let HostArg::Paged {
        data,
        block_table,
        page_size,
        pages_per_seq,
        ..
    } = cache
    else {
        unreachable!()
    };
    let kv = data.bf16s();
    let qrow = &q[(b * heads + h) * d..(b * heads + h + 1) * d];
    let mut scores = Vec::new();
    let mut rows = Vec::new();
    for t in lo..hi {
        let t = t as usize;
        let page = block_table[b * pages_per_seq + t / page_size] as usize;
        let r =
            &kv[(page * page_size + t % page_size) * d..(page * page_size + t % page_size + 1) * d];
        let s: f64 = qrow
            .iter()
            .zip(r)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            * scale as f64;
        scores.push(s);
        rows.push(r.to_vec());
    }
    if scores.is_empty() {
        return (vec![0.0; lat], f64::NEG_INFINITY);
    }
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut out = vec![0.0; lat];
    for (wt, r) in w.iter().zip(&rows) {
        for j in 0..lat {
            out[j] += wt / sum * r[j] as f64;
        }
    }
    (out, m + sum.ln())
}

thread_local! {
    static PAGE: std::cell::Cell<usize> = const { std::cell::Cell::new(16) };
}

/// Runs `f` with this thread's emulated decode cases ([`decode_case_with`]) on pages of `page`
/// tokens (16 by default): a block of fewer tokens than a page then comes from inside one.
#[allow(dead_code)]
pub fn with_page<R>(page: usize, f: impl FnOnce() -> R) -> R {
    let old = PAGE.with(|p| p.replace(page));
    let r = f();
    PAGE.with(|p| p.set(old));
    r
}

pub fn decode_case(
    cxx: &str,
    p: DecodeParams,
    target: Target,
    heads: usize,
    seq_lens: &[i32],
    splits: usize,
    seed: u64,
) {
    decode_case_with(cxx, p, &[], target, heads, seq_lens, splits, seed)
}

/// [`decode_case`] with extra emitter config values (e.g. `WG_SPLIT`).
#[allow(clippy::too_many_arguments)]
pub fn decode_case_with(
    cxx: &str,
    p: DecodeParams,
    extra: &[(&str, i64)],
    target: Target,
    heads: usize,
    seq_lens: &[i32],
    splits: usize,
    seed: u64,
) {
    let tag = format!(
        "decode_h{}_n{}_s{}_lat{}_q{}_p{}_sm{}{}_{:?}{}",
        p.block_h,
        p.block_n,
        p.stages,
        p.lat,
        p.q_bf16 as u8,
        p.p_bf16 as u8,
        target.sm.0,
        target.sm.1,
        target.f32_gemm,
        extra
            .iter()
            .map(|(n, v)| format!("_{n}{v}"))
            .collect::<String>()
    );
    let mut k = latent_decode(p).unwrap();
    k.config
        .extend(extra.iter().map(|(n, v)| (n.to_string(), *v)));
    let d = p.lat + p.rope;
    let batch = seq_lens.len();
    let mut rng = Rng::new(seed);
    let mut q = rng.vec(batch * heads * d);
    if p.q_bf16 {
        q = bf16_round(&q);
    }
    let cache = paged(&mut rng, d, seq_lens, PAGE.with(|p| p.get()), false);
    let scale = 1.0 / (d as f32).sqrt() * 4.0;
    let args = vec![
        HostArg::Tensor {
            dtype: if p.q_bf16 { DType::BF16 } else { DType::F32 },
            shape: vec![batch, heads, d],
            data: if p.q_bf16 {
                Bytes::from_bf16(&q)
            } else {
                Bytes::from_f32(&q)
            },
        },
        cache.clone(),
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads, p.lat],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads * p.lat]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads],
            data: Bytes::from_f32(&vec![f32::NAN; splits * batch * heads]),
        },
        HostArg::F32(scale),
    ];
    let src = emit(&k, target).unwrap();
    // Rounded operands (bf16 p, or the RoundBf16 fallback) loosen the tolerance.
    let rounded = p.p_bf16
        || src.f32_gemm == F32Gemm::RoundBf16
        || (!p.q_bf16 && src.f32_gemm != F32Gemm::Split);
    let tol = if rounded { 2e-2 } else { 2e-3 };
    let gpu = check_vs_cpu(cxx, &k, target, &args, tol, &tag);
    let (HostArg::Tensor { data: out, .. }, HostArg::Tensor { data: lse, .. }) = (&gpu[2], &gpu[3])
    else {
        unreachable!()
    };
    let (out, lse) = (out.f32s(), lse.f32s());
    let mut worst = 0.0f64;
    for s in 0..splits {
        for b in 0..batch {
            for h in 0..heads {
                let (o, l) = decode_ref(
                    &q, &cache, b, h, heads, s, splits, p.lat, d, p.block_n, scale,
                );
                let base = ((s * batch + b) * heads + h) * p.lat;
                for j in 0..p.lat {
                    worst = worst.max((out[base + j] as f64 - o[j]).abs());
                }
                let gl = lse[(s * batch + b) * heads + h] as f64;
                if l.is_finite() {
                    assert!(
                        (gl - l).abs() <= 1e-2 * l.abs().max(1.0),
                        "{tag}: lse[{s},{b},{h}] = {gl}, reference {l}"
                    );
                } else {
                    assert!(gl < -1e29, "{tag}: empty split lse = {gl}");
                }
            }
        }
    }
    assert!(
        worst <= tol as f64,
        "{tag}: out differs from the f64 reference by {worst} (tol {tol})"
    );
    println!("{tag}: ok (max |out - ref| = {worst:.2e})");
}

/// A multi-token decode kernel `k` (built with `SQ > 1`; `rows` = `SQ` x heads query rows of
/// `lat` + 64 columns) emulated against the CPU backend over a paged cache (page 16) with
/// `lens`, its outputs NaN-poisoned before the run; every output must be written.
#[allow(clippy::too_many_arguments)]
pub fn check_multi_token_decode(
    cxx: &str,
    k: &Kernel,
    rows: usize,
    lat: usize,
    lens: &[i32],
    splits: usize,
    seed: u64,
    tag: &str,
) {
    let (d, batch) = (lat + 64, lens.len());
    let mut rng = Rng::new(seed);
    let q = bf16_round(&rng.vec(batch * rows * d));
    let nan = |shape: Vec<usize>| HostArg::Tensor {
        dtype: DType::F32,
        data: Bytes::from_f32(&vec![f32::NAN; shape.iter().product()]),
        shape,
    };
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![batch, rows, d],
            data: Bytes::from_bf16(&q),
        },
        paged(&mut rng, d, lens, 16, false),
        nan(vec![splits, batch, rows, lat]),
        nan(vec![splits, batch, rows]),
        HostArg::F32(0.125),
    ];
    let out = check_vs_cpu(cxx, k, Target::sm90(), &args, 2e-2, tag);
    let HostArg::Tensor { data, .. } = &out[2] else {
        unreachable!()
    };
    assert!(
        data.f32s().iter().all(|x| x.is_finite()),
        "{tag}: every output written"
    );
    println!("{tag}: ok");
}

/// The library decode kernel (`tpla_kernels::latent_decode`) at latent `lat` (RoPE 64) with
/// `sq` query tokens per sequence and the config values `knobs` set after its defaults: the
/// multi-token cases [`check_multi_token_decode`] runs.
#[allow(dead_code)]
pub fn mtp_kernel(lat: i64, sq: i64, knobs: &[(&str, i64)]) -> Kernel {
    use tpla_codegen::KernelDef;
    let cfg = tpla_kernels::latent_decode
        .default_config(&[("LAT", lat), ("ROPE", 64), ("SQ", sq)])
        .unwrap();
    let cfg = knobs.iter().fold(cfg, |c, &(k, v)| c.with(k, v));
    tpla_kernels::latent_decode.build(&cfg).unwrap()
}
