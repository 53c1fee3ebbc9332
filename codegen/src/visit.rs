//! Walkers over the tile IR: every statement (nested loop bodies included) and the tiles an
//! operation reads, for analyses that need not care about nesting.

use crate::ir::{Operand, Stmt, TileId, TileOp};

/// Calls `f` on every statement of `body` in program order, pre-order: a `For` or
/// `PagedBlocks` statement is visited before the statements of its body.
pub fn walk_stmts<'a>(body: &'a [Stmt], f: &mut impl FnMut(&'a Stmt)) {
    for s in body {
        f(s);
        if let Some(inner) = nested_body(s) {
            walk_stmts(inner, f);
        }
    }
}

/// Whether `pred` holds for some statement of `body` (nested bodies included).
pub fn any_stmt(body: &[Stmt], pred: &mut impl FnMut(&Stmt) -> bool) -> bool {
    body.iter()
        .any(|s| pred(s) || nested_body(s).is_some_and(|b| any_stmt(b, pred)))
}

/// The body of a loop statement (`For`, `PagedBlocks`), `None` for other statements.
pub fn nested_body(s: &Stmt) -> Option<&[Stmt]> {
    match s {
        Stmt::For { body, .. } | Stmt::PagedBlocks { body, .. } => Some(body),
        _ => None,
    }
}

/// The tiles `op` reads, in operand order (a tile read twice appears twice).
pub fn op_tiles(op: &TileOp) -> Vec<TileId> {
    let o = |x: &Operand| match x {
        Operand::Tile(t) => vec![*t],
        _ => vec![],
    };
    match op {
        TileOp::Full(x) => o(x),
        TileOp::Iota { .. } | TileOp::Load { .. } => vec![],
        TileOp::Unary(_, t) | TileOp::Cast(t) | TileOp::View(t, _) => vec![*t],
        TileOp::Binary(_, a, b) | TileOp::Compare(_, a, b) => [o(a), o(b)].concat(),
        TileOp::Select {
            mask,
            on_true,
            on_false,
        } => [vec![*mask], o(on_true), o(on_false)].concat(),
        TileOp::Reduce { src, .. } => vec![*src],
        TileOp::Gemm { a, b } => vec![*a, *b],
    }
}

/// The tiles statement `s` itself reads (not those of a nested body): an assignment's operands,
/// a store's source.
pub fn stmt_reads(s: &Stmt) -> Vec<TileId> {
    match s {
        Stmt::Assign { op, .. } => op_tiles(op),
        Stmt::Store { src, .. } | Stmt::PagedStore { src, .. } => vec![*src],
        _ => vec![],
    }
}

/// The tiles statement `s` itself assigns (not those of a nested body): an assignment's
/// destination, a paged loop's `tile` and `valid`.
pub fn stmt_writes(s: &Stmt) -> Vec<TileId> {
    match s {
        Stmt::Assign { dst, .. } => vec![*dst],
        Stmt::PagedBlocks { tile, valid, .. } => vec![*tile, *valid],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, FScalar, Index};

    fn assign(dst: TileId, op: TileOp) -> Stmt {
        Stmt::Assign { dst, op }
    }

    #[test]
    fn walks_nested_loops_in_program_order() {
        let body = vec![
            assign(0, TileOp::Iota { axis: 0 }),
            Stmt::For {
                var: 0,
                start: Index::Const(0),
                end: Index::Const(4),
                body: vec![
                    assign(
                        1,
                        TileOp::Binary(BinaryOp::Add, Operand::Tile(0), Operand::Tile(0)),
                    ),
                    Stmt::For {
                        var: 1,
                        start: Index::Const(0),
                        end: Index::Const(2),
                        body: vec![assign(2, TileOp::Cast(1))],
                    },
                ],
            },
            assign(3, TileOp::Full(Operand::Scalar(FScalar::Lit(1.0)))),
        ];
        let mut seen = Vec::new();
        walk_stmts(&body, &mut |s| seen.push(stmt_writes(s)));
        assert_eq!(
            seen,
            vec![vec![0], vec![], vec![1], vec![], vec![2], vec![3]]
        );
        let mut reads = Vec::new();
        walk_stmts(&body, &mut |s| reads.extend(stmt_reads(s)));
        assert_eq!(reads, vec![0, 0, 1]);
        assert!(any_stmt(&body, &mut |s| stmt_writes(s) == [2]));
        assert!(!any_stmt(&body, &mut |s| stmt_writes(s) == [7]));
    }
}
