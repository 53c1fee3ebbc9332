//! The two-consumer "seesaw" schedule (schedule knob `SEESAW = 1`, Hopper warpgroup path).
//!
//! FlashMLA's sm90 decode splits the work of one 64-row block between two consumer warpgroups
//! without duplicating `q·kᵀ`: the paged loop's blocks alternate between them (warpgroup 0 takes
//! the even blocks, warpgroup 1 the odd ones), each computes its own `S = q·kᵀ` and `P`, and each
//! keeps one half of the wide accumulator (`O_L`, columns `0 .. n/2`, in warpgroup 0; `O_R` in
//! warpgroup 1), updating it with both blocks: `O_L += P0·V0_L + P1·V1_L`,
//! `O_R += P1·V1_R + P0·V0_R`.
//!
//! Here that is a lowering of the unchanged online-softmax loop. One iteration of the generated
//! loop handles a *pair* of blocks, one per warpgroup, and is the kernel's loop body run on the
//! union of the two blocks:
//!
//! - every tile that depends on the block (the rows, `kv.start()`, `kv.valid()`, and everything
//!   computed from them: `s`, the masks, `p`) is computed by each warpgroup for its own block
//!   (`kv.start()` and the ring slot are per warpgroup);
//! - a row reduction over the block axis (`reduce_max(s, 1)`, `reduce_sum(p, 1)`) is combined
//!   across the warpgroups through shared memory (both read the two halves in the same order, so
//!   both hold bit-identical statistics, the running max included);
//! - the gemm contracting over the block axis (`p · kv.cols(..)`) adds both blocks' products to
//!   the warpgroup's accumulator half: its own `P` from registers, the other warpgroup's `P`
//!   (exchanged as bf16 pairs in the register-A order) against the other ring slot, all with
//!   register-A `wgmma`s committed as one group.
//!
//! That equals the online softmax over blocks of twice the size (the combined maximum is the
//! pair's maximum, the combined sums are sums over the pair's tokens), which [`pattern`] checks
//! in one place: the loop carries `m`, `l`, `acc`;
//! `m_new = max(m, reduce_max(s, 1))`, `p = exp2(s - m_new)` (a mask elementwise on `s` allowed,
//! as in the multi-token form), `l = l * alpha + reduce_sum(p, 1)` and
//! `acc = acc * alpha + gemm(p, kv.cols(..))`. The geometry must give each warpgroup whole
//! `[64, BLOCK_N]` fragments and half of the accumulator columns (two warpgroups, eight warps;
//! see [`Lower::seesaw_plan`]). Elsewhere, or without a warpgroup path, or where the pair ring
//! does not fit in shared memory, the knob changes nothing.
//!
//! The ring holds `2 × STAGES` blocks: pair `i` lives in slots `2 (i % STAGES)` and
//! `2 (i % STAGES) + 1`, and the copy of pair `i + STAGES - 1` is issued (by every thread, as
//! without the knob) inside the first warpgroup gemm of pair `i`. A pair whose odd block is past
//! the split still copies it (zero-filled rows, masked to `-1e30`), so the odd warpgroup's
//! products are exact zeros.
//!
//! Under `PRODUCER = 1` (and so `TMA = 1`) the ring is fed by the producer warpgroup of
//! `warpspec.rs` instead ([`Lower::seesaw_ws_loop`]): each of the `2 × STAGES` slots is one
//! producer stage with its full / empty mbarriers, the producer streams the blocks up to the next
//! even count (the odd block past the split zero-filled by its `cp.async` path), and both consumer
//! warpgroups wait on the full barriers of both slots of their pair (P·V reads both) and arrive on
//! both empty barriers (256 arrivals) once the pair's iteration is done.

mod pattern;

pub(crate) use pattern::{pattern, Seesaw};

use crate::cuda::elem::*;
use crate::cuda::geometry::*;
use crate::cuda::layout::*;
use crate::cuda::lower::gemm::wgmma::*;
use crate::cuda::lower::iter::*;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::*;
use crate::cuda::util::*;
use crate::error::IrError;
use crate::ir::*;

/// The C pointer to the other warpgroup's slot of the ring whose current-slot pointer is `cur`
/// (`{id}_cur`, see the memory pass).
fn other_slot(cur: &str) -> String {
    format!("{}_oth", cur.strip_suffix("_cur").unwrap_or(cur))
}

