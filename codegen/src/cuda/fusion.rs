//! Fusion pass: element-wise chains computed in registers, one loop per chain.
//!
//! Without it every element-wise op writes its own shared-memory tile in its own flat loop and
//! the next op reads it back: a chain of `n` ops is `n` loops, `n` stores and `n` loads per
//! element, each load waiting on the store before it. In a one-program kernel such as
//! `split_schedule` that chain is the whole run time (Nsight Compute, H100, 2026-12-05: 27 us,
//! 40 k cycles on one SM at 7.7 cycles per issued instruction, nearly all of it these loops).
//!
//! A tile is *fused* into its consumer when its value can be recomputed at the consumer's
//! element instead of being stored: its expression is then printed inside the consumer's loop
//! (`lower/elementwise.rs`) and the tile gets no buffer and no loop of its own. The rule, all of
//! it checked here:
//! - the tile is assigned once, by a unary, binary, compare, select or cast op, and is read once,
//!   by another such op of the same shape in the same statement list (not inside a loop the
//!   definition is outside of, nor the other way round);
//! - it is f32, i32 or bool (what its buffer would hold exactly: a bf16 tile's store rounds);
//! - it and its consumer and its operands live in shared memory or inline (not in a gemm's
//!   fragment or row registers, whose iteration is not the flat one);
//! - nothing between the chain's first definition and the consumer reassigns a tile the chain
//!   reads, defines a scalar, stores to memory or opens a loop;
//! - it is not inside a paged block loop (the decode kernels' hot loops keep their schedule).

use crate::cuda::layout::Lay;
use crate::ir::*;
use crate::visit::{any_stmt, op_tiles, stmt_reads};

/// Whether `op` is lowered element for element from operands of its own shape (broadcast).
fn elementwise(op: &TileOp) -> bool {
    matches!(
        op,
        TileOp::Unary(..)
            | TileOp::Binary(..)
            | TileOp::Compare(..)
            | TileOp::Select { .. }
            | TileOp::Cast(..)
    )
}

/// Whether a tile of layout `l` is iterated flat (shared memory or inline).
fn flat(l: Lay) -> bool {
    matches!(l, Lay::Any | Lay::Bottom | Lay::Smem)
}

/// The fusion pass: `fused[t]` says tile `t` is computed inside its single consumer's loop.
pub(crate) fn fused_tiles(k: &Kernel, assigns: &[usize], uses: &[usize], lay: &[Lay]) -> Vec<bool> {
    let mut fused = vec![false; k.tiles.len()];
    let cx = Cx {
        k,
        assigns,
        uses,
        lay,
    };
    cx.block(&k.body, &mut fused);
    fused
}

struct Cx<'a> {
    k: &'a Kernel,
    assigns: &'a [usize],
    uses: &'a [usize],
    lay: &'a [Lay],
}

impl Cx<'_> {
    fn block(&self, body: &[Stmt], fused: &mut [bool]) {
        // For each fused tile: its chain's first statement (index in `body`) and the tiles its
        // expression reads that are not fused (its leaves).
        let mut chain: Vec<Option<(usize, Vec<TileId>)>> = vec![None; self.k.tiles.len()];
        for (i, s) in body.iter().enumerate() {
            match s {
                Stmt::For { body, .. } => self.block(body, fused),
                Stmt::Assign { dst, op } => {
                    if let Some((start, leaves)) = self.candidate(body, i, *dst, op, &chain) {
                        fused[*dst] = true;
                        chain[*dst] = Some((start, leaves));
                    }
                }
                // The paged loops (decode kernels) keep their schedule: no fusion inside.
                _ => {}
            }
        }
    }

    /// The chain start and leaves of `dst = op` at `body[i]` where it can be fused.
    fn candidate(
        &self,
        body: &[Stmt],
        i: usize,
        dst: TileId,
        op: &TileOp,
        chain: &[Option<(usize, Vec<TileId>)>],
    ) -> Option<(usize, Vec<TileId>)> {
        let tile = &self.k.tiles[dst];
        if !elementwise(op)
            || self.assigns[dst] != 1
            || self.uses[dst] != 1
            || !matches!(tile.dtype, DType::F32 | DType::I32 | DType::Bool)
            || !flat(self.lay[dst])
        {
            return None;
        }
        let operands = op_tiles(op);
        if operands.iter().any(|&o| !flat(self.lay[o])) {
            return None;
        }
        // The consumer: the next statement of this list that reads `dst`.
        let j = (i + 1..body.len()).find(|&j| reads(&body[j], dst))?;
        let Stmt::Assign {
            dst: user,
            op: user_op,
        } = &body[j]
        else {
            return None;
        };
        if !elementwise(user_op)
            || self.k.tiles[*user].shape != tile.shape
            || !flat(self.lay[*user])
        {
            return None;
        }
        let mut start = i;
        let mut leaves = Vec::new();
        for o in operands {
            match &chain[o] {
                Some((s, l)) => {
                    start = start.min(*s);
                    leaves.extend(l.iter().copied());
                }
                None => leaves.push(o),
            }
        }
        // Between the chain's first definition and the consumer: no reassigned leaf, no scalar
        // definition, no store, no loop. (A leaf that is a view cannot change under it: a view
        // and the tile it views are both assigned once, which validation enforces.)
        let clear = body[start + 1..j].iter().all(|s| match s {
            Stmt::Assign { dst: d, .. } => !leaves.contains(d),
            _ => false,
        });
        clear.then_some((start, leaves))
    }
}

