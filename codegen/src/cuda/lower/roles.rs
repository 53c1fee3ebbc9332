//! A score warpgroup beside the value warpgroups of one 64-row tile (schedule knob
//! `SCORE_WG = 1`, Hopper warpgroup path under `PRODUCER = 1`).
//!
//! At latent 512 a 64-row tile's `[64, 512]` accumulator takes two consumer warpgroups (128
//! registers per thread each); at the TPLA shard widths (256, 128) one holds it. The plain
//! schedules run q·kᵀ, the softmax and P·V in lock step in those warpgroups (at latent 512 either
//! computing q·kᵀ twice, `WG_SPLIT = 128`, or splitting its columns and exchanging row
//! statistics and P through shared memory, `WG_SPLIT = 32`), and the tensor cores idle through
//! every softmax. FlashAttention-3's warp specialisation, one step further: one more consumer
//! warpgroup, the *score* warpgroup, runs the kernel's loop body without the accumulator's
//! update (q·kᵀ, the mask, the running max, P, the rescale `alpha`, the denominator), and the
//! *value* warpgroups that held the accumulator run only that update (`acc = acc · alpha + P·V`,
//! each on its share of the columns). Each block's P and `alpha` pass through shared memory
//! between two mbarriers after the ring's, `P_READY` and `P_FREE`, on which every thread that
//! wrote or read the handoff arrives (release) and every thread that reads or overwrites it
//! waits (acquire):
//!
//! ```text
//! score, block i:  wait full[i]; issue S = q·kᵀ (async)
//!                  wait(P_FREE, i-1)       -- the value warpgroups are done with block i-1
//!                  wait S; softmax -> P, alpha; P, alpha -> shared; fence; arrive(P_READY)
//! value, block i:  wait full[i]; wait(P_READY, i); alpha <- shared
//!                  acc = acc · alpha + P·V; arrive(P_FREE); arrive(empty[i])
//!                  value warpgroup 0: wait empty[i]; issue block i+STAGES's copies into its slot
//! ```
//!
//! so block `i + 1`'s q·kᵀ and softmax run while block `i`'s P·V does (the score warpgroup
//! waits for the last block's `P_FREE` after its loop, before it writes `m` and `l`). There is
//! no producer warpgroup: at latent 512 a block of 512 threads would leave ptxas 128 registers
//! per thread, fewer than a `[64, 256]` accumulator's `wgmma` needs (154). The first value warpgroup issues the ring's copies instead (the
//! producer's TMA / `cp.async` code, one elected thread for TMA): the first `STAGES` blocks before
//! its loop, then block `i + STAGES` once every value warpgroup has released block `i`'s slot on
//! its empty mbarrier (128 arrivals per value warpgroup; the score warpgroup's q·kᵀ of that block
//! finished before its `P_READY`). The value warpgroups wait for the score warpgroup about half
//! of the time (H100 profile, 2026-12-05), so the copies cost the critical path nothing there; issued by the score
//! warpgroup they took a fifth of its time. After the loop the score warpgroup publishes `m` and
//! `l` to every consumer (one block-wide barrier), and the code after the loop runs as written,
//! the statements that read the accumulator in the value warpgroups only.
//!
//! Measured (H100, 2026-12-05, `bench/results/score-wg-2026-12-05-h100/`): MLA H128 B64x32K
//! 1297 us at `BLOCK_N = 64, STAGES = 2` against 1389 us for the best plain TMA schedule; at
//! `BLOCK_N = 32` slower (one warpgroup issuing `m64n32k16` q·kᵀ costs as much per instruction as
//! `m64n64k16`). The first version handed over on named barriers (`bar.arrive` / `bar.sync`,
//! release / acquire in PTX for every participating thread) and compute-sanitizer's racecheck
//! reported hazards on them (23 on the H200); the mbarriers state the same order in a form it
//! models (0 hazards; memcheck and synccheck clean) at 1-2 % of the time. On the H200
//! (2026-12-05, `bench/results/score-wg-mbar-2026-12-05-h200/`) MLA H128 B64x32K runs 1301 us
//! against 1386 for the best plain TMA schedule, H64 704 against 718; the TPLA shard (one value
//! warpgroup) loses to `WG_KV_SPLIT` (H64 471 against 385 us). The tuner searches it.
//!
//! `SPLIT_RELEASE = 1`: each value warpgroup refills its own half of a slot after its own P·V
//! (`split_release.rs`).
//!
//! The split is only valid for the online softmax that [`super::kv_split::pattern`] checks (the
//! loop carries exactly `m`, `l`, `acc`). The value statements are the accumulator's update and
//! what it is computed from inside the loop (the rescale, the P·V gemm and its sum); they may
//! read the score warpgroup's tiles only as the rescale (row registers) or the P·V gemm's A
//! operand (a fragment, then read from its shared-memory copy). Anything else, or a role body
//! that would need a barrier of its own, refuses the plan ([`ROLES_REFUSED`]) and the kernel is
//! emitted without it. Where it applies the block is score warps 0-3 and value warps 4-11 (latent
//! 512: 384 threads at 168 registers) or 4-7 (the shard widths: 256 threads; `Geo::roles_wide`).

