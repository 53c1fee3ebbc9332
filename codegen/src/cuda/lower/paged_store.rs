//! Lowering of paged stores: a tile's rows written into a paged cache at a sequence's token
//! positions (bf16 rows here; FP8 rows quantise in `fp8.rs`).

use crate::cuda::elem::*;
use crate::cuda::lower::paged::format_of;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::util::*;
use crate::error::IrError;
use crate::ir::*;

impl Lower<'_> {
    pub(crate) fn lower_paged_store(
        &mut self,
        cache: ParamId,
        batch: &Index,
        start: &Index,
        src: TileId,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let ParamKind::Paged { dtype, row, .. } = self.k.params[cache].kind else {
            return Err(backend_err(
                self.k,
                "paged store into a non-paged parameter",
            ));
        };
        if let PagedFormat::Fp8 { lat } = format_of(&self.k.params[cache].kind) {
            return self.lower_paged_store_fp8(cache, batch, start, src, lat, row, out);
        }
        let gel = Elem::of_dtype(dtype);
        let shape = self.shape(src);
        let vt = self.tile_vt(src);
        let it = self.iter_of(src);
        let guard = self.writer_guard(src);
        let (a, mut reads) = self.access(src, &it, &shape, out);
        let (head, tail, ctx) = self.open(&it);
        let v = self.read(&a, &ctx, &shape, &shape, vt);
        let (data, bt, lens, ps, pps, np, nb) = self.paged_names(cache);
        let (r, c) = (ctx.coords[0].clone(), ctx.coords[1].clone());
        let text = format!(
            "{{
const int pb_ = {b};
const int pst_ = {st};
const int plen_ = tpla_ld_i32({lens}, pb_, {nb});
if ({guard}) {{
{head}    {{
        const int t_ = tpla_iadd(pst_, {r});
        if (t_ >= 0 && t_ < plen_ && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64)pb_ * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) {data}[((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {row} + ({c})] = {val};
        }}
    }}
{tail}
}}
}}
",
            b = self.idx(batch),
            st = self.idx(start),
            val = gel.store(&v, vt),
        );
        reads.extend(self.index_reads(batch));
        reads.extend(self.index_reads(start));
        reads.push(GLOBAL_RES + cache);
        out.push(Node::Code {
            text,
            reads,
            writes: vec![GLOBAL_RES + cache],
        });
        Ok(())
    }
}
