//! What `TPLA_DUMP=clif` prints names the kernel and its config, not Cranelift's `u0:0`.

use tpla_codegen::cpu::CpuKernel;
use tpla_codegen::ir::*;
use tpla_codegen::{Config, KernelBuilder};

#[test]
fn clif_function_is_named_after_the_kernel_and_config() {
    let cfg = Config::new().with("BLOCK", 4);
    let mut b = KernelBuilder::new("twice", &cfg);
    let n = b.dim("n");
    let x = b.tensor("x", DType::F32, vec![ParamDim::Runtime(n)], false);
    let y = b.tensor("y", DType::F32, vec![ParamDim::Runtime(n)], true);
    let start = Index::bin(IndexOp::Mul, Index::ProgramId(0), Index::Const(4));
    let idx = vec![Slice::Span { start, len: 4 }];
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
        .define(
            "w",
            TileOp::Binary(
                BinaryOp::Mul,
                Operand::Tile(v),
                Operand::Scalar(FScalar::Lit(2.0)),
            ),
        )
        .unwrap();
    b.store(y, idx, w).unwrap();
    b.grid([Index::Dim(n), Index::Const(1), Index::Const(1)]);
    let k = b.finish().unwrap();
    let code = CpuKernel::compile(&k).unwrap();
    let first = code.clif().lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("function %twice[BLOCK=4]("), "{first}");
}
