//! CPU backend tests: small kernels built with `KernelBuilder`, JIT-compiled, run program by
//! program on host buffers and compared with straightforward Rust.

#![allow(clippy::needless_range_loop)]

use half::bf16;
use tpla_codegen::cpu::{abi, CpuKernel};
use tpla_codegen::ir::*;
use tpla_codegen::{Config, KernelBuilder};

// ---------------------------------------------------------------- helpers

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never exactly zero.
    fn f(&mut self) -> f32 {
        let x = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if x == 0.0 {
            0.25
        } else {
            x
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn cfg() -> Config {
    Config::new()
}

fn c(i: i64) -> Index {
    Index::Const(i)
}
fn pid(a: u8) -> Index {
    Index::ProgramId(a)
}
fn add(a: Index, b: Index) -> Index {
    Index::bin(IndexOp::Add, a, b)
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
fn lit(x: f32) -> Operand {
    Operand::Scalar(FScalar::Lit(x))
}

/// Runs every program of `grid` with a fresh (poisoned) scratch buffer.
fn run(k: &Kernel, code: &CpuKernel, args: &[u64], dims: &[i64], grid: [i64; 3]) {
    let n = code.scratch_bytes();
    let mut buf = vec![0xFFu8; n + 64];
    let off = buf.as_ptr().align_offset(64);
    assert_eq!(abi::total_slots(k), args.len());
    for z in 0..grid[2] {
        for y in 0..grid[1] {
            for x in 0..grid[0] {
                let scratch = &mut buf[off..off + n];
                scratch.fill(0xFF); // NaN bits
                                    // SAFETY: the test builds `args` per the ABI from live buffers sized for the shapes.
                unsafe { code.run_program(args, dims, [x, y, z], scratch) };
            }
        }
    }
}

fn compile(k: &Kernel) -> CpuKernel {
    CpuKernel::compile(k).unwrap_or_else(|e| panic!("compile failed: {e}"))
}

fn close(got: f32, want: f32, tol: f32) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol * (1.0 + want.abs())
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, tol), "{what}: element {i}: got {g}, want {w}");
    }
}

// ---------------------------------------------------------------- tests

/// Loads a tile that crosses every edge of a runtime-shaped tensor; stores `2x + 1` back.
#[test]
fn masked_load_store_at_edges() {
    for (rows, cols, tr, tc) in [
        (5usize, 7usize, 4usize, 8usize),
        (9, 13, 4, 4),
        (3, 30, 2, 16),
        (6, 5, 1, 5),
    ] {
        let mut b = KernelBuilder::new("edges", &cfg());
        let r = b.dim("R");
        let cd = b.dim("C");
        let x = b.tensor(
            "x",
            DType::F32,
            vec![ParamDim::Runtime(r), ParamDim::Runtime(cd)],
            false,
        );
        let o = b.tensor(
            "o",
            DType::F32,
            vec![ParamDim::Runtime(r), ParamDim::Runtime(cd)],
            true,
        );
        let r0 = add(mul(pid(0), c(tr as i64)), c(-1));
        let c0 = add(mul(pid(1), c(tc as i64)), c(-2));
        let idx = vec![span(r0.clone(), tr), span(c0.clone(), tc)];
        let v = b
            .define(
                "v",
                TileOp::Load {
                    param: x,
                    index: idx.clone(),
                },
            )
            .unwrap();
        let w = b
            .define("w", TileOp::Binary(BinaryOp::Mul, t(v), lit(2.0)))
            .unwrap();
        let w2 = b
            .define("w2", TileOp::Binary(BinaryOp::Add, t(w), lit(1.0)))
            .unwrap();
        b.store(o, idx, w2).unwrap();
        let k = b.finish().unwrap();
        let code = compile(&k);
        let mut rng = Rng::new(1);
        let xs = rng.vec(rows * cols);
        let mut os = vec![f32::NAN; rows * cols];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, xs.as_ptr(), &[rows, cols]);
        abi::push_tensor(&mut args, os.as_mut_ptr(), &[rows, cols]);
        let g0 = (rows + 1).div_ceil(tr) as i64 + 1;
        let g1 = (cols + 2).div_ceil(tc) as i64 + 1;
        run(&k, &code, &args, &[rows as i64, cols as i64], [g0, g1, 1]);
        let mut want = vec![f32::NAN; rows * cols];
        for p0 in 0..g0 {
            for p1 in 0..g1 {
                for i in 0..tr as i64 {
                    for j in 0..tc as i64 {
                        let (ri, cj) = (p0 * tr as i64 - 1 + i, p1 * tc as i64 - 2 + j);
                        if ri >= 0 && cj >= 0 && (ri as usize) < rows && (cj as usize) < cols {
                            let e = ri as usize * cols + cj as usize;
                            want[e] = xs[e] * 2.0 + 1.0;
                        }
                    }
                }
            }
        }
        assert_close(
            &os,
            &want,
            1e-6,
            &format!("edges {rows}x{cols} tile {tr}x{tc}"),
        );
    }
}

/// A rank-1 tile taken along a non-contiguous axis (a column) plus `At` indices out of range.
#[test]
fn strided_and_at_loads() {
    let mut b = KernelBuilder::new("col", &cfg());
    let x = b.tensor(
        "x",
        DType::F32,
        vec![ParamDim::Const(6), ParamDim::Const(5)],
        false,
    );
    let o = b.tensor(
        "o",
        DType::F32,
        vec![ParamDim::Const(7), ParamDim::Const(8)],
        true,
    );
    // column pid0 of x, rows -1..7 -> o[pid0, 0..8]
    let v = b
        .define(
            "v",
            TileOp::Load {
                param: x,
                index: vec![span(c(-1), 8), Slice::At(pid(0))],
            },
        )
        .unwrap();
    b.store(o, vec![Slice::At(pid(0)), span(c(0), 8)], v)
        .unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let xs = Rng::new(2).vec(30);
    let mut os = vec![f32::NAN; 56];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[6, 5]);
    abi::push_tensor(&mut args, os.as_mut_ptr(), &[7, 8]);
    run(&k, &code, &args, &[], [7, 1, 1]);
    for p in 0..7 {
        for j in 0..8 {
            let r = j as i64 - 1;
            let want = if p < 5 && (0..6).contains(&r) {
                xs[r as usize * 5 + p]
            } else {
                0.0
            };
            assert_eq!(os[p * 8 + j], want, "col {p} row {j}");
        }
    }
}

