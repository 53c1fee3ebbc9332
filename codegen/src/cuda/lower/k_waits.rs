//! Where a paged loop's first gemm takes the `FULL_GROUPS` waits (`cuda/full_groups.rs`): the
//! waits for the ring's later column groups go inside that gemm's k loop (`gemm/wgmma.rs`), so
//! q·kᵀ starts once the block's first group has landed.

use crate::cuda::full_groups::KWaits;
use crate::cuda::lower::roles::root;
use crate::cuda::lower::*;
use crate::ir::*;
use crate::visit::stmt_reads;

impl Lower<'_> {
    /// The waits the first gemm of `body` places inside its k loop, for the ring of the loop
    /// whose block tile is `tile`: `None` without `FULL_GROUPS`, or where a statement before
    /// that gemm reads the block (it would read groups not waited for; the loop's head then
    /// waits for every group).
    pub(crate) fn k_waits_for(&self, body: &[Stmt], tile: TileId) -> Option<KWaits> {
        let (fg, ring) = self.paging.full_groups.clone()?;
        let g = body.iter().position(|s| {
            matches!(
                s,
                Stmt::Assign {
                    op: TileOp::Gemm { .. },
                    ..
                }
            )
        })?;
        let Stmt::Assign { dst, .. } = &body[g] else {
            unreachable!()
        };
        let reads_block = |s: &Stmt| {
            !matches!(
                s,
                Stmt::Assign {
                    op: TileOp::View(..),
                    ..
                }
            ) && stmt_reads(s).iter().any(|&t| root(body, t) == tile)
        };
        if body[..g].iter().any(reads_block) {
            return None;
        }
        let (stage, parity) = (format!("it_ % {}", fg.st), format!("(it_ / {}) & 1", fg.st));
        Some(KWaits {
            gemm: *dst,
            ring,
            waits: (1..fg.groups)
                .map(|i| (fg.first_col(i), fg.wait(i, &stage, &parity)))
                .collect(),
        })
    }

    /// The loop head's waits for the ring's later column groups of block `it_` (stage `it_ %
    /// st`), where the first gemm did not take them (or for a reader that waits for the whole
    /// block, `all`), one per line indented for the loop; empty without `FULL_GROUPS`.
    pub(crate) fn later_group_waits(&self, all: bool) -> String {
        match &self.paging.full_groups {
            Some((fg, _)) if all || !self.paging.k_waits_placed => {
                let st = fg.st;
                fg.wait_from(1, &format!("it_ % {st}"), &format!("(it_ / {st}) & 1"))
                    .lines()
                    .map(|l| format!("        {l}\n"))
                    .collect()
            }
            _ => String::new(),
        }
    }
}
