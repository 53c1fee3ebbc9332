//! The latent-decode kernel (as `kernels-gen` writes it) built directly with `KernelBuilder`,
//! JIT-compiled and compared with a plain scalar Rust implementation of the same online-softmax
//! algorithm; `latent_decode_bench` (ignored) times both:
//! `cargo test --release -p tpla-codegen --test cpu_latent -- --ignored --nocapture`.

#![allow(clippy::needless_range_loop)]

use std::time::Instant;

use half::bf16;
use tpla_codegen::cpu::{abi, CpuKernel};
use tpla_codegen::ir::*;
use tpla_codegen::{Config, KernelBuilder};

const LOG2_E: f32 = std::f32::consts::LOG2_E;
const LN_2: f32 = std::f32::consts::LN_2;

struct Shape {
    lat: usize,
    rope: usize,
    block_h: usize,
    block_n: usize,
}

fn c(i: i64) -> Index {
    Index::Const(i)
}
fn t(id: TileId) -> Operand {
    Operand::Tile(id)
}
fn lit(x: f32) -> Operand {
    Operand::Scalar(FScalar::Lit(x))
}
fn span(start: Index, len: usize) -> Slice {
    Slice::Span { start, len }
}

fn build(sh: &Shape) -> Kernel {
    let d = sh.lat + sh.rope;
    let (bh, bn) = (sh.block_h, sh.block_n);
    let mut b = KernelBuilder::new("latent_decode", &Config::new());
    let batch = b.dim("batch");
    let heads = b.dim("heads");
    let splits = b.dim("splits");
    let q = b.tensor(
        "q",
        DType::F32,
        vec![
            ParamDim::Runtime(batch),
            ParamDim::Runtime(heads),
            ParamDim::Const(d),
        ],
        false,
    );
    let cache = b.paged("cache", DType::BF16, d as i64, false).unwrap();
    let out = b.tensor(
        "out",
        DType::F32,
        vec![
            ParamDim::Runtime(splits),
            ParamDim::Runtime(batch),
            ParamDim::Runtime(heads),
            ParamDim::Const(sh.lat),
        ],
        true,
    );
    let lse = b.tensor(
        "lse",
        DType::F32,
        vec![
            ParamDim::Runtime(splits),
            ParamDim::Runtime(batch),
            ParamDim::Runtime(heads),
        ],
        true,
    );
    let scale = b.scalar("scale", DType::F32);
    b.grid([
        Index::Dim(batch),
        Index::bin(IndexOp::CeilDiv, Index::Dim(heads), c(bh as i64)),
        Index::Dim(splits),
    ]);
    let bi = Index::ProgramId(0);
    let h0 = b.let_index(
        "h0",
        Index::bin(IndexOp::Mul, Index::ProgramId(1), c(bh as i64)),
    );
    let split = Index::ProgramId(2);
    let qt = b
        .define(
            "qt",
            TileOp::Load {
                param: q,
                index: vec![Slice::At(bi.clone()), span(h0.clone(), bh), span(c(0), d)],
            },
        )
        .unwrap();
    let acc = b
        .define_typed(
            "acc",
            DType::F32,
            &[bh as i64, sh.lat as i64],
            TileOp::Full(lit(0.0)),
        )
        .unwrap();
    let m = b
        .define_typed("m", DType::F32, &[bh as i64], TileOp::Full(lit(-1.0e30)))
        .unwrap();
    let l = b
        .define_typed("l", DType::F32, &[bh as i64], TileOp::Full(lit(0.0)))
        .unwrap();
    let (_st, kv, valid) = b
        .begin_paged_blocks(
            "kv",
            cache,
            bi.clone(),
            split.clone(),
            Index::Dim(splits),
            bn as i64,
            2,
        )
        .unwrap();
    let kt = b.define("kt", TileOp::View(kv, ViewOp::Transpose)).unwrap();
    let s0 = b.define("s0", TileOp::Gemm { a: qt, b: kt }).unwrap();
    let sc = FScalar::Bin(
        BinaryOp::Mul,
        Box::new(FScalar::Param(scale)),
        Box::new(FScalar::Lit(LOG2_E)),
    );
    let s1 = b
        .define(
            "s1",
            TileOp::Binary(BinaryOp::Mul, t(s0), Operand::Scalar(sc)),
        )
        .unwrap();
    let vu = b
        .define("vu", TileOp::View(valid, ViewOp::Unsqueeze(0)))
        .unwrap();
    let s2 = b
        .define(
            "s2",
            TileOp::Select {
                mask: vu,
                on_true: t(s1),
                on_false: lit(-1.0e30),
            },
        )
        .unwrap();
    let rm = b
        .define(
            "rm",
            TileOp::Reduce {
                op: ReduceOp::Max,
                src: s2,
                axis: 1,
            },
        )
        .unwrap();
    let m_new = b
        .define("m_new", TileOp::Binary(BinaryOp::Max, t(m), t(rm)))
        .unwrap();
    let mu = b
        .define("mu", TileOp::View(m_new, ViewOp::Unsqueeze(1)))
        .unwrap();
    let dd = b
        .define("dd", TileOp::Binary(BinaryOp::Sub, t(s2), t(mu)))
        .unwrap();
    let p = b.define("p", TileOp::Unary(UnaryOp::Exp2, dd)).unwrap();
    let dm = b
        .define("dm", TileOp::Binary(BinaryOp::Sub, t(m), t(m_new)))
        .unwrap();
    let alpha = b.define("alpha", TileOp::Unary(UnaryOp::Exp2, dm)).unwrap();
    let la = b
        .define("la", TileOp::Binary(BinaryOp::Mul, t(l), t(alpha)))
        .unwrap();
    let rs = b
        .define(
            "rs",
            TileOp::Reduce {
                op: ReduceOp::Sum,
                src: p,
                axis: 1,
            },
        )
        .unwrap();
    b.assign(l, TileOp::Binary(BinaryOp::Add, t(la), t(rs)))
        .unwrap();
    let au = b
        .define("au", TileOp::View(alpha, ViewOp::Unsqueeze(1)))
        .unwrap();
    let aa = b
        .define("aa", TileOp::Binary(BinaryOp::Mul, t(acc), t(au)))
        .unwrap();
    let kvl = b
        .define(
            "kvl",
            TileOp::View(
                kv,
                ViewOp::Slice {
                    axis: 1,
                    start: 0,
                    len: sh.lat,
                },
            ),
        )
        .unwrap();
    let pv = b.define("pv", TileOp::Gemm { a: p, b: kvl }).unwrap();
    b.assign(acc, TileOp::Binary(BinaryOp::Add, t(aa), t(pv)))
        .unwrap();
    b.assign(m, TileOp::Binary(BinaryOp::Max, t(m_new), t(m_new)))
        .unwrap();
    b.end_loop().unwrap();
    let ls = b
        .define("ls", TileOp::Binary(BinaryOp::Max, t(l), lit(1.0e-30)))
        .unwrap();
    let lu = b
        .define("lu", TileOp::View(ls, ViewOp::Unsqueeze(1)))
        .unwrap();
    let o = b
        .define("o", TileOp::Binary(BinaryOp::Div, t(acc), t(lu)))
        .unwrap();
    b.store(
        out,
        vec![
            Slice::At(split.clone()),
            Slice::At(bi.clone()),
            span(h0.clone(), bh),
            span(c(0), sh.lat),
        ],
        o,
    )
    .unwrap();
    let lg = b.define("lg", TileOp::Unary(UnaryOp::Log2, ls)).unwrap();
    let e = b
        .define("e", TileOp::Binary(BinaryOp::Add, t(m), t(lg)))
        .unwrap();
    let e = b
        .define("e2", TileOp::Binary(BinaryOp::Mul, t(e), lit(LN_2)))
        .unwrap();
    b.store(lse, vec![Slice::At(split), Slice::At(bi), span(h0, bh)], e)
        .unwrap();
    b.finish().unwrap()
}

