//! `SEESAW = 2`: FlashMLA's staggered two-consumer schedule (chained maxima).
//!
//! The pair loop of `super` (warpgroup 0 on the even block of a pair, warpgroup 1 on the odd
//! one, each holding half of the accumulator), but the two warpgroups no longer meet at
//! symmetric exchanges: warpgroup 1's running max starts from warpgroup 0's, and every handoff
//! is a named barrier that one side *arrives* at (`bar.arrive`, no wait) and the other *syncs*
//! on, so one warpgroup's softmax runs while the other's `wgmma`s do. Per pair, with `m` the
//! running max carried by the loop (identical in both warpgroups at the start of a pair):
//!
//! - warpgroup 0: `S0 = q·K0ᵀ`; publishes `rowmax S0` ([`BAR_MAX0`] arrive); `m0 = max(m, ·)`,
//!   `P0 = exp2(S0 - m0)`, `l0 = l0·exp2(m - m0) + rowsum P0`; publishes P0 (bf16 pairs in the
//!   register-A order, [`BAR_P0`] arrive); `O_L = O_L·exp2(m - m0) + P0·V0_L` issued; waits for
//!   warpgroup 1's `m1` and P1 ([`BAR_WG1`] sync); once its gemm is done, `O_L` and `l0` times
//!   `exp2(m0 - m1)`; `O_L += P1·V1_L`; `m := m1` (read from shared memory: bit-identical);
//! - warpgroup 1: `S1 = q·K1ᵀ`; waits for `rowmax S0` ([`BAR_MAX0`] sync), `m1 = max(m,
//!   rowmax S0, rowmax S1)`; `P1 = exp2(S1 - m1)`, `l1 = l1·exp2(m - m1) + rowsum P1`; waits for
//!   P0 ([`BAR_P0`] sync) and reads it into registers; publishes `m1` and P1 ([`BAR_WG1`]
//!   arrive); `O_R = O_R·exp2(m - m1) + P1·V1_R` issued; P0 times `exp2(m0 - m1)` per row
//!   (unpacked, multiplied, packed again: a second bf16 rounding); `O_R += P0·V0_R`.
//!
//! Each warpgroup waits for its own block's ring slot at the top of the pair and for the other
//! block's only before its second `P·V`, so warpgroup 0 starts on the even block while the odd
//! one is still landing.
//!
//! After the loop both denominators are relative to the same final `m`: `l = l0 + l1` through
//! shared memory once ([`Lower::chained_combine_sums`]).
//!
//! Races, reasoned out (bar.arrive releases the arriving thread's earlier accesses, bar.sync
//! acquires them): the three exchange buffers are single, not double-buffered, because every
//! overwrite is ordered behind the other warpgroup's read by the handshake itself.
//! - `rowmax S0` (written by 0, read by 1): 0 rewrites it in pair `i + 1` only after its
//!   [`BAR_WG1`] sync of pair `i`, which 1 arrives at after reading it.
//! - P0 (0 -> 1): read by 1 into registers right after its [`BAR_P0`] sync, before its
//!   [`BAR_WG1`] arrive, which 0 syncs on before rewriting P0 in the next pair.
//! - `m1`, P1 (1 -> 0): 0 reads them after its [`BAR_WG1`] sync and before its [`BAR_MAX0`]
//!   arrive of the next pair; 1 rewrites them only after its [`BAR_P0`] sync of the next pair,
//!   which follows that arrive.
//!
//! The same chain keeps each named barrier's phases apart (no warpgroup arrives twice at a
//! barrier before the other has synced on it): 0's arrivals of pair `i + 1` follow its
//! [`BAR_WG1`] sync of pair `i`, which follows every sync of 1 in pair `i` (1 syncs on
//! [`BAR_P0`] before it arrives at [`BAR_WG1`]); 1's arrival of pair `i + 1` follows its
//! [`BAR_P0`] sync of pair `i + 1`, behind 0's [`BAR_WG1`] sync of pair `i`. The host emulator
//! reports a thread that reaches a named barrier twice in one phase, or a phase left open at
//! the end of a block.
//!
//! Applies only with the producer warpgroup feeding the pair ring (`PRODUCER = 1`): the loop
//! without it opens every pair with a block barrier, which would put the two warpgroups back in
//! lock step. Needs the online-softmax denominator `l = l·α + reduce_sum(p, 1)` to be the only
//! row sum (see `partial_sum.rs`, whose pattern it reuses) and the maxima and `l` in row
//! registers; elsewhere the knob changes nothing.

