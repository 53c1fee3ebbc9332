//! The pattern check of the two-consumer schedule: where it applies (see `super`).

use crate::ir::*;

/// What [`pattern`] found in a kernel's paged loop: the tiles whose lowering changes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seesaw {
    /// Rows per block (`BLOCK_N`).
    pub(crate) block: usize,
    /// Per tile: computed by each warpgroup for its own block.
    pub(crate) per_block: Vec<bool>,
    /// Per tile: a view of the rows (in the ring).
    pub(crate) of_rows: Vec<bool>,
    /// Row reductions over the block axis: combined across the warpgroups.
    pub(crate) xreduce: Vec<TileId>,
    /// The gemm contracting over the block axis: `(a, b)` (P and the value rows).
    pub(crate) xgemm: (TileId, TileId),
    /// The accumulator the gemm adds into (its fused destination).
    pub(crate) acc: TileId,
    /// The row sum of P itself (`reduce_sum(p, 1)` with `p` the gemm's A before its cast), if
    /// any: P is published there, sharing that exchange's barrier.
    pub(crate) sum_of_p: Option<(TileId, TileId)>,
    /// The P exchange buffer once P is published (while the body is lowered).
    pub(crate) published: Option<usize>,
}

/// The single-use and shape facts of the online-softmax loop (see the module docs); `None` where
/// the kernel has not exactly one paged loop, at the top level, of that form.
pub(crate) fn pattern(k: &Kernel) -> Option<Seesaw> {
    let mut loops = 0;
    crate::visit::walk_stmts(&k.body, &mut |s| {
        if matches!(s, Stmt::PagedBlocks { .. }) {
            loops += 1;
        }
    });
    let lp = k
        .body
        .iter()
        .find(|s| matches!(s, Stmt::PagedBlocks { .. }))?;
    let Stmt::PagedBlocks {
        cache,
        block,
        start,
        tile,
        valid,
        body,
        ..
    } = lp
    else {
        unreachable!()
    };
    let bf16_rows = matches!(
        k.params[*cache].kind,
        ParamKind::Paged {
            dtype: DType::BF16,
            ..
        }
    );
    if loops != 1 || !bf16_rows {
        return None;
    }
    let (block, n) = (*block, k.tiles.len());
    let shape = |t: TileId| k.tiles[t].shape.as_slice();
    let mut pb = vec![false; n];
    // Views of the rows, with the axis that runs over the block's tokens.
    let mut tok: Vec<Option<usize>> = vec![None; n];
    pb[*tile] = true;
    pb[*valid] = true;
    tok[*tile] = Some(0);
    let (mut xreduce, mut maxes, mut sums, mut gemms) = (vec![], vec![], vec![], vec![]);
    let mut read = vec![false; n];
    let mut def: Vec<Option<&TileOp>> = vec![None; n];
    for s in body {
        let Stmt::Assign { dst, op } = s else {
            return None;
        };
        let ins = crate::visit::op_tiles(op);
        let per_block = ins.iter().any(|t| pb[*t]) || mentions(op, *start);
        match op {
            TileOp::Load { .. } => return None,
            TileOp::Reduce { op: r, src, axis } if pb[*src] => {
                if *axis != 1 || shape(*src).len() != 2 || shape(*src)[1] != block {
                    return None;
                }
                xreduce.push(*dst);
                match r {
                    ReduceOp::Max => maxes.push(*dst),
                    ReduceOp::Sum => sums.push((*dst, *src)),
                }
            }
            TileOp::Gemm { a, b } if per_block => {
                match (pb[*a], tok[*b]) {
                    // p · kv.cols(..): contracts over the block.
                    (true, Some(0)) if shape(*a)[1] == block => gemms.push((*dst, *a, *b)),
                    // q · kv.t(): one column per token.
                    (false, Some(1)) => pb[*dst] = true,
                    _ => return None,
                }
            }
            TileOp::View(src, v) if tok[*src].is_some() => {
                tok[*dst] = match (v, tok[*src]) {
                    (ViewOp::Transpose, Some(a)) => Some(1 - a),
                    (ViewOp::Slice { axis, .. }, Some(a)) if *axis != a => Some(a),
                    _ => return None,
                };
                pb[*dst] = true;
            }
            _ if per_block => {
                // Elementwise on the block's values: columns are its tokens.
                let sh = shape(*dst);
                if ins.iter().any(|t| tok[*t].is_some())
                    || sh.len() > 2
                    || (sh.len() == 2 && sh[1] != block && sh[1] != 1)
                {
                    return None;
                }
                pb[*dst] = true;
            }
            _ => {}
        }
        // A per-block tile is recomputed every iteration, never carried.
        if pb[*dst] && read[*dst] {
            return None;
        }
        ins.iter().for_each(|t| read[*t] = true);
        def[*dst] = Some(op);
    }
    // Outside the loop nothing per block is read.
    let mut outside = false;
    for s in &k.body {
        if !std::ptr::eq(s, lp) {
            crate::visit::walk_stmts(std::slice::from_ref(s), &mut |s| {
                outside |= crate::visit::stmt_reads(s).iter().any(|t| pb[*t]);
            });
        }
    }
    let [mx] = maxes[..] else { return None };
    let [(g, a, b)] = gemms[..] else { return None };
    if outside || sums.is_empty() {
        return None;
    }
    // Every use of a tile in the body.
    let uses = |t: TileId| -> Vec<(TileId, &TileOp)> {
        body.iter()
            .filter_map(|s| match s {
                Stmt::Assign { dst, op } if crate::visit::op_tiles(op).contains(&t) => {
                    Some((*dst, op))
                }
                _ => None,
            })
            .collect()
    };
    // m_new = max(m, reduce_max(s, 1)) with m carried (not per block).
    let [(m_new, TileOp::Binary(BinaryOp::Max, x, y))] = uses(mx)[..] else {
        return None;
    };
    let other = |x: &Operand, y: &Operand, t: TileId| match (x, y) {
        (Operand::Tile(p), Operand::Tile(q)) if *p == t && *q != t => Some(*q),
        (Operand::Tile(p), Operand::Tile(q)) if *q == t && *p != t => Some(*p),
        _ => None,
    };
    if other(x, y, mx).is_none_or(|m| pb[m]) {
        return None;
    }
    // p = exp2(s - m_new) (through casts and views): what the sums and the gemm consume.
    let strip = |mut t: TileId| {
        while let Some(TileOp::Cast(s) | TileOp::View(s, _)) = def[t] {
            t = *s;
        }
        t
    };
    let is_p = |t: TileId| match def[strip(t)] {
        Some(TileOp::Unary(UnaryOp::Exp2, d)) => match def[*d] {
            Some(TileOp::Binary(BinaryOp::Sub, Operand::Tile(s), Operand::Tile(mn))) => {
                pb[*s] && strip(*mn) == m_new
            }
            _ => false,
        },
        _ => false,
    };
    // The sums and the gemm only add into carried, rescaled values.
    let adds_only = |t: TileId| {
        let u = uses(t);
        !u.is_empty()
            && u.iter().all(|(_, op)| match op {
                TileOp::Binary(BinaryOp::Add, x, y) => other(x, y, t).is_some_and(|o| !pb[o]),
                _ => false,
            })
    };
    if !is_p(a) || !adds_only(g) || sums.iter().any(|&(d, s)| !is_p(s) || !adds_only(d)) {
        return None;
    }
    let [(acc, _)] = uses(g)[..] else { return None };
    // A cast to bf16 (the rounding the exchange applies) or nothing between p and the gemm.
    let p = match def[a] {
        Some(TileOp::Cast(p)) if k.tiles[a].dtype == DType::BF16 => *p,
        _ => a,
    };
    let sum_of_p = sums.iter().find(|&&(_, s)| s == p).copied();
    Some(Seesaw {
        block,
        per_block: pb,
        of_rows: tok.iter().map(Option::is_some).collect(),
        xreduce,
        xgemm: (a, b),
        acc,
        sum_of_p,
        published: None,
    })
}

/// Whether an operand index of `op` reads scalar `v`.
fn mentions(op: &TileOp, v: ScalarId) -> bool {
    fn index(i: &Index, v: ScalarId) -> bool {
        match i {
            Index::Var(x) => *x == v,
            Index::Bin(_, a, b) => index(a, v) || index(b, v),
            Index::SeqLen { batch, .. } => index(batch, v),
            Index::Load { index: ix, .. } => ix.iter().any(|x| index(x, v)),
            _ => false,
        }
    }
    let o = |x: &Operand| matches!(x, Operand::Int(i) if index(i, v));
    match op {
        TileOp::Full(x) => o(x),
        TileOp::Binary(_, a, b) | TileOp::Compare(_, a, b) => o(a) || o(b),
        TileOp::Select {
            on_true, on_false, ..
        } => o(on_true) || o(on_false),
        _ => false,
    }
}
