//! Sum and max reductions of rank-1 and rank-2 tiles.

use super::helpers::*;
use tpla_codegen::cpu::abi;
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

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
