//! The tile-IR rewrite before the CUDA passes: in every `for` loop body, each tile load moves up
//! to the start of its iteration, ahead of the statements it does not depend on.
//!
//! A loop body written as the math reads a value, computes with it, reads the next: the
//! combine's `w = exp2(load(lse) − m)` then `acc + load(part) · w`. Printed in that order NVCC
//! keeps the second load behind the first one's use (each is guarded by its bounds test, and a
//! guarded load is not moved above the instructions before it), so every iteration waits for
//! two round trips to memory one after the other (the split combine, sm_90a SASS, 2026-12-08:
//! `LDG` of the log-sum-exp, `FADD`/`MUFU.EX2` on it, only then the partials' `LDG`s). With the
//! loads first, both go out together and the iteration waits once.
//!
//! A load `dst = load(param[index])` moves above a statement of the same body unless that
//! statement (or a statement nested in it) reads or assigns `dst`, defines a scalar the index
//! reads (a `let` or a loop variable), or stores to `param` or to a tensor the index reads
//! (`Index::Load`). Loads keep their order among themselves. Only `for` bodies are rewritten:
//! the kernel's top level and paged loop bodies stay as written (the decode kernel's source does
//! not change). The other passes run on the rewritten kernel, so the shared-memory plan and
//! the barriers see the new order.

use crate::ir::{Index, Kernel, ParamId, ScalarId, Slice, Stmt, TileId, TileOp};
use crate::visit::{stmt_reads, stmt_writes, walk_stmts};

/// `k` with the loads of every `for` body first (see the module docs); `None` where no load
/// moves.
pub(crate) fn loads_first(k: &Kernel) -> Option<Kernel> {
    let mut out = k.clone();
    reorder_nested(&mut out.body).then_some(out)
}

/// Rewrites the `for` bodies inside `body` (at any depth); whether any statement moved.
fn reorder_nested(body: &mut [Stmt]) -> bool {
    let mut moved = false;
    for s in body.iter_mut() {
        match s {
            Stmt::For { body: inner, .. } => {
                moved |= reorder_nested(inner);
                moved |= loads_up(inner);
            }
            Stmt::PagedBlocks { body: inner, .. } => moved |= reorder_nested(inner),
            _ => {}
        }
    }
    moved
}

/// A tile load's facts: what it assigns, reads from and which scalars its index uses.
struct LoadFacts {
    dst: TileId,
    params: Vec<ParamId>,
    scalars: Vec<ScalarId>,
}

fn load_facts(s: &Stmt) -> Option<LoadFacts> {
    let Stmt::Assign {
        dst,
        op: TileOp::Load { param, index },
    } = s
    else {
        return None;
    };
    let mut facts = LoadFacts {
        dst: *dst,
        params: vec![*param],
        scalars: vec![],
    };
    for sl in index {
        match sl {
            Slice::At(i) | Slice::Span { start: i, .. } => index_uses(i, &mut facts),
        }
    }
    Some(facts)
}

/// The scalars and `i32` tensors index `i` reads.
fn index_uses(i: &Index, f: &mut LoadFacts) {
    match i {
        Index::Var(v) => f.scalars.push(*v),
        Index::Bin(_, a, b) => {
            index_uses(a, f);
            index_uses(b, f);
        }
        Index::SeqLen { batch, .. } => index_uses(batch, f),
        Index::Load { param, index } => {
            f.params.push(*param);
            for j in index {
                index_uses(j, f);
            }
        }
        Index::Const(_)
        | Index::ProgramId(_)
        | Index::Dim(_)
        | Index::PageSize(_)
        | Index::Scalar(_) => {}
    }
}

/// Whether load `l` may not move above `s` (or anything nested in it).
fn blocks(s: &Stmt, l: &LoadFacts) -> bool {
    let mut hit = false;
    walk_stmts(std::slice::from_ref(s), &mut |t| {
        hit |= stmt_reads(t).contains(&l.dst) || stmt_writes(t).contains(&l.dst);
        hit |= match t {
            Stmt::Let { dst, .. } | Stmt::For { var: dst, .. } => l.scalars.contains(dst),
            Stmt::PagedBlocks { start, .. } => l.scalars.contains(start),
            Stmt::Store { param, .. } => l.params.contains(param),
            Stmt::PagedStore { cache, .. } => l.params.contains(cache),
            Stmt::Assign { .. } => false,
        };
    });
    hit
}

