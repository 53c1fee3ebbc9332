//! Software pipelining of a paged loop's first gemm under the producer warpgroup.
//!
//! In the online-softmax loop `s = gemm(q, kv.t()); …softmax…; acc = acc·α + gemm(p, kv.cols(..))`
//! the consumers' tensor cores idle from the end of block `i`'s `P·V` until block `i + 1`'s `q·kᵀ`
//! has been issued (its 36 instructions at latent 512 + 64) and waited for. Under `PRODUCER = 1`
//! with two or more ring stages, block `i + 1` is already in its slot while block `i` is computed,
//! so its `q·kᵀ` can be issued right behind block `i`'s `P·V` (between that gemm's commit and its
//! wait): the two run back to back on the tensor cores, and the next iteration starts with its
//! scores in registers. The first block's `q·kᵀ` is issued before the loop.
//!
//! That is a reordering of the kernel's own statements, not new math: it applies where the loop
//! body is flat assignments, the first is a gemm whose A operand the loop never assigns (the
//! query tile), the body has exactly one other gemm (the `P·V`), and the first gemm's result is
//! dead from that gemm on (nothing at or after it reads it, nothing outside the loop reads it).

use crate::cuda::lower::softmax_overlap::RingNames;
use crate::cuda::lower::Lower;
use crate::cuda::node::Node;
use crate::cuda::repr::Repr;
use crate::cuda::warpspec::MBAR;
use crate::error::IrError;
use crate::ir::*;
use crate::visit::{stmt_reads, walk_stmts};

impl Lower<'_> {
    /// The loop body under `QK_AHEAD` (`paged.rs`), its first gemm at index `g`
    /// ([`hoistable_first_gemm`]) of the ring `ring`: the body's nodes and, where that gemm
    /// lowered to a warpgroup gemm into registers, its code, which the consumer loop issues for
    /// block 0 before the loop (`consumer_loop.rs`); inside the body the next block's copy of it
    /// goes behind the last gemm's commit. Elsewhere the body as written and `None`.
    pub(crate) fn lower_qk_ahead(
        &mut self,
        body: &[Stmt],
        g: usize,
        ring: &RingNames,
    ) -> Result<(Vec<Node>, Option<String>), IrError> {
        let RingNames {
            base,
            cur,
            st,
            slot,
            nblk,
        } = *ring;
        self.paging.gemm_no_wait = true;
        let first = self.lower_block(&body[..=g]);
        self.paging.gemm_no_wait = false;
        let first = first?;
        let text: Option<String> = first
            .iter()
            .map(|n| match n {
                Node::Code { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let (Some(qk), Some((regs, arr))) = (
            text.filter(|t| t.contains("tpla_wgmma_commit")),
            self.frag_of(&body[g]),
        ) else {
            // Not a warpgroup gemm into registers: lowered again with its wait.
            let mut all = self.lower_block(&body[..=g])?;
            all.extend(self.lower_block(&body[g + 1..])?);
            return Ok((all, None));
        };
        let next = format!(
            "if (it_ + 1 < {nblk}) {{
tpla_mbar_wait(&{MBAR}[(it_ + 1) % {st}], ((it_ + 1) / {st}) & 1);
tpla_fence_proxy_async();
{cur} = {base} + ((it_ + 1) % {st}) * {slot};
{qk}}} else {{
tpla_wgmma_commit();
}}
"
        );
        // Behind the last gemm's commit: the next block's q·kᵀ commits a group of its own, so
        // that gemm waits for itself only (its slot is released at once) and the scores are
        // waited for at the top of the next iteration.
        self.paging.deferred_prefetch = Some((next, self.depth + 1));
        // (Past the last block an empty group keeps the count the same on both paths, so ptxas
        // sees one pattern of groups.)
        self.paging.deferred_wait = Some("tpla_wgmma_wait1();\n".into());
        let mut rest = vec![Node::Code {
            text: format!(
                "tpla_wgmma_wait0();\n#pragma unroll\nfor (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({arr}[i_]);\n"
            ),
            reads: vec![],
            writes: vec![],
        }];
        let inner = self.lower_block(&body[g + 1..]);
        self.paging.deferred_wait = None;
        rest.extend(inner?);
        Ok((rest, Some(qk)))
    }

    /// The register fragment a statement assigns: its register count per thread and array.
    pub(crate) fn frag_of(&self, s: &Stmt) -> Option<(usize, String)> {
        let Stmt::Assign { dst, .. } = s else {
            return None;
        };
        match &self.repr[*dst] {
            Repr::Frag { m, n, arr } => Some((self.geo.frag_regs(*m, *n), arr.clone())),
            _ => None,
        }
    }
}

/// Where the first gemm of `body` (the paged loop `lp` of kernel `k`) can be issued one block
/// ahead (see the module docs): `Some(i)`, its index (only views, which emit no code, come
/// before it); `rows` is the tile height the warpgroup path needs.
pub(crate) fn hoistable_first_gemm(
    k: &Kernel,
    lp: &Stmt,
    body: &[Stmt],
    rows: usize,
) -> Option<usize> {
    if !body.iter().all(|s| matches!(s, Stmt::Assign { .. })) {
        return None;
    }
    let is_gemm = |s: &Stmt| {
        matches!(
            s,
            Stmt::Assign {
                op: TileOp::Gemm { .. },
                ..
            }
        )
    };
    let gemms: Vec<usize> = (0..body.len()).filter(|&i| is_gemm(&body[i])).collect();
    let [first, last] = gemms[..] else {
        return None;
    };
    let Stmt::Assign {
        dst,
        op: TileOp::Gemm { a, .. },
    } = &body[first]
    else {
        unreachable!()
    };
    let only_views = body[..first].iter().all(|s| {
        matches!(
            s,
            Stmt::Assign {
                op: TileOp::View(..),
                ..
            }
        )
    });
    if !only_views || k.tiles[*dst].shape.first() != Some(&rows) {
        return None;
    }
    let assigns = |s: &Stmt, t: TileId| matches!(s, Stmt::Assign { dst: d, .. } if *d == t);
    if body.iter().any(|s| assigns(s, *a)) || body[first + 1..].iter().any(|s| assigns(s, *dst)) {
        return None;
    }
    if body[last..].iter().any(|s| stmt_reads(s).contains(dst)) {
        return None;
    }
    let mut read_outside = false;
    for s in &k.body {
        if !std::ptr::eq(s, lp) {
            walk_stmts(std::slice::from_ref(s), &mut |s| {
                read_outside |= stmt_reads(s).contains(dst);
            });
        }
    }
    (!read_outside).then_some(first)
}
