//! Lowering of gemms: operand placement and the choice of fma / mma.sync / wgmma.

pub(crate) mod fma;
pub(crate) mod mma;
pub(crate) mod wgmma;

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::lower::gemm::wgmma::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::memory::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::cuda::F32Gemm;
use crate::error::IrError;
use crate::ir::*;

impl<'a> Lower<'a> {
    // -------------------------------------------------------------- gemm

    /// Terms of an operand for the tensor-core path: `(hi, lo)` needed.
    pub(crate) fn operand_terms(&self, t: TileId) -> (bool, bool) {
        let exact = self.k.tiles[t].dtype == DType::BF16
            || self.info.exact_bf16[t]
            || matches!(&self.repr[t], Repr::Smem { buf, .. } if self.smem.bufs[*buf].elem == Elem::Bf16);
        if exact {
            (true, false)
        } else {
            (true, self.target.f32_gemm == F32Gemm::Split)
        }
    }

    pub(crate) fn gemm_operand(
        &mut self,
        t: TileId,
        bf16_shadow: bool,
        out: &mut Vec<Node>,
    ) -> (usize, View, Vec<usize>) {
        match self.repr[t].clone() {
            Repr::Smem { buf, view } => {
                let r = if self.smem.bufs[buf].tracked {
                    vec![buf]
                } else {
                    vec![]
                };
                (buf, view, r)
            }
            Repr::Frag { .. } | Repr::Rows { .. } => {
                let elem = self.shadow_elem(t, bf16_shadow);
                let b = self.materialize(t, elem, out);
                (b, View::base(self.k.tiles[t].shape.len()), vec![b])
            }
            Repr::Inline { .. } | Repr::None => {
                // Write the constant tile out once (rare).
                let elem = self.shadow_elem(t, false);
                let b = self.shadow_buf(t, elem);
                let shape = self.shape(t);
                let it = Iter::Flat {
                    shape: shape.clone(),
                };
                let (head, tail, ctx) = self.open(&it);
                let a = self.direct_access(t, &it, &shape).unwrap();
                let vt = self.tile_vt(t);
                let v = self.read(&a, &ctx, &shape, &shape, vt);
                let (r, c) = View::base(shape.len()).phys(&ctx.coords);
                let bb = &self.smem.bufs[b];
                out.push(Node::Code {
                    text: format!(
                        "{head}    {}[{}] = {};\n{tail}\n",
                        bb.name,
                        bb.addr(&r, &c),
                        elem.store(&v, vt)
                    ),
                    reads: vec![],
                    writes: vec![b],
                });
                (b, View::base(shape.len()), vec![b])
            }
        }
    }

    pub(crate) fn lower_gemm(
        &mut self,
        dst: TileId,
        a: TileId,
        b: TileId,
        init: Option<TileId>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        if matches!(self.repr[dst], Repr::None) {
            return Ok(());
        }
        if self.is_seesaw_gemm(a, b) {
            return self.lower_seesaw_gemm(dst, a, b, init, out);
        }
        let (m, kd) = (self.k.tiles[a].shape[0], self.k.tiles[a].shape[1]);
        let n = self.k.tiles[b].shape[1];
        let frag = Geo::frag_ok(m, n);
        let (_, a_lo) = self.operand_terms(a);
        let (_, b_lo) = self.operand_terms(b);
        let labelled_f32 = a_lo
            || b_lo
            || (self.k.tiles[a].dtype == DType::F32 && !self.info.exact_bf16[a])
            || (self.k.tiles[b].dtype == DType::F32 && !self.info.exact_bf16[b]);
        let mma = frag
            && self.target.has_tensor_cores()
            && kd % 16 == 0
            && !(labelled_f32 && self.target.f32_gemm == F32Gemm::Fma);
        // A register fragment whose warps each hold whole rows feeds wgmma directly (no shared
        // memory round trip, no barrier), if B qualifies too.
        let a_regs = match &self.repr[a] {
            Repr::Frag { m: m2, n: k2, arr }
                if mma && !a_lo && !b_lo && *m2 == m && *k2 == kd && self.rs_geometry(m, kd) =>
            {
                Some(arr.clone())
            }
            _ => None,
        };
        let (bbuf, bview, rb) = self.gemm_operand(b, mma && !b_lo, out);
        if let Some(arr) = a_regs {
            let nwg = n / self.geo.wn(m, n);
            let n0 = format!("wn{m}_{n} * {nwg}");
            let bb = self.smem.bufs[bbuf].clone();
            if nwg.is_multiple_of(8)
                && nwg <= 256
                && self.wgmma_operand(&bb, &bview, 0, &n0, nwg).is_some()
            {
                return self.lower_gemm_frag(
                    dst,
                    (m, n, kd),
                    init,
                    rb,
                    GemmKind::WgmmaRegsA(arr, bb, bview),
                    out,
                );
            }
        }
        let (abuf, aview, mut reads) = self.gemm_operand(a, mma && !a_lo, out);
        reads.extend(rb);
        // After shadowing, terms depend on the actual storage.
        let a_lo = a_lo && self.smem.bufs[abuf].elem != Elem::Bf16;
        let b_lo = b_lo && self.smem.bufs[bbuf].elem != Elem::Bf16;
        if !frag {
            return self.gemm_flat(dst, (abuf, aview), (bbuf, bview), kd, init, reads, out);
        }
        let ab = self.smem.bufs[abuf].clone();
        let bb = self.smem.bufs[bbuf].clone();
        let kind = if mma {
            GemmKind::Tensor {
                a: (ab, aview, a_lo),
                b: (bb, bview, b_lo),
            }
        } else {
            GemmKind::Fma {
                a: (ab, aview),
                b: (bb, bview),
            }
        };
        self.lower_gemm_frag(dst, (m, n, kd), init, reads, kind, out)
    }

