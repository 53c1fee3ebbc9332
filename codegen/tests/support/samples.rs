//! Test support, not part of the library: builder-made kernels used by the CUDA backend's tests
//! (here and in `tpla-runtime`) beside the DSL kernel library; they mirror `tpla-kernels`'
//! latent decode and combine kernels. Include it with
//! `#[path = ".../codegen/tests/support/samples.rs"] mod samples;`.
#![allow(dead_code)]

use tpla_codegen::builder::KernelBuilder;
use tpla_codegen::config::Config;
use tpla_codegen::error::IrError;
use tpla_codegen::ir::*;

/// Shape and tune values of [`latent_decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeParams {
    /// Latent (value) width.
    pub lat: usize,
    /// RoPE width appended to each cache row.
    pub rope: usize,
    /// Heads per program.
    pub block_h: usize,
    /// Tokens per cache block.
    pub block_n: usize,
    /// Pipelining hint.
    pub stages: usize,
    /// Whether `q` is a bf16 tensor (else f32).
    pub q_bf16: bool,
    /// Whether `p` is cast to bf16 before the value gemm.
    pub p_bf16: bool,
}

impl DecodeParams {
    /// bf16 `q` and `p` (the kernel library's decode), RoPE 64: `lat`, `BLOCK_H`, `BLOCK_N`,
    /// `STAGES`.
    pub fn bf16(lat: usize, block_h: usize, block_n: usize, stages: usize) -> DecodeParams {
        DecodeParams {
            lat,
            rope: 64,
            block_h,
            block_n,
            stages,
            q_bf16: true,
            p_bf16: true,
        }
    }
}

/// Split-KV latent decode (MQA, one kv head), as in `tpla-kernels`: `q [batch, heads, LAT+ROPE]`,
/// `cache` paged bf16 rows of `LAT+ROPE`, outputs `out [splits, batch, heads, LAT]` (normalised
/// per split) and `lse [splits, batch, heads]` (natural log), `scale` the softmax scale.
pub fn latent_decode(p: DecodeParams) -> Result<Kernel, IrError> {
    latent_decode_with(p, &[])
}

