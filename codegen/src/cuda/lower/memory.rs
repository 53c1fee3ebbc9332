//! Lowering of tensor loads and stores.

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::error::IrError;
use crate::ir::*;

impl<'a> Lower<'a> {
    // -------------------------------------------------------------- tensor regions

    /// Tensor index expressions of a region for tile coordinates `coords` (tile rank).
    /// The index expressions of a tile copied as 16-byte vectors per row between a tensor and
    /// shared memory, in the coordinates `r_` (row) and `c_` (first column of the vector).
    fn vector_rows(&self, index: &[Slice], dims: &[String], rank: usize) -> VectorRows {
        let coords: Vec<String> = if rank == 1 {
            vec!["c_".into()]
        } else {
            vec!["r_".into(), "c_".into()]
        };
        let idx = self.region_index(index, &coords);
        let nd = dims.len();
        let (row_inb, _) = self.offset_expr(&dims[..nd - 1], &idx[..nd - 1]);
        let (_, off) = self.offset_expr(dims, &idx);
        VectorRows {
            row_inb,
            off,
            last: idx[nd - 1].clone(),
            dl: dims[nd - 1].clone(),
        }
    }

    pub(crate) fn region_index(&self, index: &[Slice], coords: &[String]) -> Vec<String> {
        let mut span = 0;
        index
            .iter()
            .map(|s| match s {
                Slice::At(i) => self.idx(i),
                Slice::Span { start, .. } => {
                    let c = &coords[span];
                    span += 1;
                    format!("tpla_iadd({}, {c})", self.idx(start))
                }
            })
            .collect()
    }

    /// Whether the tile's last axis runs along the tensor's last (contiguous) dimension.
    pub(crate) fn last_contiguous(index: &[Slice]) -> bool {
        matches!(index.last(), Some(Slice::Span { .. }))
    }

    pub(crate) fn tensor_dtype(&self, p: ParamId) -> DType {
        match &self.k.params[p].kind {
            ParamKind::Tensor { dtype, .. } | ParamKind::Paged { dtype, .. } => *dtype,
            ParamKind::Scalar { dtype } => *dtype,
        }
    }

