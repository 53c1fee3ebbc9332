//! `PINGPONG`'s P·V waited for one gemm later.
//!
//! Under `PINGPONG = 1` (row-stacked warpgroups taking turns at the tensor cores, `gemm/wgmma.rs`)
//! each consumer warpgroup runs the loop as written: q·kᵀ, wait, softmax, P·V, wait, release
//! the block's ring slot. The P·V's wait held 10-13 % of the shard H128 decode's stall samples on
//! the H100 (2026-12-06): the warpgroup idles for its own gemm's tail before it can even queue
//! for its next turn. Here the P·V is committed without a wait: the next block's q·kᵀ wait
//! (`wait_group 0`) covers it, since a warpgroup's groups complete in order. What the P·V reads
//! stays untouched until then, so
//!
//! - P, packed to bf16 pairs, lives in an array declared before the loop ([`PV_PACKED`]), not in
//!   the gemm's own scope, and the accumulator is not touched before that wait (the rescale comes
//!   after the softmax, which follows it);
//! - the block's ring slot (the P·V's B operand) is released after that wait, one iteration
//!   later (`it_ - 1`), and the last block's after the loop, behind one `wait_group 0`;
//! - at that wait both arrays are fenced (an empty `asm volatile` writing them), so no read of
//!   the accumulator moves above it and ptxas sees no register of an open gemm touched (it would
//!   inject a wait for every gemm, C7517).
//!
//! It is the same arithmetic in the same order; only where the warpgroup waits moves. It applies
//! where the body is flat assignments with exactly two gemms, the second fused into
//! `acc = scaled + gemm(p, v)` with P a register fragment in wgmma's A layout, over a bf16 cache,
//! with two or more ring stages (with one, block `i + 1` needs the slot block `i` holds until
//! then), in the plain producer schedule (not `QK_AHEAD`, `SOFTMAX_OVERLAP`, `SEESAW` or `SCORE_WG`,
//! which order the loop otherwise). Where the lowering does not place both halves (a gemm not
//! lowered to `wgmma`), `paged.rs` lowers the body again without it.

use crate::cuda::lower::*;
use crate::cuda::node::Node;
use crate::cuda::repr::Repr;
use crate::cuda::warpspec::MBAR;
use crate::error::IrError;
use crate::ir::*;

/// The array P is packed into for the deferred P·V, declared before the consumers' loop.
pub(crate) const PV_PACKED: &str = "pv_pa_";

/// The deferred P·V of one loop, and which of its two halves the lowering placed.
#[derive(Clone, Debug)]
pub(crate) struct PvDefer {
    /// The carried accumulator's register array (the P·V's `wgmma` accumulator) and its size.
    pub(crate) acc: String,
    pub(crate) acc_regs: usize,
    /// Registers of [`PV_PACKED`] (`kd / 4` bf16 pairs).
    pub(crate) packed_regs: usize,
    /// Ring stages (slot `j % st`, empty mbarrier `st + j % st`).
    pub(crate) st: usize,
    /// The q·kᵀ's wait carries the fences and the previous block's release.
    pub(crate) qk_placed: bool,
    /// The P·V was lowered without its wait, A from [`PV_PACKED`].
    pub(crate) pv_placed: bool,
}

impl PvDefer {
    /// Fences making `wait_group 0` the point where both arrays the P·V wrote or reads change,
    /// for the compiler.
    pub(crate) fn fences(&self) -> String {
        format!(
            "#pragma unroll\nfor (int i_ = 0; i_ < {}; ++i_) tpla_fence_operand({}[i_]);\n#pragma unroll\nfor (int i_ = 0; i_ < {}; ++i_) tpla_fence_operand({PV_PACKED}[i_]);\n",
            self.acc_regs, self.acc, self.packed_regs
        )
    }

    /// What follows the q·kᵀ's wait (and its own fences) in iteration `it_`: the fences, then
    /// the release of block `it_ - 1`'s slot, whose P·V that wait covered.
    pub(crate) fn after_qk_wait(&self) -> String {
        let st = self.st;
        format!(
            "{}if (it_ > 0) tpla_mbar_arrive(&{MBAR}[{st} + (it_ - 1) % {st}]);\n",
            self.fences()
        )
    }

