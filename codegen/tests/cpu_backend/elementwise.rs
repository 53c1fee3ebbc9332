//! Element-wise kernels: masked loads and stores at tensor edges, strided and `At` loads,
//! broadcasting, integer tiles and casts, comparisons and select.

use super::helpers::*;
use tpla_codegen::cpu::abi;
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

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