    pub(crate) fn lower_load(
        &mut self,
        dst: TileId,
        param: ParamId,
        index: &[Slice],
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let gdt = self.tensor_dtype(param);
        let gel = Elem::of_dtype(gdt);
        let vt = self.tile_vt(dst);
        let dims = self.tensor_dims(param);
        let shape = self.shape(dst);
        let Repr::Smem { buf, view } = self.repr[dst].clone() else {
            // Register destinations: per-element masked loads in the tile's own layout.
            let it = self.iter_of(dst);
            let (head, tail, ctx) = self.open(&it);
            let idx = self.region_index(index, &ctx.coords);
            let (inb, off) = self.offset_expr(&dims, &idx);
            let v = format!(
                "(({inb}) ? {} : {})",
                gel.load(&format!("p{param}[{off}]"), vt),
                vt.zero()
            );
            let w = self.write(dst, &ctx, &v);
            out.push(Node::Code {
                text: format!("{head}    {w}\n{tail}\n"),
                reads: vec![GLOBAL_RES + param],
                writes: vec![],
            });
            return Ok(());
        };
        let b = self.smem.bufs[buf].clone();
        let (r, c) = Self::norm(&shape);
        let v = 16 / gel.size();
        let nt = nt_total(&self.geo);
        let text = if !shape.is_empty()
            && Self::last_contiguous(index)
            && b.elem == gel
            && c % v == 0
            && view == View::base(shape.len())
        {
            let cpr = c / v;
            let VectorRows {
                row_inb,
                off,
                last,
                dl,
            } = self.vector_rows(index, &dims, shape.len());
            // A load outside every loop (the query tile, once per program) on sm_80+ goes out as
            // `cp.async` copies, all in flight at once, then one wait: a copy through registers
            // issues one load per iteration and waits for it before the next (12 round trips to
            // memory for a 64-head query at latent 512: `bench/NOTES-cuda-decode.md`, session
            // 24). Inside a loop the wait for all of this thread's copies would also wait for a
            // cp.async pipeline's stages, so there the copy stays synchronous.
            let in_flight = self.depth == 1 && self.target.async_tile_loads;
            let (copy, done) = if in_flight {
                (
                    "tpla_cp_async16(d_, g_ + o_, true);",
                    "tpla_cp_async_commit();\ntpla_cp_async_wait<0>();\n",
                )
            } else {
                ("*(uint4*)d_ = *(const uint4*)(g_ + o_);", "")
            };
            format!(
                "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{
    const int r_ = i_ / {cpr}, c_ = (i_ % {cpr}) * {v};
    (void)r_;
    const int c0_ = {last};
    const bool row_ok_ = {row_inb};
    {cty}* d_ = &{name}[{addr}];
    const {cty}* g_ = p{param};
    if (row_ok_ && c0_ >= 0 && c0_ <= {dl} - {v}) {{
        const tpla_i64 o_ = {off};
        if ((((unsigned long long)(g_ + o_)) & 15ull) == 0ull) {{
            {copy}
            continue;
        }}
    }}
#pragma unroll
    for (int v_ = 0; v_ < {v}; ++v_) {{
        const int cc_ = c0_ + v_;
        {cty} x_ = 0;
        if (row_ok_ && cc_ >= 0 && cc_ < {dl}) x_ = g_[{off} + v_];
        d_[v_] = x_;
    }}
}}
{done}",
                total = r * cpr,
                cty = gel.cty(),
                name = b.name,
                addr = b.addr("r_", "c_"),
                row_inb = if row_inb.is_empty() {
                    "true".into()
                } else {
                    row_inb
                },
            )
        } else {
            let it = Iter::Flat {
                shape: shape.clone(),
            };
            let (head, tail, ctx) = self.open(&it);
            let idx = self.region_index(index, &ctx.coords);
            let (inb, off) = self.offset_expr(&dims, &idx);
            let val = format!(
                "(({inb}) ? {} : {})",
                gel.load(&format!("p{param}[{off}]"), vt),
                vt.zero()
            );
            let w = self.write(dst, &ctx, &val);
            format!("{head}    {w}\n{tail}\n")
        };
        out.push(Node::Code {
            text,
            reads: vec![GLOBAL_RES + param],
            writes: vec![buf],
        });
        Ok(())
    }

    pub(crate) fn lower_store(
        &mut self,
        param: ParamId,
        index: &[Slice],
        src: TileId,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let gdt = self.tensor_dtype(param);
        let gel = Elem::of_dtype(gdt);
        let dims = self.tensor_dims(param);
        let shape = self.shape(src);
        let vt = self.tile_vt(src);
        let nt = nt_total(&self.geo);
        match self.repr[src].clone() {
            Repr::Smem { buf, view }
                if view == View::base(shape.len())
                    && !shape.is_empty()
                    && Self::last_contiguous(index)
                    && self.smem.bufs[buf].elem == gel
                    && Self::norm(&shape).1 % (16 / gel.size()) == 0 =>
            {
                let b = self.smem.bufs[buf].clone();
                let (r, c) = Self::norm(&shape);
                let v = 16 / gel.size();
                let cpr = c / v;
                let VectorRows {
                    row_inb,
                    off,
                    last,
                    dl,
                } = self.vector_rows(index, &dims, shape.len());
                let text = format!(
                    "for (int i_ = tid; i_ < {total}; i_ += {nt}) {{
    const int r_ = i_ / {cpr}, c_ = (i_ % {cpr}) * {v};
    (void)r_;
    const int c0_ = {last};
    const bool row_ok_ = {row_inb};
    if (!row_ok_) continue;
    const {cty}* s_ = &{name}[{addr}];
    {cty}* g_ = p{param};
    const tpla_i64 o_ = {off};
    if (c0_ >= 0 && c0_ <= {dl} - {v} && (((unsigned long long)(g_ + o_)) & 15ull) == 0ull) {{
        *(uint4*)(g_ + o_) = *(const uint4*)s_;
        continue;
    }}
#pragma unroll
    for (int v_ = 0; v_ < {v}; ++v_) {{
        const int cc_ = c0_ + v_;
        if (cc_ >= 0 && cc_ < {dl}) g_[o_ + v_] = s_[v_];
    }}
}}
",
                    total = r * cpr,
                    cty = gel.cty(),
                    name = b.name,
                    addr = b.addr("r_", "c_"),
                    row_inb = if row_inb.is_empty() {
                        "true".into()
                    } else {
                        row_inb
                    },
                );
                out.push(Node::Code {
                    text,
                    reads: vec![buf],
                    writes: vec![GLOBAL_RES + param],
                });
            }
            _ => {
                let it = self.iter_of(src);
                let guard = self.writer_guard(src);
                let (a, reads) = self.access(src, &it, &shape, out);
                let (head, tail, ctx) = self.open(&it);
                let v = self.read(&a, &ctx, &shape, &shape, vt);
                let idx = self.region_index(index, &ctx.coords);
                let (inb, off) = self.offset_expr(&dims, &idx);
                let text = format!(
                    "if ({guard}) {{\n{head}    if ({inb}) p{param}[{off}] = {};\n{tail}\n}}\n",
                    gel.store(&v, vt)
                );
                out.push(Node::Code {
                    text,
                    reads,
                    writes: vec![GLOBAL_RES + param],
                });
            }
        }
        Ok(())
    }

    /// A predicate selecting one thread per element of a (possibly replicated) tile.
    pub(crate) fn writer_guard(&self, t: TileId) -> String {
        match &self.repr[t] {
            Repr::Frag { m, n, .. } => format!("wr{m}_{n} == 0"),
            Repr::Rows { m, .. } => format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(*m)),
            _ => "true".into(),
        }
    }

    // -------------------------------------------------------------- reductions
}

/// What [`Lower::vector_rows`] gives a vectorised row copy.
struct VectorRows {
    /// Whether the row (every coordinate but the last) is inside the tensor.
    row_inb: String,
    /// Element offset of the vector's first element.
    off: String,
    /// The last coordinate's index expression.
    last: String,
    /// The last dimension's extent.
    dl: String,
}
