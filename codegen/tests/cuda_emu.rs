//! Runs generated CUDA C++ on the host: the kernel source from `tpla_codegen::cuda::emit`, with
//! its real prelude, compiled by the system C++ compiler against `tests/emu/cuda_emu.h` (threads
//! as fibers, warp collectives emulated from the PTX fragment layouts). Results are compared with
//! the Cranelift CPU backend on the same IR, and the latent decode also with an f64 reference.
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`); without one every test prints SKIP and passes,
//! unless `TPLA_REQUIRE_CXX=1`.

#![allow(clippy::needless_range_loop)]

#[path = "support/samples.rs"]
mod samples;

use samples::{combine_splits, latent_decode, latent_decode_with, DecodeParams};
use tpla_codegen::cuda::{emit, F32Gemm, Target};
use tpla_codegen::ir::*;
use tpla_codegen::launch::check_launch;
use tpla_codegen::{Config, KernelBuilder};

#[path = "support/emu.rs"]
mod emu;

use emu::*;

#[path = "support/emu_decode.rs"]
mod emu_decode;

use emu_decode::*;

/// The TMA producer's tests (`TMA = 1`), in a file of their own.
#[path = "emu/tma.rs"]
mod tma;

/// The split-table (chunked cache, `KV_CHUNKS = 1`) tests, in a file of their own.
#[path = "emu/split_table.rs"]
mod split_table;

/// The Hopper warpgroup paths (wgmma geometries, the producer warpgroup), in a file of their own.
#[path = "emu/warpgroup.rs"]
mod warpgroup;

/// FlashAttention-3's overlap inside a warpgroup (`SOFTMAX_OVERLAP = 1`), in a file of its own.
#[path = "emu/softmax_overlap.rs"]
mod softmax_overlap;

#[test]
fn emulated_decode_matches_cpu_and_reference() {
    let Some(cxx) = skip_without_cxx("emulated_decode_matches_cpu_and_reference") else {
        return;
    };
    let dp = |bh, bn, st, lat, q, p| DecodeParams {
        lat,
        rope: 64,
        block_h: bh,
        block_n: bn,
        stages: st,
        q_bf16: q,
        p_bf16: p,
    };
    // Tensor cores, ldmatrix everywhere; partial head block; an empty split.
    decode_case(
        &cxx,
        dp(16, 32, 2, 128, true, true),
        Target::sm90(),
        21,
        &[70, 5, 33],
        2,
        1,
    );
    // f32 q and p: hi/lo split, generic fragment loads, replicated warps (BLOCK_N = 16).
    decode_case(
        &cxx,
        dp(16, 16, 1, 64, false, false),
        Target::sm90(),
        16,
        &[40, 17],
        3,
        2,
    );
    // Three stages, two warp rows.
    decode_case(
        &cxx,
        dp(32, 64, 3, 256, false, true),
        Target::sm90(),
        32,
        &[150, 64],
        2,
        3,
    );
    // Pre-Ampere: FMA gemm and synchronous copies.
    decode_case(
        &cxx,
        dp(16, 32, 2, 64, true, false),
        Target::new(7, 5),
        16,
        &[45],
        2,
        4,
    );
}

#[test]
fn emulated_decode_full_size() {
    let Some(cxx) = skip_without_cxx("emulated_decode_full_size") else {
        return;
    };
    let dp = DecodeParams {
        lat: 512,
        rope: 64,
        block_h: 64,
        block_n: 64,
        stages: 2,
        q_bf16: true,
        p_bf16: true,
    };
    decode_case(&cxx, dp, Target::sm90(), 64, &[130], 2, 5);
    decode_case(
        &cxx,
        DecodeParams {
            q_bf16: false,
            p_bf16: false,
            ..dp
        },
        Target::sm90(),
        64,
        &[70],
        1,
        6,
    );
}

#[test]
fn emulated_combine_matches_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_combine_matches_cpu") else {
        return;
    };
    let (splits, batch, heads, lat) = (3, 2, 3, 128);
    let k = combine_splits(lat, 64).unwrap();
    let mut rng = Rng::new(7);
    let mut lse = rng.vec(splits * batch * heads);
    lse[1] = -6.9e29; // an empty split
    let args = vec![
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads, lat],
            data: Bytes::from_f32(&rng.vec(splits * batch * heads * lat)),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![splits, batch, heads],
            data: Bytes::from_f32(&lse),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![batch, heads, lat],
            data: Bytes::from_f32(&vec![f32::NAN; batch * heads * lat]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![batch, heads],
            data: Bytes::from_f32(&vec![f32::NAN; batch * heads]),
        },
    ];
    check_vs_cpu(&cxx, &k, Target::sm90(), &args, 1e-5, "combine");
}

// ------------------------------------------------------------------------------------ synthetic

fn c(i: i64) -> Index {
    Index::Const(i)
}
fn pid(a: u8) -> Index {
    Index::ProgramId(a)
}
fn mul(a: Index, b: Index) -> Index {
    Index::bin(IndexOp::Mul, a, b)
}
fn span(start: Index, len: usize) -> Slice {
    Slice::Span { start, len }
}
fn t(id: TileId) -> Operand {
    Operand::Tile(id)
}
fn lit(v: f32) -> Operand {
    Operand::Scalar(FScalar::Lit(v))
}

/// Elementwise, iota, compare/select, integer ops (division by zero), casts, row reductions,
/// masked loads past the tensor's end, bf16 rounding on store.
#[test]
fn emulated_elementwise_mix_matches_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_elementwise_mix_matches_cpu") else {
        return;
    };
    let mut kb = KernelBuilder::new("mix", &Config::new());
    let rows = kb.dim("rows");
    let x = kb.tensor(
        "x",
        DType::F32,
        vec![ParamDim::Runtime(rows), ParamDim::Const(24)],
        false,
    );
    let out = kb.tensor(
        "out",
        DType::F32,
        vec![ParamDim::Runtime(rows), ParamDim::Const(24)],
        true,
    );
    let outb = kb.tensor(
        "outb",
        DType::BF16,
        vec![ParamDim::Runtime(rows), ParamDim::Const(24)],
        true,
    );
    let outi = kb.tensor(
        "outi",
        DType::I32,
        vec![ParamDim::Runtime(rows), ParamDim::Const(24)],
        true,
    );
    kb.grid([
        Index::bin(IndexOp::CeilDiv, Index::Dim(rows), c(16)),
        c(1),
        c(1),
    ]);
    let r0 = kb.let_index("r0", mul(pid(0), c(16)));
    let xt = kb
        .define(
            "xt",
            TileOp::Load {
                param: x,
                index: vec![span(r0.clone(), 16), span(c(0), 24)],
            },
        )
        .unwrap();
    let io = kb
        .define_typed("io", DType::I32, &[16, 24], TileOp::Iota { axis: 1 })
        .unwrap();
    let mask = kb
        .define(
            "mask",
            TileOp::Compare(CmpOp::Lt, t(io), Operand::Int(c(10))),
        )
        .unwrap();
    let x2 = kb
        .define("x2", TileOp::Binary(BinaryOp::Mul, t(xt), lit(2.0)))
        .unwrap();
    let nx = kb.define("nx", TileOp::Unary(UnaryOp::Neg, xt)).unwrap();
    let y = kb
        .define(
            "y",
            TileOp::Select {
                mask,
                on_true: t(x2),
                on_false: t(nx),
            },
        )
        .unwrap();
    let rs = kb
        .define(
            "rs",
            TileOp::Reduce {
                op: ReduceOp::Sum,
                src: y,
                axis: 1,
            },
        )
        .unwrap();
    let cm = kb
        .define(
            "cm",
            TileOp::Reduce {
                op: ReduceOp::Max,
                src: y,
                axis: 0,
            },
        )
        .unwrap();
    let rsu = kb
        .define("rsu", TileOp::View(rs, ViewOp::Unsqueeze(1)))
        .unwrap();
    let z0 = kb
        .define("z0", TileOp::Binary(BinaryOp::Add, t(y), t(rsu)))
        .unwrap();
    let z = kb
        .define("z", TileOp::Binary(BinaryOp::Sub, t(z0), t(cm)))
        .unwrap();
    let ex = kb.define("ex", TileOp::Unary(UnaryOp::Exp2, xt)).unwrap();
    let ab = kb.define("ab", TileOp::Unary(UnaryOp::Abs, z)).unwrap();
    let sq = kb.define("sq", TileOp::Unary(UnaryOp::Sqrt, ab)).unwrap();
    let w = kb
        .define("w", TileOp::Binary(BinaryOp::Add, t(sq), t(ex)))
        .unwrap();
    kb.store(out, vec![span(r0.clone(), 16), span(c(0), 24)], w)
        .unwrap();
    let wb = kb
        .define_typed("wb", DType::BF16, &[16, 24], TileOp::Cast(z))
        .unwrap();
    kb.store(outb, vec![span(r0.clone(), 16), span(c(0), 24)], wb)
        .unwrap();
    let x100 = kb
        .define("x100", TileOp::Binary(BinaryOp::Mul, t(xt), lit(100.0)))
        .unwrap();
    let qi = kb
        .define_typed("qi", DType::I32, &[16, 24], TileOp::Cast(x100))
        .unwrap();
    let den = kb
        .define(
            "den",
            TileOp::Binary(BinaryOp::Sub, t(io), Operand::Int(c(5))),
        )
        .unwrap();
    let qd = kb
        .define("qd", TileOp::Binary(BinaryOp::Div, t(qi), t(den)))
        .unwrap();
    kb.store(outi, vec![span(r0, 16), span(c(0), 24)], qd)
        .unwrap();
    let k = kb.finish().unwrap();
    let n = 37;
    let mut rng = Rng::new(11);
    let args = vec![
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![n, 24],
            data: Bytes::from_f32(&rng.vec(n * 24)),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![n, 24],
            data: Bytes::from_f32(&vec![f32::NAN; n * 24]),
        },
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![n, 24],
            data: Bytes::from_bf16(&vec![f32::NAN; n * 24]),
        },
        HostArg::Tensor {
            dtype: DType::I32,
            shape: vec![n, 24],
            data: Bytes::from_i32(&vec![-7; n * 24]),
        },
    ];
    check_vs_cpu(&cxx, &k, Target::sm90(), &args, 1e-4, "mix");
}

/// Gemms in every operand orientation: transposed bf16 A (ldmatrix.trans), f32 B (split), a
/// fragment result feeding a transposed operand (shadow copy), a shape that is not tensor-core
/// sized (FMA), a column reduction of a fragment tile.
#[test]
fn emulated_gemm_orientations_match_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_gemm_orientations_match_cpu") else {
        return;
    };
    let mut kb = KernelBuilder::new("gemms", &Config::new());
    let a = kb.tensor(
        "a",
        DType::BF16,
        vec![ParamDim::Const(48), ParamDim::Const(32)],
        false,
    );
    let b = kb.tensor(
        "b",
        DType::F32,
        vec![ParamDim::Const(48), ParamDim::Const(24)],
        false,
    );
    let c2o = kb.tensor(
        "c2",
        DType::F32,
        vec![ParamDim::Const(32), ParamDim::Const(24)],
        true,
    );
    let dout = kb.tensor(
        "d",
        DType::F32,
        vec![ParamDim::Const(24), ParamDim::Const(48)],
        true,
    );
    let colmax = kb.tensor("colmax", DType::F32, vec![ParamDim::Const(24)], true);
    let a0 = kb
        .define(
            "a0",
            TileOp::Load {
                param: a,
                index: vec![span(c(0), 48), span(c(0), 32)],
            },
        )
        .unwrap();
    let at = kb
        .define("at", TileOp::View(a0, ViewOp::Transpose))
        .unwrap();
    let b0 = kb
        .define(
            "b0",
            TileOp::Load {
                param: b,
                index: vec![span(c(0), 48), span(c(0), 24)],
            },
        )
        .unwrap();
    let cc = kb.define("cc", TileOp::Gemm { a: at, b: b0 }).unwrap();
    let c2 = kb
        .define("c2", TileOp::Binary(BinaryOp::Mul, t(cc), lit(0.5)))
        .unwrap();
    kb.store(c2o, vec![span(c(0), 32), span(c(0), 24)], c2)
        .unwrap();
    let c2t = kb
        .define("c2t", TileOp::View(c2, ViewOp::Transpose))
        .unwrap();
    let dd = kb.define("dd", TileOp::Gemm { a: c2t, b: at }).unwrap();
    kb.store(dout, vec![span(c(0), 24), span(c(0), 48)], dd)
        .unwrap();
    let cm = kb
        .define(
            "cm",
            TileOp::Reduce {
                op: ReduceOp::Max,
                src: cc,
                axis: 0,
            },
        )
        .unwrap();
    kb.store(colmax, vec![span(c(0), 24)], cm).unwrap();
    let k = kb.finish().unwrap();
    let mut rng = Rng::new(12);
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![48, 32],
            data: Bytes::from_bf16(&rng.vec(48 * 32)),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![48, 24],
            data: Bytes::from_f32(&rng.vec(48 * 24)),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![32, 24],
            data: Bytes::from_f32(&vec![f32::NAN; 32 * 24]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![24, 48],
            data: Bytes::from_f32(&vec![f32::NAN; 24 * 48]),
        },
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![24],
            data: Bytes::from_f32(&[f32::NAN; 24]),
        },
    ];
    check_vs_cpu(&cxx, &k, Target::sm90(), &args, 2e-3, "gemms");
    check_vs_cpu(
        &cxx,
        &k,
        Target::sm90().with_f32_gemm(F32Gemm::Fma),
        &args,
        2e-4,
        "gemms_fma",
    );
}

/// Paged store (cache append) with rows landing outside the sequence, and a runtime loop.
#[test]
fn emulated_append_and_loop_match_cpu() {
    let Some(cxx) = skip_without_cxx("emulated_append_and_loop_match_cpu") else {
        return;
    };
    let row = 40;
    let mut kb = KernelBuilder::new("append", &Config::new());
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
    let sums = kb.tensor(
        "sums",
        DType::F32,
        vec![ParamDim::Runtime(batch), ParamDim::Const(row)],
        true,
    );
    kb.grid([
        Index::Dim(batch),
        Index::bin(IndexOp::CeilDiv, Index::Dim(newt), c(8)),
        c(1),
    ]);
    let b = kb.let_index("b", pid(0));
    let j0 = kb.let_index("j0", mul(pid(1), c(8)));
    let tile = kb
        .define(
            "t",
            TileOp::Load {
                param: rows_p,
                index: vec![Slice::At(b.clone()), span(j0.clone(), 8), span(c(0), row)],
            },
        )
        .unwrap();
    let first = Index::bin(
        IndexOp::Add,
        Index::bin(
            IndexOp::Sub,
            Index::SeqLen {
                cache,
                batch: Box::new(b.clone()),
            },
            Index::Dim(newt),
        ),
        j0,
    );
    kb.paged_store(cache, b.clone(), first, tile).unwrap();
    // Column sums over all new tokens, by a runtime loop (every program of a row writes the same).
    let acc = kb
        .define_typed("acc", DType::F32, &[1, row as i64], TileOp::Full(lit(0.0)))
        .unwrap();
    let j = kb.begin_for("j", c(0), Index::Dim(newt));
    let r = kb
        .define(
            "r",
            TileOp::Load {
                param: rows_p,
                index: vec![Slice::At(b.clone()), span(j, 1), span(c(0), row)],
            },
        )
        .unwrap();
    let rf = kb
        .define_typed("rf", DType::F32, &[1, row as i64], TileOp::Cast(r))
        .unwrap();
    kb.assign(acc, TileOp::Binary(BinaryOp::Add, t(acc), t(rf)))
        .unwrap();
    kb.end_loop().unwrap();
    kb.store(sums, vec![span(b, 1), span(c(0), row)], acc)
        .unwrap();
    let k = kb.finish().unwrap();
    let mut rng = Rng::new(13);
    let (bsz, nt) = (3, 11);
    let lens = [11, 30, 5]; // the last sequence is shorter than the new rows: some are skipped
    let mut cache_arg = paged(&mut rng, row, &lens, 8, false);
    if let HostArg::Paged { data, .. } = &mut cache_arg {
        // Poison: every row the kernel does not write must stay NaN in both backends.
        let n = data.len / 2;
        *data = Bytes::from_bf16(&vec![f32::NAN; n]);
    }
    let args = vec![
        HostArg::Tensor {
            dtype: DType::BF16,
            shape: vec![bsz, nt, row],
            data: Bytes::from_bf16(&rng.vec(bsz * nt * row)),
        },
        cache_arg,
        HostArg::Tensor {
            dtype: DType::F32,
            shape: vec![bsz, row],
            data: Bytes::from_f32(&vec![f32::NAN; bsz * row]),
        },
    ];
    check_vs_cpu(&cxx, &k, Target::sm90(), &args, 1e-5, "append");
}

/// Multi-token queries: the library decode kernel (`tpla-kernels`) at `SQ = 2` and `4` (s_q
/// tokens × heads packed into the row block, causal among the new tokens), emulated against the
/// CPU backend (which the kernel tests check against the f64 causal reference): mma.sync and
/// warpgroup paths, a split boundary in the causal tail, sequences shorter than s_q.
#[test]
fn emulated_multi_token_decode_matches_cpu() {
    use tpla_codegen::KernelDef;
    let Some(cxx) = skip_without_cxx("emulated_multi_token_decode_matches_cpu") else {
        return;
    };
    // (s_q, heads, BLOCK_H, BLOCK_N, LAT, lengths, splits, extra knobs)
    type Case<'a> = (
        i64,
        usize,
        i64,
        i64,
        i64,
        &'a [i32],
        usize,
        &'a [(&'a str, i64)],
    );
    let cases: [Case<'_>; 3] = [
        (2, 8, 16, 32, 128, &[70, 1, 33], 2, &[]),
        (4, 16, 64, 16, 64, &[3, 40, 17], 3, &[]),
        (2, 32, 64, 64, 128, &[65, 2], 2, &[("PRODUCER", 1)]),
    ];
    for (i, (sq, heads, bh, bn, lat, lens, splits, extra)) in cases.into_iter().enumerate() {
        let mut cfg = tpla_kernels::latent_decode
            .default_config(&[("LAT", lat), ("ROPE", 64), ("SQ", sq)])
            .unwrap()
            .with("BLOCK_H", bh)
            .with("BLOCK_N", bn);
        for (n, v) in extra {
            cfg.set(n, *v);
        }
        let k = tpla_kernels::latent_decode.build(&cfg).unwrap();
        let tag = format!("mtp_{i}_sq{sq}_h{heads}_bh{bh}_bn{bn}_lat{lat}");
        let rows = sq as usize * heads;
        check_multi_token_decode(
            &cxx,
            &k,
            rows,
            lat as usize,
            lens,
            splits,
            40 + i as u64,
            &tag,
        );
    }
}
