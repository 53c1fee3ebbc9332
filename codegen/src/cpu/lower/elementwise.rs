//! Elementwise tile operations (full, unary, binary, compare, select, cast) and
//! iota. Where the innermost axis is contiguous (or broadcast) in every operand, rows are
//! processed four lanes at a time (F32X4 / I32X4) with a scalar remainder; otherwise a scalar
//! loop handles arbitrary strides.

use cranelift_codegen::ir::{types, InstBuilder, Type, Value};

use super::{elem_ty, mem, vec_ty, Lower};
use crate::error::IrError;
use crate::ir::*;

/// One input of an elementwise loop.
#[derive(Clone, Copy)]
pub(in crate::cpu) enum Src {
    /// Tile storage: address of element `[0, 0]`, strides in elements (0 = broadcast), element
    /// type (F32 or I32).
    Tile {
        base: Value,
        strides: [usize; 2],
        ty: Type,
    },
    /// A scalar broadcast to every element.
    Splat(Value),
}

/// Destination of an elementwise loop: dense storage.
#[derive(Clone, Copy)]
pub(in crate::cpu) struct Dst {
    pub base: Value,
    pub shape: [usize; 2],
    pub strides: [usize; 2],
    pub ty: Type,
}

/// The computation of one element (or 4 lanes when the flag is set).
pub(in crate::cpu) type ElemFn<'x, 'a, 'f> =
    &'x mut dyn FnMut(&mut Lower<'a, 'f>, &[Value], bool) -> Value;

/// Strides of a tile of shape `shape` broadcast to rank-2 `[r, c]` (stride 0 where broadcast).
fn bstrides(shape: &[usize], strides: &[usize]) -> [usize; 2] {
    let mut out = [0usize; 2];
    let off = 2 - shape.len();
    for (i, (&d, &s)) in shape.iter().zip(strides).enumerate() {
        out[off + i] = if d == 1 { 0 } else { s };
    }
    out
}

impl<'a, 'f> Lower<'a, 'f> {
    /// An operand as an elementwise source.
    fn operand(&mut self, o: &Operand, want: Type) -> Src {
        match o {
            Operand::Tile(t) => {
                let l = self.layout(*t);
                let base = self.scratch_at(l.offset);
                Src::Tile {
                    base,
                    strides: bstrides(&l.shape, &l.strides),
                    ty: elem_ty(self.k.tiles[*t].dtype),
                }
            }
            Operand::Scalar(s) => {
                let v = self.fscalar(s);
                if want == types::I32 {
                    Src::Splat(self.b.ins().fcvt_to_sint_sat(types::I32, v))
                } else {
                    Src::Splat(v)
                }
            }
            Operand::Int(i) => {
                let v = self.index(i);
                let v = self.val(v);
                let v = self.b.ins().ireduce(types::I32, v);
                if want == types::F32 {
                    Src::Splat(self.b.ins().fcvt_from_sint(types::F32, v))
                } else {
                    Src::Splat(v)
                }
            }
        }
    }

    /// Dense destination for tile `t`.
    pub(in crate::cpu) fn dst(&mut self, t: TileId) -> Dst {
        let l = self.layout(t);
        let (shape, _) = l.rank2();
        let base = self.scratch_at(l.offset);
        Dst {
            base,
            shape,
            strides: bstrides(&l.shape, &l.strides),
            ty: elem_ty(self.k.tiles[t].dtype),
        }
    }

    /// Whether an operand is a tile of float dtype.
    fn operand_float(&self, o: &Operand) -> Option<bool> {
        match o {
            Operand::Tile(t) => Some(self.k.tiles[*t].dtype.is_float()),
            _ => None,
        }
    }