/// The warpgroup index of a thread (C expression).
const WG: &str = "(warp >> 2)";

impl<'a> Lower<'a> {
    /// The geometry decision: where the schedule asks for it, the kernel has the [`pattern`] and
    /// the target has the warpgroup path, the plan with eight consumer warps (two warpgroups; a
    /// producer warpgroup after them under `PRODUCER = 1`) in which each warpgroup holds the block's `[64, BLOCK_N]` fragments whole
    /// and half of the accumulator, the block's P as a register-A operand.
    pub(crate) fn seesaw_plan(&self) -> Option<(Geo, Seesaw)> {
        if !self.sched.seesaw || self.sched.warps.is_some_and(|w| w != 8) {
            return None;
        }
        let plan = pattern(self.k)?;
        let sched = crate::schedule::Schedule {
            warps: Some(8),
            ..self.sched
        };
        let geo = Geo {
            producer: self.geo.producer,
            ..geometry(&sched, &self.info, &self.target)
        };
        let (a, _) = plan.xgemm;
        let (m, bn) = (self.k.tiles[a].shape[0], plan.block);
        let n = self.k.tiles[plan.acc].shape[1];
        let frag = |t: TileId, mm: usize, nn: usize| self.lay[t] == Lay::Frag { m: mm, n: nn };
        // P is exchanged as bf16: only a bf16-labelled P (an f32 one keeps its hi/lo split).
        let ok = geo.wg
            && self.k.tiles[a].dtype == DType::BF16
            && m == 64
            && geo.wm(m) == 4
            && geo.wn(m, bn) == 1
            && geo.wn(m, n) == 2
            // V is an N-major operand: whole 64-column blocks per warpgroup.
            && (n / 2).is_multiple_of(64)
            && n / 2 <= 256
            && bn.is_multiple_of(16)
            && frag(a, m, bn)
            && frag(plan.acc, m, n)
            && plan
                .xreduce
                .iter()
                .all(|&t| self.lay[t] == Lay::Rows { m })
            // Per-block values stay in registers or are recomputed (never a shared tile both
            // warpgroups would write; see also [`Lower::seesaw_shares_a_block_tile`]).
            && plan.per_block.iter().enumerate().all(|(t, &p)| {
                !p || plan.of_rows[t] || !matches!(self.lay[t], Lay::Smem)
            });
        ok.then_some((geo, plan))
    }

    /// After the memory pass: whether the plan would leave a per-block tile (not a view of the
    /// ring) in shared memory, which both warpgroups would share with different blocks (an
    /// index tile the layout left to the memory pass, e.g. the causal limit
    /// `len - s_q + row - kv.start()` of multi-token queries). The kernel is then emitted
    /// without the schedule.
    pub(crate) fn seesaw_shares_a_block_tile(&self) -> bool {
        self.seesaw.as_ref().is_some_and(|plan| {
            plan.per_block
                .iter()
                .enumerate()
                .any(|(t, &p)| p && !plan.of_rows[t] && matches!(self.repr[t], Repr::Smem { .. }))
        })
    }

    /// The copy of pair `it_ + st - 1` (both blocks, one commit group), issued where the
    /// paged loop would issue its next block.
    pub(crate) fn seesaw_prefetch(issue: &str, st: usize, nblk: &str) -> String {
        format!(
            "{{ const int jp_ = it_ + {ahead}; if (2 * jp_ < {nblk}) {{\n#pragma unroll\nfor (int h_ = 0; h_ < 2; ++h_) {{ const int j_ = 2 * jp_ + h_; {issue} }} }} }}\ntpla_cp_async_commit();\n",
            ahead = st - 1
        )
    }

