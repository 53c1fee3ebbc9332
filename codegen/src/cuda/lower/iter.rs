//! Iteration contexts: how a thread enumerates the elements it computes.

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::ir::*;

/// How an elementwise loop enumerates the elements a thread computes.
#[derive(Clone, Debug)]
pub(crate) enum Iter {
    /// The fragment layout of `[m, n]`.
    Frag { m: usize, n: usize },
    /// The row layout of `m` rows; `rank` is the result's rank (1: `[m]`, 2: `[m, 1]`).
    Rows { m: usize, rank: usize },
    /// Block-strided over all elements of `shape`.
    Flat { shape: Vec<usize> },
}

/// The loop variables available inside an iteration.
pub(crate) struct Ctx {
    pub(crate) coords: Vec<String>,
    pub(crate) frag_slot: String,
    pub(crate) row_slot: String,
}

/// Which register slot of an iteration an [`Access::Reg`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The fragment slot (`Ctx::frag_slot`).
    Frag,
    /// The row slot (`Ctx::row_slot`).
    Row,
}

#[derive(Clone)]
pub(crate) enum Access {
    /// An element of a register array, at the iteration's fragment or row slot.
    Reg(String, Slot),
    Smem(usize, View),
    Inline(InlineKind, View),
}

impl<'a> Lower<'a> {
    pub(crate) fn iter_of(&self, t: TileId) -> Iter {
        match &self.repr[t] {
            Repr::Frag { m, n, .. } => Iter::Frag { m: *m, n: *n },
            Repr::Rows { m, .. } => Iter::Rows {
                m: *m,
                rank: self.k.tiles[t].shape.len(),
            },
            _ => Iter::Flat {
                shape: self.shape(t),
            },
        }
    }

    /// Opens the loops of an iteration; returns (head, tail, ctx).
    pub(crate) fn open(&self, it: &Iter) -> (String, String, Ctx) {
        match it {
            Iter::Frag { m, n } => {
                let (mt, ntl) = (self.geo.mt(*m), self.geo.ntl(*m, *n));
                let head = format!(
                    "#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int ni = 0; ni < {ntl}; ++ni) {{\n#pragma unroll\nfor (int e = 0; e < 4; ++e) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + ((e >> 1) << 3);\n    const int c_ = (wn{m}_{n} * {ntl} + ni) * 8 + ((lane & 3) << 1) + (e & 1);\n    (void)r_; (void)c_;\n"
                );
                (
                    head,
                    "}}}".into(),
                    Ctx {
                        coords: vec!["r_".into(), "c_".into()],
                        frag_slot: format!("((mi * {ntl} + ni) * 4 + e)"),
                        row_slot: "(mi * 2 + (e >> 1))".into(),
                    },
                )
            }
            Iter::Rows { m, rank } => {
                let mt = self.geo.mt(*m);
                let head = format!(
                    "#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3);\n    (void)r_;\n"
                );
                let coords = if *rank == 1 {
                    vec!["r_".into()]
                } else {
                    vec!["r_".into(), "0".into()]
                };
                (
                    head,
                    "}}".into(),
                    Ctx {
                        coords,
                        frag_slot: String::new(),
                        row_slot: "(mi * 2 + h)".into(),
                    },
                )
            }
            Iter::Flat { shape } => {
                let total: usize = shape.iter().product();
                let nt = nt_total(&self.geo);
                let (head, coords) = match shape.len() {
                    0 => (
                        format!("for (int i_ = tid; i_ < 1; i_ += {nt}) {{\n"),
                        vec![],
                    ),
                    1 => (
                        format!("for (int i_ = tid; i_ < {total}; i_ += {nt}) {{\n"),
                        vec!["i_".into()],
                    ),
                    _ => (
                        format!(
                            "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{\n    const int r_ = i_ / {c}, c_ = i_ % {c};\n",
                            c = shape[1]
                        ),
                        vec!["r_".into(), "c_".into()],
                    ),
                };
                (
                    head,
                    "}".into(),
                    Ctx {
                        coords,
                        frag_slot: String::new(),
                        row_slot: String::new(),
                    },
                )
            }
        }
    }

    /// How tile `x` is read inside iteration `it` over a result of shape `res`; `None` when its
    /// registers are not owned by the iterating thread (the caller shadows it).
    pub(crate) fn direct_access(&self, x: TileId, it: &Iter, res: &[usize]) -> Option<Access> {
        let xs = &self.k.tiles[x].shape;
        match (&self.repr[x], it) {
            (Repr::Frag { m, n, arr }, Iter::Frag { m: m2, n: n2 })
                if m == m2 && n == n2 && xs.as_slice() == res =>
            {
                Some(Access::Reg(arr.clone(), Slot::Frag))
            }
            (Repr::Rows { m, arr }, Iter::Frag { m: m2, .. })
                if m == m2 && xs.as_slice() == [*m, 1] =>
            {
                Some(Access::Reg(arr.clone(), Slot::Row))
            }
            (Repr::Rows { m, arr }, Iter::Rows { m: m2, .. })
                if m == m2 && xs.as_slice() == res =>
            {
                Some(Access::Reg(arr.clone(), Slot::Row))
            }
            (Repr::Smem { buf, view }, _) => Some(Access::Smem(*buf, view.clone())),
            (Repr::Inline { kind, view }, _) => Some(Access::Inline(kind.clone(), view.clone())),
            (Repr::None, _) => Some(Access::Inline(
                InlineKind::Value(self.tile_vt(x).zero().into()),
                View::base(xs.len()),
            )),
            _ => None,
        }
    }