    pub(in crate::cpu) fn elementwise_op(
        &mut self,
        dst: TileId,
        op: &TileOp,
    ) -> Result<(), IrError> {
        let d = self.dst(dst);
        let dty = self.k.tiles[dst].dtype;
        match op {
            TileOp::Full(o) => {
                let v = self.operand(o, d.ty);
                let v = match (dty, v) {
                    (DType::Bool, Src::Splat(x)) => {
                        let c = self.b.ins().icmp_imm_s(
                            cranelift_codegen::ir::condcodes::IntCC::NotEqual,
                            x,
                            0,
                        );
                        Src::Splat(self.b.ins().uextend(types::I32, c))
                    }
                    (_, v) => v,
                };
                self.elementwise(d, &[v], true, &mut |_, v, _| v[0]);
            }
            TileOp::Unary(u, t) => {
                let s = self.operand(&Operand::Tile(*t), types::F32);
                let u = *u;
                self.elementwise(d, &[s], true, &mut |l, v, vec| l.float_unary(u, v[0], vec));
            }
            TileOp::Binary(bop, x, y) => {
                let float = self
                    .operand_float(x)
                    .or(self.operand_float(y))
                    .unwrap_or(true);
                let want = if float { types::F32 } else { types::I32 };
                let sx = self.operand(x, want);
                let sy = self.operand(y, want);
                let bop = *bop;
                let vec_ok = float || bop != BinaryOp::Div;
                self.elementwise(d, &[sx, sy], vec_ok, &mut |l, v, vec| {
                    if float {
                        l.float_binary(bop, v[0], v[1], vec)
                    } else {
                        l.int_binary(bop, v[0], v[1])
                    }
                });
            }
            TileOp::Compare(c, x, y) => {
                let float = self
                    .operand_float(x)
                    .or(self.operand_float(y))
                    .unwrap_or(true);
                let want = if float { types::F32 } else { types::I32 };
                let sx = self.operand(x, want);
                let sy = self.operand(y, want);
                let c = *c;
                self.elementwise(d, &[sx, sy], true, &mut |l, v, vec| {
                    l.compare(c, v[0], v[1], float, vec)
                });
            }
            TileOp::Select {
                mask,
                on_true,
                on_false,
            } => {
                let sm = self.operand(&Operand::Tile(*mask), types::I32);
                let st = self.operand(on_true, d.ty);
                let sf = self.operand(on_false, d.ty);
                self.elementwise(d, &[sm, st, sf], true, &mut |l, v, vec| {
                    let m = l.bool_to_mask(v[0], vec);
                    l.choose(m, v[1], v[2], vec)
                });
            }
            TileOp::Cast(t) => {
                let from = self.k.tiles[*t].dtype;
                let s = self.operand(&Operand::Tile(*t), elem_ty(from));
                let to_float = dty.is_float();
                let from_float = from.is_float();
                self.elementwise(d, &[s], true, &mut |l, v, vec| {
                    let (fty, ity) = if vec {
                        (types::F32X4, types::I32X4)
                    } else {
                        (types::F32, types::I32)
                    };
                    match (from_float, to_float) {
                        (true, false) => l.b.ins().fcvt_to_sint_sat(ity, v[0]),
                        (false, true) => l.b.ins().fcvt_from_sint(fty, v[0]),
                        _ => v[0],
                    }
                });
            }
            other => {
                return Err(super::backend_err(
                    self.k,
                    format!("unexpected elementwise op {other:?}"),
                ))
            }
        }
        Ok(())
    }

