//! The FP8 paged format (`KV_FP8`) on the CUDA backend, run on the host emulation (see
//! `cuda_emu.rs`): the latent decode reading FP8 rows and a row append writing them, against
//! the Cranelift CPU backend on the same IR (byte for byte for the append).
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`); without one every test prints SKIP and passes,
//! unless `TPLA_REQUIRE_CXX=1`.

#[path = "support/samples.rs"]
mod samples;

#[path = "support/emu.rs"]
mod emu;

#[path = "support/emu_decode.rs"]
mod emu_decode;

#[path = "emu/fp8_producer.rs"]
mod fp8_producer;

use emu::*;
use emu_decode::decode_ref;
use samples::{latent_decode_with, DecodeParams};
use tpla_codegen::cuda::{emit, Target};
use tpla_codegen::ir::*;
use tpla_codegen::kv_format::{dequantise_row, fp8_row_bytes, quantise_row};
use tpla_codegen::{Config, KernelBuilder};

/// A paged cache of FP8 rows (`lat` quantised columns) with shuffled pages: every row a token
/// owns is random data quantised by the reference rule, every other byte 0xff (NaN).
fn fp8_paged(rng: &mut Rng, lat: usize, row: usize, seq_lens: &[i32], page_size: usize) -> HostArg {
    let HostArg::Paged {
        block_table,
        pages_per_seq,
        num_pages,
        ..
    } = paged(rng, row, seq_lens, page_size, true)
    else {
        unreachable!()
    };
    let rb = fp8_row_bytes(lat, row);
    let mut data = Bytes::new(num_pages * page_size * rb);
    data.bytes_mut().fill(0xff);
    for (b, &len) in seq_lens.iter().enumerate() {
        for t in 0..len as usize {
            let page = block_table[b * pages_per_seq + t / page_size] as usize;
            let o = (page * page_size + t % page_size) * rb;
            let vals: Vec<f32> = rng.vec(row).iter().map(|x| x * 3.0).collect();
            data.bytes_mut()[o..o + rb].copy_from_slice(&quantise_row(&bf16_round(&vals), lat));
        }
    }
    HostArg::Paged {
        dtype: DType::BF16,
        row,
        data,
        block_table,
        seq_lens: seq_lens.to_vec(),
        page_size,
        pages_per_seq,
        num_pages,
        chunks: None,
    }
}

fn fp8_decode_case(
    cxx: &str,
    p: DecodeParams,
    warps: i64,
    target: Target,
    heads: usize,
    lens: &[i32],
    splits: usize,
) {
    fp8_decode_case_with(cxx, p, warps, &[], None, target, heads, lens, splits);
}

/// [`fp8_decode_case`] with extra knobs and, when `chunks` is given, a per-sequence split table
/// (`KV_CHUNKS = 1`: the balanced schedule's decode, as `EnginePlan` runs it over an FP8 pool).
#[allow(clippy::too_many_arguments)]
fn fp8_decode_case_with(
    cxx: &str,
    p: DecodeParams,
    warps: i64,
    extra: &[(&str, i64)],
    chunks: Option<&[i32]>,
    target: Target,
    heads: usize,
    lens: &[i32],
    splits: usize,
) {
    let tag = format!(
        "fp8_decode_lat{}_h{}_n{}_s{}_w{warps}_sm{}{}{}{}",
        p.lat,
        p.block_h,
        p.block_n,
        p.stages,
        target.sm.0,
        target.sm.1,
        extra
            .iter()
            .map(|(n, v)| format!("_{n}{v}"))
            .collect::<String>(),
        if chunks.is_some() { "_chunked" } else { "" }
    );
    let mut knobs = vec![("KV_FP8", p.lat as i64)];
    if warps > 0 {
        knobs.push(("WARPS", warps));
    }
    knobs.extend_from_slice(extra);
    if chunks.is_some() {
        knobs.push(("KV_CHUNKS", 1));
    }
    let k = latent_decode_with(p, &knobs).unwrap();
    let d = p.lat + p.rope;
    let batch = lens.len();
    let mut rng = Rng::new(p.lat as u64 + heads as u64);
    let q = bf16_round(&rng.vec(batch * heads * d));
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![batch, heads, d],
            data: Bytes::from_bf16(&q),
        },
        {
            let mut cache = fp8_paged(&mut rng, p.lat, d, lens, 16);
            if let HostArg::Paged { chunks: c, .. } = &mut cache {
                *c = chunks.map(<[i32]>::to_vec);
            }
            cache
        },
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
        HostArg::F32(1.0 / (d as f32).sqrt() * 4.0),
    ];
    // p is bf16 on tensor cores and f32 on the CPU backend.
    check_vs_cpu(cxx, &k, target, &args, 2e-2, &tag);
    println!("{tag}: ok");
}

/// The FP8 pool under the balanced schedule's split table (what `EnginePlan` with `kv_dtype:
/// Fp8` and `splits = 0` launches): sequence-local chunks, an entry of 0, programs past a
/// sequence's last split; plain and producer-fed on Hopper.
#[test]
fn emulated_fp8_decode_over_a_split_table_matches_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_decode_over_a_split_table_matches_cpu") else {
        return;
    };
    let dp = |bh, bn, st, lat| DecodeParams::bf16(lat, bh, bn, st);
    let (lens, chunks) = ([0, 1, 17, 300, 45], [32, 16, 16, 64, 0]);
    let producer: &[(&str, i64)] = &[("PRODUCER", 1)];
    let two: &[(&str, i64)] = &[("PRODUCER", 1), ("FP8_PRODUCERS", 2)];
    // (params, knobs, heads): consumer-loaded; producer-fed; and the plan's FP8 defaults on a
    // Hopper device (`src/engine/kv_dtype.rs`): MLA at 16 heads in 16-row blocks of three
    // stages of 64 tokens converted by two producer warpgroups (one query token), and in a
    // 64-row block of two stages of 32 tokens (what several query tokens and more heads run),
    // fed by the producer.
    for (p, knobs, heads) in [
        (dp(16, 32, 2, 512), &[][..], 16),
        (dp(64, 64, 2, 256), producer, 64),
        (dp(64, 32, 2, 512), producer, 16),
        (dp(16, 64, 3, 512), producer, 16),
        (dp(16, 64, 3, 512), two, 16),
        (dp(64, 64, 2, 256), two, 64),
    ] {
        fp8_decode_case_with(
            &cxx,
            p,
            0,
            knobs,
            Some(&chunks),
            Target::sm90(),
            heads,
            &lens,
            5,
        );
    }
}