/// Moves each load of `body` (its top level) above the statements before it that do not
/// [`blocks`] it, behind the loads already moved; whether any moved.
fn loads_up(body: &mut Vec<Stmt>) -> bool {
    let mut out: Vec<Stmt> = Vec::with_capacity(body.len());
    // `out[..floor]`: the loads placed so far and what they had to stay behind.
    let mut floor = 0;
    let mut moved = false;
    for s in body.drain(..) {
        let Some(l) = load_facts(&s) else {
            out.push(s);
            continue;
        };
        let mut at = out.len();
        while at > floor && !blocks(&out[at - 1], &l) {
            at -= 1;
        }
        moved |= at < out.len();
        out.insert(at, s);
        floor = at + 1;
    }
    *body = out;
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, Operand};

    fn load(dst: TileId, param: ParamId, at: Index) -> Stmt {
        Stmt::Assign {
            dst,
            op: TileOp::Load {
                param,
                index: vec![
                    Slice::At(at),
                    Slice::Span {
                        start: Index::Const(0),
                        len: 8,
                    },
                ],
            },
        }
    }

    fn add(dst: TileId, a: TileId, b: TileId) -> Stmt {
        Stmt::Assign {
            dst,
            op: TileOp::Binary(BinaryOp::Add, Operand::Tile(a), Operand::Tile(b)),
        }
    }

    fn dsts(body: &[Stmt]) -> Vec<TileId> {
        body.iter()
            .map(|s| match s {
                Stmt::Assign { dst, .. } => *dst,
                _ => usize::MAX,
            })
            .collect()
    }

    /// The combine's shape: `w = f(load lse)`, `acc = acc + load(part) · w`: the second load
    /// goes up beside the first.
    #[test]
    fn a_load_moves_above_arithmetic_it_does_not_read() {
        let mut body = vec![
            load(1, 0, Index::Var(0)),
            add(2, 1, 1),
            add(3, 3, 2),
            load(4, 1, Index::Var(0)),
            add(5, 5, 4),
        ];
        assert!(loads_up(&mut body));
        assert_eq!(dsts(&body), vec![1, 4, 2, 3, 5]);
        // A second run moves nothing.
        assert!(!loads_up(&mut body));
    }

    /// A load stays behind what reads or assigns its tile (the previous iteration's value), a
    /// `let` its index reads, and a store to the tensor it reads.
    #[test]
    fn a_load_stays_behind_what_it_depends_on() {
        let mut body = vec![add(2, 4, 4), load(4, 1, Index::Var(0))];
        assert!(!loads_up(&mut body));
        let mut body = vec![
            load(1, 0, Index::Var(0)),
            Stmt::Let {
                dst: 3,
                value: Index::Const(2),
            },
            add(2, 1, 1),
            load(4, 1, Index::Var(3)),
        ];
        assert!(loads_up(&mut body));
        assert_eq!(dsts(&body), vec![1, usize::MAX, 4, 2]);
        let mut body = vec![
            Stmt::Store {
                param: 1,
                index: vec![Slice::At(Index::Const(0))],
                src: 7,
            },
            add(2, 7, 7),
            load(4, 1, Index::Var(0)),
        ];
        assert!(loads_up(&mut body));
        assert_eq!(dsts(&body), vec![usize::MAX, 4, 2]);
    }

    /// Only `for` bodies are rewritten: a kernel whose loads sit at the top level is returned
    /// unchanged (`None`).
    #[test]
    fn the_top_level_is_left_as_written() {
        let k = Kernel {
            name: "k".into(),
            config: vec![],
            params: vec![],
            dims: vec![],
            grid: [Index::Const(1), Index::Const(1), Index::Const(1)],
            tiles: vec![],
            scalars: vec!["s".into()],
            body: vec![add(2, 1, 1), load(4, 1, Index::Const(0))],
        };
        assert!(loads_first(&k).is_none());
        let mut k2 = k.clone();
        k2.body = vec![Stmt::For {
            var: 0,
            start: Index::Const(0),
            end: Index::Const(4),
            body: k.body.clone(),
        }];
        let r = loads_first(&k2).expect("the for body is rewritten");
        let Stmt::For { body, .. } = &r.body[0] else {
            panic!("a for loop")
        };
        assert_eq!(dsts(body), vec![4, 2]);
    }
}