/// [`latent_decode`] built with extra config values (schedule knobs such as `KV_CHUNKS`, which
/// the builder reads).
pub fn latent_decode_with(p: DecodeParams, extra: &[(&str, i64)]) -> Result<Kernel, IrError> {
    let DecodeParams {
        lat,
        rope,
        block_h: bh,
        block_n: bn,
        stages,
        q_bf16,
        p_bf16,
    } = p;
    let cfg = Config::new()
        .with("BLOCK_H", bh as i64)
        .with("BLOCK_N", bn as i64)
        .with("STAGES", stages as i64)
        .with("LAT", lat as i64)
        .with("ROPE", rope as i64);
    let cfg = extra.iter().fold(cfg, |c, (n, v)| c.with(n, *v));
    let d = lat + rope;
    let mut kb = KernelBuilder::new("latent_decode", &cfg);
    let batch = kb.dim("batch");
    let heads = kb.dim("heads");
    let splits = kb.dim("splits");
    let rt = ParamDim::Runtime;
    let q = kb.tensor(
        "q",
        if q_bf16 { DType::BF16 } else { DType::F32 },
        vec![rt(batch), rt(heads), ParamDim::Const(d)],
        false,
    );
    let cache = kb.paged("cache", DType::BF16, d as i64, false)?;
    let out = kb.tensor(
        "out",
        DType::F32,
        vec![rt(splits), rt(batch), rt(heads), ParamDim::Const(lat)],
        true,
    );
    let lse = kb.tensor(
        "lse",
        DType::F32,
        vec![rt(splits), rt(batch), rt(heads)],
        true,
    );
    let scale = kb.scalar("scale", DType::F32);
    kb.grid([
        Index::Dim(batch),
        Index::bin(IndexOp::CeilDiv, Index::Dim(heads), Index::Const(bh as i64)),
        Index::Dim(splits),
    ]);
    let t = Operand::Tile;
    let lit = |v: f32| Operand::Scalar(FScalar::Lit(v));
    let b = kb.let_index("b", Index::ProgramId(0));
    let h0 = kb.let_index(
        "h0",
        Index::bin(IndexOp::Mul, Index::ProgramId(1), Index::Const(bh as i64)),
    );
    let split = kb.let_index("split", Index::ProgramId(2));
    let qt = kb.define(
        "qt",
        TileOp::Load {
            param: q,
            index: vec![
                Slice::At(b.clone()),
                Slice::Span {
                    start: h0.clone(),
                    len: bh,
                },
                Slice::Span {
                    start: Index::Const(0),
                    len: d,
                },
            ],
        },
    )?;
    let acc = kb.define_typed(
        "acc",
        DType::F32,
        &[bh as i64, lat as i64],
        TileOp::Full(lit(0.0)),
    )?;
    let m = kb.define_typed("m", DType::F32, &[bh as i64], TileOp::Full(lit(-1.0e30)))?;
    let l = kb.define_typed("l", DType::F32, &[bh as i64], TileOp::Full(lit(0.0)))?;
    let (_start, kv, valid) = kb.begin_paged_blocks(
        "kv",
        cache,
        b.clone(),
        split.clone(),
        Index::Dim(splits),
        bn as i64,
        stages as i64,
    )?;
    let kvt = kb.define("kvt", TileOp::View(kv, ViewOp::Transpose))?;
    let s0 = kb.define("s0", TileOp::Gemm { a: qt, b: kvt })?;
    let log2e = FScalar::Bin(
        BinaryOp::Mul,
        Box::new(FScalar::Param(scale)),
        Box::new(FScalar::Lit(std::f32::consts::LOG2_E)),
    );
    let s1 = kb.define(
        "s1",
        TileOp::Binary(BinaryOp::Mul, t(s0), Operand::Scalar(log2e)),
    )?;
    let vu = kb.define("vu", TileOp::View(valid, ViewOp::Unsqueeze(0)))?;
    let s2 = kb.define(
        "s2",
        TileOp::Select {
            mask: vu,
            on_true: t(s1),
            on_false: lit(-1.0e30),
        },
    )?;
    let rmax = kb.define(
        "rmax",
        TileOp::Reduce {
            op: ReduceOp::Max,
            src: s2,
            axis: 1,
        },
    )?;
    let m_new = kb.define("m_new", TileOp::Binary(BinaryOp::Max, t(m), t(rmax)))?;
    let mnu = kb.define("mnu", TileOp::View(m_new, ViewOp::Unsqueeze(1)))?;
    let sd = kb.define("sd", TileOp::Binary(BinaryOp::Sub, t(s2), t(mnu)))?;
    let pt = kb.define("p", TileOp::Unary(UnaryOp::Exp2, sd))?;
    let md = kb.define("md", TileOp::Binary(BinaryOp::Sub, t(m), t(m_new)))?;
    let alpha = kb.define("alpha", TileOp::Unary(UnaryOp::Exp2, md))?;
    let la = kb.define("la", TileOp::Binary(BinaryOp::Mul, t(l), t(alpha)))?;
    let rs = kb.define(
        "rs",
        TileOp::Reduce {
            op: ReduceOp::Sum,
            src: pt,
            axis: 1,
        },
    )?;
    kb.assign(l, TileOp::Binary(BinaryOp::Add, t(la), t(rs)))?;
    let au = kb.define("au", TileOp::View(alpha, ViewOp::Unsqueeze(1)))?;
    let aa = kb.define("aa", TileOp::Binary(BinaryOp::Mul, t(acc), t(au)))?;
    let pa = if p_bf16 {
        kb.define_typed("pb", DType::BF16, &[bh as i64, bn as i64], TileOp::Cast(pt))?
    } else {
        pt
    };
    let v = kb.define(
        "v",
        TileOp::View(
            kv,
            ViewOp::Slice {
                axis: 1,
                start: 0,
                len: lat,
            },
        ),
    )?;
    let pv = kb.define("pv", TileOp::Gemm { a: pa, b: v })?;
    kb.assign(acc, TileOp::Binary(BinaryOp::Add, t(aa), t(pv)))?;
    kb.assign(m, TileOp::Cast(m_new))?;
    kb.end_loop()?;
    let l_safe = kb.define("l_safe", TileOp::Binary(BinaryOp::Max, t(l), lit(1.0e-30)))?;
    let lu = kb.define("lu", TileOp::View(l_safe, ViewOp::Unsqueeze(1)))?;
    let o = kb.define("o", TileOp::Binary(BinaryOp::Div, t(acc), t(lu)))?;
    kb.store(
        out,
        vec![
            Slice::At(split.clone()),
            Slice::At(b.clone()),
            Slice::Span {
                start: h0.clone(),
                len: bh,
            },
            Slice::Span {
                start: Index::Const(0),
                len: lat,
            },
        ],
        o,
    )?;
    let lg = kb.define("lg", TileOp::Unary(UnaryOp::Log2, l_safe))?;
    let ml = kb.define("ml", TileOp::Binary(BinaryOp::Add, t(m), t(lg)))?;
    let ln = kb.define(
        "ln",
        TileOp::Binary(BinaryOp::Mul, t(ml), lit(std::f32::consts::LN_2)),
    )?;
    kb.store(
        lse,
        vec![
            Slice::At(split),
            Slice::At(b),
            Slice::Span { start: h0, len: bh },
        ],
        ln,
    )?;
    kb.finish()
}