pub(crate) use super::roles_pattern::{is_value_stmt, pattern, root, Roles};
use crate::cuda::elem::Elem;
use crate::cuda::full_groups::FullGroups;
use crate::cuda::geometry::*;
use crate::cuda::layout::Lay;
use crate::cuda::lower::iter::Iter;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::Repr;
use crate::cuda::util::backend_err;
use crate::cuda::warpspec::MBAR;
use crate::error::IrError;
use crate::ir::*;

/// The refusal that makes the emitter try the kernel again without the score warpgroup.
pub(crate) const ROLES_REFUSED: &str =
    "the score warpgroup does not apply: a value statement reads a score tile other than the \
     rescale or the P·V operand, or a role's loop body needs a barrier of its own";

/// The handoff mbarriers, after the ring's `STAGES` full and `STAGES` empty ones: `P_READY`
/// (the score warpgroup has published a block's P and rescale; its 128 threads arrive) and
/// `P_FREE` (the value warpgroups are done with them; every value thread arrives). Returns their
/// indices into the mbarrier array for `st` stages.
pub(crate) fn handoff_mbars(st: usize) -> (usize, usize) {
    (2 * st, 2 * st + 1)
}
/// Shared-memory bytes of the handoff mbarriers beyond the ring's (two of 8 bytes).
pub(crate) const HANDOFF_MBAR_BYTES: usize = 16;
/// The score warpgroup's handshake with the value warpgroups: block `it_`'s P overwrites block
/// `it_ - 1`'s, so it waits for that block's release (`P_FREE`, phase `it_ - 1`). Placed behind
/// the issue of q·kᵀ (so it is waited for while the gemm runs), or at the loop head under
/// `PV_FIRST` (so block `it_ - 1`'s P·V has the tensor cores alone and releases its ring slot
/// sooner).
fn slot_handshake(st: usize) -> String {
    let free = handoff_mbars(st).1;
    format!("if (it_ > 0) tpla_mbar_wait(&{MBAR}[{free}], (it_ - 1) & 1);\n")
}
/// Threads of the value warpgroups (one or two): `128 ×` the warpgroups after the score one.
fn value_threads(nw: usize) -> usize {
    (nw - 4) * 32
}
/// The guard of the value warpgroups' code outside the loop.
pub(crate) const VALUE_GUARD: &str = "if (warp >= 4) {";

/// The warp constants `wn{m}_{n}` / `wr{m}_{n}` under the roles geometry: a `[m, wide]` tile over
/// the `value_wgs` value warpgroups (warps 4-7 take the first half of two), any other tile whole
/// in the score warpgroup (warps 0-3), whose `wr` is 0 there (the replica index that guards
/// stores).
pub(crate) fn warp_constants(m: usize, n: usize, wide: usize, value_wgs: usize) -> String {
    let (wn, wr) = if n == wide {
        let wn = if value_wgs == 2 {
            "(warp / 4 + 1) % 2"
        } else {
            "0"
        };
        (wn, "warp < 4 ? 1 : 0")
    } else {
        ("0", "warp / 4")
    };
    format!(
        "    const int wn{m}_{n} = {wn}, wr{m}_{n} = {wr};\n    (void)wn{m}_{n}; (void)wr{m}_{n};\n"
    )
}