#[test]
fn emulated_fp8_decode_matches_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_decode_matches_cpu") else {
        return;
    };
    let dp = |bh, bn, st, lat| DecodeParams::bf16(lat, bh, bn, st);
    // A TPLA shard on Hopper, 2 stages, an empty split and a length not a multiple of BLOCK_N.
    fp8_decode_case(
        &cxx,
        dp(16, 32, 2, 128),
        0,
        Target::sm90(),
        16,
        &[70, 1, 33],
        2,
    );
    // g = 2 shard (400-byte rows, padded scales) on Ampere, one stage.
    fp8_decode_case(
        &cxx,
        dp(16, 16, 1, 256),
        0,
        Target::new(8, 0),
        16,
        &[37, 5],
        3,
    );
    // MLA rows (656 bytes).
    fp8_decode_case(&cxx, dp(16, 32, 2, 512), 0, Target::sm90(), 16, &[45], 1);
    // One warp for a 64-token block: more rows per warp than lanes (a page lookup per chunk).
    fp8_decode_case(
        &cxx,
        dp(16, 64, 1, 128),
        1,
        Target::new(8, 0),
        16,
        &[70, 9],
        2,
    );
}

/// `append`: rows `[batch, new_tokens, row]` (bf16) stored at `seq_lens[b] - new_tokens + j`
/// of an FP8 cache with `lat` quantised columns, `bt` tokens per program.
fn append_kernel(lat: usize, row: usize, bt: usize) -> Kernel {
    let cfg = Config::new().with("KV_FP8", lat as i64);
    let mut kb = KernelBuilder::new("append_fp8", &cfg);
    let batch = kb.dim("batch");
    let newt = kb.dim("new_tokens");
    let rows_p = kb.tensor(
        "rows",
        DType::BF16,
        vec![
            ParamDim::Runtime(batch),
            ParamDim::Runtime(newt),
            ParamDim::Const(row),
        ],
        false,
    );
    let cache = kb.paged("cache", DType::BF16, row as i64, true).unwrap();
    let pid = |a| Index::ProgramId(a);
    let c = |i| Index::Const(i);
    kb.grid([
        Index::Dim(batch),
        Index::bin(IndexOp::CeilDiv, Index::Dim(newt), c(bt as i64)),
        c(1),
    ]);
    let b = kb.let_index("b", pid(0));
    let j0 = kb.let_index("j0", Index::bin(IndexOp::Mul, pid(1), c(bt as i64)));
    let span = |start: Index, len: usize| Slice::Span { start, len };
    let tile = kb
        .define(
            "t",
            TileOp::Load {
                param: rows_p,
                index: vec![Slice::At(b.clone()), span(j0.clone(), bt), span(c(0), row)],
            },
        )
        .unwrap();
    let len = Index::SeqLen {
        cache,
        batch: Box::new(b.clone()),
    };
    let first = Index::bin(
        IndexOp::Add,
        Index::bin(IndexOp::Sub, len, Index::Dim(newt)),
        j0,
    );
    kb.paged_store(cache, b, first, tile).unwrap();
    kb.finish().unwrap()
}

