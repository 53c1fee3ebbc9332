//! The consumers' block loop under warp specialisation: a producer warpgroup fills the ring,
//! the consumer warpgroups wait for each block's full mbarrier, compute, and release its slot on
//! the empty mbarrier (`PRODUCER = 1`, bf16 and FP8 producers alike; `paged.rs` builds the
//! producer's side).

use crate::cuda::lower::gemm::wgmma::PINGPONG_BAR;
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::warpspec::MBAR;
use crate::error::IrError;
use crate::ir::*;

impl Lower<'_> {
    /// The consumers' loop under warp specialisation (bf16 and FP8 producers alike): per block
    /// `it_`, wait for its stage to be full, fence against the `wgmma` reads, compute `inner`,
    /// release the stage on its empty mbarrier. With a `hoisted` first gemm (`first_gemm.rs`),
    /// block 0's is issued before the loop, and `unplaced` (the next block's, when no gemm of the
    /// body took it) at the end of the body. `overlap_after` follows a rotated body
    /// (`softmax_overlap.rs`), which releases its blocks' slots itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn producer_consumers(
        &mut self,
        setup: &str,
        (_id, lo, nblk, base, cur): (&str, &str, &str, &str, &str),
        (start, block, st, slot): (ScalarId, usize, usize, usize),
        (hoisted, unplaced, overlap_after): (Option<&str>, Option<&str>, Option<Vec<Node>>),
        inner: Vec<Node>,
        reads: Vec<usize>,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        // `WG_KV_SPLIT` needs every ring slot to belong to one warpgroup: an even stage count
        // (block `j` in slot `j % st`; warpgroup `j % 2`). Otherwise a warpgroup waits on a
        // slot whose previous phase is the other warpgroup's block: where that block has not
        // landed yet (TMA copies land in any order; with one stage, from the start) the wait
        // on the parity passes at once, the warpgroup reads and releases a slot the producer
        // has not filled, and the block deadlocks or faults (H100, 2026-12-05: `tpla bench` at
        // 3 stages, `cuda_wg_kv_split_agrees` at 1). The kernel goes without the split.
        if self.kv_split.is_some() && (st < 2 || st % 2 != 0) {
            return Err(super::kv_split::refused(self.k));
        }
        out.push(Node::Code {
            text: format!("{{\n{setup}"),
            reads,
            writes: vec![],
        });
        let mut body_nodes = vec![Node::Code {
            text: format!(
                "s{start} = tpla_iadd({lo}, tpla_imul(it_, {block}));\n{cur} = {base} + (it_ % {st}) * {slot};\n"
            ),
            reads: vec![],
            writes: vec![],
        }];
        body_nodes.extend(inner);
        // Whatever the consumers wrote before the loop is published once, not per block.
        out.push(Node::Barrier);
        // `PINGPONG`: warpgroup 1 gives warpgroup 0 the first turn; after the loop warpgroup 0
        // takes the last hand-off, so both barriers end balanced (every arrival waited for).
        let pp = std::mem::take(&mut self.paging.pingponged);
        if pp {
            out.push(Node::Code {
                text: format!("if ((warp >> 2) == 1) tpla_bar_arrive({PINGPONG_BAR}, 256);\n"),
                reads: vec![],
                writes: vec![],
            });
        }
        if let Some(qk) = hoisted {
            // Block 0's first gemm; a body without a warpgroup gemm to carry the next block's
            // takes it at its end (same order, no overlap).
            out.push(Node::Code {
                text: format!(
                    "if ({nblk} > 0) {{\ntpla_mbar_wait(&{MBAR}[0], 0);\ntpla_fence_proxy_async();\n{cur} = {base};\n{qk}}}\n"
                ),
                reads: vec![],
                writes: vec![],
            });
            if let Some(next) = unplaced {
                body_nodes.push(Node::Code {
                    text: next.to_string(),
                    reads: vec![],
                    writes: vec![],
                });
            }
        }
        // Under `SOFTMAX_OVERLAP` the body releases the previous block's slot and the code after
        // the loop the last one's (`softmax_overlap.rs`).
        if overlap_after.is_none() {
            body_nodes.push(Node::Code {
                text: format!("tpla_mbar_arrive(&{MBAR}[{st} + it_ % {st}]);\n"),
                reads: vec![],
                writes: vec![],
            });
        }
        let later = self.later_group_waits(false);
        let later = if later.is_empty() {
            later
        } else {
            format!("\n{}", later.trim_end())
        };
        out.push(Node::Scope {
            // (Under `FULL_GROUPS` the later column groups' waits too, unless the block's q·kᵀ
            // took them, `lower/k_waits.rs`.)
            head: format!(
                "{}\n    tpla_mbar_wait(&{MBAR}[it_ % {st}], (it_ / {st}) & 1);\n    tpla_fence_proxy_async();{later}",
                self.consumer_loop_head(nblk),
            ),
            body: body_nodes,
            tail: "}".into(),
            looped: true,
        });
        let last = if pp {
            format!("if ((warp >> 2) == 0) tpla_bar_sync({PINGPONG_BAR}, 256);\n")
        } else {
            String::new()
        };
        out.extend(overlap_after.unwrap_or_default());
        out.push(Node::Code {
            text: format!("{last}}}\n"),
            reads: vec![],
            writes: vec![],
        });
        Ok(())
    }
}