use crate::cuda::elem::Elem;
use crate::cuda::geometry::Geo;
use crate::cuda::layout::Lay;
use crate::cuda::lower::iter::Iter;
use crate::cuda::lower::partial_sum::partial_sums;
use crate::cuda::lower::Lower;
use crate::cuda::node::Node;
use crate::cuda::repr::Repr;
use crate::cuda::util::backend_err;
use crate::error::IrError;
use crate::ir::*;

use super::{pack_bf16, Seesaw, WG};

/// Named barrier: warpgroup 0 arrives once its `rowmax S0` is published, warpgroup 1 syncs.
/// (Barrier 1 is the consumers' block barrier, 2 the FP8 producer's.)
pub(crate) const BAR_MAX0: usize = 3;
/// Named barrier: warpgroup 0 arrives once its P0 is published, warpgroup 1 syncs.
pub(crate) const BAR_P0: usize = 4;
/// Named barrier: warpgroup 1 arrives once its `m1` and P1 are published, warpgroup 0 syncs.
pub(crate) const BAR_WG1: usize = 5;

/// Threads of the two consumer warpgroups (every named barrier here spans both).
const CONSUMERS: usize = 256;

/// Warpgroup 1's copy of `rowmax S0` (row registers, kernel scope).
const X0: &str = "ss2_x0";
/// The other warpgroup's P as bf16 pairs in the register-A order (kernel scope).
const PO: &str = "ss2_po";

/// Device functions of the chained schedule, printed after the warp-specialisation ones only
/// where it applies (every other kernel's source stays as it was).
pub(crate) const CHAINED_FNS: &str = r#"
// ---- SEESAW = 2: named-barrier arrive, bf16 pair rescale ----------------------------------
// [threads] Arrives at named barrier `id` over `n` threads (whole warps) without waiting.
__device__ __forceinline__ void tpla_bar_arrive(int id, int n) {
#ifdef __CUDA_ARCH__
    asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory");
#else
    tpla_emu_bar_arrive(id, n);
#endif
}
// Both halves of a bf16 pair times `f`, rounded to bf16 again.
__device__ __forceinline__ unsigned tpla_scale_bf16x2(unsigned x, float f) {
    return tpla_pack_bf16x2(__uint_as_float(x << 16) * f, __uint_as_float(x & 0xffff0000u) * f);
}
"#;

/// The chained form's tiles and (once lowered) exchange buffers.
#[derive(Clone, Debug)]
pub(crate) struct Chained {
    /// The carried denominator `l`: per warpgroup through the loop, combined after it.
    pub(crate) l: TileId,
    /// `rowmax S0` (f32 `[m]`), warpgroup 0 to 1.
    pub(crate) xmax: Option<usize>,
    /// `m1` (f32 `[m]`), warpgroup 1 to 0.
    pub(crate) xm1: Option<usize>,
    /// P of both warpgroups (one `uint4` per thread and 16 columns, warpgroup 0's first).
    pub(crate) xp: Option<usize>,
}