/// NumPy broadcasting: [R, C] with [C], [R, 1] and scalars; min/max; int tiles.
#[test]
fn binary_broadcast() {
    for (rr, cc) in [(4usize, 6usize), (3, 9), (5, 1), (1, 12)] {
        let mut b = KernelBuilder::new("bcast", &cfg());
        let x = b.tensor(
            "x",
            DType::F32,
            vec![ParamDim::Const(rr), ParamDim::Const(cc)],
            false,
        );
        let y = b.tensor("y", DType::F32, vec![ParamDim::Const(cc)], false);
        let z = b.tensor(
            "z",
            DType::F32,
            vec![ParamDim::Const(rr), ParamDim::Const(1)],
            false,
        );
        let s = b.scalar("s", DType::F32);
        let o = b.tensor(
            "o",
            DType::F32,
            vec![ParamDim::Const(4), ParamDim::Const(rr), ParamDim::Const(cc)],
            true,
        );
        let xt = b
            .define(
                "xt",
                TileOp::Load {
                    param: x,
                    index: vec![span(c(0), rr), span(c(0), cc)],
                },
            )
            .unwrap();
        let yt = b
            .define(
                "yt",
                TileOp::Load {
                    param: y,
                    index: vec![span(c(0), cc)],
                },
            )
            .unwrap();
        let zt = b
            .define(
                "zt",
                TileOp::Load {
                    param: z,
                    index: vec![span(c(0), rr), span(c(0), 1)],
                },
            )
            .unwrap();
        let a1 = b
            .define("a1", TileOp::Binary(BinaryOp::Add, t(xt), t(yt)))
            .unwrap();
        let a2 = b
            .define("a2", TileOp::Binary(BinaryOp::Mul, t(a1), t(zt)))
            .unwrap();
        let a3 = b
            .define(
                "a3",
                TileOp::Binary(BinaryOp::Sub, t(a2), Operand::Scalar(FScalar::Param(s))),
            )
            .unwrap();
        let m1 = b
            .define("m1", TileOp::Binary(BinaryOp::Max, t(yt), t(xt)))
            .unwrap();
        let m2 = b
            .define("m2", TileOp::Binary(BinaryOp::Min, t(zt), t(xt)))
            .unwrap();
        let d1 = b
            .define("d1", TileOp::Binary(BinaryOp::Div, lit(1.5), t(xt)))
            .unwrap();
        for (i, tt) in [a3, m1, m2, d1].into_iter().enumerate() {
            b.store(
                o,
                vec![Slice::At(c(i as i64)), span(c(0), rr), span(c(0), cc)],
                tt,
            )
            .unwrap();
        }
        let k = b.finish().unwrap();
        let code = compile(&k);
        let mut rng = Rng::new(3);
        let (xs, ys, zs) = (rng.vec(rr * cc), rng.vec(cc), rng.vec(rr));
        let sv = 0.375f32;
        let mut os = vec![f32::NAN; 4 * rr * cc];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, xs.as_ptr(), &[rr, cc]);
        abi::push_tensor(&mut args, ys.as_ptr(), &[cc]);
        abi::push_tensor(&mut args, zs.as_ptr(), &[rr, 1]);
        abi::push_f32(&mut args, sv);
        abi::push_tensor(&mut args, os.as_mut_ptr(), &[4, rr, cc]);
        run(&k, &code, &args, &[], [1, 1, 1]);
        let mut want = vec![0.0; 4 * rr * cc];
        for i in 0..rr {
            for j in 0..cc {
                let e = i * cc + j;
                want[e] = (xs[e] + ys[j]) * zs[i] - sv;
                want[rr * cc + e] = ys[j].max(xs[e]);
                want[2 * rr * cc + e] = zs[i].min(xs[e]);
                want[3 * rr * cc + e] = 1.5 / xs[e];
            }
        }
        assert_close(&os, &want, 1e-6, &format!("broadcast {rr}x{cc}"));
    }
}