    /// A fragment-layout gemm `dst = init + A·B` (`init` absent: zero) in one code node.
    pub(crate) fn lower_gemm_frag(
        &mut self,
        dst: TileId,
        (m, n, kd): (usize, usize, usize),
        init: Option<TileId>,
        mut reads: Vec<usize>,
        kind: GemmKind,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        self.decl.geo_m.insert(m);
        self.decl.geo_mn.insert((m, n));
        let (mt, ntl) = (self.geo.mt(m), self.geo.ntl(m, n));
        let regs = self.geo.frag_regs(m, n);
        let (acc, local) = match &self.repr[dst] {
            Repr::Frag { m: m2, n: n2, arr } if *m2 == m && *n2 == n => (arr.clone(), false),
            _ => ("gacc_".to_string(), true),
        };
        let mut text = String::from("{\n");
        if local {
            text.push_str(&format!("float gacc_[{regs}];\n"));
        }
        // Initial accumulator: zero or the fused addend (a `wgmma` zeroes through its first
        // instruction instead, see `wgmma_gemm`).
        let zeroing =
            format!("#pragma unroll\nfor (int i_ = 0; i_ < {regs}; ++i_) {acc}[i_] = 0.0f;\n");
        match init {
            Some(x) if x != dst || local => {
                let it = Iter::Frag { m, n };
                let (ax, r) = self.access(x, &it, &[m, n], out);
                reads.extend(r);
                let (head, tail, ctx) = self.open(&it);
                let v = self.read(&ax, &ctx, &[m, n], &[m, n], Vt::F32);
                text.push_str(&format!(
                    "{head}    {acc}[{}] = {v};\n{tail}\n",
                    ctx.frag_slot
                ));
            }
            _ => {}
        }
        let zero = init.is_none();
        // `FULL_GROUPS`: the waits are for one gemm only (`lower/k_waits.rs`); whether it took
        // them or not, no other gemm may.
        let target = self.paging.k_waits.as_ref().is_some_and(|w| w.gemm == dst);
        let stash = if target {
            None
        } else {
            self.paging.k_waits.take()
        };
        match kind {
            GemmKind::WgmmaRegsA(arr, bb, bview) => {
                let code = self
                    .wgmma_gemm(m, n, kd, &acc, WgmmaA::Regs(&arr), (&bb, &bview), zero)
                    .expect("operands checked by the caller");
                text.push_str(&code);
            }
            GemmKind::Tensor { a, b } => {
                let (ab, aview, a_lo) = a;
                let (bb, bview, b_lo) = b;
                let warpgroup = if !a_lo && !b_lo {
                    self.wgmma_gemm(
                        m,
                        n,
                        kd,
                        &acc,
                        WgmmaA::Smem(&ab, &aview),
                        (&bb, &bview),
                        zero,
                    )
                } else {
                    None
                };
                match warpgroup {
                    Some(code) => text.push_str(&code),
                    None => {
                        if zero {
                            text.push_str(&zeroing);
                        }
                        let code = self.mma_loop(
                            m,
                            n,
                            kd,
                            mt,
                            ntl,
                            &acc,
                            (&ab, &aview, a_lo),
                            (&bb, &bview, b_lo),
                        );
                        text.push_str(&code);
                    }
                }
            }
            GemmKind::Fma { a, b } => {
                if zero {
                    text.push_str(&zeroing);
                }
                let code = self.fma_frag_loop(m, n, kd, mt, ntl, &acc, (&a.0, &a.1), (&b.0, &b.1));
                text.push_str(&code);
            }
        }
        self.paging.k_waits = stash;
        if local {
            // The destination is a shared tile: one writer per element.
            let it = Iter::Frag { m, n };
            let (head, tail, ctx) = self.open(&it);
            let w = self.write(dst, &ctx, &format!("gacc_[{}]", ctx.frag_slot));
            text.push_str(&format!(
                "if (wr{m}_{n} == 0) {{\n{head}    {w}\n{tail}\n}}\n"
            ));
        }
        text.push_str("}\n");
        out.push(Node::Code {
            text,
            reads,
            writes: self.dst_writes(dst),
        });
        Ok(())
    }
}

/// How a fragment-layout gemm is computed.
pub(crate) enum GemmKind {
    /// wgmma with A from the registers of the fragment array named, B in shared memory.
    WgmmaRegsA(String, Buf, View),
    /// Tensor cores (wgmma where it qualifies, else mma.sync); `bool`: operand has a lo part.
    Tensor {
        a: (Buf, View, bool),
        b: (Buf, View, bool),
    },
    /// f32 FMA.
    Fma { a: (Buf, View), b: (Buf, View) },
}
