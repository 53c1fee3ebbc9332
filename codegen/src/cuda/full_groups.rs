//! Full mbarriers per column group of a ring stage (schedule knob `FULL_GROUPS`), FlashMLA's
//! per-tile K barriers as a compiler choice.
//!
//! A TMA-filled ring slot holds a block's row as `row / 64` column tiles (one 64-column box
//! each, `tma.rs`). With one full mbarrier per stage, the first gemm that reads the slot (q·kᵀ)
//! starts only once every tile has landed. With `FULL_GROUPS = g` the tiles are split into `g`
//! contiguous groups, each with its own full mbarrier carrying its own bytes: q·kᵀ waits for group
//! 0 at the top of the block, then for group `i` just before its first k-step that reads group
//! `i`'s columns, so the tensor cores start on the first tiles while the later ones are still in
//! flight. Each later group's wait sits between two wgmma commit groups (`gemm/wgmma.rs`), the
//! block's boxes go out page by page in column order (group 0's first).
//!
//! Measured (H100 / H200, 2026-12-06, `bench/NOTES-cuda-decode.md`): within noise of one group
//! (-1.4 % at MLA H128 B64x32K under the score warpgroup, 0 % elsewhere), so the score
//! warpgroup's data wait of the 2026-12-05 profile is the ring's issue point, not the transfer of
//! a block's later boxes; opt-in, not searched. Issuing the boxes box-major (one block-table read
//! per box) made it 14-66 % slower.
//!
//! Layout: group 0 of stage `s` is the ring's full mbarrier `s` as before; groups `1 .. g` of
//! stage `s` are `extra + s * (g - 1) + (i - 1)`, after every other mbarrier of the kernel, so no
//! other index moves. Every group's mbarrier counts the same arrivals as the stage's full one
//! (the issuing warpgroup's 128 threads); the elected TMA thread's `expect_tx` on each carries
//! that group's bytes, and a block copied by `cp.async` instead arrives on every group once its
//! copies have landed. A reader that does not split its waits (the value warpgroups' P·V) waits
//! for every group.

use crate::cuda::warpspec::MBAR;

/// The column groups of one ring's full mbarriers (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FullGroups {
    /// Groups (1: one full mbarrier per stage, as without the knob).
    pub(crate) groups: usize,
    /// 64-column tiles of a row.
    pub(crate) tiles: usize,
    /// Ring stages.
    pub(crate) st: usize,
    /// Index of the first extra mbarrier (group 1 of stage 0).
    pub(crate) extra: usize,
    /// Where two groups split at a given tile instead of evenly (`SPLIT_RELEASE`: the value
    /// warpgroups' column halves): the first tile of group 1.
    pub(crate) at: Option<usize>,
}

impl FullGroups {
    /// `asked` groups over a row of `row` columns (at most one group per 64-column tile) for a
    /// ring of `st` stages whose extra mbarriers start at index `extra`.
    pub(crate) fn new(asked: usize, row: usize, st: usize, extra: usize) -> FullGroups {
        let tiles = (row / 64).max(1);
        FullGroups {
            groups: asked.clamp(1, tiles),
            tiles,
            st,
            extra,
            at: None,
        }
    }

    /// Two groups over a row of `row` columns, split before 64-column tile `at` (`0 < at <
    /// row / 64`), for a ring of `st` stages whose extra mbarriers start at `extra`.
    pub(crate) fn halves(row: usize, at: usize, st: usize, extra: usize) -> FullGroups {
        let tiles = (row / 64).max(1);
        assert!(at > 0 && at < tiles, "a split inside the row");
        FullGroups {
            groups: 2,
            tiles,
            st,
            extra,
            at: Some(at),
        }
    }

    /// Whether the stage has more than one full mbarrier.
    pub(crate) fn split(&self) -> bool {
        self.groups > 1
    }

    /// The mbarriers beyond the ring's and the handoffs' (8 bytes each).
    pub(crate) fn extra_mbars(&self) -> usize {
        self.st * (self.groups - 1)
    }

    /// The group of 64-column tile `c`.
    pub(crate) fn group_of(&self, c: usize) -> usize {
        match self.at {
            Some(at) => usize::from(c >= at),
            None => c * self.groups / self.tiles,
        }
    }

    /// The 64-column tiles of group `g`.
    pub(crate) fn tiles_of(&self, g: usize) -> std::ops::Range<usize> {
        let first = (0..self.tiles).find(|&c| self.group_of(c) == g);
        let first = first.unwrap_or(self.tiles);
        let end = (first..self.tiles)
            .find(|&c| self.group_of(c) != g)
            .unwrap_or(self.tiles);
        first..end
    }

    /// The first column of group `g` (where a k loop over the row starts reading it).
    pub(crate) fn first_col(&self, g: usize) -> usize {
        64 * (0..self.tiles)
            .find(|&c| self.group_of(c) == g)
            .unwrap_or(self.tiles)
    }

    /// Bytes of group `g` of a bf16 block of `block` rows.
    pub(crate) fn bytes(&self, g: usize, block: usize) -> usize {
        (0..self.tiles).filter(|&c| self.group_of(c) == g).count() * block * 64 * 2
    }

    /// The mbarrier of group `g` of the stage given by the C expression `stage`, as an lvalue.
    pub(crate) fn bar(&self, stage: &str, g: usize) -> String {
        if g == 0 {
            format!("{MBAR}[{stage}]")
        } else {
            format!(
                "{MBAR}[{} + ({stage}) * {} + {}]",
                self.extra,
                self.groups - 1,
                g - 1
            )
        }
    }