/// Integer tiles: arithmetic with a broadcast int scalar, division by zero, casts both ways.
#[test]
fn int_tiles_and_casts() {
    let n = 11usize;
    let mut b = KernelBuilder::new("ints", &cfg());
    let x = b.tensor("x", DType::I32, vec![ParamDim::Const(n)], false);
    let y = b.tensor("y", DType::I32, vec![ParamDim::Const(n)], false);
    let f = b.tensor("f", DType::F32, vec![ParamDim::Const(n)], false);
    let oi = b.tensor(
        "oi",
        DType::I32,
        vec![ParamDim::Const(4), ParamDim::Const(n)],
        true,
    );
    let of = b.tensor("of", DType::F32, vec![ParamDim::Const(n)], true);
    let xt = b
        .define(
            "xt",
            TileOp::Load {
                param: x,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    let yt = b
        .define(
            "yt",
            TileOp::Load {
                param: y,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    let ft = b
        .define(
            "ft",
            TileOp::Load {
                param: f,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    let s = b
        .define(
            "s",
            TileOp::Binary(BinaryOp::Mul, t(xt), Operand::Int(c(3))),
        )
        .unwrap();
    let s = b
        .define("s2", TileOp::Binary(BinaryOp::Sub, t(s), t(yt)))
        .unwrap();
    let d = b
        .define("d", TileOp::Binary(BinaryOp::Div, t(xt), t(yt)))
        .unwrap();
    let mx = b
        .define("mx", TileOp::Binary(BinaryOp::Max, t(xt), t(yt)))
        .unwrap();
    let ci = b
        .define_typed("ci", DType::I32, &[n as i64], TileOp::Cast(ft))
        .unwrap();
    let cf = b
        .define_typed("cf", DType::F32, &[n as i64], TileOp::Cast(xt))
        .unwrap();
    for (i, tt) in [s, d, mx, ci].into_iter().enumerate() {
        b.store(oi, vec![Slice::At(c(i as i64)), span(c(0), n)], tt)
            .unwrap();
    }
    b.store(of, vec![span(c(0), n)], cf).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let xs: Vec<i32> = vec![7, -7, 100, i32::MIN, 5, 0, 3, -9, 12, 13, 14];
    let ys: Vec<i32> = vec![2, 2, 0, -1, -3, 4, 0, 2, 5, 6, 7];
    let fs: Vec<f32> = vec![
        1.9,
        -1.9,
        3e10,
        f32::NAN,
        -0.5,
        7.0,
        2.5,
        -3e10,
        0.0,
        1.0,
        -8.75,
    ];
    let mut oi_v = vec![-1i32; 4 * n];
    let mut of_v = vec![f32::NAN; n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[n]);
    abi::push_tensor(&mut args, ys.as_ptr(), &[n]);
    abi::push_tensor(&mut args, fs.as_ptr(), &[n]);
    abi::push_tensor(&mut args, oi_v.as_mut_ptr(), &[4, n]);
    abi::push_tensor(&mut args, of_v.as_mut_ptr(), &[n]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for i in 0..n {
        assert_eq!(
            oi_v[i],
            xs[i].wrapping_mul(3).wrapping_sub(ys[i]),
            "mul-sub {i}"
        );
        assert_eq!(
            oi_v[n + i],
            xs[i].checked_div(ys[i]).unwrap_or(0),
            "div {i}"
        );
        assert_eq!(oi_v[2 * n + i], xs[i].max(ys[i]), "max {i}");
        assert_eq!(oi_v[3 * n + i], fs[i] as i32, "cast f32->i32 {i}");
        assert_eq!(of_v[i], xs[i] as f32, "cast i32->f32 {i}");
    }
}

/// Comparisons (float and int) and select with broadcasting.
#[test]
fn compare_select() {
    let (rr, cc) = (3usize, 10usize);
    let mut b = KernelBuilder::new("cmp", &cfg());
    let x = b.tensor(
        "x",
        DType::F32,
        vec![ParamDim::Const(rr), ParamDim::Const(cc)],
        false,
    );
    let y = b.tensor("y", DType::F32, vec![ParamDim::Const(cc)], false);
    let o = b.tensor(
        "o",
        DType::F32,
        vec![ParamDim::Const(3), ParamDim::Const(rr), ParamDim::Const(cc)],
        true,
    );
    let xt = b
        .define(
            "xt",
            TileOp::Load {
                param: x,
                index: vec![span(c(0), rr), span(c(0), cc)],
            },
        )
        .unwrap();
    let yt = b
        .define(
            "yt",
            TileOp::Load {
                param: y,
                index: vec![span(c(0), cc)],
            },
        )
        .unwrap();
    let m = b
        .define("m", TileOp::Compare(CmpOp::Gt, t(xt), t(yt)))
        .unwrap();
    let s1 = b
        .define(
            "s1",
            TileOp::Select {
                mask: m,
                on_true: t(xt),
                on_false: lit(-5.0),
            },
        )
        .unwrap();
    let ii = b
        .define_typed(
            "ii",
            DType::I32,
            &[rr as i64, cc as i64],
            TileOp::Iota { axis: 1 },
        )
        .unwrap();
    let m2 = b
        .define("m2", TileOp::Compare(CmpOp::Lt, t(ii), Operand::Int(c(4))))
        .unwrap();
    let s2 = b
        .define(
            "s2",
            TileOp::Select {
                mask: m2,
                on_true: t(yt),
                on_false: t(xt),
            },
        )
        .unwrap();
    let m3 = b
        .define("m3", TileOp::Compare(CmpOp::Le, t(xt), lit(0.0)))
        .unwrap();
    let s3 = b
        .define_typed("s3", DType::F32, &[rr as i64, cc as i64], TileOp::Cast(m3))
        .unwrap();
    for (i, tt) in [s1, s2, s3].into_iter().enumerate() {
        b.store(
            o,
            vec![Slice::At(c(i as i64)), span(c(0), rr), span(c(0), cc)],
            tt,
        )
        .unwrap();
    }
    let k = b.finish().unwrap();
    let code = compile(&k);
    let mut rng = Rng::new(4);
    let (xs, ys) = (rng.vec(rr * cc), rng.vec(cc));
    let mut os = vec![f32::NAN; 3 * rr * cc];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[rr, cc]);
    abi::push_tensor(&mut args, ys.as_ptr(), &[cc]);
    abi::push_tensor(&mut args, os.as_mut_ptr(), &[3, rr, cc]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for i in 0..rr {
        for j in 0..cc {
            let e = i * cc + j;
            assert_eq!(os[e], if xs[e] > ys[j] { xs[e] } else { -5.0 });
            assert_eq!(os[rr * cc + e], if j < 4 { ys[j] } else { xs[e] });
            assert_eq!(os[2 * rr * cc + e], if xs[e] <= 0.0 { 1.0 } else { 0.0 });
        }
    }
}

/// Sum and max along both axes of rank-2 tiles, and of rank-1 tiles, including views.
#[test]
fn reductions() {
    for (rr, cc) in [(5usize, 7usize), (8, 12), (1, 9), (6, 1), (16, 64)] {
        let mut b = KernelBuilder::new("red", &cfg());
        let x = b.tensor(
            "x",
            DType::F32,
            vec![ParamDim::Const(rr), ParamDim::Const(cc)],
            false,
        );
        let o_r = b.tensor(
            "orow",
            DType::F32,
            vec![ParamDim::Const(3), ParamDim::Const(rr)],
            true,
        );
        let o_c = b.tensor(
            "ocol",
            DType::F32,
            vec![ParamDim::Const(3), ParamDim::Const(cc)],
            true,
        );
        let o_s = b.tensor("os", DType::F32, vec![ParamDim::Const(2)], true);
        let xt = b
            .define(
                "xt",
                TileOp::Load {
                    param: x,
                    index: vec![span(c(0), rr), span(c(0), cc)],
                },
            )
            .unwrap();
        let sr = b
            .define(
                "sr",
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    src: xt,
                    axis: 1,
                },
            )
            .unwrap();
        let mr = b
            .define(
                "mr",
                TileOp::Reduce {
                    op: ReduceOp::Max,
                    src: xt,
                    axis: 1,
                },
            )
            .unwrap();
        let sc = b
            .define(
                "sc",
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    src: xt,
                    axis: 0,
                },
            )
            .unwrap();
        let mc = b
            .define(
                "mc",
                TileOp::Reduce {
                    op: ReduceOp::Max,
                    src: xt,
                    axis: 0,
                },
            )
            .unwrap();
        let xtt = b
            .define("xtt", TileOp::View(xt, ViewOp::Transpose))
            .unwrap();
        // Reducing the transpose along axis 1 = column sums through a strided view.
        let st = b
            .define(
                "st",
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    src: xtt,
                    axis: 1,
                },
            )
            .unwrap();
        let mt = b
            .define(
                "mt",
                TileOp::Reduce {
                    op: ReduceOp::Max,
                    src: xtt,
                    axis: 0,
                },
            )
            .unwrap();
        let tot = b
            .define(
                "tot",
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    src: sr,
                    axis: 0,
                },
            )
            .unwrap();
        let mx = b
            .define(
                "mx",
                TileOp::Reduce {
                    op: ReduceOp::Max,
                    src: mc,
                    axis: 0,
                },
            )
            .unwrap();
        b.store(o_r, vec![Slice::At(c(0)), span(c(0), rr)], sr)
            .unwrap();
        b.store(o_r, vec![Slice::At(c(1)), span(c(0), rr)], mr)
            .unwrap();
        b.store(o_r, vec![Slice::At(c(2)), span(c(0), rr)], mt)
            .unwrap();
        b.store(o_c, vec![Slice::At(c(0)), span(c(0), cc)], sc)
            .unwrap();
        b.store(o_c, vec![Slice::At(c(1)), span(c(0), cc)], mc)
            .unwrap();
        b.store(o_c, vec![Slice::At(c(2)), span(c(0), cc)], st)
            .unwrap();
        b.store(o_s, vec![Slice::At(c(0))], tot).unwrap();
        b.store(o_s, vec![Slice::At(c(1))], mx).unwrap();
        let k = b.finish().unwrap();
        let code = compile(&k);
        let xs = Rng::new(5).vec(rr * cc);
        let mut orv = vec![f32::NAN; 3 * rr];
        let mut ocv = vec![f32::NAN; 3 * cc];
        let mut osv = vec![f32::NAN; 2];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, xs.as_ptr(), &[rr, cc]);
        abi::push_tensor(&mut args, orv.as_mut_ptr(), &[3, rr]);
        abi::push_tensor(&mut args, ocv.as_mut_ptr(), &[3, cc]);
        abi::push_tensor(&mut args, osv.as_mut_ptr(), &[2]);
        run(&k, &code, &args, &[], [1, 1, 1]);
        let row = |i: usize| &xs[i * cc..(i + 1) * cc];
        let mut want_r = vec![0.0; 3 * rr];
        let mut want_c = vec![0.0; 3 * cc];
        for i in 0..rr {
            want_r[i] = row(i).iter().sum();
            want_r[rr + i] = row(i).iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            want_r[2 * rr + i] = want_r[rr + i];
        }
        for j in 0..cc {
            want_c[j] = (0..rr).map(|i| xs[i * cc + j]).sum();
            want_c[cc + j] = (0..rr)
                .map(|i| xs[i * cc + j])
                .fold(f32::NEG_INFINITY, f32::max);
            want_c[2 * cc + j] = want_c[j];
        }
        let tot: f32 = xs.iter().sum();
        let mx = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let what = format!("reduce {rr}x{cc}");
        assert_close(&orv, &want_r, 1e-5, &what);
        assert_close(&ocv, &want_c, 1e-5, &what);
        assert_close(&osv, &[tot, mx], 1e-5, &what);
    }
}

/// How the gemm operands are presented.
#[derive(Clone, Copy, Debug)]
enum GemmForm {
    /// a [M,K], b [K,N] dense.
    Nn,
    /// b given as the transpose of a [N,K] tile (the q @ kv.t() form).
    Nt,
    /// b a column slice of a wider [K, N + 5] tile, starting at column 3.
    NnSliced,
    /// a given as the transpose of a [K,M] tile, b dense.
    TransA,
    /// a and b both transposed views (scalar path).
    TransBoth,
}

fn gemm_case(m: usize, k: usize, n: usize, form: GemmForm) {
    let mut b = KernelBuilder::new("gemm", &cfg());
    let (ar, ac) = match form {
        GemmForm::TransA | GemmForm::TransBoth => (k, m),
        _ => (m, k),
    };
    let (br, bc) = match form {
        GemmForm::Nt | GemmForm::TransBoth => (n, k),
        GemmForm::NnSliced => (k, n + 5),
        _ => (k, n),
    };
    let pa = b.tensor(
        "a",
        DType::F32,
        vec![ParamDim::Const(ar), ParamDim::Const(ac)],
        false,
    );
    let pb = b.tensor(
        "b",
        DType::BF16,
        vec![ParamDim::Const(br), ParamDim::Const(bc)],
        false,
    );
    let po = b.tensor(
        "o",
        DType::F32,
        vec![ParamDim::Const(m), ParamDim::Const(n)],
        true,
    );
    let at = b
        .define(
            "at",
            TileOp::Load {
                param: pa,
                index: vec![span(c(0), ar), span(c(0), ac)],
            },
        )
        .unwrap();
    let bt = b
        .define(
            "bt",
            TileOp::Load {
                param: pb,
                index: vec![span(c(0), br), span(c(0), bc)],
            },
        )
        .unwrap();
    let av = match form {
        GemmForm::TransA | GemmForm::TransBoth => {
            b.define("av", TileOp::View(at, ViewOp::Transpose)).unwrap()
        }
        _ => at,
    };
    let bv = match form {
        GemmForm::Nt | GemmForm::TransBoth => {
            b.define("bv", TileOp::View(bt, ViewOp::Transpose)).unwrap()
        }
        GemmForm::NnSliced => b
            .define(
                "bv",
                TileOp::View(
                    bt,
                    ViewOp::Slice {
                        axis: 1,
                        start: 3,
                        len: n,
                    },
                ),
            )
            .unwrap(),
        _ => bt,
    };
    let s = b.define("s", TileOp::Gemm { a: av, b: bv }).unwrap();
    b.store(po, vec![span(c(0), m), span(c(0), n)], s).unwrap();
    let kern = b.finish().unwrap();
    let code = compile(&kern);
    let mut rng = Rng::new((m * 1000 + k * 10 + n) as u64);
    let a_host = rng.vec(ar * ac);
    let b_host: Vec<bf16> = rng.vec(br * bc).into_iter().map(bf16::from_f32).collect();
    let mut o = vec![f32::NAN; m * n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, a_host.as_ptr(), &[ar, ac]);
    abi::push_tensor(&mut args, b_host.as_ptr(), &[br, bc]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[m, n]);
    run(&kern, &code, &args, &[], [1, 1, 1]);
    let a_at = |i: usize, kk: usize| match form {
        GemmForm::TransA | GemmForm::TransBoth => a_host[kk * ac + i],
        _ => a_host[i * ac + kk],
    };
    let b_at = |kk: usize, j: usize| {
        match form {
            GemmForm::Nt | GemmForm::TransBoth => b_host[j * bc + kk],
            GemmForm::NnSliced => b_host[kk * bc + 3 + j],
            _ => b_host[kk * bc + j],
        }
        .to_f32()
    };
    let mut want = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for kk in 0..k {
                s += a_at(i, kk) as f64 * b_at(kk, j) as f64;
            }
            want[i * n + j] = s as f32;
        }
    }
    assert_close(
        &o,
        &want,
        1e-5 * (k as f32).sqrt(),
        &format!("gemm {m}x{k}x{n} {form:?}"),
    );
}

