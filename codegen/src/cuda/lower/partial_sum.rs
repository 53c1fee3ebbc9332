//! Row sums kept per warpgroup through a paged loop, combined once after it.
//!
//! Where warpgroups split a block's columns (`WG_SPLIT` below the block width), a row sum over
//! the block (`reduce_sum(p, 1)`) is a partial per warpgroup, which the general lowering combines
//! through shared memory behind a barrier, every block. The online softmax only accumulates that
//! sum into its carried denominator, `l = l · α + reduce_sum(p, 1)`, and reads `l` after the
//! loop: with `α` the same in every warpgroup (a row value, replicated like every row tile) and
//! `l` starting at zero, the warpgroups' partial denominators add up to the whole one at every
//! block (`Σ_w l_w · α + Σ_w t_w = (Σ_w l_w) · α + Σ_w t_w`), so each warpgroup keeps its own and
//! one exchange after the loop makes `l` whole: one barrier per block fewer. (The summation
//! order changes: `l` carries partial sums a warpgroup at a time, an f32 rounding difference.)
//!
//! [`partial_sums`] finds the pattern in the kernel's top-level paged loop: `t = reduce_sum(_, 1)`
//! used once, by `l = x + t` (either order); `l` read in the loop once, by `x = l · a` (either
//! order), whose result feeds only that sum; `l` assigned once in the loop and, before it, once
//! with zeros. Where the lowering then finds the columns split over warpgroups it keeps the
//! partial (`lower_reduce`) and emits the combine after the loop ([`Lower::combine_partial_sums`]).

use crate::cuda::elem::Elem;
use crate::cuda::lower::iter::Iter;
use crate::cuda::lower::Lower;
use crate::cuda::node::Node;
use crate::cuda::repr::Repr;
use crate::ir::*;
use crate::visit::{op_tiles, stmt_reads};

/// `(t, l)`: the row sum `t` that may stay a per-warpgroup partial, and the carried `l` it
/// accumulates into.
pub(crate) fn partial_sums(k: &Kernel, lp: &Stmt) -> Vec<(TileId, TileId)> {
    let Stmt::PagedBlocks { body, .. } = lp else {
        return vec![];
    };
    if !body.iter().all(|s| matches!(s, Stmt::Assign { .. })) {
        return vec![];
    }
    let uses = |t: TileId| -> Vec<(TileId, &TileOp)> {
        body.iter()
            .filter_map(|s| match s {
                Stmt::Assign { dst, op } if op_tiles(op).contains(&t) => Some((*dst, op)),
                _ => None,
            })
            .collect()
    };
    let assigned = |t: TileId| {
        body.iter()
            .filter(|s| matches!(s, Stmt::Assign { dst, .. } if *dst == t))
            .count()
    };
    let other = |x: &Operand, y: &Operand, t: TileId| match (x, y) {
        (Operand::Tile(p), Operand::Tile(q)) if *p == t && *q != t => Some(*q),
        (Operand::Tile(p), Operand::Tile(q)) if *q == t && *p != t => Some(*p),
        _ => None,
    };
    let mut found = vec![];
    for s in body {
        let Stmt::Assign {
            dst: t,
            op:
                TileOp::Reduce {
                    op: ReduceOp::Sum,
                    axis: 1,
                    ..
                },
        } = s
        else {
            continue;
        };
        // l = x + t
        let [(l, TileOp::Binary(BinaryOp::Add, p, q))] = uses(*t)[..] else {
            continue;
        };
        let Some(x) = other(p, q, *t) else { continue };
        // x = l · a, read only by that sum; l read in the loop only there, assigned only there.
        let [(x2, TileOp::Binary(BinaryOp::Mul, p, q))] = uses(l)[..] else {
            continue;
        };
        let only_sum = uses(x).len() == 1;
        if x2 != x || other(p, q, l).is_none() || !only_sum || assigned(l) != 1 || assigned(x) != 1
        {
            continue;
        }
        // Zeros before the loop, nothing else assigns it at the top level before the loop.
        let before: Vec<&Stmt> = k
            .body
            .iter()
            .take_while(|s| !std::ptr::eq(*s, lp))
            .filter(|s| matches!(s, Stmt::Assign { dst, .. } if *dst == l))
            .collect();
        let zero = matches!(
            before[..],
            [Stmt::Assign {
                op: TileOp::Full(Operand::Scalar(FScalar::Lit(v))),
                ..
            }] if *v == 0.0
        );
        // Nothing nested reads the partial (the body is flat; after the loop is combined).
        if zero
            && !body
                .iter()
                .any(|s| !matches!(s, Stmt::Assign { .. }) && stmt_reads(s).contains(&l))
        {
            found.push((*t, l));
        }
    }
    found
}

impl Lower<'_> {
    /// Whether row sum `dst` (of a `[m, n]` fragment whose columns `wn` warps split) stays a
    /// per-warpgroup partial: it is one of [`partial_sums`] and its carried sum lives in row
    /// registers like it. Records the carried sum for [`Lower::combine_partial_sums`].
    pub(crate) fn keep_partial_sum(&mut self, dst: TileId, m: usize, n: usize, wn: usize) -> bool {
        let Some(&(_, l)) = self.paging.partial_sums.iter().find(|(t, _)| *t == dst) else {
            return false;
        };
        if !matches!(&self.repr[l], Repr::Rows { m: ml, .. } if *ml == m) {
            return false;
        }
        if !self.paging.pending_sums.iter().any(|p| p.0 == l) {
            self.paging.pending_sums.push((l, m, n, wn));
        }
        true
    }

    /// After the paged loop: every carried sum whose per-block partials stayed per warpgroup
    /// (see the module docs) is made whole, each warpgroup's partial through shared memory.
    pub(crate) fn combine_partial_sums(&mut self, out: &mut Vec<Node>) {
        for (l, m, n, wn) in std::mem::take(&mut self.paging.pending_sums) {
            let Repr::Rows { arr, .. } = self.repr[l].clone() else {
                unreachable!("kept only for row registers")
            };
            let scratch = self.add_buf("lsum", Elem::F32, &[wn, m], 1, true);
            let sname = self.smem.bufs[scratch].name.clone();
            let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
            out.push(Node::Code {
                text: format!(
                    "if ((lane & 3) == 0 && wr{m}_{n} == 0) {{\n{rows}    {sname}[wn{m}_{n} * {m} + r_] = {arr}[mi * 2 + h];\n{end}\n}}\n"
                ),
                reads: vec![],
                writes: vec![scratch],
            });
            let mut v = format!("{sname}[r_]");
            for w in 1..wn {
                v = format!("({v} + {sname}[{} + r_])", w * m);
            }
            out.push(Node::Code {
                text: format!("{rows}    {arr}[mi * 2 + h] = {v};\n{end}\n"),
                reads: vec![scratch],
                writes: vec![],
            });
        }
    }
}