/// Whether statement `s` (or anything nested in it) reads tile `t`.
fn reads(s: &Stmt, t: TileId) -> bool {
    any_stmt(std::slice::from_ref(s), &mut |x| stmt_reads(x).contains(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::analysis::analyse;
    use crate::cuda::layout::layouts;

    /// `b = a + 1; c = b * 2; d = c - a; store d` and, in a loop, `e = a * 3; a2 = e + 1` where
    /// the loop also reassigns `a2`'s operand in between (not fused).
    fn chain_kernel() -> Kernel {
        use crate::builder::KernelBuilder;
        let mut kb = KernelBuilder::new("chain", &crate::Config::new());
        let x = kb.tensor("x", DType::F32, vec![ParamDim::Const(64)], false);
        let y = kb.tensor("y", DType::F32, vec![ParamDim::Const(64)], true);
        let span = || {
            vec![Slice::Span {
                start: Index::Const(0),
                len: 64,
            }]
        };
        let lit = |v: f32| Operand::Scalar(FScalar::Lit(v));
        let a = kb
            .define(
                "a",
                TileOp::Load {
                    param: x,
                    index: span(),
                },
            )
            .unwrap();
        let b = kb
            .define(
                "b",
                TileOp::Binary(BinaryOp::Add, Operand::Tile(a), lit(1.0)),
            )
            .unwrap();
        let c = kb
            .define(
                "c",
                TileOp::Binary(BinaryOp::Mul, Operand::Tile(b), lit(2.0)),
            )
            .unwrap();
        let d = kb
            .define(
                "d",
                TileOp::Binary(BinaryOp::Sub, Operand::Tile(c), Operand::Tile(a)),
            )
            .unwrap();
        kb.store(y, span(), d).unwrap();
        // A reassigned operand between definition and use: `e` reads `m`, `m` changes, then
        // `f` reads `e`: `e` must keep its own buffer.
        let m = kb
            .define(
                "m",
                TileOp::Binary(BinaryOp::Add, Operand::Tile(a), lit(0.0)),
            )
            .unwrap();
        let e = kb
            .define(
                "e",
                TileOp::Binary(BinaryOp::Mul, Operand::Tile(m), lit(3.0)),
            )
            .unwrap();
        kb.assign(m, TileOp::Binary(BinaryOp::Add, Operand::Tile(a), lit(5.0)))
            .unwrap();
        let f = kb
            .define(
                "f",
                TileOp::Binary(BinaryOp::Add, Operand::Tile(e), Operand::Tile(m)),
            )
            .unwrap();
        kb.store(y, span(), f).unwrap();
        kb.finish().unwrap()
    }

    #[test]
    fn single_use_chains_fuse_and_a_reassigned_operand_stops_them() {
        let k = chain_kernel();
        let info = analyse(&k);
        let lay = layouts(&k);
        let fused = fused_tiles(&k, &info.assigns, &info.uses, &lay);
        let names: Vec<&str> = (0..k.tiles.len())
            .filter(|&t| fused[t])
            .map(|t| k.tiles[t].name.as_str())
            .collect();
        // `b` and `c` (read once each, by an element-wise op of their shape); not `a` (a load,
        // read by several), not `d` / `f` (stored), not `e` (its operand `m` is reassigned
        // before `f` reads it), not `m` (assigned twice).
        assert_eq!(names, ["b", "c"]);
    }
}