/// Where `SEESAW = 2` applies on top of the two-consumer plan `plan` (see the module docs):
/// the chained form's tiles, else `None`. `geo` is the two-consumer geometry.
pub(crate) fn chained_plan(lw: &Lower, plan: &Seesaw, geo: &Geo) -> Option<Chained> {
    let m = lw.k.tiles[plan.acc].shape[0];
    let lp =
        lw.k.body
            .iter()
            .find(|s| matches!(s, Stmt::PagedBlocks { .. }))?;
    let (sum, p) = plan.sum_of_p?;
    let [(t, l)] = partial_sums(lw.k, lp)[..] else {
        return None;
    };
    let rows = |t: TileId| lw.lay[t] == Lay::Rows { m };
    let (m_old, m_new) = plan.maxes;
    // The gemm rescales `l` (assigned before it) and reads the carried `m` (assigned after it).
    let Stmt::PagedBlocks { body, .. } = lp else {
        unreachable!()
    };
    let at = |f: &dyn Fn(TileId, &TileOp) -> bool| {
        body.iter()
            .position(|s| matches!(s, Stmt::Assign { dst, op } if f(*dst, op)))
    };
    let gemm_at = at(&|_, op| matches!(op, TileOp::Gemm { a, b } if (*a, *b) == plan.xgemm))?;
    let l_at = at(&|d, _| d == l)?;
    let ordered = l_at < gemm_at && at(&|d, _| d == m_old).is_none_or(|i| i > gemm_at);
    let ok = ordered
        && geo.producer
        && t == sum
        && plan.xreduce.len() == 2
        && matches!(lw.lay[p], Lay::Frag { .. })
        && [l, m_old, m_new, sum].into_iter().all(rows)
        // One 16-row slice per warp: a thread's rows are `h = 0, 1` (the P pair order).
        && geo.mt(m) == 1;
    ok.then_some(Chained {
        l,
        xmax: None,
        xm1: None,
        xp: None,
    })
}