    /// The mbarrier of the group of the tile whose index is the C expression `c` (a loop
    /// variable), as an lvalue.
    pub(crate) fn bar_of_tile(&self, stage: &str, c: &str) -> String {
        if !self.split() {
            return self.bar(stage, 0);
        }
        let (g, t) = (self.groups, self.tiles);
        if let Some(at) = self.at {
            return format!(
                "{MBAR}[({c}) < {at} ? ({stage}) : {} + ({stage})]",
                self.extra
            );
        }
        format!(
            "{MBAR}[({c}) * {g} / {t} == 0 ? ({stage}) : {} + ({stage}) * {} + ({c}) * {g} / {t} - 1]",
            self.extra,
            g - 1
        )
    }

    /// `f(bar)` for every group's mbarrier of `stage`, concatenated.
    pub(crate) fn each(&self, stage: &str, f: impl Fn(&str) -> String) -> String {
        (0..self.groups).map(|g| f(&self.bar(stage, g))).collect()
    }

    /// The wait (phase `parity`) for group `g > 0` of `stage`. No proxy fence: a block copied
    /// by `cp.async` (generic-proxy writes) arrives on every group at once, when each thread's
    /// copies have landed, so the fence after group 0's wait already covers its later groups;
    /// TMA writes are async-proxy writes and need none.
    pub(crate) fn wait(&self, g: usize, stage: &str, parity: &str) -> String {
        format!("tpla_mbar_wait(&{}, {parity});\n", self.bar(stage, g))
    }

    /// The kernel opening's initialisation of the later column groups' full mbarriers (of
    /// `groups`, if split), each counting `count` arrivals as the stage's own full mbarrier does.
    pub(crate) fn init_extra(groups: Option<&FullGroups>, count: usize) -> String {
        match groups {
            Some(g) if g.split() => format!(
                "        for (int i_ = 0; i_ < {}; ++i_) tpla_mbar_init(&{MBAR}[{} + i_], {count});\n",
                g.extra_mbars(),
                g.extra
            ),
            _ => String::new(),
        }
    }

    /// [`FullGroups::wait`] for groups `from ..`.
    pub(crate) fn wait_from(&self, from: usize, stage: &str, parity: &str) -> String {
        (from..self.groups)
            .map(|g| self.wait(g, stage, parity))
            .collect()
    }
}

/// Waits a `wgmma` gemm places inside its k loop (`gemm/wgmma.rs`): before the k-step at column
/// `k` of the buffer named `ring` (read as a K-major B operand from column 0), the code beside it.
/// Only the gemm assigning tile `gemm` takes them (`lower/k_waits.rs`).
#[derive(Clone, Debug)]
pub(crate) struct KWaits {
    pub(crate) gemm: crate::ir::TileId,
    pub(crate) ring: String,
    pub(crate) waits: Vec<(usize, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_the_tiles_in_order_and_their_bytes_add_up() {
        // MLA: 576 columns, 9 tiles.
        let g = FullGroups::new(3, 576, 2, 6);
        assert_eq!(
            (0..9).map(|c| g.group_of(c)).collect::<Vec<_>>(),
            [0, 0, 0, 1, 1, 1, 2, 2, 2]
        );
        assert_eq!((g.first_col(1), g.first_col(2)), (192, 384));
        assert_eq!((0..3).map(|i| g.bytes(i, 64)).sum::<usize>(), 64 * 576 * 2);
        assert_eq!(g.extra_mbars(), 4);
        // The shard (320 columns, 5 tiles) in 3 uneven groups; more groups than tiles clamp.
        let s = FullGroups::new(3, 320, 3, 8);
        assert_eq!(
            (0..5).map(|c| s.group_of(c)).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2]
        );
        assert_eq!((0..3).map(|i| s.bytes(i, 32)).sum::<usize>(), 32 * 320 * 2);
        assert_eq!(FullGroups::new(16, 320, 2, 6).groups, 5);
        assert!(!FullGroups::new(1, 576, 2, 6).split());
        // Split at the value warpgroups' halves: tiles 0-3 and 4-8 (the RoPE tile with the second).
        let h = FullGroups::halves(576, 4, 2, 6);
        assert_eq!(
            (0..9).map(|c| h.group_of(c)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1, 1]
        );
        assert_eq!((h.tiles_of(0), h.tiles_of(1)), (0..4, 4..9));
        assert_eq!(
            (h.first_col(1), h.bytes(0, 64), h.bytes(1, 64)),
            (256, 32768, 40960)
        );
        assert_eq!(
            h.bar_of_tile("s", "c_"),
            format!("{MBAR}[(c_) < 4 ? (s) : 6 + (s)]")
        );
        assert_eq!(h.bar("s", 1), format!("{MBAR}[6 + (s) * 1 + 0]"));
        assert_eq!(g.tiles_of(1), 3..6);
    }

    #[test]
    fn group_zero_is_the_stage_barrier_and_the_others_follow_the_extra_base() {
        let g = FullGroups::new(3, 576, 2, 6);
        assert_eq!(g.bar("it_ % 2", 0), format!("{MBAR}[it_ % 2]"));
        assert_eq!(g.bar("1", 2), format!("{MBAR}[6 + (1) * 2 + 1]"));
        // Every (stage, group > 0) pair has its own index in 6 .. 6 + extra_mbars().
        let mut seen = Vec::new();
        for st in 0..2 {
            for grp in 1..3 {
                seen.push(6 + st * 2 + grp - 1);
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen, (6..6 + g.extra_mbars()).collect::<Vec<_>>());
        let one = FullGroups::new(1, 576, 2, 0);
        assert_eq!(one.bar_of_tile("j_ % 2", "c_"), format!("{MBAR}[j_ % 2]"));
        assert_eq!(one.bytes(0, 64), 64 * 576 * 2);
    }
}