impl Lower<'_> {
    /// The geometry decision: where the schedule asks for it and the geometry pass chose one
    /// consumer warpgroup, or two splitting the accumulator's columns, for 64-row tiles under the
    /// producer, the geometry with the score warpgroup in front and the plan.
    pub(crate) fn roles_plan(&self) -> Option<(Geo, Roles)> {
        let g = self.geo;
        if !self.sched.score_wg
            || self.sched.warps.is_some()
            || self.seesaw.is_some()
            || self.kv_split.is_some()
            || !(g.wg && g.producer && (g.nw == 4 || g.nw == 8))
        {
            return None;
        }
        let frag = frag_gemms(&self.info);
        if frag.is_empty() || frag.iter().any(|&(m, _)| m != 64) {
            return None;
        }
        let plan = pattern(self.k)?;
        let wide = *self.k.tiles[plan.acc].shape.get(1)?;
        // The score warpgroup in front of the warpgroups that held the accumulator.
        let geo = Geo {
            nw: g.nw + 4,
            roles_wide: wide,
            ..g
        };
        let rows_ok = |t: TileId| self.lay[t] == Lay::Rows { m: 64 };
        let ok = wide >= 128
            && (wide / (g.nw / 4)).is_multiple_of(8)
            && self.lay[plan.acc] == Lay::Frag { m: 64, n: wide }
            && rows_ok(plan.m)
            && rows_ok(plan.l)
            && frag.iter().all(|&(_, n)| n <= wide)
            && frag.iter().all(|&(m, n)| geo.frag_regs(m, n) <= 128)
            && plan
                .handoff
                .iter()
                .all(|&t| match self.k.tiles[t].shape.len() {
                    1 => rows_ok(t),
                    _ => matches!(self.lay[t], Lay::Frag { m: 64, .. }),
                });
        ok.then_some((geo, plan))
    }

    /// Lowers the loop body twice: the score statements, then what publishes the handoff tiles;
    /// the value statements, with the rescale fetched first and the gemm operand read from its
    /// shared-memory copy. Returns `(score, publish, fetch, value)`.
    pub(crate) fn lower_roles(
        &mut self,
        body: &[Stmt],
        tile: TileId,
    ) -> Result<[Vec<Node>; 4], IrError> {
        let plan = self.roles.clone().expect("roles planned");
        let (score_stmts, value_stmts): (Vec<Stmt>, Vec<Stmt>) =
            body.iter().cloned().partition(|s| match s {
                // (Views alias and emit no code: in the score list unless of a value tile.)
                Stmt::Assign { dst, .. } => !plan.value[*dst],
                _ => true,
            });
        // The score body up to its first warpgroup gemm (q·kᵀ) is lowered without that gemm's
        // wait, so the handshake with the value warpgroups (`P_FREE`) is waited for while it
        // runs.
        let first_gemm = score_stmts.iter().position(|s| {
            matches!(
                s,
                Stmt::Assign {
                    op: TileOp::Gemm { .. },
                    ..
                }
            )
        });
        let mut score = Vec::new();
        let mut rest = &score_stmts[..];
        // The handshake's place in the body (at the loop head instead under `PV_FIRST`).
        let handshake = if self.sched.pv_first {
            String::new()
        } else {
            slot_handshake(self.paging.loops[&tile].2)
        };
        // `FULL_GROUPS`: q·kᵀ waits for the ring's later column groups inside its k loop.
        self.paging.k_waits = self.k_waits_for(&score_stmts, tile);
        if let Some(g) = first_gemm {
            self.paging.gemm_no_wait = true;
            let first = self.lower_block(&score_stmts[..=g]);
            self.paging.gemm_no_wait = false;
            self.paging.k_waits = None;
            let first = first?;
            let committed = first.iter().any(
                |n| matches!(n, Node::Code { text, .. } if text.contains("tpla_wgmma_commit")),
            );
            match (committed, self.frag_of(&score_stmts[g])) {
                (true, Some((regs, arr))) => {
                    score.extend(first);
                    score.push(Node::Code {
                        text: format!(
                            "{handshake}tpla_wgmma_wait0();\n#pragma unroll\nfor (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({arr}[i_]);\n"
                        ),
                        reads: vec![],
                        writes: vec![],
                    });
                    rest = &score_stmts[g + 1..];
                }
                // Not a warpgroup gemm into registers: the whole body with its waits, the
                // handshake after it.
                _ => return Err(backend_err(self.k, ROLES_REFUSED)),
            }
        }
        score.extend(self.lower_block(rest)?);
        if first_gemm.is_none() {
            score.push(Node::Code {
                text: handshake,
                reads: vec![],
                writes: vec![],
            });
        }
        let mut publish = Vec::new();
        let mut fetch = Vec::new();
        let mut saved = Vec::new();
        for &t in &plan.handoff {
            let elem = self.shadow_elem(t, self.k.tiles[t].shape.len() == 2);
            if let [rows, cols] = self.shape(t)[..] {
                // The gemm operand's copy in the column-blocked (128-byte swizzled) layout that
                // `wgmma` reads, its columns padded to a whole 64-column block (P of a 32-token
                // block): only the tile's own columns are written and read.
                if elem == Elem::Bf16
                    && !cols.is_multiple_of(64)
                    && !self.smem.shadows.contains_key(&(t, elem))
                {
                    let b = self.add_buf(
                        &format!("sh_t{t}_"),
                        elem,
                        &[rows, cols.next_multiple_of(64)],
                        1,
                        true,
                    );
                    self.smem.shadows.insert((t, elem), b);
                }
            }
            let buf = self.materialize(t, elem, &mut publish);
            if matches!(self.repr[t], Repr::Rows { .. }) {
                fetch.push(Node::Code {
                    text: self.rows_from_copy(t, buf),
                    reads: vec![],
                    writes: vec![],
                });
            } else {
                // The gemm's A operand: the value warpgroups read the copy.
                saved.push((t, self.repr[t].clone()));
                self.repr[t] = Repr::Smem {
                    buf,
                    view: View::base(self.k.tiles[t].shape.len()),
                };
            }
        }
        let value = self.lower_block(&value_stmts);
        for (t, r) in saved {
            self.repr[t] = r;
        }
        let value = value?;
        if has_barrier(&score) || has_barrier(&value) {
            return Err(backend_err(self.k, ROLES_REFUSED));
        }
        Ok([score, publish, fetch, value])
    }

    /// The consumers' side of the loop under the roles: the score warpgroup's loop and the value
    /// warpgroups', as in the module docs, after the setup and one barrier publishing what the
    /// consumers wrote before the loop.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn roles_consumers(
        &mut self,
        setup: &str,
        (issue, split_issue): (&str, Option<&[String; 2]>),
        (lo, nblk, base, cur): (&str, &str, &str, &str),
        (start, block, st, slot): (ScalarId, usize, usize, usize),
        [score, publish, fetch, value]: [Vec<Node>; 4],
        reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) {
        // Block `it_ + st`'s copies (`split_release.rs`), and the value threads' release of
        // block `it_`'s slot on its empty mbarrier (not under `SPLIT_RELEASE`, whose copies
        // wait for `P_FREE` where they wait at all).
        let refill = super::split_release::refill(issue, split_issue, st, nblk);
        let release = if split_issue.is_some() {
            String::new()
        } else {
            format!("        tpla_mbar_arrive(&{MBAR}[{st} + it_ % {st}]);\n")
        };
        let issue: String = issue
            .lines()
            .map(|l| format!("            {l}\n"))
            .collect();
        let text = |nodes: &[Node]| {
            let mut s = String::new();
            crate::cuda::print::print_nodes(nodes, 2, "", &mut s);
            s
        };
        // Under `FULL_GROUPS` the later groups' waits: in the score warpgroup's q·kᵀ where it
        // placed them, else here; the value warpgroups wait for every group, or under
        // `SPLIT_RELEASE` each for its own half only (`split_release.rs`: a wait for the other
        // half could fall two phases behind it and never return).
        let (score_later, later) = (self.later_group_waits(false), self.later_group_waits(true));
        let first = format!("tpla_mbar_wait(&{MBAR}[it_ % {st}], (it_ / {st}) & 1);");
        let head = |wait: &str, later: &str| {
            format!(
                "    {wait}
        tpla_fence_proxy_async();
{later}        s{start} = tpla_iadd({lo}, tpla_imul(it_, {block}));
        {cur} = {base} + (it_ % {st}) * {slot};
"
            )
        };
        let score_head = head(&first, &score_later);
        let head = match (split_issue, &self.paging.full_groups) {
            (Some(_), Some((fg, _))) => {
                head(&super::split_release::own_half_wait(&first, fg, st), "")
            }
            _ => head(&first, &later),
        };
        // `SPLIT_RELEASE`: the refill's TMA check before the waits (`tma::tma_check_ahead`).
        let head = match (split_issue, &self.paging.tma_check_ahead) {
            (Some(_), Some(ahead)) => {
                let ahead: String = ahead.lines().map(|l| format!("        {l}\n")).collect();
                format!("    {}    {head}", ahead.trim_start())
            }
            _ => head,
        };
        let (score, publish, fetch, value) =
            (text(&score), text(&publish), text(&fetch), text(&value));
        let (ready, free) = handoff_mbars(st);
        let score_head = if self.sched.pv_first {
            format!(
                "    {}        {}",
                slot_handshake(st),
                score_head.trim_start()
            )
        } else {
            score_head
        };
        out.push(Node::Code {
            text: format!("{{\n{setup}"),
            reads,
            writes: vec![],
        });
        out.push(Node::Barrier);
        out.push(Node::Code {
            text: format!(
                "if (warp < 4) {{
    for (int it_ = 0; it_ < {nblk}; ++it_) {{
    {score_head}{score}{publish}        tpla_fence_proxy_async();
        tpla_mbar_arrive(&{MBAR}[{ready}]);
    }}
    if ({nblk} > 0) tpla_mbar_wait(&{MBAR}[{free}], (({nblk}) - 1) & 1);
}} else {{
    const int pw_ = warp - 4;
    if (warp < 8) {{
        for (int j_ = 0; j_ < {st} && j_ < {nblk}; ++j_) {{
{issue}        }}
    }}
    for (int it_ = 0; it_ < {nblk}; ++it_) {{
    {head}        tpla_mbar_wait(&{MBAR}[{ready}], it_ & 1);
{fetch}{value}        tpla_mbar_arrive(&{MBAR}[{free}]);
{release}{refill}    }}
}}
}}
"
            ),
            reads: vec![],
            writes: vec![],
        });
    }

    /// After the loops: the score warpgroup's `m` and `l` to every consumer (their shared-memory
    /// copies, then each consumer's registers; the sync pass puts the barrier between).
    pub(crate) fn roles_publish_state(&mut self, out: &mut Vec<Node>) {
        let Some(plan) = self.roles.clone() else {
            return;
        };
        let mut fetch = Vec::new();
        for t in [plan.m, plan.l] {
            let elem = self.shadow_elem(t, false);
            let buf = self.materialize(t, elem, out);
            fetch.push(Node::Code {
                text: self.rows_from_copy(t, buf),
                reads: vec![buf],
                writes: vec![],
            });
        }
        out.extend(fetch);
    }

    /// Code that reads row tile `t` back into its registers from its shared-memory copy `buf`
    /// (written by [`Lower::materialize`] in the score warpgroup), each thread its own rows.
    fn rows_from_copy(&self, t: TileId, buf: usize) -> String {
        let Repr::Rows { m, arr } = &self.repr[t] else {
            unreachable!("the plan hands over row tiles only")
        };
        let rank = self.k.tiles[t].shape.len();
        let (head, tail, ctx) = self.open(&Iter::Rows { m: *m, rank });
        let (r, c) = View::base(rank).phys(&ctx.coords);
        let b = &self.smem.bufs[buf];
        format!(
            "{head}    {arr}[{}] = {}[{}];\n{tail}\n",
            ctx.row_slot,
            b.name,
            b.addr(&r, &c)
        )
    }
}