#[test]
fn gemm_forms_and_sizes() {
    let forms = [
        GemmForm::Nn,
        GemmForm::Nt,
        GemmForm::NnSliced,
        GemmForm::TransA,
        GemmForm::TransBoth,
    ];
    for (m, k, n) in [
        (1, 1, 1),
        (3, 4, 5),
        (5, 7, 9),
        (2, 9, 3),
        (4, 8, 8),
        (7, 13, 17),
        (16, 40, 24),
    ] {
        for form in forms {
            gemm_case(m, k, n, form);
        }
    }
}

#[test]
fn gemm_latent_shapes() {
    // The latent-decode shapes: s = q @ kv.t(), o = p @ kv[:, :512] (scaled down in K for speed).
    gemm_case(16, 576, 64, GemmForm::Nt);
    gemm_case(16, 64, 512, GemmForm::NnSliced);
    gemm_case(16, 32, 128, GemmForm::Nn);
}

/// `x = gemm(x, w)`: the destination is also an operand.
#[test]
fn gemm_in_place() {
    let n = 6usize;
    let mut b = KernelBuilder::new("gip", &cfg());
    let px = b.tensor(
        "x",
        DType::F32,
        vec![ParamDim::Const(n), ParamDim::Const(n)],
        false,
    );
    let po = b.tensor(
        "o",
        DType::F32,
        vec![ParamDim::Const(n), ParamDim::Const(n)],
        true,
    );
    let x = b
        .define(
            "x",
            TileOp::Load {
                param: px,
                index: vec![span(c(0), n), span(c(0), n)],
            },
        )
        .unwrap();
    let w = b
        .define(
            "w",
            TileOp::Load {
                param: px,
                index: vec![span(c(0), n), span(c(0), n)],
            },
        )
        .unwrap();
    b.assign(x, TileOp::Gemm { a: x, b: w }).unwrap();
    b.store(po, vec![span(c(0), n), span(c(0), n)], x).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let xs = Rng::new(9).vec(n * n);
    let mut o = vec![f32::NAN; n * n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[n, n]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[n, n]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    let mut want = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            want[i * n + j] = (0..n).map(|kk| xs[i * n + kk] * xs[kk * n + j]).sum();
        }
    }
    assert_close(&o, &want, 1e-5, "gemm in place");
}

