//! Each value warpgroup refills its own half of a ring slot (schedule knob `SPLIT_RELEASE`,
//! under `SCORE_WG` and `TMA`; `roles.rs`).
//!
//! `SPLIT_RELEASE = 1` (latent 512, TMA): the two value warpgroups read disjoint halves of a
//! slot (the P·V's V columns `0 .. 256` and `256 .. 512`) and the RoPE tiles after them are read
//! only by the score warpgroup's q·kᵀ, finished before its `P_READY`. So each value warpgroup
//! refills its own half of block `i`'s slot with block `i + STAGES` as soon as its own P·V of
//! block `i` is done, without the empty-mbarrier round trip through the other: its 128 threads
//! meet on a named barrier (a warp's `wgmma` wait covers its own rows' reads only; without it
//! the emulated decode differs, a test), then its elected thread copies the half (the second
//! with the RoPE tiles) onto that half's full mbarrier (`full_groups.rs`, two groups split at the
//! halves), and the score warpgroup's q·kᵀ waits for the second half only before its first
//! k-step there. A block that does not go by TMA is copied whole by the first value warpgroup
//! after every value thread's `P_FREE` arrival for the block in that slot. FlashMLA's per-tile
//! release in this schedule.
//!
//! Two rules the first GPU runs taught (session 11; both now fail the host emulator too):
//! - Each value warpgroup waits for its own half's full mbarrier only ([`own_half_wait`]). The
//!   other half is refilled by the other warpgroup alone, so a warpgroup a whole block behind
//!   could find that mbarrier two phases on and wait for a parity that never comes again (the
//!   GPU agreement test hung; the emulator's warp stalls show it).
//! - The value warpgroups do not arrive on the ring's empty mbarriers: a block that goes by TMA
//!   waits for none, and an arrival on a phase nobody waited for is compute-sanitizer synccheck's
//!   "missing wait", a fault ([`split_slot_release_wait`]).

use crate::cuda::full_groups::FullGroups;
use crate::cuda::geometry::Geo;
use crate::cuda::lower::Lower;
use crate::cuda::warpspec::MBAR;

/// The named barriers (this one and the next) on which each value warpgroup's 128 threads meet
/// after their P·V, before its elected thread refills its half.
const SPLIT_RELEASE_BAR: usize = 7;

/// `SPLIT_RELEASE`: the first 64-column tile of the second value warpgroup's half of a ring row
/// of `row` columns, where two value warpgroups split an accumulator of whole 64-column halves
/// (the P·V reads each half of the slot from column 0, and the RoPE tiles after them only the
/// score warpgroup's q·kᵀ, done before its `P_READY`); `None` elsewhere (one value warpgroup).
pub(crate) fn split_release_tile(geo: &Geo, row: usize) -> Option<usize> {
    let half = geo.roles_wide / 2;
    (geo.roles_wide > 0 && geo.nw == 12 && half.is_multiple_of(64) && half / 64 < row / 64)
        .then_some(half / 64)
}

/// A value warpgroup's wait for its own half of block `it_` (`first`: the wait for the first
/// half, on the stage's own full mbarrier; `fg`: the ring's two groups split at the halves).
/// Each waits for its own half only: the other half is refilled by the other value warpgroup
/// after that one's P·V, and a warpgroup a whole block behind would wait for a parity that
/// mbarrier has passed twice (never returning; the GPU agreement test hung there, the emulator's
/// warp stalls show it).
pub(crate) fn own_half_wait(first: &str, fg: &FullGroups, st: usize) -> String {
    let second = fg.wait(1, &format!("it_ % {st}"), &format!("(it_ / {st}) & 1"));
    format!(
        "if (warp < 8) {{ {first} }} else {{ {} }}",
        second.trim_end()
    )
}

