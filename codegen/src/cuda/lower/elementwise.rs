//! Lowering of elementwise ops (unary, binary, compare, select, cast, full, iota).

use std::collections::HashMap;

use crate::cuda::analysis::*;
use crate::cuda::elem::*;
use crate::cuda::lower::expr::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::cuda::sync::*;
use crate::ir::*;

impl<'a> Lower<'a> {
    pub(crate) fn lower_elementwise(&mut self, dst: TileId, op: &TileOp, out: &mut Vec<Node>) {
        let it = self.iter_of(dst);
        let res = self.shape(dst);
        // A flat loop writing a shared tile element-for-element: operands of the same shape read
        // the same way are thread-private dependencies (no barrier between such ops).
        let base = View::base(res.len());
        let tag = match (&it, &self.repr[dst]) {
            (Iter::Flat { shape }, Repr::Smem { view, .. }) if *view == base => {
                Some(self.affinity_tag(shape))
            }
            _ => None,
        };
        let mut reads = Vec::new();
        let mut acc: HashMap<TileId, Access> = HashMap::new();
        // Fused operands (the `fusion` pass) are computed here, at this loop's element, from
        // their own operands: operands first, so each expression finds its operands' values.
        let mut pending = operand_tiles(op);
        let mut order = Vec::new();
        while let Some(t) = pending.pop() {
            if acc.contains_key(&t) || order.contains(&t) {
                continue;
            }
            if matches!(
                self.repr[t],
                Repr::Inline {
                    kind: InlineKind::Fused,
                    ..
                }
            ) {
                order.push(t);
                pending.extend(operand_tiles(self.fused_def(t)));
                continue;
            }
            let (a, mut r) = self.access(t, &it, &res, out);
            if let (Some(tag), Access::Smem(b, v)) = (tag, &a) {
                if *v == base && self.shape(t) == res {
                    r.iter_mut()
                        .filter(|x| **x == *b)
                        .for_each(|x| *x = with_affinity(*x, tag));
                }
            }
            reads.extend(r);
            acc.insert(t, a);
        }
        let (head, tail, ctx) = self.open(&it);
        let body = |acc: &mut HashMap<TileId, Access>| {
            // A fused tile is read once, by the op after it in its chain: reversed discovery
            // order puts every fused tile after the fused tiles it reads.
            for &t in order.iter().rev() {
                let def = self.fused_def(t).clone();
                let text = format!("({})", self.ew_value(t, &def, &ctx, acc, &res));
                let vt = self.tile_vt(t);
                let view = View::base(res.len());
                acc.insert(t, Access::Inline(InlineKind::Expr { text, vt }, view));
            }
            let val = self.ew_value(dst, op, &ctx, acc, &res);
            let w = self.write(dst, &ctx, &val);
            format!("{head}    {w}\n{tail}\n")
        };
        let expr = |text: &str, vt: Vt| InlineKind::Expr {
            text: text.into(),
            vt,
        };
        // Where the op has a common special case, it is emitted twice under one uniform branch,
        // the first copy reading some operands as constants:
        // - `x · a` with `a` a per-row register (the online softmax's rescale of the
        //   accumulator): where every row this warp holds has `a == 1` (the running max did not
        //   move, most blocks of a long sequence), the product is `x` exactly, so the warp skips
        //   the multiplies under one vote;
        // - a paged block's validity mask: every column is valid on every block but the last of
        //   a split, so full blocks read the mask as `true` (FlashAttention's masking only the
        //   last step; the score warpgroup's softmax lost 32 compares and 32 selects a block).
        let special = match self.unit_row_scale(&it, op, &acc) {
            Some((all_one, row_tile)) => Some((
                format!("tpla_warp_all({all_one})"),
                vec![(row_tile, expr("1.0f", Vt::F32), View::base(res.len()))],
            )),
            None => block_mask(&acc).map(|(full, mask_tiles)| {
                let consts = mask_tiles
                    .into_iter()
                    .map(|t| match &acc[&t] {
                        Access::Inline(_, view) => (t, expr("true", Vt::Bool), view.clone()),
                        _ => unreachable!("block_mask returns inline masks"),
                    })
                    .collect::<Vec<_>>();
                (full, consts)
            }),
        };
        let text = match special {
            Some((cond, consts)) => {
                let mut with_consts = acc.clone();
                for (t, kind, view) in consts {
                    with_consts.insert(t, Access::Inline(kind, view));
                }
                let special_case = body(&mut with_consts);
                let general = body(&mut acc);
                format!("if ({cond}) {{\n{special_case}}} else {{\n{general}}}\n")
            }
            None => body(&mut acc),
        };
        let mut writes = self.dst_writes(dst);
        if let Some(tag) = tag {
            writes.iter_mut().for_each(|x| *x = with_affinity(*x, tag));
        }
        out.push(Node::Code {
            text,
            reads,
            writes,
        });
    }

    /// Where `op` multiplies a fragment tile by a per-row register tile (`Iter::Frag`, the row
    /// operand read at the row slot): the condition that every row value this thread holds is
    /// exactly 1, and that operand's tile.
    fn unit_row_scale(
        &self,
        it: &Iter,
        op: &TileOp,
        acc: &HashMap<TileId, Access>,
    ) -> Option<(String, TileId)> {
        let (Iter::Frag { m, .. }, TileOp::Binary(BinaryOp::Mul, x, y)) = (it, op) else {
            return None;
        };
        let rows = |o: &Operand| match o {
            Operand::Tile(t) => match acc.get(t) {
                Some(Access::Reg(arr, Slot::Row)) => Some((arr.clone(), *t)),
                _ => None,
            },
            _ => None,
        };
        let frag = |o: &Operand| match o {
            Operand::Tile(t) => matches!(acc.get(t), Some(Access::Reg(_, Slot::Frag))),
            _ => false,
        };
        let (arr, t) = match (rows(x), rows(y)) {
            (None, Some(r)) if frag(x) => r,
            (Some(r), None) if frag(y) => r,
            _ => return None,
        };
        let slots = self.geo.mt(*m) * 2;
        let cond: Vec<String> = (0..slots).map(|i| format!("{arr}[{i}] == 1.0f")).collect();
        Some((cond.join(" && "), t))
    }