    /// Before the loop: the packed array, zeroed so its first fence reads defined values.
    pub(crate) fn before_loop(&self) -> String {
        format!(
            "unsigned {PV_PACKED}[{n}];\n#pragma unroll\nfor (int i_ = 0; i_ < {n}; ++i_) {PV_PACKED}[i_] = 0u;\n",
            n = self.packed_regs
        )
    }

    /// After the loop of `nblk` blocks: the last P·V waited for, its slot released.
    pub(crate) fn after_loop(&self, nblk: &str) -> String {
        let st = self.st;
        format!(
            "tpla_wgmma_wait0();\n{}if ({nblk} > 0) tpla_mbar_arrive(&{MBAR}[{st} + ({nblk} - 1) % {st}]);\n",
            self.fences()
        )
    }

    /// Whether the lowering placed both halves.
    pub(crate) fn placed(&self) -> bool {
        self.qk_placed && self.pv_placed
    }
}

/// The deferred P·V of `body` (a producer-fed paged loop of `st` ring stages under `PINGPONG`),
/// if the module's pattern matches.
pub(crate) fn pv_defer_plan(l: &Lower, body: &[Stmt], st: usize) -> Option<PvDefer> {
    // With one stage block `i + 1` lands in the slot block `i` releases: that release cannot
    // wait for block `i + 1`'s q·kᵀ.
    if st < 2 || !body.iter().all(|s| matches!(s, Stmt::Assign { .. })) {
        return None;
    }
    let gemms: Vec<TileId> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Assign {
                dst,
                op: TileOp::Gemm { .. },
            } => Some(*dst),
            _ => None,
        })
        .collect();
    let [_, pv] = gemms[..] else {
        return None;
    };
    let f = l.find_fusions(body).into_iter().find(|f| f.gemm == pv)?;
    let (m, kd) = (l.k.tiles[f.a].shape[0], l.k.tiles[f.a].shape[1]);
    let p_in_registers =
        matches!(&l.repr[f.a], Repr::Frag { m: m2, n: n2, .. } if *m2 == m && *n2 == kd);
    // Only where the warpgroups take turns (two stacked along the rows, `gemm/wgmma.rs`):
    // elsewhere `PINGPONG` changes nothing, this included.
    if !p_in_registers || !l.rs_geometry(m, kd) || l.geo.wg_rows(m) != Some(2) {
        return None;
    }
    let Repr::Frag { m: am, n: an, arr } = &l.repr[f.add_dst] else {
        return None;
    };
    Some(PvDefer {
        acc: arr.clone(),
        acc_regs: l.geo.frag_regs(*am, *an),
        packed_regs: kd / 4,
        st,
        qk_placed: false,
        pv_placed: false,
    })
}

impl Lower<'_> {
    /// A producer-fed loop body in the order written (`paged.rs`), under `FULL_GROUPS` with the
    /// q·kᵀ's column-group waits, under `PINGPONG` over a `bf16` ring with the P·V's wait
    /// deferred where the pattern matches; `paging.pv_defer` then tells the consumer loop
    /// (`consumer_loop.rs`) what to place around it.
    pub(crate) fn lower_plain_body(
        &mut self,
        body: &[Stmt],
        tile: TileId,
        st: usize,
        bf16: bool,
    ) -> Result<Vec<Node>, IrError> {
        self.paging.pv_defer = (self.paging.pingpong && bf16)
            .then(|| pv_defer_plan(self, body, st))
            .flatten();
        self.paging.k_waits = self.k_waits_for(body, tile);
        let mut inner = self.lower_block(body);
        if self.paging.pv_defer.as_ref().is_some_and(|d| !d.placed()) {
            // A gemm did not take its half: the loop as written.
            self.paging.pv_defer = None;
            self.paging.k_waits = self.k_waits_for(body, tile);
            inner = self.lower_block(body);
        }
        self.paging.k_waits = None;
        inner
    }
}