/// f32 -> bf16 tile -> bf16 tensor: round to nearest even at the store; NaN stays NaN.
#[test]
fn bf16_store_rounding() {
    let n = 37usize;
    let mut b = KernelBuilder::new("bf", &cfg());
    let px = b.tensor("x", DType::F32, vec![ParamDim::Const(n)], false);
    let po = b.tensor(
        "o",
        DType::BF16,
        vec![ParamDim::Const(2), ParamDim::Const(n)],
        true,
    );
    let x = b
        .define(
            "x",
            TileOp::Load {
                param: px,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    let h = b
        .define_typed("h", DType::BF16, &[n as i64], TileOp::Cast(x))
        .unwrap();
    b.store(po, vec![Slice::At(c(0)), span(c(0), n)], h)
        .unwrap();
    // A strided (scalar path) store of the same values: column view of an [n, 1] tile.
    let h2 = b
        .define("h2", TileOp::View(h, ViewOp::Unsqueeze(0)))
        .unwrap();
    b.store(po, vec![span(c(1), 1), span(c(0), n)], h2).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let mut xs = Rng::new(11).vec(n);
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x3F80_8000), // tie, even -> down
        f32::from_bits(0x3F81_8000), // tie, odd -> up
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x7F7F_FFFF), // rounds to inf
        -0.0,
        f32::from_bits(0x0000_8000), // subnormal tie
        f32::from_bits(0xFFC0_0001), // negative NaN with payload
    ];
    xs[..specials.len()].copy_from_slice(&specials);
    let mut o = vec![bf16::from_bits(0x1234); 2 * n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[n]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[2, n]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for r in 0..2 {
        for i in 0..n {
            let want = bf16::from_f32(xs[i]);
            let got = o[r * n + i];
            if want.is_nan() {
                assert!(
                    got.is_nan(),
                    "row {r} elem {i}: NaN expected, got {:#x}",
                    got.to_bits()
                );
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "row {r} elem {i}: x = {:#x}",
                    xs[i].to_bits()
                );
            }
        }
    }
}