/// Log-sum-exp combine of split partials, as in `tpla-kernels`: `part [splits, batch, heads,
/// LAT]`, `lse [splits, batch, heads]` -> `out [batch, heads, LAT]`, `lse_out [batch, heads]`.
pub fn combine_splits(lat: usize, block_d: usize) -> Result<Kernel, IrError> {
    let cfg = Config::new()
        .with("BLOCK_D", block_d as i64)
        .with("LAT", lat as i64);
    let mut kb = KernelBuilder::new("combine_splits", &cfg);
    let batch = kb.dim("batch");
    let heads = kb.dim("heads");
    let splits = kb.dim("splits");
    let rt = ParamDim::Runtime;
    let part = kb.tensor(
        "part",
        DType::F32,
        vec![rt(splits), rt(batch), rt(heads), ParamDim::Const(lat)],
        false,
    );
    let lse = kb.tensor(
        "lse",
        DType::F32,
        vec![rt(splits), rt(batch), rt(heads)],
        false,
    );
    let out = kb.tensor(
        "out",
        DType::F32,
        vec![rt(batch), rt(heads), ParamDim::Const(lat)],
        true,
    );
    let lse_out = kb.tensor("lse_out", DType::F32, vec![rt(batch), rt(heads)], true);
    kb.grid([
        Index::Dim(batch),
        Index::Dim(heads),
        Index::bin(
            IndexOp::CeilDiv,
            Index::Const(lat as i64),
            Index::Const(block_d as i64),
        ),
    ]);
    let t = Operand::Tile;
    let lit = |v: f32| Operand::Scalar(FScalar::Lit(v));
    let b = kb.let_index("b", Index::ProgramId(0));
    let h = kb.let_index("h", Index::ProgramId(1));
    let d0 = kb.let_index(
        "d0",
        Index::bin(
            IndexOp::Mul,
            Index::ProgramId(2),
            Index::Const(block_d as i64),
        ),
    );
    let m = kb.define_typed("m", DType::F32, &[1], TileOp::Full(lit(f32::NEG_INFINITY)))?;
    let s = kb.begin_for("s", Index::Const(0), Index::Dim(splits));
    let ls = kb.define(
        "ls",
        TileOp::Load {
            param: lse,
            index: vec![
                Slice::Span {
                    start: s.clone(),
                    len: 1,
                },
                Slice::At(b.clone()),
                Slice::At(h.clone()),
            ],
        },
    )?;
    kb.assign(m, TileOp::Binary(BinaryOp::Max, t(m), t(ls)))?;
    kb.end_loop()?;
    let total = kb.define_typed("total", DType::F32, &[1], TileOp::Full(lit(0.0)))?;
    let acc = kb.define_typed(
        "acc",
        DType::F32,
        &[1, block_d as i64],
        TileOp::Full(lit(0.0)),
    )?;
    let s = kb.begin_for("s2", Index::Const(0), Index::Dim(splits));
    let ls = kb.define(
        "ls2",
        TileOp::Load {
            param: lse,
            index: vec![
                Slice::Span {
                    start: s.clone(),
                    len: 1,
                },
                Slice::At(b.clone()),
                Slice::At(h.clone()),
            ],
        },
    )?;
    let dm = kb.define("dm", TileOp::Binary(BinaryOp::Sub, t(ls), t(m)))?;
    let dl = kb.define(
        "dl",
        TileOp::Binary(BinaryOp::Mul, t(dm), lit(std::f32::consts::LOG2_E)),
    )?;
    let w = kb.define("w", TileOp::Unary(UnaryOp::Exp2, dl))?;
    kb.assign(total, TileOp::Binary(BinaryOp::Add, t(total), t(w)))?;
    let pt = kb.define(
        "pt",
        TileOp::Load {
            param: part,
            index: vec![
                Slice::Span { start: s, len: 1 },
                Slice::At(b.clone()),
                Slice::At(h.clone()),
                Slice::Span {
                    start: d0.clone(),
                    len: block_d,
                },
            ],
        },
    )?;
    let wu = kb.define("wu", TileOp::View(w, ViewOp::Unsqueeze(1)))?;
    let pw = kb.define("pw", TileOp::Binary(BinaryOp::Mul, t(pt), t(wu)))?;
    kb.assign(acc, TileOp::Binary(BinaryOp::Add, t(acc), t(pw)))?;
    kb.end_loop()?;
    let tc = kb.define_typed("tc", DType::F32, &[1], TileOp::Cast(total))?;
    let tu = kb.define("tu", TileOp::View(tc, ViewOp::Unsqueeze(1)))?;
    let o = kb.define("o", TileOp::Binary(BinaryOp::Div, t(acc), t(tu)))?;
    kb.store(
        out,
        vec![
            Slice::At(b.clone()),
            Slice::Span {
                start: h.clone(),
                len: 1,
            },
            Slice::Span {
                start: d0,
                len: block_d,
            },
        ],
        o,
    )?;
    let lt = kb.define("lt", TileOp::Unary(UnaryOp::Log2, total))?;
    let ll = kb.define(
        "ll",
        TileOp::Binary(BinaryOp::Mul, t(lt), lit(std::f32::consts::LN_2)),
    )?;
    let lo = kb.define("lo", TileOp::Binary(BinaryOp::Add, t(m), t(ll)))?;
    kb.store(
        lse_out,
        vec![Slice::At(b), Slice::Span { start: h, len: 1 }],
        lo,
    )?;
    kb.finish()
}