    /// Access to `x` from `it`, emitting a shadow copy into `out` when needed. Returns the access
    /// and the tracked buffers it reads.
    pub(crate) fn access(
        &mut self,
        x: TileId,
        it: &Iter,
        res: &[usize],
        out: &mut Vec<Node>,
    ) -> (Access, Vec<usize>) {
        if let Some(a) = self.direct_access(x, it, res) {
            let reads = match &a {
                Access::Smem(b, _) if self.smem.bufs[*b].tracked => vec![*b],
                _ => vec![],
            };
            return (a, reads);
        }
        let elem = self.shadow_elem(x, false);
        let b = self.materialize(x, elem, out);
        (
            Access::Smem(b, View::base(self.k.tiles[x].shape.len())),
            vec![b],
        )
    }

    /// Copies a register tile into its shadow buffer (one writer per element).
    pub(crate) fn materialize(&mut self, x: TileId, elem: Elem, out: &mut Vec<Node>) -> usize {
        let b = self.shadow_buf(x, elem);
        let vt = self.tile_vt(x);
        let (it, guard) = match &self.repr[x] {
            Repr::Frag { m, n, .. } => (Iter::Frag { m: *m, n: *n }, format!("wr{m}_{n} == 0")),
            Repr::Rows { m, .. } => (
                Iter::Rows {
                    m: *m,
                    rank: self.k.tiles[x].shape.len(),
                },
                format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(*m)),
            ),
            _ => unreachable!("only register tiles are shadowed"),
        };
        let shape = self.shape(x);
        let (head, tail, ctx) = self.open(&it);
        let src = self.read(
            &self.direct_access(x, &it, &shape).expect("own layout"),
            &ctx,
            &shape,
            &shape,
            vt,
        );
        let view = View::base(shape.len());
        let (r, c) = view.phys(&ctx.coords);
        let buf = &self.smem.bufs[b];
        let text = format!(
            "if ({guard}) {{\n{head}    {}[{}] = {};\n{tail}\n}}\n",
            buf.name,
            buf.addr(&r, &c),
            elem.store(&src, vt)
        );
        out.push(Node::Code {
            text,
            reads: vec![],
            writes: vec![b],
        });
        b
    }

    /// The value of an access at the iteration's coordinates (with broadcasting from `xs` to the
    /// result shape `res`), converted to `vt`.
    pub(crate) fn read(
        &self,
        a: &Access,
        ctx: &Ctx,
        xs: &[usize],
        res: &[usize],
        vt: Vt,
    ) -> String {
        let coords: Vec<String> = (0..xs.len())
            .map(|i| {
                if xs[i] == 1 {
                    "0".to_string()
                } else {
                    ctx.coords[res.len() - xs.len() + i].clone()
                }
            })
            .collect();
        match a {
            Access::Reg(arr, Slot::Frag) => format!("{arr}[{}]", ctx.frag_slot),
            Access::Reg(arr, Slot::Row) => format!("{arr}[{}]", ctx.row_slot),
            Access::Smem(b, view) => {
                let (r, c) = view.phys(&coords);
                let buf = &self.smem.bufs[*b];
                buf.elem
                    .load(&format!("{}[{}]", buf.name, buf.addr(&r, &c)), vt)
            }
            Access::Inline(kind, view) => {
                let (r, c) = view.phys(&coords);
                match kind {
                    InlineKind::Value(v) => v.clone(),
                    InlineKind::Iota(Some(0)) => convert(&r, Vt::I32, vt),
                    InlineKind::Iota(Some(_)) => convert(&c, Vt::I32, vt),
                    InlineKind::Iota(None) => convert("0", Vt::I32, vt),
                    InlineKind::Valid { start, hi, .. } => {
                        convert(&format!("(tpla_iadd({start}, {c}) < {hi})"), Vt::Bool, vt)
                    }
                    InlineKind::Expr { text, vt: from } => convert(text, *from, vt),
                    InlineKind::Fused => unreachable!("a fused tile is read through its Expr"),
                }
            }
        }
    }

    /// Where the iteration writes element values of `dst`.
    pub(crate) fn write(&self, dst: TileId, ctx: &Ctx, v: &str) -> String {
        let vt = self.tile_vt(dst);
        match &self.repr[dst] {
            Repr::Frag { arr, .. } => format!("{arr}[{}] = {v};", ctx.frag_slot),
            Repr::Rows { arr, .. } => format!("{arr}[{}] = {v};", ctx.row_slot),
            Repr::Smem { buf, view } => {
                let (r, c) = view.phys(&ctx.coords);
                let b = &self.smem.bufs[*buf];
                format!("{}[{}] = {};", b.name, b.addr(&r, &c), b.elem.store(v, vt))
            }
            Repr::Inline { .. } | Repr::None => String::new(),
        }
    }

    pub(crate) fn dst_writes(&self, dst: TileId) -> Vec<usize> {
        match &self.repr[dst] {
            Repr::Smem { buf, .. } if self.smem.bufs[*buf].tracked => vec![*buf],
            _ => vec![],
        }
    }

    // -------------------------------------------------------------- statements
}
