//! Tile gemm in every operand form (dense, transposed, sliced) and in place.

use super::helpers::*;
use half::bf16;
use tpla_codegen::cpu::abi;
use tpla_codegen::ir::*;
use tpla_codegen::KernelBuilder;

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
