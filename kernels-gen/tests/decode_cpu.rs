//! CPU JIT vs the f64 reference on random shapes (property tests).

mod common;

use common::{f64s, Problem};
use proptest::prelude::*;
use tpla_codegen::KernelDef;
use tpla_kernels::latent_decode;
use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_runtime::reference::rel_error;
use tpla_runtime::{CpuExecutor, HostTensor};

fn exec() -> &'static CpuExecutor {
    static EX: std::sync::OnceLock<CpuExecutor> = std::sync::OnceLock::new();
    EX.get_or_init(|| CpuExecutor::new(2).unwrap())
}

/// Runs decode and returns the worst relative error per sequence against the rounded-input and
/// the original-input references.
fn run(p: &Problem, splits: usize, block_h: i64, block_n: i64) -> (f64, f64) {
    let mut params = DecodeParams::new(p.batch, p.heads, p.lat, p.rope, splits, p.scale);
    params.decode = params
        .decode
        .with("BLOCK_H", block_h)
        .with("BLOCK_N", block_n);
    let mut out = HostTensor::<f32>::full(&[p.batch, p.heads, p.lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[p.batch, p.heads], f32::NAN);
    decode_attention(exec(), &params, &p.q_tensor(), &p.cache, &mut out, &mut lse).unwrap();
    let (mut worst_exact, mut worst_bf16) = (0.0f64, 0.0f64);
    let hl = p.heads * p.lat;
    for b in 0..p.batch {
        let got = f64s(&out.data()[b * hl..(b + 1) * hl]);
        let exact = p.reference(b, true);
        worst_exact = worst_exact.max(rel_error(&got, &exact.out));
        worst_bf16 = worst_bf16.max(rel_error(&got, &p.reference(b, false).out));
        if p.lens[b] > 0 {
            let got_lse = f64s(&lse.data()[b * p.heads..(b + 1) * p.heads]);
            worst_exact = worst_exact.max(rel_error(&got_lse, &exact.lse));
        }
    }
    (worst_exact, worst_bf16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn jit_decode_matches_reference(
        seed in any::<u64>(),
        batch in 1usize..4,
        heads in prop::sample::select(vec![1usize, 3, 16, 17, 40, 128]),
        lat in prop::sample::select(vec![64usize, 128, 256, 512]),
        page_size in prop::sample::select(vec![1usize, 16, 64]),
        splits in 1usize..5,
        block_h in prop::sample::select(vec![16i64, 32, 64]),
        block_n in prop::sample::select(vec![16i64, 32, 64]),
        max_len in 1usize..300,
        len_seed in any::<u64>(),
    ) {
        let lens: Vec<usize> = (0..batch).map(|i| 1 + ((len_seed >> (i * 8)) as usize % max_len)).collect();
        // Keep the f64 reference cheap in debug builds.
        let heads = if lat * heads > 16384 { 16384 / lat } else { heads };
        let p = Problem::new(seed, batch, heads, lat, 64, lens, page_size, 0.1352);
        let (exact, bf16) = run(&p, splits, block_h, block_n);
        prop_assert!(exact <= 1e-5, "f32 arithmetic on the kernel's own inputs: rel error {exact}");
        prop_assert!(bf16 <= 1e-2, "vs unrounded inputs: rel error {bf16}");
    }
}

#[test]
fn tpla_shard_widths_share_one_kernel() {
    // The same kernel at LAT = 512, 256, 128, 64 (MLA and the TPLA shards for g = 1, 2, 4, 8).
    for lat in [512usize, 256, 128, 64] {
        let p = Problem::new(lat as u64, 2, 16, lat, 64, vec![100, 37], 16, 0.1352);
        let (exact, _) = run(&p, 2, 16, 32);
        assert!(exact <= 1e-5, "lat {lat}: {exact}");
    }
}

#[test]
fn empty_and_single_token_sequences() {
    let p = Problem::new(9, 3, 4, 64, 64, vec![0, 1, 2], 1, 0.5);
    let mut params = DecodeParams::new(3, 4, 64, 64, 4, 0.5);
    params.decode = params.decode.with("BLOCK_N", 16);
    let mut out = HostTensor::<f32>::full(&[3, 4, 64], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[3, 4], f32::NAN);
    decode_attention(exec(), &params, &p.q_tensor(), &p.cache, &mut out, &mut lse).unwrap();
    assert!(
        out.data()[..4 * 64].iter().all(|&x| x == 0.0),
        "an empty sequence attends to nothing"
    );
    for b in 1..3 {
        let got = f64s(&out.data()[b * 256..(b + 1) * 256]);
        assert!(rel_error(&got, &p.reference(b, true).out) < 1e-6);
    }
}

#[test]
fn every_tune_candidate_compiles_and_agrees() {
    let p = Problem::new(5, 2, 20, 128, 64, vec![130, 64], 16, 0.2);
    for cfg in latent_decode.tune_space(&[]).unwrap() {
        let (bh, bn) = (cfg.get("BLOCK_H").unwrap(), cfg.get("BLOCK_N").unwrap());
        let (exact, _) = run(&p, 3, bh, bn);
        assert!(exact <= 1e-5, "{cfg}: {exact}");
    }
}

#[test]
fn kept_split_partials_give_the_per_call_result_and_refuse_other_sizes() {
    use tpla_kernels::ops::{decode_attention_into, SplitPartials};
    let p = Problem::new(17, 2, 16, 128, 64, vec![150, 61], 16, 0.1352);
    let mut params = DecodeParams::new(2, 16, 128, 64, 3, 0.1352);
    params.decode = params.decode.with("BLOCK_N", 32);
    let q = p.q_tensor();
    let fresh = || {
        (
            HostTensor::<f32>::full(&[2, 16, 128], f32::NAN),
            HostTensor::<f32>::full(&[2, 16], f32::NAN),
        )
    };
    let (mut want, mut want_lse) = fresh();
    decode_attention(exec(), &params, &q, &p.cache, &mut want, &mut want_lse).unwrap();
    // The same partials twice (poisoned in between): the per-call result both times.
    let mut ws = SplitPartials::new(exec(), &params).unwrap();
    for _ in 0..2 {
        let (mut out, mut lse) = fresh();
        decode_attention_into(exec(), &params, &mut ws, &q, &p.cache, &mut out, &mut lse).unwrap();
        assert_eq!(out.data(), want.data());
        assert_eq!(lse.data(), want_lse.data());
    }
    // Partials sized for another split count: a typed error, the outputs untouched.
    let mut other = params.clone();
    other.splits = 2;
    let (mut out, mut lse) = fresh();
    let err = decode_attention_into(exec(), &other, &mut ws, &q, &p.cache, &mut out, &mut lse)
        .unwrap_err()
        .to_string();
    assert!(err.contains("split partials are [3, 2, 16, 128]"), "{err}");
    assert!(out.data().iter().all(|v| v.is_nan()));
}