/// Under `SPLIT_RELEASE` the first value warpgroup's wait, before it copies a block that does not
/// go by TMA whole into block `it_`'s slot, for every value thread's release of that slot: their
/// `P_FREE` arrivals after block `it_`'s P·V (the score warpgroup's q·kᵀ of the block finished
/// before its `P_READY`). The value warpgroups do not arrive on the empty mbarriers here: a
/// block that goes by TMA waits for none, and an arrival on a phase nobody waited for is
/// compute-sanitizer synccheck's "missing wait" (a fault on the GPU: the balanced smoke test's
/// first run). Every `P_FREE` phase is waited for by the score warpgroup.
pub(crate) fn split_slot_release_wait(st: usize) -> String {
    let (_, free) = super::roles::handoff_mbars(st);
    format!("tpla_mbar_wait(&{MBAR}[{free}], it_ & 1);")
}

/// The value warpgroups' wait for block `it_`'s slot to be released by every reader (its empty
/// mbarrier), before block `j_ = it_ + st` is copied into it.
pub(crate) fn slot_release_wait(st: usize) -> String {
    format!("tpla_mbar_wait(&{MBAR}[{st} + it_ % {st}], (it_ / {st}) & 1);")
}

/// The value warpgroups' copy of block `j_ = it_ + st` into block `it_`'s slot, in their loop
/// after block `it_`'s P·V: `issue` (the whole block, by the first value warpgroup after the
/// slot's release by every reader), or under `SPLIT_RELEASE` the two halves' copies
/// (`tma::tma_issue_group`), each by its own warpgroup once its 128 threads are done with the
/// slot.
pub(crate) fn refill(
    issue: &str,
    split_issue: Option<&[String; 2]>,
    st: usize,
    nblk: &str,
) -> String {
    let indent =
        |text: &str| -> String { text.lines().map(|l| format!("            {l}\n")).collect() };
    match split_issue {
        // Each warp's `wgmma` wait covers its own rows' reads of the slot only: the
        // warpgroup's 128 threads meet first (one named barrier per value warpgroup).
        Some([a, b]) => format!(
            "        if (it_ + {st} < {nblk}) {{
            const int j_ = it_ + {st};
            if (warp < 8) {{
            tpla_bar_sync({SPLIT_RELEASE_BAR}, 128);
{}            }} else {{
            tpla_bar_sync({SPLIT_RELEASE_BAR} + 1, 128);
{}            }}
        }}
",
            indent(a),
            indent(b)
        ),
        None => format!(
            "        if (warp < 8 && it_ + {st} < {nblk}) {{
            const int j_ = it_ + {st};
            {}
{}        }}
",
            slot_release_wait(st),
            indent(issue)
        ),
    }
}

impl Lower<'_> {
    /// The full mbarriers of a paged loop's ring of `slots` stages over rows of `row` columns:
    /// split at the value warpgroups' halves under `SPLIT_RELEASE` (returned as the split tile),
    /// else `FULL_GROUPS`' even groups where they apply (`tma_ring`, and a score warpgroup or a
    /// plain producer-fed body), else one per stage. The extra mbarriers follow the handoffs'
    /// under the score warpgroup, the ring's full / empty ones otherwise.
    pub(crate) fn ring_full_groups(
        &self,
        tma_ring: bool,
        plain_body: bool,
        row: usize,
        slots: usize,
    ) -> (FullGroups, Option<usize>) {
        let extra = if self.roles.is_some() {
            super::roles::handoff_mbars(slots).1 + 1
        } else {
            2 * slots
        };
        let split_at = (tma_ring && self.roles.is_some() && self.sched.split_release)
            .then(|| split_release_tile(&self.geo, row))
            .flatten();
        let groups = match split_at {
            Some(at) => FullGroups::halves(row, at, slots, extra),
            None => FullGroups::new(
                if tma_ring && (self.roles.is_some() || plain_body) {
                    self.sched.full_groups
                } else {
                    1
                },
                row,
                slots,
                extra,
            ),
        };
        (groups, split_at)
    }
}
