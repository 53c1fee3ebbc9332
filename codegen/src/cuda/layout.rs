//! Analysis: where each tile variable lives (fragment / row registers, shared memory, inline).

use crate::cuda::analysis::*;
use crate::cuda::geometry::*;
use crate::ir::*;

/// Where a tile variable lives (analysis lattice; `Bottom` < `Any` < register layouts < `Smem`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lay {
    Bottom,
    Any,
    Frag { m: usize, n: usize },
    Rows { m: usize },
    Smem,
}

pub(crate) fn join(a: Lay, b: Lay) -> Lay {
    match (a, b) {
        (Lay::Bottom, x) | (x, Lay::Bottom) => x,
        (Lay::Any, x) | (x, Lay::Any) => x,
        (x, y) if x == y => x,
        _ => Lay::Smem,
    }
}

pub(crate) fn pure_index(i: &Index) -> bool {
    match i {
        Index::Var(_) | Index::Load { .. } => false,
        Index::Bin(_, a, b) => pure_index(a) && pure_index(b),
        Index::SeqLen { batch, .. } => pure_index(batch),
        _ => true,
    }
}

pub(crate) fn pure_fscalar(s: &FScalar) -> bool {
    match s {
        FScalar::Lit(_) | FScalar::Param(_) => true,
        FScalar::FromIndex(i) => pure_index(i),
        FScalar::Bin(_, a, b) => pure_fscalar(a) && pure_fscalar(b),
        FScalar::Unary(_, a) => pure_fscalar(a),
    }
}

pub(crate) fn inlineable(op: &TileOp) -> bool {
    match op {
        TileOp::Full(Operand::Scalar(s)) => pure_fscalar(s),
        TileOp::Full(Operand::Int(i)) => pure_index(i),
        TileOp::Iota { .. } => true,
        _ => false,
    }
}

pub(crate) struct LayoutCx<'a> {
    pub(crate) k: &'a Kernel,
    pub(crate) lay: Vec<Lay>,
    /// A kernel without gemms whose accumulators were seeded in registers
    /// ([`gemmless_accumulators`]): an elementwise op of shared-memory operands stays
    /// undetermined (it may be computed into registers where a register op reads it) instead
    /// of going to shared memory.
    pub(crate) gemmless: bool,
}