struct Problem {
    batch: usize,
    heads: usize,
    splits: usize,
    page: usize,
    lens: Vec<i32>,
    q: Vec<f32>,
    data: Vec<bf16>,
    table: Vec<i32>,
    pps: usize,
    pages: usize,
    scale: f32,
}

fn problem(
    sh: &Shape,
    batch: usize,
    heads: usize,
    splits: usize,
    page: usize,
    lens: Vec<i32>,
    seed: u64,
) -> Problem {
    let d = sh.lat + sh.rope;
    let mut s = seed | 1;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let pps = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(page))
        .max()
        .unwrap()
        .max(1);
    let pages = batch * pps;
    // Interleave sequences across pages so the table is not the identity.
    let table: Vec<i32> = (0..batch * pps)
        .map(|i| ((i % pps) * batch + i / pps) as i32)
        .collect();
    Problem {
        batch,
        heads,
        splits,
        page,
        q: (0..batch * heads * d).map(|_| rnd()).collect(),
        data: (0..pages * page * d)
            .map(|_| bf16::from_f32(rnd()))
            .collect(),
        lens,
        table,
        pps,
        pages,
        scale: 1.0 / (d as f32).sqrt(),
    }
}

/// The plain scalar Rust implementation (same blocking and online softmax as the kernel).
fn reference(sh: &Shape, pr: &Problem, out: &mut [f32], lse: &mut [f32]) {
    let d = sh.lat + sh.rope;
    let (bh, bn) = (sh.block_h, sh.block_n);
    let mut kv = vec![0.0f32; bn * d];
    let mut s = vec![0.0f32; bh * bn];
    let mut acc = vec![0.0f32; bh * sh.lat];
    for b in 0..pr.batch {
        for h0 in (0..pr.heads).step_by(bh) {
            for split in 0..pr.splits {
                let len = pr.lens[b] as i64;
                let per = IndexOp::CeilDiv.apply(len, pr.splits as i64);
                let chunk = IndexOp::CeilDiv.apply(per, bn as i64) * bn as i64;
                let lo = split as i64 * chunk;
                let hi = (lo + chunk).min(len);
                acc.fill(0.0);
                let mut m = vec![-1.0e30f32; bh];
                let mut l = vec![0.0f32; bh];
                let mut start = lo;
                while start < hi {
                    for r in 0..bn {
                        let tok = start + r as i64;
                        let row = &mut kv[r * d..(r + 1) * d];
                        if tok < hi {
                            let tok = tok as usize;
                            let pg = pr.table[b * pr.pps + tok / pr.page] as usize;
                            let o = (pg * pr.page + tok % pr.page) * d;
                            for j in 0..d {
                                row[j] = pr.data[o + j].to_f32();
                            }
                        } else {
                            row.fill(0.0);
                        }
                    }
                    for h in 0..bh {
                        let qo = (b * pr.heads + (h0 + h).min(pr.heads - 1)) * d;
                        let qrow = &pr.q[qo..qo + d];
                        for n in 0..bn {
                            let mut dot = 0.0f32;
                            for j in 0..d {
                                dot += qrow[j] * kv[n * d + j];
                            }
                            let valid = start + (n as i64) < hi;
                            s[h * bn + n] = if valid {
                                dot * (pr.scale * LOG2_E)
                            } else {
                                -1.0e30
                            };
                        }
                        let rm = s[h * bn..(h + 1) * bn]
                            .iter()
                            .cloned()
                            .fold(f32::NEG_INFINITY, f32::max);
                        let m_new = m[h].max(rm);
                        let alpha = (m[h] - m_new).exp2();
                        let mut rs = 0.0;
                        for n in 0..bn {
                            let p = (s[h * bn + n] - m_new).exp2();
                            s[h * bn + n] = p;
                            rs += p;
                        }
                        l[h] = l[h] * alpha + rs;
                        m[h] = m_new;
                        let a = &mut acc[h * sh.lat..(h + 1) * sh.lat];
                        for x in a.iter_mut() {
                            *x *= alpha;
                        }
                        for n in 0..bn {
                            let p = s[h * bn + n];
                            let kr = &kv[n * d..n * d + sh.lat];
                            for j in 0..sh.lat {
                                a[j] += p * kr[j];
                            }
                        }
                    }
                    start += bn as i64;
                }
                for h in 0..bh {
                    if h0 + h >= pr.heads {
                        continue;
                    }
                    let ls = l[h].max(1.0e-30);
                    let o = ((split * pr.batch + b) * pr.heads + h0 + h) * sh.lat;
                    for j in 0..sh.lat {
                        out[o + j] = acc[h * sh.lat + j] / ls;
                    }
                    lse[(split * pr.batch + b) * pr.heads + h0 + h] = (m[h] + ls.log2()) * LN_2;
                }
            }
        }
    }
}

