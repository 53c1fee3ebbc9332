//! Produced values: bf16 store rounding, iota and `full`, unary functions and an exp2 sweep.

use super::helpers::*;
use half::bf16;
use tpla_codegen::cpu::abi;
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

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
