//! Two consumer warpgroups on one 64-row tile, splitting the paged loop's blocks between them
//! (schedule knob `WG_KV_SPLIT = 1`, Hopper warpgroup path under `PRODUCER = 1`).
//!
//! A 64-row tile (64 heads, or 32 heads × 2 query tokens) fills one `wgmma` warpgroup, so the
//! plain schedule runs the whole loop on one consumer warpgroup: q·kᵀ, the softmax and P·V one
//! after another, with the tensor cores idle during the softmax. This is split-KV inside the
//! block: a second consumer warpgroup, a replica of the first (`Geo::kv_split`: every tile whole
//! in each warpgroup, at the same registers), takes the odd blocks of the loop while the first
//! takes the even ones, from the same producer ring. Each runs the kernel's loop body as
//! written on its own blocks with its own running max `m`, denominator `l` and accumulator
//! `acc`, so one's softmax overlaps the other's gemms. After the loop the two states are merged
//! once, as the combine of split-KV merges splits:
//!
//! ```text
//! m = max(m0, m1)    a0 = exp2(m0 - m)    a1 = exp2(m1 - m)
//! l = l0·a0 + l1·a1                       acc = acc0·a0 + acc1·a1
//! ```
//!
//! Warpgroup 1 writes its state through the ring (free once both have left the loop; in chunks
//! where the ring is smaller than the state), warpgroup 0 merges it into its registers and runs
//! the code after the loop, whose stores are already issued by the first replica only
//! (`writer_guard`).
//!
//! The merge is only valid for the online softmax, which [`pattern`] checks on the IR: the loop
//! carries exactly `m`, `l` and `acc`; `m_new = max(m, reduce_max(s, 1))`, `p = exp2(s - m_new)`,
//! `alpha = exp2(m - m_new)`, `l = l·alpha + reduce_sum(p, 1)`, `acc = acc·alpha + gemm(p, v)`,
//! `m = m_new`; `l` and `acc` start at zero; nothing else the loop computes is read after it.
//! A warpgroup with no block (a split of one block) keeps its initial state, which the merge
//! weighs as zero.
//!
//! The warpgroups run different numbers of iterations, so the loop body must not synchronise
//! them: a per-block tile in shared memory, or any barrier the sync pass would put inside the
//! loop, refuses the plan ([`KV_SPLIT_REFUSED`]) and the kernel is emitted without it. Each ring
//! slot is consumed by one warpgroup, so its empty mbarrier counts 128 arrivals, not 256.
//!
//! It applies where the geometry pass chose one warpgroup (4 warps, no forced `WARPS`) for
//! 64-row tensor-core tiles, under the producer, over a bf16 cache; elsewhere the knob changes
//! nothing.

use crate::cuda::geometry::*;
use crate::cuda::layout::Lay;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::repr::Repr;
use crate::cuda::util::backend_err;
use crate::error::IrError;
use crate::ir::*;
use crate::visit::stmt_reads;

/// The refusal that makes the emitter try the kernel again without the split (see the module
/// docs): the loop body would synchronise the two warpgroups, or the ring's stage count is odd
/// (each slot must belong to one warpgroup).
pub(crate) const KV_SPLIT_REFUSED: &str =
    "the KV split does not apply: its loop body would synchronise warpgroups that run different \
     block counts, or its ring's stage count is not even";

/// The warpgroup index of a consumer thread (C expression).
const WG: &str = "(warp >> 2)";

/// What [`pattern`] found: the loop's carried online-softmax state.
#[derive(Clone, Debug)]
pub(crate) struct KvSplit {
    /// The running row maximum (log2 domain).
    pub(crate) m: TileId,
    /// The running denominator.
    pub(crate) l: TileId,
    /// The running (unnormalised) output.
    pub(crate) acc: TileId,
    /// Per tile: computed for the block (see `seesaw/pattern.rs`).
    per_block: Vec<bool>,
    /// Per tile: a view of the ring.
    of_rows: Vec<bool>,
}