fn run_jit(code: &CpuKernel, k: &Kernel, pr: &mut Problem, out: &mut [f32], lse: &mut [f32]) {
    let mut args = Vec::new();
    let dq = match &k.params[0].kind {
        ParamKind::Tensor { dims, .. } => match dims[2] {
            ParamDim::Const(c) => c,
            _ => unreachable!(),
        },
        _ => unreachable!(),
    };
    let lat = out.len() / (pr.splits * pr.batch * pr.heads);
    abi::push_tensor(&mut args, pr.q.as_ptr(), &[pr.batch, pr.heads, dq]);
    abi::push_paged(
        &mut args,
        pr.data.as_ptr(),
        pr.table.as_ptr(),
        pr.lens.as_ptr(),
        pr.page,
        pr.pps,
        pr.pages,
        pr.batch,
    );
    abi::push_tensor(
        &mut args,
        out.as_mut_ptr(),
        &[pr.splits, pr.batch, pr.heads, lat],
    );
    abi::push_tensor(
        &mut args,
        lse.as_mut_ptr(),
        &[pr.splits, pr.batch, pr.heads],
    );
    abi::push_f32(&mut args, pr.scale);
    let dims = [pr.batch as i64, pr.heads as i64, pr.splits as i64];
    let bh = k.tiles[0].shape[0] as i64; // qt [BLOCK_H, D]
    let grid = [
        pr.batch as i64,
        (pr.heads as i64 + bh - 1) / bh,
        pr.splits as i64,
    ];
    let n = code.scratch_bytes();
    let mut buf = vec![0u8; n + 64];
    let off = buf.as_ptr().align_offset(64);
    for z in 0..grid[2] {
        for y in 0..grid[1] {
            for x in 0..grid[0] {
                // SAFETY: `args` was packed per the ABI from live buffers of the declared shapes;
                // the block table covers every token below each sequence length.
                unsafe { code.run_program(&args, &dims, [x, y, z], &mut buf[off..off + n]) };
            }
        }
    }
}