    /// Runs `f` over every element of `d`.
    pub(in crate::cpu) fn elementwise(
        &mut self,
        mut d: Dst,
        srcs: &[Src],
        vec_ok: bool,
        f: ElemFn<'_, 'a, 'f>,
    ) {
        let mut srcs: Vec<Src> = srcs.to_vec();
        let [mut r, mut c] = d.shape;
        // A column: make it a row.
        if c == 1 && r > 1 {
            d.strides = [0, d.strides[0]];
            for s in &mut srcs {
                if let Src::Tile { strides, .. } = s {
                    *strides = [0, strides[0]];
                }
            }
            (r, c) = (1, r);
        }
        // Fully contiguous: flatten to one row.
        let flat = |s: [usize; 2]| s == [c, 1] || s == [0, 0];
        if r > 1
            && d.strides == [c, 1]
            && srcs.iter().all(|s| match s {
                Src::Tile { strides, .. } => flat(*strides),
                Src::Splat(_) => true,
            })
        {
            d.strides = [0, 1];
            for s in &mut srcs {
                if let Src::Tile { strides, .. } = s {
                    strides[0] = 0;
                }
            }
            (r, c) = (1, r * c);
        }
        let vec = vec_ok
            && c >= 4
            && d.strides[1] == 1
            && srcs.iter().all(|s| match s {
                Src::Tile { strides, .. } => strides[1] <= 1,
                Src::Splat(_) => true,
            });
        // Splat scalars once.
        let splats: Vec<Option<Value>> = srcs
            .iter()
            .map(|s| match s {
                Src::Splat(v) if vec => {
                    let ty = self.b.func.dfg.value_type(*v);
                    Some(self.b.ins().splat(vec_ty(ty), *v))
                }
                _ => None,
            })
            .collect();
        let c4 = if vec { c / 4 * 4 } else { 0 };
        self.for_const(0, r as i64, 1, |l, i| {
            let row = |l: &mut Self, base: Value, s0: usize| {
                let o = l.b.ins().imul_imm_s(i, (s0 * 4) as i64);
                l.b.ins().iadd(base, o)
            };
            let drow = row(l, d.base, d.strides[0]);
            let rows: Vec<Option<Value>> = srcs
                .iter()
                .map(|s| match s {
                    Src::Tile { base, strides, .. } => Some(row(l, *base, strides[0])),
                    Src::Splat(_) => None,
                })
                .collect();
            if c4 > 0 {
                // Broadcast along the row: load once, splat.
                let bcast: Vec<Option<Value>> = srcs
                    .iter()
                    .zip(&rows)
                    .map(|(s, r)| match s {
                        Src::Tile { strides, ty, .. } if strides[1] == 0 => {
                            let x = l.b.ins().load(*ty, mem(), r.unwrap(), 0);
                            Some(l.b.ins().splat(vec_ty(*ty), x))
                        }
                        _ => None,
                    })
                    .collect();
                l.for_const(0, c4 as i64, 4, |l, j| {
                    let j4 = l.b.ins().imul_imm_s(j, 4);
                    let mut vals = Vec::with_capacity(srcs.len());
                    for (k, s) in srcs.iter().enumerate() {
                        vals.push(match s {
                            Src::Splat(_) => splats[k].unwrap(),
                            Src::Tile { ty, .. } => match bcast[k] {
                                Some(v) => v,
                                None => {
                                    let a = l.b.ins().iadd(rows[k].unwrap(), j4);
                                    l.b.ins().load(vec_ty(*ty), mem(), a, 0)
                                }
                            },
                        });
                    }
                    let out = f(l, &vals, true);
                    let a = l.b.ins().iadd(drow, j4);
                    l.b.ins().store(mem(), out, a, 0);
                });
            }
            // Scalar part (the remainder, or everything).
            let tail = c - c4;
            let mut scalar_at = |l: &mut Self, j: Option<Value>, jc: usize| {
                let mut vals = Vec::with_capacity(srcs.len());
                for (k, s) in srcs.iter().enumerate() {
                    vals.push(match s {
                        Src::Splat(v) => *v,
                        Src::Tile { strides, ty, .. } => {
                            let (a, off) = match j {
                                Some(j) => {
                                    let o = l.b.ins().imul_imm_s(j, (strides[1] * 4) as i64);
                                    (l.b.ins().iadd(rows[k].unwrap(), o), 0)
                                }
                                None => (rows[k].unwrap(), (jc * strides[1] * 4) as i32),
                            };
                            l.b.ins().load(*ty, mem(), a, off)
                        }
                    });
                }
                let out = f(l, &vals, false);
                let (a, off) = match j {
                    Some(j) => {
                        let o = l.b.ins().imul_imm_s(j, (d.strides[1] * 4) as i64);
                        (l.b.ins().iadd(drow, o), 0)
                    }
                    None => (drow, (jc * d.strides[1] * 4) as i32),
                };
                l.b.ins().store(mem(), out, a, off);
            };
            if tail <= 4 {
                for jc in c4..c {
                    scalar_at(l, None, jc);
                }
            } else {
                l.for_const(c4 as i64, c as i64, 1, |l, j| scalar_at(l, Some(j), 0));
            }
        });
    }

    /// `dst[i, j] = i` (axis 0) or `j` (axis 1) for an I32 tile.
    pub(in crate::cpu) fn iota(&mut self, dst: TileId, axis: usize) {
        let l0 = self.layout(dst);
        let rank = l0.shape.len();
        let ([r, c], _) = l0.rank2();
        let d = self.dst(dst);
        // In rank-2 terms the iota axis is 1 for rank-1 tiles.
        let inner = rank == 1 || axis == 1;
        self.for_const(0, r as i64, 1, |l, i| {
            let o = l.b.ins().imul_imm_s(i, (d.strides[0] * 4) as i64);
            let row = l.b.ins().iadd(d.base, o);
            l.for_const(0, c as i64, 1, |l, j| {
                let v = if inner { j } else { i };
                let v = l.b.ins().ireduce(types::I32, v);
                let o = l.b.ins().imul_imm_s(j, (d.strides[1] * 4) as i64);
                let a = l.b.ins().iadd(row, o);
                l.b.ins().store(mem(), v, a, 0);
            });
        });
    }
}