/// The error that makes `emit` go without the split ([`KV_SPLIT_REFUSED`]).
pub(crate) fn refused(k: &Kernel) -> IrError {
    backend_err(k, KV_SPLIT_REFUSED)
}

/// The online-softmax state of the kernel's one top-level paged loop over a bf16 cache, if the
/// loop has exactly the form of the module docs.
pub(crate) fn pattern(k: &Kernel) -> Option<KvSplit> {
    let sw = super::seesaw::pattern(k)?;
    let at = k
        .body
        .iter()
        .position(|s| matches!(s, Stmt::PagedBlocks { .. }))?;
    let Stmt::PagedBlocks { cache, body, .. } = &k.body[at] else {
        unreachable!()
    };
    if !matches!(
        k.params[*cache].kind,
        ParamKind::Paged {
            format: PagedFormat::Plain,
            ..
        }
    ) {
        return None;
    }
    // The body is flat assignments (the seesaw pattern checked it).
    let defs = |t: TileId| -> Vec<&TileOp> {
        body.iter()
            .filter_map(|s| match s {
                Stmt::Assign { dst, op } if *dst == t => Some(op),
                _ => None,
            })
            .collect()
    };
    let def = |t: TileId| match defs(t)[..] {
        [op] => Some(op),
        _ => None,
    };
    let init = |t: TileId| {
        k.body[..at].iter().rev().find_map(|s| match s {
            Stmt::Assign { dst, op } if *dst == t => Some(op),
            _ => None,
        })
    };
    // (The running max may start at any value, e.g. `-(1e30)`; the sums at zero.)
    let is_full = |t: TileId, zero: bool| match init(t) {
        Some(TileOp::Full(Operand::Scalar(FScalar::Lit(v)))) => !zero || *v == 0.0,
        Some(TileOp::Full(_)) => !zero,
        _ => false,
    };
    let tiles = |x: &Operand, y: &Operand| match (x, y) {
        (Operand::Tile(a), Operand::Tile(b)) => Some((*a, *b)),
        _ => None,
    };
    // `t` is `x · y` or `y · x` (binary `op`), returning the side that is not `x`.
    let with = |t: TileId, op: BinaryOp, x: TileId| match def(t)? {
        TileOp::Binary(o, p, q) if *o == op => {
            let (a, b) = tiles(p, q)?;
            if a == x {
                Some(b)
            } else if b == x {
                Some(a)
            } else {
                None
            }
        }
        _ => None,
    };
    let reduce = |t: TileId, want: ReduceOp| matches!(def(t), Some(TileOp::Reduce { op, axis: 1, .. }) if *op == want);
    // The carried tiles: assigned in the body and before the loop.
    let mut carried: Vec<TileId> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Assign { dst, .. } if init(*dst).is_some() => Some(*dst),
            _ => None,
        })
        .collect();
    carried.sort_unstable();
    carried.dedup();
    let acc = sw.acc;
    // m = m_new (a same-type cast), m_new = max(m, reduce_max(..)).
    let m = *carried.iter().find(|&&t| {
        matches!(def(t), Some(TileOp::Cast(mn)) if k.tiles[*mn].dtype == k.tiles[t].dtype
            && with(*mn, BinaryOp::Max, t).is_some_and(|r| reduce(r, ReduceOp::Max)))
    })?;
    let Some(TileOp::Cast(m_new)) = def(m) else {
        unreachable!()
    };
    let m_new = *m_new;
    // alpha = exp2(m - m_new).
    let alpha = body.iter().find_map(|s| match s {
        Stmt::Assign {
            dst,
            op: TileOp::Unary(UnaryOp::Exp2, d),
        } => match def(*d) {
            Some(TileOp::Binary(BinaryOp::Sub, Operand::Tile(a), Operand::Tile(b)))
                if *a == m && *b == m_new =>
            {
                Some(*dst)
            }
            _ => None,
        },
        _ => None,
    })?;
    // x = (x · alpha) + y, with `is_y` of y; `alpha` possibly unsqueezed.
    let rescaled_plus = |x: TileId, is_y: &dyn Fn(TileId) -> bool| {
        let TileOp::Binary(BinaryOp::Add, p, q) = def(x)? else {
            return None;
        };
        let (a, b) = tiles(p, q)?;
        let by_alpha = |t: TileId| {
            with(t, BinaryOp::Mul, x).is_some_and(|f| {
                f == alpha
                    || matches!(def(f), Some(TileOp::View(s, ViewOp::Unsqueeze(1))) if *s == alpha)
            })
        };
        ((by_alpha(a) && is_y(b)) || (by_alpha(b) && is_y(a))).then_some(())
    };
    let l = *carried.iter().find(|&&t| {
        t != m && t != acc && rescaled_plus(t, &|y| reduce(y, ReduceOp::Sum)).is_some()
    })?;
    let gemm = |t: TileId| matches!(def(t), Some(TileOp::Gemm { .. }));
    rescaled_plus(acc, &gemm)?;
    if carried != {
        let mut v = vec![m, l, acc];
        v.sort_unstable();
        v
    } || !is_full(m, false)
        || !is_full(l, true)
        || !is_full(acc, true)
        || [m, l, acc].iter().any(|&t| defs(t).len() != 1)
    {
        return None;
    }
    // Nothing else the loop computes is read after it.
    let written: Vec<TileId> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Assign { dst, .. } => Some(*dst),
            _ => None,
        })
        .collect();
    let mut leaks = false;
    crate::visit::walk_stmts(&k.body[at + 1..], &mut |s| {
        leaks |= stmt_reads(s)
            .iter()
            .any(|t| written.contains(t) && ![m, l, acc].contains(t));
    });
    (!leaks).then_some(KvSplit {
        m,
        l,
        acc,
        per_block: sw.per_block,
        of_rows: sw.of_rows,
    })
}

