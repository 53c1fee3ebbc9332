//! Lowering of paged block loops (cp.async and TMA rings, the producer warpgroup); paged stores
//! are in `paged_store.rs`.

use crate::cuda::elem::*;
use crate::cuda::lower::fp8_producer::{fp8_producer_loop, fp8_producer_regs};
use crate::cuda::lower::split_table::{chunked_bounds, chunked_early_exit};
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::tma::{tma_applies, tma_issue, tma_issue_group, tmap_name, TmaNames};
use crate::cuda::util::*;
use crate::cuda::warpspec::{empty_wait, producer_loop, MBAR};
use crate::error::IrError;
use crate::ir::*;

impl<'a> Lower<'a> {
    pub(crate) fn paged_names(
        &self,
        cache: ParamId,
    ) -> (String, String, String, String, String, String, String) {
        (
            format!("p{cache}_data"),
            format!("p{cache}_bt"),
            format!("p{cache}_lens"),
            format!("p{cache}_ps"),
            format!("p{cache}_pps"),
            format!("p{cache}_np"),
            format!("p{cache}_nb"),
        )
    }

    pub(crate) fn lower_paged_blocks(
        &mut self,
        s: &Stmt,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let Stmt::PagedBlocks {
            cache,
            batch,
            split,
            num_splits,
            block,
            stages,
            start,
            tile,
            valid,
            body,
        } = s
        else {
            unreachable!()
        };
        let _ = (stages, valid);
        let ParamKind::Paged {
            dtype,
            row,
            chunked,
            format,
            ..
        } = self.k.params[*cache].kind
        else {
            return Err(backend_err(self.k, "paged loop over a non-paged parameter"));
        };
        let row = &row;
        let elem = Elem::of_dtype(dtype);
        let vec_ok = self.target.has_tensor_cores() && (row * elem.size()).is_multiple_of(16);
        let (ring, id, st) = self.paging.loops[tile].clone();
        self.paging.used.push(st);
        let cur = format!("{id}_cur");
        let (data, bt, lens, ps, pps, np, nb) = self.paged_names(*cache);
        let (lo, hi, nblk, bvar) = (
            format!("{id}_lo"),
            format!("{id}_hi"),
            format!("{id}_n"),
            format!("{id}_b"),
        );
        let b = self.smem.bufs[ring].clone();
        let slot = b.slot_elems();
        let slots = b.slots;
        let nw = self.geo.nw;
        let base = format!("{id}_base");
        let cty = elem.cty();
        // Issue the copy of block `j_` into its ring slot (warp per row, 16-byte chunks) by the
        // `nw` warps numbered `warp`.
        let fp8 = crate::cuda::lower::fp8::Fp8Copy {
            lat: format.fp8_cols(),
            row: *row,
            block: *block,
            data: &data,
            bt: &bt,
            ps: &ps,
            pps: &pps,
            np: &np,
            bvar: &bvar,
            lo: &lo,
            hi: &hi,
            base: &base,
            slot,
            st,
        };
        let mk_issue = |warp: &str, nw: usize, unroll: &str| {
            if fp8.lat > 0 {
                return fp8.issue(warp, nw, &|r: &str, c: &str| b.addr(r, c));
            }
            let rows_per_warp = block.div_ceil(nw);
            if vec_ok && rows_per_warp <= 32 {
                // The page lookups of a warp's rows are independent global loads: lane `i` resolves
                // row `warp + i * nw` (one load latency per block instead of one per row), and the
                // row offsets are broadcast with a shuffle while the copies are issued.
                let v = 16 / elem.size();
                let cpr = row / v;
                // The warp's rows x 16-byte chunks, enumerated flat over its lanes: every lane issues
                // the same number of copies (no divergent tail pass per row), and a chunk's row comes
                // from the lane that looked it up.
                let total = rows_per_warp * cpr;
                let iters = total.div_ceil(32);
                let mut guard = Vec::new();
                if !total.is_multiple_of(32) {
                    guard.push(format!("f_ < {total}"));
                }
                if !block.is_multiple_of(nw) {
                    guard.push(format!("r_ < {block}"));
                }
                let guard = if guard.is_empty() {
                    String::new()
                } else {
                    format!("if ({}) ", guard.join(" && "))
                };
                format!(
                "{{
    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    {cty}* dst_ = {base} + (j_ % {slots}) * {slot};
    int row_ = -1;
    {{
        const int r_ = {warp} + lane * {nw};
        const int t_ = t0_ + r_;
        if (r_ < {block} && t_ < {hi} && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) row_ = pg_ * {ps} + (t_ % {ps});
        }}
    }}
#pragma unroll{unroll}
    for (int q_ = 0; q_ < {iters}; ++q_) {{
        const int f_ = lane + q_ * 32;
        const int rl_ = f_ / {cpr};
        const int ch_ = f_ - rl_ * {cpr};
        const int r_ = {warp} + rl_ * {nw};
        const int rw_ = tpla_shfl_idx(row_, rl_ & 31);
        const bool ok_ = rw_ >= 0;
        {guard}tpla_cp_async16(&dst_[{addr}], {data} + (ok_ ? (tpla_i64)rw_ * {row} : (tpla_i64)0) + ch_ * {v}, ok_);
    }}
}}
",
                addr = b.addr("r_", &format!("(ch_ * {v})")),
            )
            } else {
                // A warp per row: the row's page lookup, then its copy (16-byte chunks where rows
                // allow, else element by element).
                let copy = if vec_ok {
                    let v = 16 / elem.size();
                    format!(
                    "for (int ch_ = lane; ch_ < {cpr}; ch_ += 32)\n            tpla_cp_async16(&dst_[{addr}], src_ + ch_ * {v}, ok_);",
                    cpr = row / v,
                    addr = b.addr("r_", &format!("(ch_ * {v})")),
                )
                } else {
                    format!(
                    "for (int c_ = lane; c_ < {row}; c_ += 32) dst_[{addr}] = ok_ ? src_[c_] : ({cty})0;",
                    addr = b.addr("r_", "c_"),
                )
                };
                format!(
                    "{{
    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    {cty}* dst_ = {base} + (j_ % {slots}) * {slot};
    for (int r_ = {warp}; r_ < {block}; r_ += {nw}) {{
        const int t_ = t0_ + r_;
        bool ok_ = t_ < {hi} && {ps} > 0;
        const {cty}* src_ = {data};
        if (ok_) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            ok_ = pg_ >= 0 && pg_ < {np};
            if (ok_) src_ = {data} + ((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {row};
        }}
        {copy}
    }}
}}
"
                )
            }
        };
        let issue = mk_issue("warp", nw, "");
        let ws = self.geo.producer;
        let tma_ring = ws && fp8.lat == 0 && self.sched.tma && tma_applies(&b, elem, *block, *row);
        if ws && fp8.lat > 0 && self.seesaw.is_some() {
            // The two-consumer pair ring is fed with bf16 rows as they are in the pool.
            return Err(backend_err(
                self.k,
                "PRODUCER = 1 with SEESAW = 1 does not apply to an FP8 paged cache (KV_FP8)",
            ));
        }
        // With two or more stages the copy of block `it + st - 1` is issued after the barrier that
        // ends every read of its slot (block `it - 1`), inside the first warpgroup gemm of the
        // body when there is one (overlapping the tensor cores), else at the top of the body.
        let seesaw = self.seesaw.is_some();
        let prefetch = if seesaw {
            Self::seesaw_prefetch(&issue, st, &nblk)
        } else {
            format!(
                "{{ const int j_ = it_ + {ahead}; if (j_ < {nblk}) {issue} }}\ntpla_cp_async_commit();\n",
                ahead = st - 1
            )
        };
        if !seesaw {
            self.paging.partial_sums = super::partial_sum::partial_sums(self.k, s);
        }
        let saved = self.paging.deferred_prefetch.take();
        if st >= 2 && !ws {
            self.paging.deferred_prefetch = Some((prefetch.clone(), self.depth + 1));
        }
        // Under the producer with two or more stages, the first gemm (q·kᵀ) of block `it + 1` is
        // issued behind block `it`'s last gemm (`first_gemm.rs`): lowered once, placed before the
        // loop (block 0) and inside the last gemm (the next block), as the copy is without the
        // producer.
        let mut hoisted = None;
        self.paging.pingpong = ws && !seesaw && self.sched.pingpong;
        self.paging.pingponged = false;
        let hoist = (ws && !seesaw && st >= 2 && self.sched.qk_ahead)
            .then(|| super::first_gemm::hoistable_first_gemm(self.k, s, body, 64))
            .flatten();
        // `SOFTMAX_OVERLAP`: the body rotated so each block's P·V runs during the next block's
        // softmax (`softmax_overlap.rs`); its last P·V follows the loop. Not over an FP8 cache:
        // its producer's staging ring and barrier were never tried with the rotated consumers.
        let overlap = (ws && !seesaw && st >= 2 && fp8.lat == 0 && self.sched.softmax_overlap)
            .then(|| super::softmax_overlap::overlap_plan(self, body, ring))
            .flatten();
        let names = super::softmax_overlap::RingNames {
            base: &base,
            cur: &cur,
            st,
            slot,
            nblk: &nblk,
        };
        let overlapped = match &overlap {
            Some(plan) => self.lower_overlapped(body, plan, &names)?,
            None => None,
        };
        let mut overlap_after = None;
        // `FULL_GROUPS` over a TMA-filled ring: one full mbarrier per column group (after the
        // handoffs' under the score warpgroup; `full_groups.rs`), the loop's q·kᵀ waiting for
        // each inside its k loop. Not where the body is reordered (`SEESAW`, `QK_AHEAD`,
        // `SOFTMAX_OVERLAP`).
        let plain_body = !seesaw && hoist.is_none() && overlapped.is_none();
        let (groups, split_at) = self.ring_full_groups(tma_ring, plain_body, *row, slots);
        self.paging.full_groups = groups.split().then(|| (groups, b.name.clone()));
        self.paging.k_waits_placed = false;
        // `SCORE_WG`: the body lowered once per role (`roles.rs`), placed by `roles_consumers`.
        let mut role_parts = None;
        let mut role_issue = None;
        let mut split_issue: Option<[String; 2]> = None;
        let inner = if ws && self.roles.is_some() {
            role_parts = Some(self.lower_roles(body, *tile)?);
            vec![]
        } else if let Some((nodes, after)) = overlapped {
            overlap_after = Some(after);
            nodes
        } else if let Some(g) = hoist {
            let (nodes, qk) = self.lower_qk_ahead(body, g, &names)?;
            hoisted = qk;
            nodes
        } else {
            self.paging.k_waits = self.k_waits_for(body, *tile);
            let inner = self.lower_block(body);
            self.paging.k_waits = None;
            inner?
        };
        self.paging.pingpong = false;
        let unplaced = std::mem::replace(&mut self.paging.deferred_prefetch, saved);
        let mut reads = self.index_reads(batch);
        reads.extend(self.index_reads(split));
        reads.extend(self.index_reads(num_splits));
        reads.push(GLOBAL_RES + *cache);
        let sp = self.idx(split);
        if chunked {
            self.paging.early_exit = self.top_level_lets_before(s).map(|lets| {
                chunked_early_exit(*cache, &lets, (&self.idx(batch), &sp), (&lens, &nb))
            });
        }
        let bounds = if chunked {
            chunked_bounds(*cache, &bvar, &nb, &sp, &lo, &hi)
        } else {
            format!(
                "    const int chunk_ = tpla_imul(tpla_icdiv(tpla_icdiv(len_, {ns}), {block}), {block});
    {lo} = tpla_imul({sp}, chunk_);
    {hi} = tpla_imin(len_, tpla_iadd({lo}, chunk_));
",
                ns = self.idx(num_splits),
            )
        };
        let setup = format!(
            "{bvar} = {b};
{{
    const int len_ = tpla_ld_i32({lens}, {bvar}, {nb});
{bounds}    {nblk} = {hi} > {lo} ? tpla_icdiv(tpla_isub({hi}, {lo}), {block}) : 0;
}}
{cty}* const {base} = ({cty}*)(tpla_smem + {ring_off});
",
            b = self.idx(batch),
            ring_off = self.smem.bufs[ring].offset,
        );
        if seesaw && !ws {
            self.seesaw_loop(
                &setup,
                &issue,
                (&id, &lo, &nblk, &base),
                (*start, *block, st, slot),
                unplaced.map(|(p, _)| p),
                inner,
                reads,
                out,
            );
            return Ok(());
        }
        if ws {
            // The producer repeats the top-level `let`s before the loop (pure index values).
            let mut lets = String::new();
            for s in &self.k.body {
                match s {
                    Stmt::Let { dst, value } => {
                        lets.push_str(&format!("s{dst} = {};\n", self.idx(value)))
                    }
                    Stmt::PagedBlocks { .. } => break,
                    _ => {}
                }
            }
            let code = if fp8.lat > 0 {
                // The producer converts the raw rows into the ring (`fp8_producer.rs`); `TMA = 1`
                // does not apply (its boxes are bf16 ring blocks).
                let Some((stg, plan)) = self.paging.fp8_staging else {
                    return Err(backend_err(
                        self.k,
                        "the FP8 producer's staging ring was not planned",
                    ));
                };
                let pg = self.geo.producer_wgs;
                let regs = fp8_producer_regs(nw, pg);
                self.paging.producer_regs = regs;
                fp8_producer_loop(
                    &fp8,
                    &nblk,
                    plan,
                    self.smem.bufs[stg].offset,
                    &format!("{lets}{setup}"),
                    (regs, pg),
                    &|r: &str, c: &str| b.addr(r, c),
                )
            } else {
                let fallback = mk_issue("pw_", 4, " 1");
                let tma = tma_ring.then(|| tmap_name(*cache));
                let issue = match &tma {
                    Some(tmap) => {
                        self.paging.tma = Some((*cache, *block));
                        let names = TmaNames {
                            tmap: tmap.clone(),
                            bt: bt.clone(),
                            ps: ps.clone(),
                            pps: pps.clone(),
                            np: np.clone(),
                            bvar: bvar.clone(),
                            lo: lo.clone(),
                            hi: hi.clone(),
                            base: base.clone(),
                            groups,
                        };
                        if split_at.is_some() {
                            // The value warpgroups' halves, each after its own P·V; a block
                            // that does not go by TMA: the first one's whole copy after the
                            // slot's release (`roles.rs`).
                            let wait = super::split_release::split_slot_release_wait(slots);
                            self.paging.split_release = true;
                            self.paging.tma_check_ahead = Some(crate::cuda::tma::tma_check_ahead(
                                &names, *block, slots, &nblk,
                            ));
                            split_issue = Some([0, 1].map(|g| {
                                tma_issue_group(
                                    &names,
                                    *block,
                                    slots,
                                    slot,
                                    g,
                                    4 * g,
                                    &fallback,
                                    &wait,
                                )
                            }));
                        }
                        tma_issue(
                            &names,
                            *block,
                            *row,
                            slots,
                            slot,
                            &fallback,
                            // (Under `SCORE_WG` the first value warpgroup issues a block's
                            // copies after its own wait for the slot's release, `roles.rs`:
                            // no wait here.)
                            &if self.roles.is_some() {
                                String::new()
                            } else {
                                empty_wait(slots)
                            },
                            self.sched.l2_prefetch,
                        )
                    }
                    None => fallback,
                };
                if self.roles.is_some() {
                    role_issue = Some(if tma.is_some() {
                        issue.clone()
                    } else {
                        format!("{issue}tpla_cp_async_mbar_arrive(&{MBAR}[j_ % {st}]);\n")
                    });
                }
                if seesaw {
                    // One producer stage per slot (`2 st`); the pairs' blocks up to an even count
                    // (an odd block past the split is zero-filled by the `cp.async` path).
                    let pairs = format!("(({nblk} + 1) & ~1)");
                    let code = producer_loop(
                        &format!("{lets}{setup}"),
                        &issue,
                        &pairs,
                        slots,
                        tma.as_deref(),
                    );
                    self.paging.producer_code = Some((code, slots));
                    self.seesaw_ws_loop(
                        &setup,
                        (&id, &lo, &nblk, &base),
                        (*start, *block, st, slot),
                        inner,
                        reads,
                        out,
                    );
                    return Ok(());
                }
                producer_loop(&format!("{lets}{setup}"), &issue, &nblk, st, tma.as_deref())
            };
            self.paging.producer_code = Some((code, st));
            if let Some(parts) = role_parts {
                let Some(issue) = role_issue else {
                    return Err(super::roles::refused(self.k));
                };
                self.roles_consumers(
                    &setup,
                    (&issue, split_issue.as_ref()),
                    (&lo, &nblk, &base, &cur),
                    (*start, *block, st, slot),
                    parts,
                    reads,
                    out,
                );
                self.roles_publish_state(out);
                return Ok(());
            }
            self.producer_consumers(
                &setup,
                (&id, &lo, &nblk, &base, &cur),
                (*start, *block, st, slot),
                (
                    hoisted.as_deref(),
                    unplaced.as_ref().map(|(p, _)| p.as_str()),
                    overlap_after,
                ),
                inner,
                reads,
                out,
            )?;
            // Under `WG_KV_SPLIT` the second warpgroup's state merges into the first's.
            out.extend(self.kv_split_merge(ring)?);
            return Ok(());
        }
        let setup = format!(
            "{setup}for (int j_ = 0; j_ < {pre}; ++j_) {{
    if (j_ < {nblk}) {issue}
    tpla_cp_async_commit();
}}
",
            pre = st - 1
        );
        out.push(Node::Code {
            text: format!("{{\n{setup}"),
            reads,
            writes: vec![],
        });
        let head = if st >= 2 {
            format!(
                "for (int it_ = 0; it_ < {nblk}; ++it_) {{\n    tpla_cp_async_wait<{}>();",
                st - 2
            )
        } else {
            format!(
                "for (int it_ = 0; it_ < {nblk}; ++it_) {{\n    {prefetch}    tpla_cp_async_wait<0>();"
            )
        };
        let mut body_nodes = vec![
            Node::Barrier,
            Node::Code {
                text: format!(
                    "s{start} = tpla_iadd({lo}, tpla_imul(it_, {block}));\n{cur} = {base} + (it_ % {st}) * {slot};\n{}",
                    unplaced.map(|(p, _)| p).unwrap_or_default()
                ),
                reads: vec![],
                writes: vec![],
            },
        ];
        body_nodes.extend(inner);
        if st < 2 {
            // One slot: the next block's copy overwrites what this iteration read.
            body_nodes.push(Node::Barrier);
        }
        out.push(Node::Scope {
            head,
            body: body_nodes,
            tail: "}".into(),
            looped: true,
        });
        out.push(Node::Code {
            text: "tpla_cp_async_wait<0>();\n}\n".into(),
            reads: vec![],
            writes: vec![],
        });
        Ok(())
    }

    /// The top-level `let`s before paged loop `lp` as C assignments, where `lp` is a statement
    /// of the kernel's top level and everything before it is a `let` or a tile assignment (no
    /// store: a program leaving at the kernel's start skips nothing it would have written).
    fn top_level_lets_before(&self, lp: &Stmt) -> Option<String> {
        let at = self.k.body.iter().position(|s| std::ptr::eq(s, lp))?;
        let mut lets = String::new();
        for s in &self.k.body[..at] {
            match s {
                Stmt::Let { dst, value } => {
                    lets.push_str(&format!("s{dst} = {};\n", self.idx(value)))
                }
                Stmt::Assign { .. } => {}
                _ => return None,
            }
        }
        Some(lets)
    }
}

pub(crate) fn format_of(kind: &ParamKind) -> PagedFormat {
    match kind {
        ParamKind::Paged { format, .. } => *format,
        _ => PagedFormat::Plain,
    }
}