    /// The defining op of a fused tile (assigned once: the `fusion` pass's rule).
    fn fused_def(&self, t: TileId) -> &TileOp {
        self.info.single_def[t]
            .as_ref()
            .expect("a fused tile is assigned once")
    }

    /// The affinity tag (> 0) of flat loops over `shape`.
    pub(crate) fn affinity_tag(&mut self, shape: &[usize]) -> usize {
        let n = self.affinity.len() + 1;
        *self.affinity.entry(shape.to_vec()).or_insert(n)
    }

    pub(crate) fn operand_value(
        &self,
        o: &Operand,
        ctx: &Ctx,
        acc: &HashMap<TileId, Access>,
        res: &[usize],
        vt: Vt,
    ) -> String {
        match o {
            Operand::Tile(t) => {
                let a = &acc[t];
                self.read(a, ctx, &self.k.tiles[*t].shape, res, vt)
            }
            _ => self.scalar_operand(o, vt),
        }
    }

    pub(crate) fn operand_class(&self, o: &Operand) -> Vt {
        match o {
            Operand::Tile(t) => self.tile_vt(*t),
            Operand::Scalar(_) => Vt::F32,
            Operand::Int(_) => Vt::I32,
        }
    }

    pub(crate) fn ew_value(
        &self,
        dst: TileId,
        op: &TileOp,
        ctx: &Ctx,
        acc: &HashMap<TileId, Access>,
        res: &[usize],
    ) -> String {
        let vt = self.tile_vt(dst);
        match op {
            TileOp::Full(o) => self.scalar_operand(o, vt),
            TileOp::Iota { axis } => convert(&ctx.coords[*axis], Vt::I32, vt),
            TileOp::Unary(u, t) => {
                let x = self.read(&acc[t], ctx, &self.k.tiles[*t].shape, res, Vt::F32);
                float_un(*u, &x)
            }
            TileOp::Cast(t) => {
                let from = self.tile_vt(*t);
                let x = self.read(&acc[t], ctx, &self.k.tiles[*t].shape, res, from);
                convert(&x, from, vt)
            }
            TileOp::Binary(b, x, y) => {
                let cls = if self.operand_class(x) == Vt::I32 || self.operand_class(y) == Vt::I32 {
                    if matches!(x, Operand::Tile(_)) || matches!(y, Operand::Tile(_)) {
                        vt
                    } else {
                        Vt::I32
                    }
                } else {
                    Vt::F32
                };
                let cls = if vt == Vt::I32 { Vt::I32 } else { cls };
                let a = self.operand_value(x, ctx, acc, res, cls);
                let c = self.operand_value(y, ctx, acc, res, cls);
                if cls == Vt::I32 {
                    let f = match b {
                        BinaryOp::Add => "tpla_iadd",
                        BinaryOp::Sub => "tpla_isub",
                        BinaryOp::Mul => "tpla_imul",
                        BinaryOp::Div => "tpla_idiv",
                        BinaryOp::Max => "tpla_imax",
                        BinaryOp::Min => "tpla_imin",
                    };
                    format!("{f}({a}, {c})")
                } else {
                    float_bin(*b, &a, &c)
                }
            }
            TileOp::Compare(c, x, y) => {
                let tile_cls = [x, y].iter().find_map(|o| match o {
                    Operand::Tile(t) => Some(self.tile_vt(*t)),
                    _ => None,
                });
                let cls = tile_cls.unwrap_or(Vt::F32);
                let a = self.operand_value(x, ctx, acc, res, cls);
                let b = self.operand_value(y, ctx, acc, res, cls);
                let sym = match c {
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                };
                convert(&format!("(({a}) {sym} ({b}))"), Vt::Bool, vt)
            }
            TileOp::Select {
                mask,
                on_true,
                on_false,
            } => {
                let m = self.read(&acc[mask], ctx, &self.k.tiles[*mask].shape, res, Vt::Bool);
                let a = self.operand_value(on_true, ctx, acc, res, vt);
                let b = self.operand_value(on_false, ctx, acc, res, vt);
                format!("(({m}) ? ({a}) : ({b}))")
            }
            _ => unreachable!("not elementwise"),
        }
    }
}

/// Where an elementwise op reads a paged block's validity mask: the condition under which the
/// whole block is valid (`start + block <= hi`, one comparison a block) and the operand tiles
/// that read the mask. `None` where it reads none, or masks of different blocks.
fn block_mask(acc: &HashMap<TileId, Access>) -> Option<(String, Vec<TileId>)> {
    let mut full: Option<String> = None;
    let mut tiles = Vec::new();
    for (t, a) in acc {
        if let Access::Inline(InlineKind::Valid { start, hi, block }, _) = a {
            let cond = format!("tpla_iadd({start}, {block}) <= {hi}");
            if full.as_ref().is_some_and(|f| *f != cond) {
                return None;
            }
            full = Some(cond);
            tiles.push(*t);
        }
    }
    tiles.sort_unstable();
    full.map(|f| (f, tiles))
}