impl Lower<'_> {
    /// The geometry decision (see the module docs): where the schedule asks for it and the
    /// geometry pass chose one consumer warpgroup for 64-row tiles under the producer, the
    /// geometry with a replica warpgroup and the loop's state.
    pub(crate) fn kv_split_plan(&self) -> Option<(Geo, KvSplit)> {
        let g = self.geo;
        if !self.sched.wg_kv_split
            || self.sched.warps.is_some()
            || self.seesaw.is_some()
            || !(g.wg && g.producer && g.nw == 4)
        {
            return None;
        }
        let frag = frag_gemms(&self.info);
        if frag.is_empty() || frag.iter().any(|&(m, _)| m != 64) {
            return None;
        }
        let plan = pattern(self.k)?;
        let geo = Geo {
            nw: 8,
            kv_split: true,
            ..g
        };
        let n = *self.k.tiles[plan.acc].shape.get(1)?;
        let ok = self.lay[plan.acc] == Lay::Frag { m: 64, n }
            && self.lay[plan.m] == Lay::Rows { m: 64 }
            && self.lay[plan.l] == Lay::Rows { m: 64 }
            && frag.iter().all(|&(m, n)| geo.frag_regs(m, n) <= 128)
            && plan
                .per_block
                .iter()
                .enumerate()
                .all(|(t, &p)| !p || plan.of_rows[t] || self.lay[t] != Lay::Smem);
        ok.then_some((geo, plan))
    }

    /// After the memory pass: whether a per-block tile (not a view of the ring) was left in
    /// shared memory, which both warpgroups would write with different blocks.
    pub(crate) fn kv_split_shares_a_block_tile(&self) -> bool {
        self.kv_split.as_ref().is_some_and(|plan| {
            plan.per_block
                .iter()
                .enumerate()
                .any(|(t, &p)| p && !plan.of_rows[t] && matches!(self.repr[t], Repr::Smem { .. }))
        })
    }

    /// The head of the consumers' loop over blocks `0 .. nblk`: every block, or under the
    /// split the warpgroup's own (even for warpgroup 0, odd for 1).
    pub(crate) fn consumer_loop_head(&self, nblk: &str) -> String {
        if self.kv_split.is_some() {
            format!("for (int it_ = {WG}; it_ < {nblk}; it_ += 2) {{")
        } else {
            format!("for (int it_ = 0; it_ < {nblk}; ++it_) {{")
        }
    }

    /// After the split loop: warpgroup 1's `m`, `l`, `acc` through the ring (shared-memory
    /// buffer `ring`, free once both warpgroups have left the loop) into warpgroup 0's, merged
    /// as in the module docs; nothing without the split.
    pub(crate) fn kv_split_merge(&self, ring: usize) -> Result<Vec<Node>, IrError> {
        let Some(plan) = &self.kv_split else {
            return Ok(vec![]);
        };
        let (Repr::Rows { arr: m, .. }, Repr::Rows { arr: l, .. }, Repr::Frag { m: rows, n, arr }) =
            (&self.repr[plan.m], &self.repr[plan.l], &self.repr[plan.acc])
        else {
            // (The plan asked the layout for these; a memory pass that placed them otherwise
            // makes the kernel go without the split.)
            return Err(refused(self.k));
        };
        let buf = &self.smem.bufs[ring];
        // Per thread: the row slots of m and l, then the accumulator's fragment registers, each
        // a 128-float row of the exchange (one float per thread of the warpgroup).
        let rs = self.geo.mt(*rows) * 2;
        let regs = self.geo.frag_regs(*rows, *n);
        let ntl = self.geo.ntl(*rows, *n);
        let per_chunk = buf.bytes() / (128 * 4);
        if per_chunk <= 2 * rs {
            // (No ring is that small: a 16-token block of 64 bf16 columns holds 16 floats.)
            return Err(refused(self.k));
        }
        let x = format!("((float*)(tpla_smem + {})) + (tid & 127)", buf.offset);
        let mut out = vec![
            Node::Code {
                text: format!("{{\nfloat ka0_[{rs}], ka1_[{rs}];\n"),
                reads: vec![],
                writes: vec![],
            },
            // Both warpgroups are out of the loop: the ring is free.
            Node::Barrier,
        ];
        // Chunk 0 carries the row statistics, then as many accumulator registers as fit.
        let mut lo = 0;
        let mut first = true;
        while first || lo < regs {
            let stats = if first { 2 * rs } else { 0 };
            let hi = regs.min(lo + per_chunk - stats);
            let (mut put, mut merge) = (String::new(), String::new());
            if first {
                put.push_str(&format!(
                    "#pragma unroll\nfor (int r_ = 0; r_ < {rs}; ++r_) {{ x_[r_ * 128] = {m}[r_]; x_[({rs} + r_) * 128] = {l}[r_]; }}\n"
                ));
                merge.push_str(&format!(
                    "#pragma unroll
for (int r_ = 0; r_ < {rs}; ++r_) {{
    const float m1_ = x_[r_ * 128], l1_ = x_[({rs} + r_) * 128];
    const float mx_ = tpla_fmax({m}[r_], m1_);
    ka0_[r_] = tpla_exp2({m}[r_] - mx_);
    ka1_[r_] = tpla_exp2(m1_ - mx_);
    {m}[r_] = mx_;
    {l}[r_] = {l}[r_] * ka0_[r_] + l1_ * ka1_[r_];
}}
"
                ));
            }
            if hi > lo {
                // Register i of the fragment is row slot (i / (4 ntl)) * 2 + (i & 3) / 2.
                put.push_str(&format!(
                    "#pragma unroll\nfor (int i_ = {lo}; i_ < {hi}; ++i_) x_[(i_ - {lo} + {stats}) * 128] = {arr}[i_];\n"
                ));
                merge.push_str(&format!(
                    "#pragma unroll
for (int i_ = {lo}; i_ < {hi}; ++i_) {{
    const int r_ = (i_ / {q}) * 2 + ((i_ & 3) >> 1);
    {arr}[i_] = {arr}[i_] * ka0_[r_] + x_[(i_ - {lo} + {stats}) * 128] * ka1_[r_];
}}
",
                    q = 4 * ntl
                ));
            }
            if !first {
                out.push(Node::Barrier);
            }
            out.push(Node::Code {
                text: format!("if ({WG} == 1) {{\nfloat* const x_ = {x};\n{put}}}\n"),
                reads: vec![],
                writes: vec![],
            });
            out.push(Node::Barrier);
            out.push(Node::Code {
                text: format!("if ({WG} == 0) {{\nconst float* const x_ = {x};\n{merge}}}\n"),
                reads: vec![],
                writes: vec![],
            });
            lo = hi;
            first = false;
        }
        out.push(Node::Code {
            text: "}\n".into(),
            reads: vec![],
            writes: vec![],
        });
        Ok(out)
    }
}

