//! Reductions along an axis (op family `reduce`).

use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::Variable;

use super::elementwise::Src;
use super::{mem, Lower};
use crate::error::IrError;
use crate::ir::*;

impl Lower<'_, '_> {
    /// `dst = reduce(src)` along `axis`.
    pub(in crate::cpu) fn reduce(
        &mut self,
        dst: TileId,
        op: ReduceOp,
        src: TileId,
        axis: usize,
    ) -> Result<(), IrError> {
        let sl = self.layout(src);
        let rank = sl.shape.len();
        let bop = match op {
            ReduceOp::Sum => BinaryOp::Add,
            ReduceOp::Max => BinaryOp::Max,
        };
        let init = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
        };
        let d = self.dst(dst);
        if rank == 2 && axis == 0 {
            // dst[j] = op over i of src[i, j]: accumulate rows into dst.
            let z = self.b.ins().f32const(init);
            self.elementwise(d, &[Src::Splat(z)], true, &mut |_, v, _| v[0]);
            let sbase = self.scratch_at(sl.offset);
            let (s0, s1) = (
                sl.strides[0],
                if sl.shape[1] == 1 { 0 } else { sl.strides[1] },
            );
            self.for_const(0, sl.shape[0] as i64, 1, |l, i| {
                let o = l.b.ins().imul_imm_s(i, (s0 * 4) as i64);
                let row = l.b.ins().iadd(sbase, o);
                let acc = Src::Tile {
                    base: d.base,
                    strides: d.strides,
                    ty: types::F32,
                };
                let s = Src::Tile {
                    base: row,
                    strides: [0, s1],
                    ty: types::F32,
                };
                l.elementwise(d, &[acc, s], true, &mut |l, v, vec| {
                    l.float_binary(bop, v[0], v[1], vec)
                });
            });
            return Ok(());
        }
        // Reduce along the innermost axis: rows of length n.
        let ([r, n], [s0, s1]) = sl.rank2();
        let s1 = if n == 1 { 0 } else { s1 };
        let sbase = self.scratch_at(sl.offset);
        let dstride = if r == 1 { 0 } else { d.strides[1].max(1) };
        let vec = s1 == 1 && n >= 4;
        self.for_const(0, r as i64, 1, |l, i| {
            let o = l.b.ins().imul_imm_s(i, (s0 * 4) as i64);
            let row = l.b.ins().iadd(sbase, o);
            let mut acc = l.f32c(init, false);
            let mut done = 0usize;
            if vec {
                let n4 = n / 4 * 4;
                let var: Variable = l.b.declare_var(types::F32X4);
                let a0 = l.f32c(init, true);
                l.b.def_var(var, a0);
                l.for_const(0, n4 as i64, 4, |l, j| {
                    let j4 = l.b.ins().imul_imm_s(j, 4);
                    let a = l.b.ins().iadd(row, j4);
                    let x = l.b.ins().load(types::F32X4, mem(), a, 0);
                    let cur = l.b.use_var(var);
                    let nx = l.float_binary(bop, cur, x, true);
                    l.b.def_var(var, nx);
                });
                let v = l.b.use_var(var);
                let lanes: Vec<Value> = (0..4u8).map(|k| l.b.ins().extractlane(v, k)).collect();
                let p = l.float_binary(bop, lanes[0], lanes[1], false);
                let q = l.float_binary(bop, lanes[2], lanes[3], false);
                acc = l.float_binary(bop, p, q, false);
                done = n4;
            }
            if n - done <= 8 {
                for j in done..n {
                    let x = l.b.ins().load(types::F32, mem(), row, (j * s1 * 4) as i32);
                    acc = l.float_binary(bop, acc, x, false);
                }
            } else {
                let var: Variable = l.b.declare_var(types::F32);
                l.b.def_var(var, acc);
                l.for_const(done as i64, n as i64, 1, |l, j| {
                    let o = l.b.ins().imul_imm_s(j, (s1 * 4) as i64);
                    let a = l.b.ins().iadd(row, o);
                    let x = l.b.ins().load(types::F32, mem(), a, 0);
                    let cur = l.b.use_var(var);
                    let nx = l.float_binary(bop, cur, x, false);
                    l.b.def_var(var, nx);
                });
                acc = l.b.use_var(var);
            }
            let o = l.b.ins().imul_imm_s(i, (dstride * 4) as i64);
            let a = l.b.ins().iadd(d.base, o);
            l.b.ins().store(mem(), acc, a, 0);
        });
        Ok(())
    }
}
