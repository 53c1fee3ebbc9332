//! Control flow and index arithmetic: runtime `for` loops, `Index::Load`, index division and
//! the CLIF text of a compiled kernel.

use super::helpers::*;
use half::bf16;
use tpla_codegen::cpu::{abi, CpuKernel};
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

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