    /// The paged loop over pairs of blocks (see the module docs): `setup` (sequence, split
    /// bounds, ring base), the first `st - 1` pairs' copies, then per pair: wait for its copy,
    /// one barrier, the warpgroup's block start and ring slots, and the body (`inner`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seesaw_loop(
        &mut self,
        setup: &str,
        issue: &str,
        ids: (&str, &str, &str, &str),
        (start, block, st, slot): (ScalarId, usize, usize, usize),
        unplaced: Option<String>,
        inner: Vec<Node>,
        reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) {
        let (id, lo, nblk, base) = ids;
        let cur = format!("{id}_cur");
        let oth = other_slot(&cur);
        self.decl
            .lines
            .push(format!("const tpla_bf16* {oth} = nullptr; (void){oth};"));
        let pre = format!(
            "for (int jp_ = 0; jp_ < {}; ++jp_) {{
    if (2 * jp_ < {nblk}) {{
#pragma unroll
        for (int h_ = 0; h_ < 2; ++h_) {{ const int j_ = 2 * jp_ + h_; {issue} }}
    }}
    tpla_cp_async_commit();
}}
",
            st - 1
        );
        out.push(Node::Code {
            text: format!("{{\n{setup}{pre}"),
            reads,
            writes: vec![],
        });
        let head = if st >= 2 {
            format!(
                "for (int it_ = 0; 2 * it_ < {nblk}; ++it_) {{\n    tpla_cp_async_wait<{}>();",
                st - 2
            )
        } else {
            format!(
                "for (int it_ = 0; 2 * it_ < {nblk}; ++it_) {{\n    {}    tpla_cp_async_wait<0>();",
                Self::seesaw_prefetch(issue, st, nblk)
            )
        };
        let slots = 2 * st;
        let mut body = vec![
            Node::Barrier,
            Node::Code {
                text: format!(
                    "s{start} = tpla_iadd({lo}, tpla_imul(2 * it_ + {WG}, {block}));
{cur} = {base} + ((2 * it_ + {WG}) % {slots}) * {slot};
{oth} = {base} + ((2 * it_ + 1 - {WG}) % {slots}) * {slot};
{}",
                    unplaced.unwrap_or_default()
                ),
                reads: vec![],
                writes: vec![],
            },
        ];
        body.extend(inner);
        if st < 2 {
            body.push(Node::Barrier);
        }
        out.push(Node::Scope {
            head,
            body,
            tail: "}".into(),
            looped: true,
        });
        out.push(Node::Code {
            text: "tpla_cp_async_wait<0>();\n}\n".into(),
            reads: vec![],
            writes: vec![],
        });
    }

    /// The consumers' paged loop over pairs fed by a producer warpgroup (`PRODUCER = 1`): `setup`
    /// (sequence, split bounds, ring base), one barrier publishing what the consumers wrote before
    /// the loop, then per pair: wait for both slots' full mbarriers (the pair's two blocks, one
    /// producer stage each, `2 st` stages), the warpgroup's block start and ring slots, the body
    /// (`inner`), and one arrival of every consumer thread on both slots' empty mbarriers.
    pub(crate) fn seesaw_ws_loop(
        &mut self,
        setup: &str,
        ids: (&str, &str, &str, &str),
        (start, block, st, slot): (ScalarId, usize, usize, usize),
        inner: Vec<Node>,
        reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) {
        let (id, lo, nblk, base) = ids;
        let mbar = crate::cuda::warpspec::MBAR;
        let cur = format!("{id}_cur");
        let oth = other_slot(&cur);
        self.decl
            .lines
            .push(format!("const tpla_bf16* {oth} = nullptr; (void){oth};"));
        let slots = 2 * st;
        out.push(Node::Code {
            text: format!("{{\n{setup}"),
            reads,
            writes: vec![],
        });
        out.push(Node::Barrier);
        // Both blocks of pair `it_` are in round `it_ / st` of their stages.
        let head = format!(
            "for (int it_ = 0; 2 * it_ < {nblk}; ++it_) {{
    tpla_mbar_wait(&{mbar}[(2 * it_) % {slots}], (it_ / {st}) & 1);
    tpla_mbar_wait(&{mbar}[(2 * it_ + 1) % {slots}], (it_ / {st}) & 1);
    tpla_fence_proxy_async();"
        );
        let mut body = vec![Node::Code {
            text: format!(
                "s{start} = tpla_iadd({lo}, tpla_imul(2 * it_ + {WG}, {block}));
{cur} = {base} + ((2 * it_ + {WG}) % {slots}) * {slot};
{oth} = {base} + ((2 * it_ + 1 - {WG}) % {slots}) * {slot};
"
            ),
            reads: vec![],
            writes: vec![],
        }];
        body.extend(inner);
        body.push(Node::Code {
            text: format!(
                "tpla_mbar_arrive(&{mbar}[{slots} + (2 * it_) % {slots}]);\ntpla_mbar_arrive(&{mbar}[{slots} + (2 * it_ + 1) % {slots}]);\n"
            ),
            reads: vec![],
            writes: vec![],
        });
        out.push(Node::Scope {
            head,
            body,
            tail: "}".into(),
            looped: true,
        });
        out.push(Node::Code {
            text: "}\n".into(),
            reads: vec![],
            writes: vec![],
        });
    }

    /// After a row reduction over the block axis (`dst`, row registers): combines the two
    /// warpgroups' values through shared memory, both in the same order.
    pub(crate) fn seesaw_combine(&mut self, dst: TileId, op: ReduceOp, out: &mut Vec<Node>) {
        if !self
            .seesaw
            .as_ref()
            .is_some_and(|s| s.xreduce.contains(&dst))
        {
            return;
        }
        let Repr::Rows { m, arr } = self.repr[dst].clone() else {
            unreachable!("checked by seesaw_plan")
        };
        let early = self.seesaw.as_ref().and_then(|s| s.sum_of_p);
        if let Some((_, p)) = early.filter(|&(d, _)| d == dst) {
            if let Repr::Frag { arr: pa, n, .. } = self.repr[p].clone() {
                self.seesaw_publish(&pa, n, out);
            }
        }
        let buf = self.add_buf("xr", Elem::F32, &[2, m], 1, true);
        let name = self.smem.bufs[buf].name.clone();
        let (rows, end, _) = self.open(&Iter::Rows { m, rank: 1 });
        out.push(Node::Code {
            text: format!(
                "if ((lane & 3) == 0) {{\n{rows}    {name}[{WG} * {m} + r_] = {arr}[mi * 2 + h];\n{end}\n}}\n"
            ),
            reads: vec![],
            writes: vec![buf],
        });
        let (a, b) = (format!("{name}[r_]"), format!("{name}[{m} + r_]"));
        let v = match op {
            ReduceOp::Sum => format!("({a} + {b})"),
            ReduceOp::Max => format!("tpla_fmax({a}, {b})"),
        };
        out.push(Node::Code {
            text: format!("{rows}    {arr}[mi * 2 + h] = {v};\n{end}\n"),
            reads: vec![buf],
            writes: vec![],
        });
    }

    /// Publishes this warpgroup's P (the `[64, kd]` fragment `arr`) for the other warpgroup, once
    /// per iteration: bf16 pairs in the register-A order, one `uint4` per thread and 16 columns.
    /// Returns the exchange buffer. Called at the sum of P where there is one (so its exchange
    /// and P's share a barrier), else at the gemm.
    fn seesaw_publish(&mut self, arr: &str, kd: usize, out: &mut Vec<Node>) -> usize {
        if let Some(xp) = self.seesaw.as_ref().and_then(|s| s.published) {
            return xp;
        }
        let ks = kd / 16;
        let xp = self.add_buf("xp", Elem::F32, &[2 * ks * 128, 4], 1, true);
        let xn = self.smem.bufs[xp].name.clone();
        out.push(Node::Code {
            text: format!(
                "{{
unsigned px_[{np}];
{}uint4* const xp_ = (uint4*){xn};
#pragma unroll
for (int k_ = 0; k_ < {ks}; ++k_) xp_[({WG} * {ks} + k_) * 128 + (tid & 127)] = make_uint4(px_[k_ * 4], px_[k_ * 4 + 1], px_[k_ * 4 + 2], px_[k_ * 4 + 3]);
}}
",
                pack_a_regs(arr, "px_", ks * 16),
                np = kd / 4,
            ),
            reads: vec![],
            writes: vec![xp],
        });
        if let Some(s) = self.seesaw.as_mut() {
            s.published = Some(xp);
        }
        xp
    }

    /// Whether `gemm(a, b)` is the seesaw loop's gemm over the block axis.
    pub(crate) fn is_seesaw_gemm(&self, a: TileId, b: TileId) -> bool {
        self.seesaw.as_ref().is_some_and(|s| s.xgemm == (a, b))
    }

    /// `dst = init + P·V` over both blocks of the pair: the warpgroup publishes its P (bf16
    /// pairs in the register-A order, one `uint4` per thread and 16 columns), then adds its own
    /// block's product (P from registers) and the other's (P from shared memory, V from the
    /// other ring slot) to its accumulator columns, all `wgmma`s in one commit group.
    pub(crate) fn lower_seesaw_gemm(
        &mut self,
        dst: TileId,
        a: TileId,
        b: TileId,
        init: Option<TileId>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let (m, kd) = (self.k.tiles[a].shape[0], self.k.tiles[a].shape[1]);
        let n = self.k.tiles[b].shape[1];
        let (Repr::Frag { arr: pa, .. }, Repr::Smem { buf, view }) =
            (self.repr[a].clone(), self.repr[b].clone())
        else {
            return Err(backend_err(self.k, "seesaw gemm operands not in place"));
        };
        let Repr::Frag { arr: acc, .. } = self.repr[dst].clone() else {
            return Err(backend_err(self.k, "seesaw accumulator not in registers"));
        };
        let bb = self.smem.bufs[buf].clone();
        let nwg = n / self.geo.wn(m, n);
        let n0 = format!("wn{m}_{n} * {nwg}");
        let bop = self
            .wgmma_operand(&bb, &view, 0, &n0, nwg)
            .ok_or_else(|| backend_err(self.k, "seesaw gemm: V is not a wgmma operand"))?;
        let tb = bop.mn_major;
        self.decl.wgmma_fns.insert((nwg, WgmmaForm::Regs, tb));
        self.decl.geo_m.insert(m);
        self.decl.geo_mn.insert((m, n));
        let ks = kd / 16;
        let np = kd / 4;
        let xp = self.seesaw_publish(&pa, kd, out);
        let xn = self.smem.bufs[xp].name.clone();
        let mut reads = vec![xp];
        let mut text = String::from("{\n");
        match init {
            Some(x) if x != dst => {
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
            Some(_) => {}
            None => text.push_str(&format!(
                "#pragma unroll\nfor (int i_ = 0; i_ < {}; ++i_) {acc}[i_] = 0.0f;\n",
                self.geo.frag_regs(m, n)
            )),
        }
        let other = other_slot(&bb.name);
        let regs = nwg / 2;
        let step_b = bop.step("db_");
        let step_o = bop.step("do_");
        text.push_str(&format!(
            "unsigned pa_[{np}];
{}unsigned pb_[{np}];
const uint4* const xp_ = (const uint4*){xn};
#pragma unroll
for (int k_ = 0; k_ < {ks}; ++k_) {{
    const uint4 v_ = xp_[(({WG} ^ 1) * {ks} + k_) * 128 + (tid & 127)];
    pb_[k_ * 4 + 0] = v_.x; pb_[k_ * 4 + 1] = v_.y; pb_[k_ * 4 + 2] = v_.z; pb_[k_ * 4 + 3] = v_.w;
}}
const unsigned long long db_ = tpla_wgmma_desc(tpla_smem_addr({cur}) + {at0}, {lbo}u);
const unsigned long long do_ = tpla_wgmma_desc(tpla_smem_addr({other}) + {at0}, {lbo}u);
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
tpla_wgmma_fence();
#pragma unroll
for (int k_ = 0; k_ < {kd}; k_ += 16) {{
    tpla_wgmma_m64n{nwg}k16_r{tbi}({acc}, &pa_[(k_ / 16) * 4], {step_b});
}}
#pragma unroll
for (int k_ = 0; k_ < {kd}; k_ += 16) {{
    tpla_wgmma_m64n{nwg}k16_r{tbi}({acc}, &pb_[(k_ / 16) * 4], {step_o});
}}
tpla_wgmma_commit();
tpla_wgmma_wait0();
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
}}
",
            pack_a_regs(&pa, "pa_", ks * 16),
            cur = bb.name,
            at0 = bop.at0,
            lbo = bop.lbo,
            tbi = tb as u8,
        ));
        out.push(Node::Code {
            text,
            reads,
            writes: self.dst_writes(dst),
        });
        Ok(())
    }
}