impl Lower<'_> {
    fn chained(&self) -> &Chained {
        self.seesaw
            .as_ref()
            .and_then(|s| s.chained.as_ref())
            .expect("the chained plan")
    }

    fn chained_mut(&mut self) -> &mut Chained {
        self.seesaw
            .as_mut()
            .and_then(|s| s.chained.as_mut())
            .expect("the chained plan")
    }

    /// The exchange buffers, placed on first use. Their accesses are left out of the nodes'
    /// reads and writes: the handshake orders them (see the module docs), and the sync pass must
    /// not add block barriers inside the loop.
    fn chained_bufs(&mut self, m: usize, ks: usize) -> (String, String, String) {
        if self.chained().xmax.is_none() {
            let xmax = self.add_buf("xmax", Elem::F32, &[m], 1, true);
            let xm1 = self.add_buf("xm1_", Elem::F32, &[m], 1, true);
            let xp = self.add_buf("xpc", Elem::F32, &[2 * ks * 128, 4], 1, true);
            let rows = 2 * self.geo.mt(m);
            let np = ks * 4;
            self.decl
                .lines
                .push(format!("float {X0}[{rows}]; (void){X0};"));
            self.decl
                .lines
                .push(format!("unsigned {PO}[{np}]; (void){PO};"));
            let c = self.chained_mut();
            c.xmax = Some(xmax);
            c.xm1 = Some(xm1);
            c.xp = Some(xp);
        }
        let c = self.chained().clone();
        let name = |b: Option<usize>| self.smem.bufs[b.expect("placed")].name.clone();
        (name(c.xmax), name(c.xm1), name(c.xp))
    }

    /// After `rowmax S` (`arr`, row registers): warpgroup 0 publishes its own, warpgroup 1 waits
    /// for it, keeps a copy and takes the maximum of both.
    pub(crate) fn chained_max(&mut self, m: usize, arr: &str, ks: usize, out: &mut Vec<Node>) {
        let (xmax, _, _) = self.chained_bufs(m, ks);
        let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
        out.push(Node::Code {
            text: format!(
                "if ({WG} == 0) {{
if ((lane & 3) == 0) {{
{rows}    {xmax}[r_] = {arr}[mi * 2 + h];
{end}
}}
tpla_bar_arrive({BAR_MAX0}, {CONSUMERS});
}} else {{
tpla_bar_sync({BAR_MAX0}, {CONSUMERS});
{rows}    {X0}[mi * 2 + h] = {xmax}[r_];
    {arr}[mi * 2 + h] = tpla_fmax({arr}[mi * 2 + h], {X0}[mi * 2 + h]);
{end}
}}
"
            ),
            reads: vec![],
            writes: vec![],
        });
    }

    /// At the row sum of P (`pa`, the `[m, kd]` fragment; the sum itself stays per
    /// warpgroup): warpgroup 0 publishes P0; warpgroup 1 waits for P0, reads it into registers,
    /// then publishes `m1` (`m_new`) and P1.
    pub(crate) fn chained_publish(&mut self, m: usize, pa: &str, kd: usize, out: &mut Vec<Node>) {
        let ks = kd / 16;
        let (_, xm1, xp) = self.chained_bufs(m, ks);
        let Repr::Rows { arr: m_new, .. } =
            self.repr[self.seesaw.as_ref().unwrap().maxes.1].clone()
        else {
            unreachable!("checked by chained_plan")
        };
        let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
        out.push(Node::Code {
            text: format!(
                "{{
unsigned px_[{np}];
{pack}uint4* const xp_ = (uint4*){xp};
if ({WG} == 0) {{
#pragma unroll
    for (int k_ = 0; k_ < {ks}; ++k_) xp_[k_ * 128 + (tid & 127)] = make_uint4(px_[k_ * 4], px_[k_ * 4 + 1], px_[k_ * 4 + 2], px_[k_ * 4 + 3]);
    tpla_bar_arrive({BAR_P0}, {CONSUMERS});
}} else {{
    tpla_bar_sync({BAR_P0}, {CONSUMERS});
#pragma unroll
    for (int k_ = 0; k_ < {ks}; ++k_) {{
        const uint4 v_ = xp_[k_ * 128 + (tid & 127)];
        {PO}[k_ * 4 + 0] = v_.x; {PO}[k_ * 4 + 1] = v_.y; {PO}[k_ * 4 + 2] = v_.z; {PO}[k_ * 4 + 3] = v_.w;
    }}
#pragma unroll
    for (int k_ = 0; k_ < {ks}; ++k_) xp_[({ks} + k_) * 128 + (tid & 127)] = make_uint4(px_[k_ * 4], px_[k_ * 4 + 1], px_[k_ * 4 + 2], px_[k_ * 4 + 3]);
    if ((lane & 3) == 0) {{
{rows}    {xm1}[r_] = {m_new}[mi * 2 + h];
{end}
    }}
    tpla_bar_arrive({BAR_WG1}, {CONSUMERS});
}}
}}
",
                np = kd / 4,
                pack = pack_bf16(pa, "px_", ks),
            ),
            reads: vec![],
            writes: vec![],
        });
    }

    /// The chained `P·V` after the accumulator's `init` (already in `acc`): the own block's
    /// product issued (P `pa_` from registers, V at descriptor `db_`), then warpgroup 0 waits for
    /// `m1` and P1, rescales `O_L`, `l0` and takes `m := m1`, warpgroup 1 rescales the P0 it
    /// read; then, once the other block's ring slot is full (the loop waited for the
    /// warpgroup's own only), its product (V at `do_`; warpgroup 1, whose accumulator is not
    /// rescaled, issues it behind its first without waiting for it). Returns the code; an error
    /// where the two maxima would share registers (warpgroup 1 reads the carried one after the
    /// pair's).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chained_gemm_text(
        &mut self,
        m: usize,
        n: usize,
        ks: usize,
        acc: &str,
        own: &str,
        other: &str,
        wgmma: &str,
    ) -> Result<String, IrError> {
        let (_, xm1, xp) = self.chained_bufs(m, ks);
        let plan = self.seesaw.as_ref().unwrap();
        let (m_old, m_new) = plan.maxes;
        let l = self.chained().l;
        let arr = |t: TileId| match &self.repr[t] {
            Repr::Rows { arr, .. } => arr.clone(),
            _ => unreachable!("checked by chained_plan"),
        };
        let (m_old, m_new, l) = (arr(m_old), arr(m_new), arr(l));
        if m_old == m_new {
            return Err(backend_err(
                self.k,
                "SEESAW = 2: the carried max and the pair's max share registers",
            ));
        }
        let regs = self.geo.frag_regs(m, n);
        // The other block's ring slot: pair `it_` is in round `it_ / st` of its stages.
        let st = *self
            .paging
            .used
            .last()
            .ok_or_else(|| backend_err(self.k, "SEESAW = 2: the P·V gemm outside its loop"))?;
        let mbar = crate::cuda::warpspec::MBAR;
        let other_full = format!(
            "tpla_mbar_wait(&{mbar}[(2 * it_ + 1 - {WG}) % {slots}], (it_ / {st}) & 1);\ntpla_fence_proxy_async();",
            slots = 2 * st
        );
        let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
        let (frag, fend, ctx) = self.open(&Iter::Frag { m, n });
        Ok(format!(
            "#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
tpla_wgmma_fence();
#pragma unroll
for (int k_ = 0; k_ < {kd}; k_ += 16) {{
    {wgmma}({acc}, &pa_[(k_ / 16) * 4], {own});
}}
tpla_wgmma_commit();
float f_[2];
if ({WG} == 0) {{
    tpla_bar_sync({BAR_WG1}, {CONSUMERS});
{rows}        const float m1_ = {xm1}[r_];
        f_[h] = tpla_exp2({m_new}[mi * 2 + h] - m1_);
        {m_new}[mi * 2 + h] = m1_;
        {l}[mi * 2 + h] *= f_[h];
{end}
    const uint4* const xp_ = (const uint4*){xp};
#pragma unroll
    for (int k_ = 0; k_ < {ks}; ++k_) {{
        const uint4 v_ = xp_[({ks} + k_) * 128 + (tid & 127)];
        {PO}[k_ * 4 + 0] = v_.x; {PO}[k_ * 4 + 1] = v_.y; {PO}[k_ * 4 + 2] = v_.z; {PO}[k_ * 4 + 3] = v_.w;
    }}
}} else {{
{rows}        f_[h] = tpla_exp2(tpla_fmax({m_old}[mi * 2 + h], {X0}[mi * 2 + h]) - {m_new}[mi * 2 + h]);
{end}
#pragma unroll
    for (int j_ = 0; j_ < {np}; ++j_) {PO}[j_] = tpla_scale_bf16x2({PO}[j_], f_[j_ & 1]);
}}
if ({WG} == 0) {{
    tpla_wgmma_wait0();
#pragma unroll
    for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
{frag}        {acc}[{slot}] *= f_[e >> 1];
{fend}
#pragma unroll
    for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
}}
{other_full}
tpla_wgmma_fence();
#pragma unroll
for (int k_ = 0; k_ < {kd}; k_ += 16) {{
    {wgmma}({acc}, &{PO}[(k_ / 16) * 4], {other});
}}
tpla_wgmma_commit();
tpla_wgmma_wait0();
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
}}
",
            kd = ks * 16,
            np = ks * 4,
            slot = ctx.frag_slot,
        ))
    }

    /// After the loop: `l = l0 + l1`, each warpgroup's denominator through shared memory (both
    /// read the two halves in the same order, so both hold the same sum).
    pub(crate) fn chained_combine_sums(&mut self, out: &mut Vec<Node>) {
        let l = self.chained().l;
        let Repr::Rows { m, arr } = self.repr[l].clone() else {
            unreachable!("checked by chained_plan")
        };
        let buf = self.add_buf("lsum", Elem::F32, &[2, m], 1, true);
        let name = self.smem.bufs[buf].name.clone();
        let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
        out.push(Node::Code {
            text: format!(
                "if ((lane & 3) == 0) {{\n{rows}    {name}[{WG} * {m} + r_] = {arr}[mi * 2 + h];\n{end}\n}}\n"
            ),
            reads: vec![],
            writes: vec![buf],
        });
        out.push(Node::Code {
            text: format!(
                "{rows}    {arr}[mi * 2 + h] = ({name}[r_] + {name}[{m} + r_]);\n{end}\n"
            ),
            reads: vec![buf],
            writes: vec![],
        });
    }
}