fn compare(sh: &Shape, pr: &mut Problem) {
    let k = build(sh);
    let code = CpuKernel::compile(&k).unwrap();
    let n_out = pr.splits * pr.batch * pr.heads * sh.lat;
    let n_lse = pr.splits * pr.batch * pr.heads;
    let (mut o1, mut l1) = (vec![f32::NAN; n_out], vec![f32::NAN; n_lse]);
    let (mut o2, mut l2) = (vec![f32::NAN; n_out], vec![f32::NAN; n_lse]);
    run_jit(&code, &k, pr, &mut o1, &mut l1);
    reference(sh, pr, &mut o2, &mut l2);
    for (i, (a, b)) in o1.iter().zip(&o2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "out[{i}]: jit {a} vs ref {b}"
        );
    }
    for (i, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()) || (*a < -1e29 && *b < -1e29),
            "lse[{i}]: jit {a} vs ref {b}"
        );
    }
}

#[test]
fn latent_decode_matches_scalar_rust() {
    let sh = Shape {
        lat: 64,
        rope: 16,
        block_h: 16,
        block_n: 16,
    };
    for (page, splits) in [(1, 1), (16, 2), (64, 3)] {
        let mut pr = problem(&sh, 3, 16, splits, page, vec![100, 1, 37], 7 + page as u64);
        compare(&sh, &mut pr);
    }
    let sh = Shape {
        lat: 512,
        rope: 64,
        block_h: 16,
        block_n: 32,
    };
    let mut pr = problem(&sh, 2, 16, 2, 64, vec![200, 77], 3);
    compare(&sh, &mut pr);
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn latent_decode_bench() {
    for block_n in [32usize, 64] {
        let sh = Shape {
            lat: 512,
            rope: 64,
            block_h: 16,
            block_n,
        };
        let seq = 4096usize;
        let batch = 2usize;
        let mut pr = problem(&sh, batch, 16, 1, 64, vec![seq as i32; batch], 5);
        let k = build(&sh);
        let t0 = Instant::now();
        let code = CpuKernel::compile(&k).unwrap();
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let n_out = batch * 16 * sh.lat;
        let (mut o, mut l) = (vec![0.0; n_out], vec![0.0; batch * 16]);
        // Minimum over repetitions: the machine may be shared.
        let time = |f: &mut dyn FnMut()| {
            (0..7)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let jit = time(&mut || run_jit(&code, &k, &mut pr, &mut o, &mut l));
        let rs = time(&mut || reference(&sh, &pr, &mut o, &mut l));
        let flops = (batch * seq * 16 * 2 * (576 + 512)) as f64;
        println!(
            "BLOCK_N={block_n}: compile {compile_ms:.1} ms; jit {:.2} ms ({:.1} GFLOP/s), scalar rust {:.2} ms ({:.1} GFLOP/s), speedup {:.2}x",
            jit * 1e3,
            flops / jit / 1e9,
            rs * 1e3,
            flops / rs / 1e9,
            rs / jit
        );
    }
}