/// Iota along both axes and `full` of every kind.
#[test]
fn iota_and_full() {
    let mut b = KernelBuilder::new("iota", &cfg());
    let po = b.tensor(
        "o",
        DType::I32,
        vec![ParamDim::Const(3), ParamDim::Const(3), ParamDim::Const(5)],
        true,
    );
    let pf = b.tensor("f", DType::F32, vec![ParamDim::Const(6)], true);
    let i0 = b
        .define_typed("i0", DType::I32, &[3, 5], TileOp::Iota { axis: 0 })
        .unwrap();
    let i1 = b
        .define_typed("i1", DType::I32, &[3, 5], TileOp::Iota { axis: 1 })
        .unwrap();
    let fi = b
        .define_typed(
            "fi",
            DType::I32,
            &[3, 5],
            TileOp::Full(Operand::Int(add(pid(0), c(41)))),
        )
        .unwrap();
    for (i, tt) in [i0, i1, fi].into_iter().enumerate() {
        b.store(
            po,
            vec![Slice::At(c(i as i64)), span(c(0), 3), span(c(0), 5)],
            tt,
        )
        .unwrap();
    }
    let ff = b
        .define_typed(
            "ff",
            DType::F32,
            &[6],
            TileOp::Full(Operand::Scalar(FScalar::Bin(
                BinaryOp::Mul,
                Box::new(FScalar::FromIndex(c(3))),
                Box::new(FScalar::Unary(UnaryOp::Sqrt, Box::new(FScalar::Lit(4.0)))),
            ))),
        )
        .unwrap();
    b.store(pf, vec![span(c(0), 6)], ff).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let mut o = vec![-7i32; 45];
    let mut f = vec![f32::NAN; 6];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[3, 3, 5]);
    abi::push_tensor(&mut args, f.as_mut_ptr(), &[6]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for i in 0..3 {
        for j in 0..5 {
            assert_eq!(o[i * 5 + j], i as i32);
            assert_eq!(o[15 + i * 5 + j], j as i32);
            assert_eq!(o[30 + i * 5 + j], 41);
        }
    }
    assert_eq!(f, vec![6.0; 6]);
}