impl LayoutCx<'_> {
    pub(crate) fn shape(&self, t: TileId) -> &[usize] {
        &self.k.tiles[t].shape
    }

    pub(crate) fn elementwise(&self, shape: &[usize], ops: &[TileId]) -> Lay {
        let compat_frag = |t: TileId, m: usize, n: usize| match self.lay[t] {
            Lay::Frag { m: a, n: b } => a == m && b == n && self.shape(t) == [m, n],
            Lay::Rows { m: a } => a == m && self.shape(t) == [m, 1],
            Lay::Smem | Lay::Any | Lay::Bottom => true,
        };
        if shape.len() == 2 {
            let (m, n) = (shape[0], shape[1]);
            let has = ops
                .iter()
                .any(|&t| self.lay[t] == Lay::Frag { m, n } && self.shape(t) == shape);
            if has && ops.iter().all(|&t| compat_frag(t, m, n)) {
                return Lay::Frag { m, n };
            }
        }
        if !shape.is_empty() && (shape.len() == 1 || shape[1] == 1) {
            let m = shape[0];
            let has = ops
                .iter()
                .any(|&t| self.lay[t] == Lay::Rows { m } && self.shape(t) == shape);
            let compat = |t: TileId| match self.lay[t] {
                Lay::Rows { m: a } => a == m && self.shape(t) == shape,
                Lay::Frag { .. } => false,
                _ => true,
            };
            if has && ops.iter().all(|&t| compat(t)) {
                return Lay::Rows { m };
            }
        }
        if ops.is_empty()
            || ops
                .iter()
                .any(|&t| matches!(self.lay[t], Lay::Any | Lay::Bottom))
        {
            // Undetermined until the operands settle; resolves to Smem if it stays so.
            let all_ok = ops
                .iter()
                .all(|&t| !matches!(self.lay[t], Lay::Frag { .. }) || shape.len() == 2);
            if all_ok {
                return Lay::Any;
            }
        }
        if self.gemmless {
            return Lay::Any;
        }
        Lay::Smem
    }

    pub(crate) fn pref(&self, dst: TileId, op: &TileOp) -> Lay {
        let shape = self.shape(dst).to_vec();
        match op {
            TileOp::Full(_) | TileOp::Iota { .. } => Lay::Any,
            // (Without gemms a load may go straight into the registers that read it.)
            TileOp::Load { .. } if self.gemmless => Lay::Any,
            TileOp::Load { .. } => Lay::Smem,
            TileOp::Unary(_, t) | TileOp::Cast(t) => match self.lay[*t] {
                Lay::Bottom | Lay::Any => Lay::Any,
                l => l,
            },
            TileOp::Binary(..) | TileOp::Compare(..) | TileOp::Select { .. } => {
                self.elementwise(&shape, &operand_tiles(op))
            }
            TileOp::Reduce { src, axis, .. } => match self.lay[*src] {
                Lay::Frag { m, .. } if *axis == 1 => Lay::Rows { m },
                Lay::Bottom | Lay::Any => Lay::Any,
                _ => Lay::Smem,
            },
            TileOp::Gemm { a, b } => {
                let (m, n) = (self.shape(*a)[0], self.shape(*b)[1]);
                if Geo::frag_ok(m, n) {
                    Lay::Frag { m, n }
                } else {
                    Lay::Smem
                }
            }
            TileOp::View(src, v) => match (self.lay[*src], v) {
                (Lay::Rows { m }, ViewOp::Unsqueeze(1)) if self.shape(*src).len() == 1 => {
                    Lay::Rows { m }
                }
                (Lay::Bottom | Lay::Any, _) => Lay::Any,
                _ => Lay::Smem,
            },
        }
    }

    pub(crate) fn walk(&mut self, body: &[Stmt], changed: &mut bool) {
        for s in body {
            match s {
                Stmt::Assign { dst, op } => {
                    let p = self.pref(*dst, op);
                    let j = join(self.lay[*dst], p);
                    if j != self.lay[*dst] {
                        self.lay[*dst] = j;
                        *changed = true;
                    }
                }
                Stmt::For { body, .. } => self.walk(body, changed),
                Stmt::PagedBlocks {
                    tile, valid, body, ..
                } => {
                    self.lay[*tile] = Lay::Smem;
                    if self.lay[*valid] == Lay::Bottom {
                        self.lay[*valid] = Lay::Any;
                        *changed = true;
                    }
                    self.walk(body, changed)
                }
                _ => {}
            }
        }
    }
}

/// The layout analysis: the fixpoint of [`LayoutCx::walk`] over the kernel body (at most 64
/// rounds), one [`Lay`] per tile.
pub(crate) fn layouts(k: &Kernel) -> Vec<Lay> {
    let seeds = gemmless_accumulators(k);
    let mut lcx = LayoutCx {
        k,
        lay: vec![Lay::Bottom; k.tiles.len()],
        gemmless: !seeds.is_empty(),
    };
    for t in seeds {
        let sh = &k.tiles[t].shape;
        lcx.lay[t] = Lay::Frag { m: sh[0], n: sh[1] };
    }
    for _ in 0..64 {
        let mut changed = false;
        lcx.walk(&k.body, &mut changed);
        changed |= lcx.pull_into_registers(&k.body);
        if !changed {
            break;
        }
    }
    lcx.lay
}

