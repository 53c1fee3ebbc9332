//! Analysis pass: per-tile facts (assignments, uses, exact bf16 values, gemm operands).

use std::collections::HashSet;

use crate::ir::*;
use crate::visit::walk_stmts;

#[derive(Default)]
pub(crate) struct Info {
    pub(crate) assigns: Vec<usize>,
    pub(crate) uses: Vec<usize>,
    /// Every assignment is a load from a bf16 tensor: values are exactly bf16.
    pub(crate) exact_bf16: Vec<bool>,
    /// The single defining op of tiles assigned once.
    pub(crate) single_def: Vec<Option<TileOp>>,
    /// `valid` tiles of paged loops.
    pub(crate) valid_of: HashSet<TileId>,
    /// `tile` tiles of paged loops.
    pub(crate) paged_tile: HashSet<TileId>,
    /// Gemm shapes `(m, n)`.
    pub(crate) gemms: Vec<(usize, usize)>,
    /// Every use is as a gemm operand (directly or through views).
    pub(crate) gemm_only: Vec<bool>,
    /// Some gemm has an f32-labelled operand that is not exactly bf16.
    pub(crate) split_gemm: bool,
    pub(crate) gemm_operands: Vec<(TileId, TileId)>,
}

/// The tiles `op` reads (see [`crate::visit::op_tiles`]).
pub(crate) fn operand_tiles(op: &TileOp) -> Vec<TileId> {
    crate::visit::op_tiles(op)
}

/// The analysis pass.
pub(crate) fn analyse(k: &Kernel) -> Info {
    let n = k.tiles.len();
    let mut info = Info {
        assigns: vec![0; n],
        uses: vec![0; n],
        exact_bf16: vec![true; n],
        single_def: vec![None; n],
        valid_of: HashSet::new(),
        paged_tile: HashSet::new(),
        gemms: Vec::new(),
        gemm_only: vec![false; n],
        split_gemm: false,
        gemm_operands: Vec::new(),
    };
    walk_stmts(&k.body, &mut |s| match s {
        Stmt::Assign { dst, op } => {
            info.assigns[*dst] += 1;
            info.single_def[*dst] = Some(op.clone());
            for t in operand_tiles(op) {
                info.uses[t] += 1;
            }
            let exact = matches!(op, TileOp::Load { param, .. }
                if matches!(k.params[*param].kind, ParamKind::Tensor { dtype: DType::BF16, .. }));
            if !exact {
                info.exact_bf16[*dst] = false;
            }
            if let TileOp::Gemm { a, b } = op {
                info.gemms
                    .push((k.tiles[*a].shape[0], k.tiles[*b].shape[1]));
                info.gemm_operands.push((*a, *b));
            }
        }
        Stmt::Store { src, .. } | Stmt::PagedStore { src, .. } => info.uses[*src] += 1,
        Stmt::PagedBlocks { tile, valid, .. } => {
            info.assigns[*tile] += 1;
            info.assigns[*valid] += 1;
            info.valid_of.insert(*valid);
            info.paged_tile.insert(*tile);
            info.exact_bf16[*tile] = false;
            info.exact_bf16[*valid] = false;
        }
        Stmt::For { .. } | Stmt::Let { .. } => {}
    });
    // gemm_only: uses are gemm operands or views that are themselves gemm_only.
    let mut users: Vec<Vec<(TileId, bool)>> = vec![Vec::new(); n];
    let mut other_use = vec![false; n];
    walk_stmts(&k.body, &mut |s| match s {
        Stmt::Assign { dst, op } => match op {
            TileOp::Gemm { a, b } => {
                users[*a].push((*dst, true));
                users[*b].push((*dst, true));
            }
            TileOp::View(src, _) => users[*src].push((*dst, false)),
            _ => operand_tiles(op)
                .into_iter()
                .for_each(|t| other_use[t] = true),
        },
        Stmt::Store { src, .. } | Stmt::PagedStore { src, .. } => other_use[*src] = true,
        _ => {}
    });
    fn only_gemm(t: TileId, users: &[Vec<(TileId, bool)>], other: &[bool], depth: usize) -> bool {
        depth < 16
            && !other[t]
            && !users[t].is_empty()
            && users[t]
                .iter()
                .all(|&(u, gemm)| gemm || only_gemm(u, users, other, depth + 1))
    }
    for t in 0..n {
        info.gemm_only[t] = only_gemm(t, &users, &other_use, 0);
    }
    info.split_gemm = info.gemm_operands.iter().any(|&(a, b)| {
        [a, b].iter().any(|&t| {
            k.tiles[t].dtype == DType::F32 && !(info.exact_bf16[t] || info.paged_tile.contains(&t))
        })
    });
    for t in 0..n {
        if info.assigns[t] != 1 {
            info.single_def[t] = None;
        }
        if info.assigns[t] == 0 {
            info.exact_bf16[t] = false;
        }
    }
    info
}