/// Unary functions including the special values of exp2 / log2.
#[test]
fn unary_functions() {
    let n = 13usize;
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp2,
        UnaryOp::Log2,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Recip,
    ];
    let mut b = KernelBuilder::new("un", &cfg());
    let px = b.tensor("x", DType::F32, vec![ParamDim::Const(n)], false);
    let po = b.tensor(
        "o",
        DType::F32,
        vec![ParamDim::Const(ops.len()), ParamDim::Const(n)],
        true,
    );
    let x = b
        .define(
            "x",
            TileOp::Load {
                param: px,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    for (i, op) in ops.iter().enumerate() {
        let y = b.define("y", TileOp::Unary(*op, x)).unwrap();
        b.store(po, vec![Slice::At(c(i as i64)), span(c(0), n)], y)
            .unwrap();
    }
    let k = b.finish().unwrap();
    let code = compile(&k);
    let xs = vec![
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        2.5,
        -3.25,
        0.125,
        100.0,
        -100.0,
        7.0,
        f32::INFINITY,
        1e-3,
        0.5,
    ];
    let mut o = vec![f32::NAN; ops.len() * n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[n]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[ops.len(), n]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for (i, op) in ops.iter().enumerate() {
        let want: Vec<f32> = xs.iter().map(|&x| op.apply(x)).collect();
        assert_close(&o[i * n..(i + 1) * n], &want, 1e-6, op.name());
    }
    assert_eq!(o[n], 0.0, "exp2(-inf)");
    assert_eq!(o[2 * n + 1], f32::NEG_INFINITY, "log2(0)");
}

/// A runtime `for` loop accumulating rows; index arithmetic on runtime values.
#[test]
fn for_loop_accumulates() {
    let w = 10usize;
    let mut b = KernelBuilder::new("forl", &cfg());
    let nd = b.dim("N");
    let px = b.tensor(
        "x",
        DType::BF16,
        vec![ParamDim::Runtime(nd), ParamDim::Const(w)],
        false,
    );
    let po = b.tensor("o", DType::F32, vec![ParamDim::Const(w)], true);
    let acc = b
        .define_typed("acc", DType::F32, &[w as i64], TileOp::Full(lit(0.0)))
        .unwrap();
    let r = b.begin_for("r", c(0), Index::Dim(nd));
    let row = b
        .define(
            "row",
            TileOp::Load {
                param: px,
                index: vec![Slice::At(r), span(c(0), w)],
            },
        )
        .unwrap();
    let rowf = b
        .define_typed("rowf", DType::F32, &[w as i64], TileOp::Cast(row))
        .unwrap();
    b.assign(acc, TileOp::Binary(BinaryOp::Add, t(acc), t(rowf)))
        .unwrap();
    b.end_loop().unwrap();
    b.store(po, vec![span(c(0), w)], acc).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    for rows in [0usize, 1, 7] {
        let xs: Vec<bf16> = Rng::new(12)
            .vec(rows * w)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let mut o = vec![f32::NAN; w];
        let mut args = Vec::new();
        abi::push_tensor(&mut args, xs.as_ptr(), &[rows, w]);
        abi::push_tensor(&mut args, o.as_mut_ptr(), &[w]);
        run(&k, &code, &args, &[rows as i64], [1, 1, 1]);
        let want: Vec<f32> = (0..w)
            .map(|j| (0..rows).map(|i| xs[i * w + j].to_f32()).sum())
            .collect();
        assert_close(&o, &want, 1e-6, &format!("for loop over {rows} rows"));
    }
}

/// `Index::Load` out of range reads 0; division by zero in index arithmetic yields 0.
#[test]
fn index_load_and_division() {
    let mut b = KernelBuilder::new("idx", &cfg());
    let zd = b.dim("Z");
    let md = b.dim("M");
    let pi = b.tensor("idx", DType::I32, vec![ParamDim::Const(4)], false);
    let _pz = b.tensor(
        "zshape",
        DType::I32,
        vec![ParamDim::Runtime(zd), ParamDim::Runtime(md)],
        false,
    );
    let po = b.tensor(
        "o",
        DType::I32,
        vec![ParamDim::Const(8), ParamDim::Const(6)],
        true,
    );
    let v = b.let_index(
        "v",
        Index::Load {
            param: pi,
            index: vec![add(pid(0), c(-1))],
        },
    );
    let z = Index::Dim(zd);
    let m = Index::Dim(md);
    let vals = [
        v,
        Index::bin(IndexOp::Div, c(7), z.clone()),
        Index::bin(IndexOp::Rem, c(7), z.clone()),
        Index::bin(IndexOp::CeilDiv, c(7), z),
        Index::bin(IndexOp::CeilDiv, add(pid(0), c(-5)), m.clone()),
        Index::bin(IndexOp::Div, add(pid(0), c(-5)), m),
    ];
    for (i, val) in vals.into_iter().enumerate() {
        let tt = b
            .define_typed("t", DType::I32, &[1], TileOp::Full(Operand::Int(val)))
            .unwrap();
        b.store(po, vec![Slice::At(pid(0)), span(c(i as i64), 1)], tt)
            .unwrap();
    }
    let k = b.finish().unwrap();
    let code = compile(&k);
    let idx = [10, 20, 30, 40];
    let zs: Vec<i32> = vec![];
    let mut o = vec![-99i32; 48];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, idx.as_ptr(), &[4]);
    abi::push_tensor(&mut args, zs.as_ptr(), &[0, 3]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[8, 6]);
    run(&k, &code, &args, &[0, 3], [8, 1, 1]);
    for p in 0..8i64 {
        let row = &o[p as usize * 6..p as usize * 6 + 6];
        let want_v = if (1..=4).contains(&p) {
            idx[p as usize - 1]
        } else {
            0
        };
        let x = p - 5;
        assert_eq!(
            row,
            &[
                want_v,
                0,
                0,
                0,
                IndexOp::CeilDiv.apply(x, 3) as i32,
                IndexOp::Div.apply(x, 3) as i32
            ],
            "program {p}"
        );
    }
}

struct PagedCache {
    data: Vec<bf16>,
    table: Vec<i32>,
    lens: Vec<i32>,
    page: usize,
    pps: usize,
    pages: usize,
}

fn paged_cache(rng: &mut Rng, row: usize, page: usize, lens: &[i32]) -> PagedCache {
    let pps = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(page))
        .max()
        .unwrap_or(0)
        .max(1)
        + 1;
    let pages = lens.len() * pps + 3;
    // A random permutation of pages for the table.
    let mut perm: Vec<i32> = (0..pages as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let table = perm[..lens.len() * pps].to_vec();
    let data = rng
        .vec(pages * page * row)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    PagedCache {
        data,
        table,
        lens: lens.to_vec(),
        page,
        pps,
        pages,
    }
}

impl PagedCache {
    fn row(&self, b: usize, tok: usize, row: usize) -> &[bf16] {
        let p = self.table[b * self.pps + tok / self.page] as usize;
        let o = (p * self.page + tok % self.page) * row;
        &self.data[o..o + row]
    }
    fn push(&mut self, args: &mut Vec<u64>) {
        abi::push_paged(
            args,
            self.data.as_mut_ptr(),
            self.table.as_ptr(),
            self.lens.as_ptr(),
            self.page,
            self.pps,
            self.pages,
            self.lens.len(),
        );
    }
}

/// Streams the blocks of every split; checks row sums, valid counts, block starts and that rows
/// past the range are zero.
#[test]
fn paged_blocks_splits() {
    let row = 20usize;
    let block = 16usize;
    for page in [1usize, 16, 64] {
        for splits in [1i64, 3] {
            let mut b = KernelBuilder::new("pb", &cfg());
            let cache = b.paged("kv", DType::BF16, row as i64, false).unwrap();
            let ns = b.scalar("num_splits", DType::I32);
            let bd = b.dim("B");
            let sd = b.dim("S");
            let po = b.tensor(
                "o",
                DType::F32,
                vec![
                    ParamDim::Runtime(bd),
                    ParamDim::Runtime(sd),
                    ParamDim::Const(row + 2),
                ],
                true,
            );
            let acc = b
                .define_typed("acc", DType::F32, &[row as i64], TileOp::Full(lit(0.0)))
                .unwrap();
            let cnt = b
                .define_typed("cnt", DType::F32, &[], TileOp::Full(lit(0.0)))
                .unwrap();
            let starts = b
                .define_typed("starts", DType::F32, &[], TileOp::Full(lit(0.0)))
                .unwrap();
            let (st, kv, valid) = b
                .begin_paged_blocks(
                    "kv",
                    cache,
                    pid(0),
                    pid(1),
                    Index::Scalar(ns),
                    block as i64,
                    2,
                )
                .unwrap();
            let rs = b
                .define(
                    "rs",
                    TileOp::Reduce {
                        op: ReduceOp::Sum,
                        src: kv,
                        axis: 0,
                    },
                )
                .unwrap();
            b.assign(acc, TileOp::Binary(BinaryOp::Add, t(acc), t(rs)))
                .unwrap();
            let vf = b
                .define_typed("vf", DType::F32, &[block as i64], TileOp::Cast(valid))
                .unwrap();
            let vs = b
                .define(
                    "vs",
                    TileOp::Reduce {
                        op: ReduceOp::Sum,
                        src: vf,
                        axis: 0,
                    },
                )
                .unwrap();
            b.assign(cnt, TileOp::Binary(BinaryOp::Add, t(cnt), t(vs)))
                .unwrap();
            b.assign(
                starts,
                TileOp::Binary(
                    BinaryOp::Add,
                    t(starts),
                    Operand::Scalar(FScalar::FromIndex(st)),
                ),
            )
            .unwrap();
            b.end_loop().unwrap();
            b.store(
                po,
                vec![Slice::At(pid(0)), Slice::At(pid(1)), span(c(0), row)],
                acc,
            )
            .unwrap();
            b.store(
                po,
                vec![
                    Slice::At(pid(0)),
                    Slice::At(pid(1)),
                    Slice::At(c(row as i64)),
                ],
                cnt,
            )
            .unwrap();
            b.store(
                po,
                vec![
                    Slice::At(pid(0)),
                    Slice::At(pid(1)),
                    Slice::At(c(row as i64 + 1)),
                ],
                starts,
            )
            .unwrap();
            let k = b.finish().unwrap();
            let code = compile(&k);
            let mut rng = Rng::new(page as u64 * 7 + splits as u64);
            let lens = [37, 100, 0, 16];
            let mut pc = paged_cache(&mut rng, row, page, &lens);
            let nb = lens.len();
            let mut o = vec![f32::NAN; nb * splits as usize * (row + 2)];
            let mut args = Vec::new();
            pc.push(&mut args);
            abi::push_i32(&mut args, splits as i32);
            abi::push_tensor(&mut args, o.as_mut_ptr(), &[nb, splits as usize, row + 2]);
            run(
                &k,
                &code,
                &args,
                &[nb as i64, splits],
                [nb as i64, splits, 1],
            );
            for (bi, &len) in lens.iter().enumerate() {
                let len = len as i64;
                let per = IndexOp::CeilDiv.apply(len, splits);
                let chunk = IndexOp::CeilDiv.apply(per, block as i64) * block as i64;
                for s in 0..splits {
                    let lo = s * chunk;
                    let hi = (lo + chunk).min(len);
                    let mut want = vec![0.0f32; row + 2];
                    let mut blk = lo;
                    while blk < hi {
                        want[row + 1] += blk as f32;
                        blk += block as i64;
                    }
                    for tok in lo..hi.max(lo) {
                        for (j, x) in pc.row(bi, tok as usize, row).iter().enumerate() {
                            want[j] += x.to_f32();
                        }
                        want[row] += 1.0;
                    }
                    let at = (bi * splits as usize + s as usize) * (row + 2);
                    assert_close(
                        &o[at..at + row + 2],
                        &want,
                        1e-5,
                        &format!("page {page} splits {splits} b {bi} s {s}"),
                    );
                }
            }
        }
    }
}

/// Writes rows at token positions, skipping those outside `[0, seq_len)`.
#[test]
fn paged_store_rows() {
    let row = 12usize;
    let n = 5usize;
    for page in [1usize, 4, 16] {
        let mut b = KernelBuilder::new("ps", &cfg());
        let cache = b.paged("kv", DType::BF16, row as i64, true).unwrap();
        let px = b.tensor(
            "x",
            DType::F32,
            vec![ParamDim::Const(n), ParamDim::Const(row)],
            false,
        );
        let pst = b.tensor("start", DType::I32, vec![ParamDim::Const(3)], false);
        let x = b
            .define(
                "x",
                TileOp::Load {
                    param: px,
                    index: vec![span(c(0), n), span(c(0), row)],
                },
            )
            .unwrap();
        let x = b
            .define_typed("xb", DType::BF16, &[n as i64, row as i64], TileOp::Cast(x))
            .unwrap();
        b.paged_store(
            cache,
            pid(0),
            Index::Load {
                param: pst,
                index: vec![pid(0)],
            },
            x,
        )
        .unwrap();
        let k = b.finish().unwrap();
        let code = compile(&k);
        let mut rng = Rng::new(21 + page as u64);
        let lens = [9, 3, 20];
        let starts = [6i32, -2, 0];
        let mut pc = paged_cache(&mut rng, row, page, &lens);
        let before = pc.data.clone();
        let xs = rng.vec(n * row);
        let mut args = Vec::new();
        pc.push(&mut args);
        abi::push_tensor(&mut args, xs.as_ptr(), &[n, row]);
        abi::push_tensor(&mut args, starts.as_ptr(), &[3]);
        run(&k, &code, &args, &[], [3, 1, 1]);
        let mut want = before.clone();
        for bi in 0..3 {
            for r in 0..n {
                let tok = starts[bi] as i64 + r as i64;
                if tok >= 0 && tok < lens[bi] as i64 {
                    let p = pc.table[bi * pc.pps + tok as usize / page] as usize;
                    let o = (p * page + tok as usize % page) * row;
                    for j in 0..row {
                        want[o + j] = bf16::from_f32(xs[r * row + j]);
                    }
                }
            }
        }
        assert!(
            pc.data
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "paged store, page {page}"
        );
    }
}

#[test]
fn clif_text_is_available() {
    let mut b = KernelBuilder::new("tiny", &cfg());
    let po = b.tensor("o", DType::F32, vec![ParamDim::Const(4)], true);
    let z = b
        .define_typed("z", DType::F32, &[4], TileOp::Full(lit(1.0)))
        .unwrap();
    b.store(po, vec![span(c(0), 4)], z).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    assert!(code.clif().contains("function"), "{}", code.clif());
    assert!(code.scratch_bytes().is_multiple_of(64) && code.scratch_bytes() >= 16);
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<CpuKernel>();
}

/// exp2 over its whole range (vector lanes and scalar remainder) against `f32::exp2`.
#[test]
fn exp2_accuracy_sweep() {
    let mut xs: Vec<f32> = (0..1200).map(|i| -160.0 + i as f32 * 0.2417).collect();
    xs.extend([
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        127.7,
        127.99,
        128.0,
        -126.5,
        -149.2,
        -149.9,
        0.0,
        -0.0,
    ]);
    xs.extend((0..200).map(|i| -1.0 + i as f32 * 0.01));
    let n = xs.len();
    let mut b = KernelBuilder::new("exp2", &cfg());
    let px = b.tensor("x", DType::F32, vec![ParamDim::Const(n)], false);
    let po = b.tensor("o", DType::F32, vec![ParamDim::Const(n)], true);
    let x = b
        .define(
            "x",
            TileOp::Load {
                param: px,
                index: vec![span(c(0), n)],
            },
        )
        .unwrap();
    let y = b.define("y", TileOp::Unary(UnaryOp::Exp2, x)).unwrap();
    b.store(po, vec![span(c(0), n)], y).unwrap();
    let k = b.finish().unwrap();
    let code = compile(&k);
    let mut o = vec![0.0f32; n];
    let mut args = Vec::new();
    abi::push_tensor(&mut args, xs.as_ptr(), &[n]);
    abi::push_tensor(&mut args, o.as_mut_ptr(), &[n]);
    run(&k, &code, &args, &[], [1, 1, 1]);
    for (x, got) in xs.iter().zip(&o) {
        let want = x.exp2();
        let ok = if want.is_nan() {
            got.is_nan()
        } else if want.is_infinite() || want == 0.0 {
            *got == want
        } else if want < f32::MIN_POSITIVE {
            (got - want).abs() <= 2.0 * f32::from_bits(1)
        } else {
            ((got - want) / want).abs() <= 4.0 * f32::EPSILON
        };
        assert!(ok, "exp2({x}) = {got}, want {want}");
    }
}
