//! Lowering of reductions.

use crate::cuda::elem::*;
use crate::cuda::lower::expr::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::error::IrError;
use crate::ir::*;

impl<'a> Lower<'a> {
    pub(crate) fn lower_reduce(
        &mut self,
        dst: TileId,
        op: ReduceOp,
        src: TileId,
        axis: usize,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let (init, quad, warpf) = match op {
            ReduceOp::Sum => ("0.0f", "tpla_quad_sum", "tpla_warp_sum"),
            ReduceOp::Max => (
                "__uint_as_float(0xff800000u)",
                "tpla_quad_max",
                "tpla_warp_max",
            ),
        };
        let comb = |a: &str, b: &str| match op {
            ReduceOp::Sum => format!("({a} + {b})"),
            ReduceOp::Max => format!("tpla_fmax({a}, {b})"),
        };
        if matches!(self.repr[dst], Repr::Inline { .. } | Repr::None) {
            return Ok(());
        }
        // Fragment rows -> row registers (or a shared tile), in registers and shuffles.
        if let (Repr::Frag { m, n, arr }, 1) = (self.repr[src].clone(), axis) {
            let (mt, ntl, wn) = (self.geo.mt(m), self.geo.ntl(m, n), self.geo.wn(m, n));
            let mut text = format!(
                "{{\nfloat red_[{sz}];\n#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    float v_ = {init};\n#pragma unroll\n    for (int ni = 0; ni < {ntl}; ++ni) {{\n        v_ = {c1};\n        v_ = {c2};\n    }}\n    red_[mi * 2 + h] = {quad}(v_);\n}}}}\n",
                sz = mt * 2,
                c1 = comb("v_", &format!("{arr}[(mi * {ntl} + ni) * 4 + h * 2]")),
                c2 = comb("v_", &format!("{arr}[(mi * {ntl} + ni) * 4 + h * 2 + 1]")),
            );
            let dst_rows = matches!(&self.repr[dst], Repr::Rows { m: m2, .. } if *m2 == m);
            // A carried sum's per-block partial stays per warpgroup (`partial_sum.rs`).
            let keep_partial = wn > 1 && dst_rows && self.keep_partial_sum(dst, m, n, wn);
            if wn == 1 || keep_partial {
                let it = Iter::Rows {
                    m,
                    rank: self.k.tiles[dst].shape.len(),
                };
                let (head, tail, ctx) = self.open(&it);
                let w = self.write(dst, &ctx, "red_[mi * 2 + h]");
                let guard = if dst_rows {
                    "true".to_string()
                } else {
                    format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(m))
                };
                text.push_str(&format!("if ({guard}) {{\n{head}    {w}\n{tail}\n}}\n}}\n"));
                out.push(Node::Code {
                    text,
                    reads: vec![],
                    writes: self.dst_writes(dst),
                });
            } else {
                let scratch = self.add_buf("red", Elem::F32, &[wn, m], 1, true);
                let sname = self.smem.bufs[scratch].name.clone();
                text.push_str(&format!(
                    "if ((lane & 3) == 0 && wr{m}_{n} == 0) {{\n#pragma unroll\nfor (int mi = 0; mi < {mt}; ++mi) {{\n#pragma unroll\nfor (int h = 0; h < 2; ++h) {{\n    const int r_ = (wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3);\n    {sname}[wn{m}_{n} * {m} + r_] = red_[mi * 2 + h];\n}}}}\n}}\n}}\n"
                ));
                out.push(Node::Code {
                    text,
                    reads: vec![],
                    writes: vec![scratch],
                });
                let it = Iter::Rows {
                    m,
                    rank: self.k.tiles[dst].shape.len(),
                };
                let (head, tail, ctx) = self.open(&it);
                let mut v = format!("{sname}[r_]");
                for w in 1..wn {
                    v = comb(&v, &format!("{sname}[{} + r_]", w * m));
                }
                let w = self.write(dst, &ctx, &v);
                let guard = if dst_rows {
                    "true".to_string()
                } else {
                    format!("(lane & 3) == 0 && warp / {} == 0", self.geo.wm(m))
                };
                out.push(Node::Code {
                    text: format!("if ({guard}) {{\n{head}    {w}\n{tail}\n}}\n"),
                    reads: vec![scratch],
                    writes: self.dst_writes(dst),
                });
            }
            return Ok(());
        }
        // General: one warp per output element, results through shared memory.
        let sshape = self.shape(src);
        let it = Iter::Flat {
            shape: sshape.clone(),
        };
        let (a, mut reads) = self.access(src, &it, &sshape, out);
        let (outputs, len) = match (sshape.len(), axis) {
            (1, _) => (1, sshape[0]),
            (_, 0) => (sshape[1], sshape[0]),
            _ => (sshape[0], sshape[1]),
        };
        let coords: Vec<String> = match (sshape.len(), axis) {
            (1, _) => vec!["k_".into()],
            (_, 0) => vec!["k_".into(), "o_".into()],
            _ => vec!["o_".into(), "k_".into()],
        };
        let ctx = Ctx {
            coords,
            frag_slot: String::new(),
            row_slot: String::new(),
        };
        let x = self.read(&a, &ctx, &sshape, &sshape, Vt::F32);
        let (into_regs, target_buf) = match &self.repr[dst] {
            Repr::Smem { .. } => (false, None),
            _ => (
                true,
                Some(self.add_buf("rdx", Elem::F32, &[outputs], 1, true)),
            ),
        };
        let dshape = self.shape(dst);
        let write = if let Some(tb) = target_buf {
            format!("{}[o_] = v_;", self.smem.bufs[tb].name)
        } else {
            let Repr::Smem { buf, view } = &self.repr[dst] else {
                unreachable!()
            };
            let dc: Vec<String> = if dshape.is_empty() {
                vec![]
            } else if dshape.len() == 1 {
                vec!["o_".into()]
            } else {
                vec!["o_".into(), "0".into()]
            };
            // rank-2 results of a reduction cannot occur (rank drops); keep general anyway
            let (r, c) = view.phys(&dc);
            let b = &self.smem.bufs[*buf];
            format!(
                "{}[{}] = {};",
                b.name,
                b.addr(&r, &c),
                b.elem.store("v_", Vt::F32)
            )
        };
        let nw = self.geo.nw;
        let text = format!(
            "for (int o_ = warp; o_ < {outputs}; o_ += {nw}) {{\n    float v_ = {init};\n    for (int k_ = lane; k_ < {len}; k_ += 32) {{ const float x_ = {x}; v_ = {c}; }}\n    v_ = {warpf}(v_);\n    if (lane == 0) {{ {write} }}\n}}\n",
            c = comb("v_", "x_"),
        );
        let mut writes = self.dst_writes(dst);
        if let Some(tb) = target_buf {
            writes = vec![tb];
        }
        out.push(Node::Code {
            text,
            reads: reads.clone(),
            writes,
        });
        if into_regs {
            let tb = target_buf.unwrap();
            let it = self.iter_of(dst);
            let (head, tail, ctx) = self.open(&it);
            let acc = Access::Smem(tb, View::base(1));
            // Output o_ corresponds to the flattened destination index.
            let flat_ctx = Ctx {
                coords: vec![flat_index(&ctx.coords, &dshape)],
                frag_slot: ctx.frag_slot.clone(),
                row_slot: ctx.row_slot.clone(),
            };
            let v = self.read(&acc, &flat_ctx, &[outputs], &[outputs], Vt::F32);
            let w = self.write(dst, &ctx, &v);
            reads = vec![tb];
            out.push(Node::Code {
                text: format!("{head}    {w}\n{tail}\n"),
                reads,
                writes: self.dst_writes(dst),
            });
        }
        Ok(())
    }
}
