//! f32 FMA gemms.

use crate::cuda::elem::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::memory::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::error::IrError;
use crate::ir::*;

impl<'a> Lower<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_flat(
        &mut self,
        dst: TileId,
        a: (usize, View),
        b: (usize, View),
        kd: usize,
        init: Option<TileId>,
        mut reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let shape = self.shape(dst);
        let it = self.iter_of(dst);
        let ia = init.map(|x| self.access(x, &it, &shape, out));
        if let Some((_, r)) = &ia {
            reads.extend(r.clone());
        }
        let (head, tail, ctx) = self.open(&it);
        let (r, c) = (ctx.coords[0].clone(), ctx.coords[1].clone());
        let av = self.read(
            &Access::Smem(a.0, a.1.clone()),
            &Ctx {
                coords: vec![r.clone(), "k_".into()],
                frag_slot: String::new(),
                row_slot: String::new(),
            },
            &[0, 0],
            &[0, 0],
            Vt::F32,
        );
        let bv = self.read(
            &Access::Smem(b.0, b.1.clone()),
            &Ctx {
                coords: vec!["k_".into(), c.clone()],
                frag_slot: String::new(),
                row_slot: String::new(),
            },
            &[0, 0],
            &[0, 0],
            Vt::F32,
        );
        let init_v = match &ia {
            Some((acc, _)) => self.read(
                acc,
                &ctx,
                &self.k.tiles[init.unwrap()].shape.clone(),
                &shape,
                Vt::F32,
            ),
            None => "0.0f".into(),
        };
        let w = self.write(dst, &ctx, "s_");
        out.push(Node::Code {
            text: format!("{head}    float s_ = {init_v};\n    for (int k_ = 0; k_ < {kd}; ++k_) s_ = fmaf({av}, {bv}, s_);\n    {w}\n{tail}\n"),
            reads,
            writes: self.dst_writes(dst),
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fma_frag_loop(
        &self,
        m: usize,
        n: usize,
        kd: usize,
        mt: usize,
        ntl: usize,
        acc: &str,
        a: (&Buf, &View),
        b: (&Buf, &View),
    ) -> String {
        let rd = |buf: &Buf, view: &View, x: &str, y: &str| {
            let (r, c) = view.phys(&[x.to_string(), y.to_string()]);
            buf.elem
                .load(&format!("{}[{}]", buf.name, buf.addr(&r, &c)), Vt::F32)
        };
        let ar = format!("(wm{m} * {mt} + mi) * 16 + (lane >> 2) + (h << 3)");
        let bc = format!("(wn{m}_{n} * {ntl} + ni) * 8 + ((lane & 3) << 1) + e");
        format!(
            "#pragma unroll 4
for (int k_ = 0; k_ < {kd}; ++k_) {{
    float av_[{ma}], bv_[{nb}];
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) av_[mi * 2 + h] = {aread};
#pragma unroll
    for (int ni = 0; ni < {ntl}; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) bv_[ni * 2 + e] = {bread};
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi)
#pragma unroll
    for (int ni = 0; ni < {ntl}; ++ni)
#pragma unroll
    for (int e = 0; e < 4; ++e)
        {acc}[(mi * {ntl} + ni) * 4 + e] = fmaf(av_[mi * 2 + (e >> 1)], bv_[ni * 2 + (e & 1)], {acc}[(mi * {ntl} + ni) * 4 + e]);
}}
",
            ma = mt * 2,
            nb = ntl * 2,
            aread = rd(a.0, a.1, &ar, "k_"),
            bread = rd(b.0, b.1, "k_", &bc),
        )
    }
}