/// Whether the consumers' split loop (its head from [`Lower::consumer_loop_head`]) in `nodes`
/// contains a barrier across the warpgroups (after the sync pass): a barrier node, or code
/// that syncs the block or a named barrier of other than one warpgroup's 128 threads (a
/// warpgroup's own named barrier, as `SOFTMAX_OVERLAP` uses, is fine).
pub(crate) fn barrier_in_split_loop(nodes: &[Node]) -> bool {
    fn crosses_warpgroups(text: &str) -> bool {
        if text.contains("__syncthreads") {
            return true;
        }
        ["tpla_bar_sync(", "tpla_bar_arrive("].iter().any(|call| {
            text.match_indices(call).any(|(at, _)| {
                // The arguments up to the call's own closing parenthesis.
                let rest = &text[at + call.len()..];
                let mut depth = 0usize;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| match c {
                        '(' => {
                            depth += 1;
                            false
                        }
                        ')' if depth == 0 => true,
                        ')' => {
                            depth -= 1;
                            false
                        }
                        _ => false,
                    })
                    .map_or(rest.len(), |(i, _)| i);
                rest[..end].rsplit(',').next().map(str::trim) != Some("128")
            })
        })
    }
    fn any_barrier(nodes: &[Node]) -> bool {
        nodes.iter().any(|n| match n {
            Node::Barrier => true,
            Node::Scope {
                head, body, tail, ..
            } => crosses_warpgroups(head) || crosses_warpgroups(tail) || any_barrier(body),
            Node::Code { text, .. } => crosses_warpgroups(text),
        })
    }
    nodes.iter().any(|n| match n {
        Node::Scope { head, body, .. } if head.contains(&format!("for (int it_ = {WG};")) => {
            any_barrier(body)
        }
        Node::Scope { body, .. } => barrier_in_split_loop(body),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_inside_the_split_loop_is_found() {
        let code = |t: &str| Node::Code {
            text: t.into(),
            reads: vec![],
            writes: vec![],
        };
        let lp = |body| Node::Scope {
            head: format!("for (int it_ = {WG}; it_ < n; it_ += 2) {{"),
            body,
            tail: "}".into(),
            looped: true,
        };
        assert!(!barrier_in_split_loop(&[
            Node::Barrier,
            lp(vec![code("x")])
        ]));
        let nested = Node::Scope {
            head: "{".into(),
            body: vec![code("y"), Node::Barrier],
            tail: "}".into(),
            looped: false,
        };
        assert!(barrier_in_split_loop(&[lp(vec![code("x"), nested])]));
        let outer = Node::Scope {
            head: "{".into(),
            body: vec![lp(vec![Node::Barrier])],
            tail: "}".into(),
            looped: false,
        };
        assert!(barrier_in_split_loop(&[outer]));
        // Barriers in code text: the consumers' (256 threads) or the block's cross the
        // warpgroups, a warpgroup's own (128) does not.
        assert!(barrier_in_split_loop(&[lp(vec![code(
            "tpla_bar_sync(1, 256);"
        )])]));
        assert!(barrier_in_split_loop(&[lp(vec![code(
            "if (w) tpla_bar_arrive(3, 256);"
        )])]));
        assert!(barrier_in_split_loop(&[lp(vec![code("__syncthreads();")])]));
        assert!(!barrier_in_split_loop(&[lp(vec![code(
            "tpla_bar_sync(5 + (warp >> 2), 128);"
        )])]));
    }
}