/// The seed of a kernel without gemms (the split-KV combines, the DCP merge): its f32
/// accumulators, 2-D tiles a loop adds into (assigned before a loop and in its body) of a shape
/// the fragment layout covers, start in registers in that layout; the elementwise ops that
/// feed them follow, and the row vectors they read (the weights, the running max) take the row
/// layout ([`LayoutCx::pull_into_registers`]). Without it such a kernel kept every tile in shared
/// memory: a `[16, 128]` accumulator was read and written through shared memory twice per
/// split, with a block barrier around every load. Kernels with a gemm are seeded by their
/// gemms and are left as they are.
fn gemmless_accumulators(k: &Kernel) -> Vec<TileId> {
    let gemm = crate::visit::any_stmt(&k.body, &mut |s| {
        matches!(
            s,
            Stmt::Assign {
                op: TileOp::Gemm { .. },
                ..
            }
        )
    });
    if gemm {
        return vec![];
    }
    let mut out = Vec::new();
    let mut assigned: Vec<TileId> = Vec::new();
    fn walk(body: &[Stmt], assigned: &mut Vec<TileId>, out: &mut Vec<TileId>, k: &Kernel) {
        for s in body {
            match s {
                Stmt::Assign { dst, .. } => assigned.push(*dst),
                Stmt::For { body: inner, .. } => {
                    let before = assigned.clone();
                    crate::visit::walk_stmts(inner, &mut |s| {
                        if let Stmt::Assign { dst, .. } = s {
                            let tile = &k.tiles[*dst];
                            if before.contains(dst)
                                && tile.dtype == DType::F32
                                && tile.shape.len() == 2
                                && Geo::frag_ok(tile.shape[0], tile.shape[1])
                                && !out.contains(dst)
                            {
                                out.push(*dst);
                            }
                        }
                    });
                    walk(inner, assigned, out, k);
                }
                _ => {}
            }
        }
    }
    walk(&k.body, &mut assigned, &mut out, k);
    out
}

impl LayoutCx<'_> {
    /// The backward half of the analysis: a tile still undetermined (`Any`, so bound for shared
    /// memory) that an elementwise op with a register result reads, at that result's shape (or
    /// one value per row of it), takes the register layout too, unless it is inlined (a single
    /// `iota` or constant). Without it a tile computed only from indices and scalars, such as
    /// the multi-token decode's causal mask (`iota`, the row's token, a compare) feeding a
    /// `select` on the scores, went through shared memory with two block barriers per block.
    /// Returns whether a layout changed.
    fn pull_into_registers(&mut self, body: &[Stmt]) -> bool {
        let mut defs = vec![0usize; self.k.tiles.len()];
        let mut inline = vec![false; self.k.tiles.len()];
        crate::visit::walk_stmts(body, &mut |s| {
            if let Stmt::Assign { dst, op } = s {
                defs[*dst] += 1;
                inline[*dst] = inlineable(op);
            }
        });
        let mut changed = false;
        crate::visit::walk_stmts(body, &mut |s| {
            let Stmt::Assign { dst, op } = s else {
                return;
            };
            let elementwise = matches!(
                op,
                TileOp::Binary(..)
                    | TileOp::Compare(..)
                    | TileOp::Select { .. }
                    | TileOp::Unary(..)
                    | TileOp::Cast(_)
            );
            // A row vector seen as a column (`w.unsqueeze(1)`) in row registers: the vector
            // too.
            if let (TileOp::View(src, ViewOp::Unsqueeze(1)), Lay::Rows { m }) = (op, self.lay[*dst])
            {
                if self.lay[*src] == Lay::Any
                    && self.shape(*src) == [m]
                    && !(defs[*src] == 1 && inline[*src])
                {
                    self.lay[*src] = Lay::Rows { m };
                    changed = true;
                }
                return;
            }
            let m = match self.lay[*dst] {
                Lay::Frag { m, .. } | Lay::Rows { m } if elementwise => m,
                _ => return,
            };
            for t in operand_tiles(op) {
                if self.lay[t] != Lay::Any || (defs[t] == 1 && inline[t]) {
                    continue;
                }
                let want = match (self.shape(t), self.lay[*dst]) {
                    (sh, Lay::Frag { m, n }) if sh == [m, n] => Lay::Frag { m, n },
                    ([r, 1], _) | ([r], _) if *r == m => Lay::Rows { m },
                    _ => continue,
                };
                self.lay[t] = want;
                changed = true;
            }
        });
        changed
    }
}
