//! Tensor-core gemms with `mma.sync` and `ldmatrix`.

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::lower::*;
use crate::cuda::memory::*;
use crate::cuda::repr::*;

impl<'a> Lower<'a> {
    /// Code that fills `unsigned {hi}[4]` (and `{lo}[4]` when `lo`) with the A fragment of
    /// rows `m0_..m0_+16`, columns `k_..k_+16` (`b_op` false), or `{hi}[2]`/`{lo}[2]` with
    /// the B fragment of columns `n0_..n0_+8` (`b_op` true); `names` = `(hi, lo)`, the register
    /// arrays of the bf16 high and low parts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn frag_load(
        &self,
        buf: &Buf,
        view: &View,
        lo: bool,
        b_op: bool,
        (hi, lo_name): (&str, &str),
        n0: &str,
        pair: bool,
    ) -> String {
        // Logical (row, col) of the operand for each 32-bit register: pairs along K.
        let (k_axis, mn_axis) = if b_op { (0usize, 1usize) } else { (1, 0) };
        let ldm = buf.elem == Elem::Bf16
            && !lo
            && view.axes.len() == 2
            && view.axes[0].is_some()
            && view.axes[1].is_some()
            && view.axes[0] != view.axes[1]
            && view.off[1].is_multiple_of(8);
        if ldm {
            // Contiguous physical axis is cols (1). Non-trans when K is the contiguous axis.
            let k_contig = view.axes[k_axis] == Some(1);
            let _ = mn_axis;
            let (lr, lc) = if !b_op {
                if k_contig {
                    // matrices: (m0+i, k0), (m0+8+i, k0), (m0+i, k0+8), (m0+8+i, k0+8)
                    (
                        "(m0_ + (lane & 15))".to_string(),
                        "(k_ + ((lane >> 4) << 3))".to_string(),
                    )
                } else {
                    // trans: (k0+i, m0), (k0+i, m0+8), (k0+8+i, m0), (k0+8+i, m0+8)
                    (
                        "(m0_ + (((lane >> 3) & 1) << 3))".to_string(),
                        "(k_ + (lane & 7) + ((lane >> 4) << 3))".to_string(),
                    )
                }
            } else if k_contig {
                // matrices (n0+i, k0), (n0+i, k0+8) [, (n0+8+i, k0), (n0+8+i, k0+8)]
                (
                    "(k_ + (((lane >> 3) & 1) << 3))".to_string(),
                    format!("({n0} + (lane & 7) + ((lane >> 4) << 3))"),
                )
            } else {
                // trans: (k0+i, n0), (k0+8+i, n0) [, (k0+i, n0+8), (k0+8+i, n0+8)]
                (
                    "(k_ + (lane & 7) + (((lane >> 3) & 1) << 3))".to_string(),
                    format!("({n0} + ((lane >> 4) << 3))"),
                )
            };
            // (lr, lc) are logical (row, col) of the operand tile.
            let (pr, pc) = view.phys(&[lr, lc]);
            let trans = !k_contig;
            let addr = buf.addr(&pr, &pc);
            let x = if b_op && !pair { "x2" } else { "x4" };
            let f = if trans {
                format!("tpla_ldmatrix_{x}_trans")
            } else {
                format!("tpla_ldmatrix_{x}")
            };
            return format!("{f}({hi}, &{}[{addr}]);\n", buf.name);
        }
        // Generic: element pairs, converted (and split) in registers.
        let rd = |r: String, c: String| {
            let (pr, pc) = view.phys(&[r, c]);
            buf.elem
                .load(&format!("{}[{}]", buf.name, buf.addr(&pr, &pc)), Vt::F32)
        };
        let mut s = String::new();
        let regs: Vec<(String, String, String, String)> = if !b_op {
            // a0: (g, 2t), a1: (g+8, 2t), a2: (g, 2t+8), a3: (g+8, 2t+8); pairs along k.
            (0..4)
                .map(|j| {
                    let r = format!("(m0_ + (lane >> 2) + {})", (j & 1) * 8);
                    let c = format!("(k_ + ((lane & 3) << 1) + {})", (j >> 1) * 8);
                    (r.clone(), c.clone(), r, format!("({c} + 1)"))
                })
                .collect()
        } else {
            // For each of up to two n-tiles: b0: (k=2t.., n=g), b1: (k=2t+8.., n=g).
            (0..4)
                .map(|j| {
                    let k = format!("(k_ + ((lane & 3) << 1) + {})", (j & 1) * 8);
                    let nn = format!("({n0} + (lane >> 2) + {})", (j >> 1) * 8);
                    (k.clone(), nn.clone(), format!("({k} + 1)"), nn)
                })
                .collect()
        };
        let nregs = if b_op && !pair { 2 } else { 4 };
        for (j, (r0, c0, r1, c1)) in regs.iter().enumerate().take(nregs) {
            s.push_str(&format!(
                "{{ const float x0_ = {}; const float x1_ = {};\n  {hi}[{j}] = tpla_pack_bf16x2(x0_, x1_);\n",
                rd(r0.clone(), c0.clone()),
                rd(r1.clone(), c1.clone())
            ));
            if lo {
                s.push_str(&format!(
                    "  {lo_name}[{j}] = tpla_pack_bf16x2(x0_ - tpla_bf16_to_f32(tpla_f32_to_bf16(x0_)), x1_ - tpla_bf16_to_f32(tpla_f32_to_bf16(x1_))); "
                ));
            }
            s.push_str("}\n");
        }
        s
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mma_loop(
        &self,
        m: usize,
        n: usize,
        kd: usize,
        mt: usize,
        ntl: usize,
        acc: &str,
        a: (&Buf, &View, bool),
        b: (&Buf, &View, bool),
    ) -> String {
        let (ab, av, alo) = a;
        let (bb, bv, blo) = b;
        // Independent accumulator chains along K when a warp owns few output tiles: one chain of
        // dependent mma.sync per tile would be latency bound (e.g. q·Kᵀ with K = 576).
        let chains = mt * ntl;
        let mut ks = 1;
        while chains * ks * 2 <= 4 && kd.is_multiple_of(16 * ks * 2) && kd / (16 * ks * 2) >= 2 {
            ks *= 2;
        }
        let pairs = ntl.is_multiple_of(2);
        let step = if pairs { 2 } else { 1 };
        let aload = self.frag_load(ab, av, alo, false, ("af_h[mi]", "af_l[mi]"), "", true);
        // B: for pairs, the ldmatrix covers two n-tiles; the generic path too (4 regs).
        let bload = self.frag_load(bb, bv, blo, true, ("bf_h", "bf_l"), "n0_", pairs);
        let mut mmas = String::new();
        let dacc = if ks > 1 {
            "kacc_[kk_]".to_string()
        } else {
            acc.to_string()
        };
        for j in 0..step {
            let d = format!("&{dacc}[(mi * {ntl} + nj + {j}) * 4]");
            let bh = format!("&bf_h[{}]", j * 2);
            let bl = format!("&bf_l[{}]", j * 2);
            mmas.push_str(&format!(
                "            tpla_mma_bf16_16816({d}, af_h[mi], {bh});\n"
            ));
            if alo {
                mmas.push_str(&format!(
                    "            tpla_mma_bf16_16816({d}, af_l[mi], {bh});\n"
                ));
            }
            if blo {
                mmas.push_str(&format!(
                    "            tpla_mma_bf16_16816({d}, af_h[mi], {bl});\n"
                ));
            }
        }
        let bdecl = if blo {
            "unsigned bf_h[4], bf_l[4];"
        } else {
            "unsigned bf_h[4];"
        };
        let adecl = if alo {
            format!("unsigned af_h[{mt}][4], af_l[{mt}][4];")
        } else {
            format!("unsigned af_h[{mt}][4];")
        };
        let regs = mt * ntl * 4;
        // Fully unrolled K loop for moderate K: the swizzled shared-memory addresses of every
        // step fold to per-thread constants instead of being recomputed each step.
        // Only where the kernel's accumulators leave room for the hoisted addresses.
        let max_frag = self
            .info
            .gemms
            .iter()
            .filter(|&&(m, n)| Geo::frag_ok(m, n))
            .map(|&(m, n)| self.geo.frag_regs(m, n))
            .max()
            .unwrap_or(0);
        let unroll = if kd / (16 * ks) <= 48 && max_frag <= 64 {
            "#pragma unroll"
        } else {
            "#pragma unroll 2"
        };
        let (khead, ktail) = if ks > 1 {
            (
                format!(
                    "float kacc_[{ks}][{regs}];
#pragma unroll
for (int kk_ = 0; kk_ < {ks}; ++kk_)
#pragma unroll
    for (int i_ = 0; i_ < {regs}; ++i_) kacc_[kk_][i_] = 0.0f;
{unroll}
for (int k0_ = 0; k0_ < {kd}; k0_ += {kstep}) {{
#pragma unroll
for (int kk_ = 0; kk_ < {ks}; ++kk_) {{
    const int k_ = k0_ + kk_ * 16;
",
                    kstep = 16 * ks
                ),
                format!(
                    "}}
}}
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) {{
    float s_ = kacc_[0][i_];
#pragma unroll
    for (int kk_ = 1; kk_ < {ks}; ++kk_) s_ += kacc_[kk_][i_];
    {acc}[i_] += s_;
}}
"
                ),
            )
        } else {
            (
                format!("{unroll}\nfor (int k_ = 0; k_ < {kd}; k_ += 16) {{\n"),
                "}\n".to_string(),
            )
        };
        format!(
            "{khead}
    {adecl}
#pragma unroll
    for (int mi = 0; mi < {mt}; ++mi) {{
        const int m0_ = (wm{m} * {mt} + mi) * 16;
{aload}
    }}
#pragma unroll
    for (int nj = 0; nj < {ntl}; nj += {step}) {{
        const int n0_ = (wn{m}_{n} * {ntl} + nj) * 8;
        {bdecl}
{bload}
#pragma unroll
        for (int mi = 0; mi < {mt}; ++mi) {{
{mmas}        }}
    }}
{ktail}"
        )
    }

    // -------------------------------------------------------------- paged loops
}