/// The kernel's opening under the roles: the ring's mbarriers (at `mbar_off`, `st` stages) — full
/// (the issuing warpgroup's 128 arrivals, as a producer warpgroup's) and empty (the value
/// warpgroups' threads, 128 or 256) — initialised and published block-wide (`nw`: the consumer
/// warps, score and value).
pub(crate) fn roles_head(
    st: usize,
    mbar_off: usize,
    nw: usize,
    groups: Option<&FullGroups>,
) -> String {
    let releasers = value_threads(nw);
    let (ready, free) = handoff_mbars(st);
    // `FULL_GROUPS`: the later column groups' full mbarriers, counting what the stage's does.
    let extra = crate::cuda::full_groups::FullGroups::init_extra(groups, 128);
    format!(
        "    unsigned long long* const {MBAR} = (unsigned long long*)(tpla_smem + {mbar_off});
    if (tid == 0) {{
        for (int i_ = 0; i_ < {st}; ++i_) {{
            tpla_mbar_init(&{MBAR}[i_], 128);
            tpla_mbar_init(&{MBAR}[{st} + i_], {releasers});
        }}
        tpla_mbar_init(&{MBAR}[{ready}], 128);
        tpla_mbar_init(&{MBAR}[{free}], {releasers});
{extra}        tpla_mbar_init_fence();
    }}
    __syncthreads();
"
    )
}

/// Whether `nodes` hold a barrier (at any depth).
pub(crate) fn has_barrier(nodes: &[Node]) -> bool {
    nodes.iter().any(|n| match n {
        Node::Barrier => true,
        Node::Scope { body, .. } => has_barrier(body),
        Node::Code { .. } => false,
    })
}

/// Whether a barrier landed inside a value-guarded scope (it would wait for the score
/// warpgroup, which never reaches it): the sync pass's output is then refused.
pub(crate) fn barrier_in_value_scope(nodes: &[Node]) -> bool {
    nodes.iter().any(|n| match n {
        Node::Scope { head, body, .. } => {
            (head == VALUE_GUARD && has_barrier(body)) || barrier_in_value_scope(body)
        }
        _ => false,
    })
}

/// The error that makes `emit` go without the score warpgroup.
pub(crate) fn refused(k: &Kernel) -> IrError {
    backend_err(k, ROLES_REFUSED)
}