#[test]
fn emulated_fp8_append_matches_cpu_byte_for_byte() {
    let Some(cxx) = skip_without_cxx("emulated_fp8_append_matches_cpu_byte_for_byte") else {
        return;
    };
    for (lat, bt, target) in [
        (128usize, 8usize, Target::sm90()),
        (256, 1, Target::new(8, 0)),
        (512, 4, Target::sm90()),
    ] {
        let row = lat + 64;
        let tag = format!(
            "fp8_append_lat{lat}_bt{bt}_sm{}{}",
            target.sm.0, target.sm.1
        );
        let k = append_kernel(lat, row, bt);
        let mut rng = Rng::new(lat as u64);
        let (lens, newt) = (vec![12i32, 5, 9], 5usize);
        let cache = fp8_paged(&mut rng, lat, row, &lens, 4);
        let mut vals: Vec<f32> = rng.vec(lens.len() * newt * row);
        for (i, r) in vals.chunks_mut(row).enumerate() {
            match i % 3 {
                0 => r[..128].iter_mut().for_each(|x| *x = 0.0),
                1 => r[7] = 1000.0,
                _ => r[lat - 1] = -3e-7,
            }
        }
        let args = vec![
            HostArg::Tensor {
                dtype: DType::BF16,
                shape: vec![lens.len(), newt, row],
                data: Bytes::from_bf16(&vals),
            },
            cache,
        ];
        let src = emit(&k, target).unwrap_or_else(|e| panic!("{tag}: {e}"));
        let gpu = run_emu(&cxx, &k, &src, &args, &tag).unwrap_or_else(|e| panic!("{tag}: {e}"));
        let cpu = run_cpu(&k, &args);
        let (
            HostArg::Paged { data: g, .. },
            HostArg::Paged { data: c, .. },
            HostArg::Paged { data: before, .. },
        ) = (&gpu[1], &cpu[1], &args[1])
        else {
            unreachable!()
        };
        assert!(g.bytes() != before.bytes(), "{tag}: nothing was written");
        assert!(
            g.bytes() == c.bytes(),
            "{tag}: the emulated FP8 rows differ from the CPU backend's"
        );
        println!("{tag}: ok");
    }
}
