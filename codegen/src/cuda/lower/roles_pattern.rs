//! The score warpgroup's plan (`SCORE_WG`, `roles.rs`): which statements of the kernel's paged
//! loop the value warpgroups run (the accumulator's update and what it is computed from) and
//! which score tiles they read (the rescale rows and the P·V gemm's A operand), found once from
//! the IR; `roles.rs` lowers and places the two bodies.

use crate::ir::*;
use crate::visit::stmt_reads;

/// The plan: the loop's online-softmax state and which of its tiles the value warpgroups
/// compute.
#[derive(Clone, Debug)]
pub(crate) struct Roles {
    pub(crate) m: TileId,
    pub(crate) l: TileId,
    pub(crate) acc: TileId,
    /// Per tile: computed by the value warpgroups (in the loop: the accumulator's update; after
    /// it: whatever reads the accumulator).
    pub(crate) value: Vec<bool>,
    /// Score tiles the value statements read: row tiles (the rescale) and gemm A operands.
    pub(crate) handoff: Vec<TileId>,
}

/// The tile a view chain (assigned in `body`) starts from.
pub(crate) fn root(body: &[Stmt], mut t: TileId) -> TileId {
    loop {
        let def = body.iter().find_map(|s| match s {
            Stmt::Assign {
                dst,
                op: TileOp::View(src, _),
            } if *dst == t => Some(*src),
            _ => None,
        });
        match def {
            Some(src) => t = src,
            None => return t,
        }
    }
}

/// The roles of the kernel's one top-level paged loop, if it has the online-softmax form and
/// the value statements read the score warpgroup's tiles only as the module docs allow.
pub(crate) fn pattern(k: &Kernel) -> Option<Roles> {
    let sw = super::kv_split::pattern(k)?;
    let (m, l, acc) = (sw.m, sw.l, sw.acc);
    let at = k
        .body
        .iter()
        .position(|s| matches!(s, Stmt::PagedBlocks { .. }))?;
    let Stmt::PagedBlocks { body, tile, .. } = &k.body[at] else {
        unreachable!()
    };
    let n = k.tiles.len();
    let mut value = vec![false; n];
    value[acc] = true;
    // Forward from the accumulator: what reads a value tile is a value tile; a gemm a value
    // statement reads is one too (P·V).
    loop {
        let mut changed = false;
        for s in body {
            let Stmt::Assign { dst, op } = s else {
                return None;
            };
            if value[*dst] || matches!(op, TileOp::View(..)) {
                continue;
            }
            let reads_value = stmt_reads(s).iter().any(|&t| value[t]);
            let gemm_for_value = matches!(op, TileOp::Gemm { .. })
                && body.iter().any(|u| {
                    matches!(u, Stmt::Assign { dst: d, op: o } if value[*d] && !matches!(o, TileOp::View(..)))
                        && stmt_reads(u).contains(dst)
                });
            if reads_value || gemm_for_value {
                value[*dst] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Tiles assigned in the loop by the score warpgroup.
    let score_tile = |t: TileId| {
        body.iter()
            .any(|s| matches!(s, Stmt::Assign { dst, op } if *dst == t && !value[t] && !matches!(op, TileOp::View(..))))
    };
    let mut handoff = Vec::new();
    for s in body {
        let Stmt::Assign { dst, op } = s else {
            unreachable!()
        };
        if matches!(op, TileOp::View(..)) {
            continue;
        }
        if value[*dst] {
            for &r in &stmt_reads(s) {
                let r0 = root(body, r);
                if r0 == *tile || !score_tile(r0) {
                    continue;
                }
                // A score tile: the rescale (a row tile, possibly unsqueezed) or the A operand of
                // the P·V gemm.
                let as_a = matches!(op, TileOp::Gemm { a, .. } if *a == r && r0 == r);
                let rows = k.tiles[r0].shape.len() == 1;
                if !(as_a || rows) {
                    return None;
                }
                if !handoff.contains(&r0) {
                    handoff.push(r0);
                }
            }
        } else if stmt_reads(s)
            .iter()
            .any(|&t| value[root(body, t)] || value[t])
        {
            return None;
        }
    }
    // After the loop: whatever reads the accumulator (or a tile computed from it) is the value
    // warpgroups'; they read other tiles (m, l and what comes of them) from their own copies.
    for s in &k.body[at + 1..] {
        if let Stmt::Assign { dst, .. } = s {
            if stmt_reads(s).iter().any(|&t| value[t]) {
                value[*dst] = true;
            }
        }
    }
    Some(Roles {
        m,
        l,
        acc,
        value,
        handoff,
    })
}

/// Whether a top-level statement belongs to the value warpgroups (see [`Roles::value`]).
pub(crate) fn is_value_stmt(plan: &Roles, s: &Stmt) -> bool {
    match s {
        Stmt::Assign { dst, .. } => plan.value[*dst],
        Stmt::Store { src, .. } => plan.value[*src],
        _ => false,
    }
}
