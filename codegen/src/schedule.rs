//! Schedule knobs: config values that steer how a backend maps a kernel onto the hardware
//! without changing what it computes.
//!
//! A kernel's config (`Kernel::config`) may carry, beside its tune parameters and shape constants:
//!
//! | knob | values | meaning |
//! |---|---|---|
//! | `WARPS` (alias `NUM_WARPS`) | 1, 2, 4, 8, 16, 32 | warps per CUDA block (default: chosen from the register budget) |
//! | `WGMMA` | 0, 1 | 0 turns Hopper's warpgroup `wgmma` path off (default 1: on where the target allows) |
//! | `WG_SPLIT` | a positive multiple of 8 | the fewest columns a warpgroup takes when warpgroups split a tile (default 128) |
//! | `KV_CHUNKS` | 0, 1 | 1: every read-only paged cache carries a per-sequence split table `chunk [batch]` (i32) and its block loops split sequence `b` into pieces of `chunk[b]` tokens, programs past a sequence's last piece ending at the loop (see `Stmt::PagedBlocks`); changes the argument ABI, read by the kernel builder (default 0) |
//! | `KV_FP8` | 0, or a positive multiple of 128 no wider than the row | the paged caches' storage format: `n > 0` stores the first `n` columns of each row as e4m3 with one f32 scale per 128 columns, then the rest as bf16 (FlashMLA's 656-byte MLA row; see [`crate::kv_format`]); a block load dequantises into the kernel's bf16 tile, a row store quantises; changes what the pool holds, read by the kernel builder (default 0: bf16 rows) |
//! | `PRODUCER` | 0, 1 | 1: warp specialisation on Hopper: a producer warpgroup streams the paged blocks into an mbarrier-guarded ring while the other warpgroups only compute (default 0; applies where the warpgroup path is used and the kernel has one top-level paged loop) |
//! | `TMA` | 0, 1 | 1 (needs `PRODUCER = 1`): the producer copies each whole KV block that lies in one page with TMA bulk tensor copies (one elected thread, a 64-column box per 128 bytes of row, expect-tx on the full barrier), the others with `cp.async`; the streamed bf16 cache then takes a tensor map argument (`cuda::tma`), which changes the argument ABI (default 0) |
//! | `PREFETCH` | 0, 1 | 1 (needs `TMA = 1`): when the producer issues a block's TMA copies it also prefetches into L2 the block `STAGES` ahead (the next to use that ring slot), with `cp.async.bulk.prefetch.tensor`: more of the cache in flight than the shared-memory ring holds, and its page's address translation warmed (default 0; a hint, it changes no result; not searched by the tuner: 15-20 % slower on the H100, 2026-12-05) |
//! | `SEESAW` | 0, 1 | 1: FlashMLA's two-consumer split on Hopper: the two warpgroups take alternate blocks of the kernel's paged loop (each computes its own q·kᵀ), combine the row statistics and exchange P, and each keeps half of the wide accumulator; with `PRODUCER = 1` (and `TMA = 1`) a producer warpgroup feeds their pair ring (default 0; applies where `cuda/lower/seesaw/pattern.rs` and the geometry say, elsewhere it changes nothing) |
//! | `QK_AHEAD` | 0, 1 | 1: under `PRODUCER = 1` with two or more ring stages, the next block's first gemm (q·kᵀ) is issued behind this block's last (P·V), the scores waited for at the top of the next iteration (`cuda/lower/first_gemm.rs`); default 0: on the H200 (2026-12-04) it made the MLA and shard decode 11-28 % slower at two stages, not searched by the tuner |
//! | `PINGPONG` | 0, 1 | 1: where two warpgroups are stacked along the rows of a 128-row tile (`cuda/geometry.rs`), FlashAttention-3's ping-pong: the warpgroups take turns issuing their gemms (two named barriers), so one's softmax runs while the other's gemms use the tensor cores (default 0; elsewhere it changes nothing) |
//! | `SOFTMAX_OVERLAP` | 0, 1 | 1: under `PRODUCER = 1` with two or more ring stages, FlashAttention-3's overlap inside a warpgroup: block `i`'s P·V is issued after block `i + 1`'s q·kᵀ and runs on the tensor cores while block `i + 1`'s softmax is computed; the accumulator's rescale moves in front of that gemm (`cuda/lower/softmax_overlap.rs`; default 0, searched by the tuner; applies where that file's pattern matches and the cache is bf16, elsewhere it changes nothing; not with `QK_AHEAD` or `PINGPONG`, which order the same loop otherwise) |
//! | `WG_KV_SPLIT` | 0, 1 | 1 (needs `PRODUCER = 1`): where a 64-row tile would run on one consumer warpgroup, two take alternate blocks of the paged loop, each with the whole accumulator and its own softmax state, merged once after the loop (`cuda/lower/kv_split.rs`; default 0; applies where that file's pattern matches over a bf16 cache, elsewhere it changes nothing; not with `SEESAW`, `QK_AHEAD` or `SOFTMAX_OVERLAP`) |
//! | `SCORE_WG` | 0, 1 | 1 (needs `PRODUCER = 1`): on a 64-row tile, one more consumer warpgroup, the *score* warpgroup, computes each block's q·kᵀ and softmax alone and hands P and the rescale to the *value* warpgroups that hold the accumulator (two at latent 512, one at the shard widths), which only run the rescale and P·V (and issue the ring's copies; no producer warpgroup): one block's scores are computed while the previous block's P·V runs (`cuda/lower/roles.rs`; default 0, searched with `PRODUCER = TMA = 1`; applies where `kv_split.rs`'s online-softmax pattern matches over a bf16 cache, elsewhere it changes nothing; not with `SEESAW`, `QK_AHEAD`, `SOFTMAX_OVERLAP` or `WG_KV_SPLIT`) |
//! | `FP8_PRODUCERS` | 1, 2 | 2 (needs `PRODUCER = 1`): where the producer converts an FP8 cache (`KV_FP8`) beside one consumer warpgroup (16- to 64-row blocks whose accumulator one warpgroup holds), two producer warpgroups share each piece's conversion (384 threads; the conversion's instruction issue bounded the FP8 decode on the H200, `bench/NOTES-fp8.md`); elsewhere it changes nothing (default 1) |
//! | `FULL_GROUPS` | 1 to 9 | `g > 1` (needs `TMA = 1`): each ring stage's full mbarrier split into `g` column groups of the block's 64-column TMA boxes, each with its own bytes; under `SCORE_WG` the score warpgroup's q·kᵀ waits for each group just before the k-steps that read it, so it starts while the later boxes are in flight (FlashMLA's per-tile K barriers; `cuda/full_groups.rs`); so does the plain producer schedule's own q·kᵀ; elsewhere it changes nothing (default 1; within noise of one group on the H100, 2026-12-06: not searched by the tuner) |
//! | `PV_FIRST` | 0, 1 | 1 (needs `SCORE_WG = 1`): the score warpgroup waits for the value warpgroups' P·V of block `i - 1` before it issues block `i`'s q·kᵀ (not after): the P·V runs alone on the tensor cores and its ring slot, whose refill the score warpgroup waits for two blocks later, is released sooner, at the cost of the q·kᵀ / P·V overlap (default 0; an experiment, not searched) |
//! | `SPLIT_RELEASE` | 0, 1 | 1 (needs `SCORE_WG = 1`, `TMA = 1`): where two value warpgroups each hold a 64-column-aligned half of the accumulator, each issues the TMA copies of its own half of block `i + STAGES` as soon as its P·V of block `i` is done (no empty-barrier round trip; the RoPE tiles go with the second half), and the ring's full mbarriers split at that column so the score warpgroup's q·kᵀ starts on the first half (FlashMLA's per-tile release; a block copied by `cp.async` keeps the first value warpgroup's whole-block copy; its two groups take the place of `FULL_GROUPS`' where both are set; default 0; searched under `SCORE_WG` with TMA, 6 % faster at MLA H128 on the H100) |
//!
//! [`Schedule::from_config`] reads and validates them once: a bad value is an
//! [`IrError::BadConfig`] naming the knob, never silently ignored.

use crate::error::IrError;

/// Warp counts `WARPS` may take.
pub const WARPS_VALUES: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// The validated schedule knobs of one kernel config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Schedule {
    /// Warps per block (`WARPS` / `NUM_WARPS`); `None`: the backend chooses.
    pub warps: Option<usize>,
    /// Whether Hopper warpgroup gemms are allowed (`WGMMA`, default true).
    pub wgmma: bool,
    /// The fewest columns a warpgroup takes when warpgroups split a tile (`WG_SPLIT`).
    pub wg_split: usize,
    /// Whether a producer warpgroup streams the paged blocks (`PRODUCER`, default false).
    pub producer: bool,
    /// Whether the producer copies with TMA where a block allows (`TMA`, default false; only
    /// with `producer`).
    pub tma: bool,
    /// Whether the TMA producer also prefetches into L2 the block `STAGES` ahead of each block it
    /// copies (`PREFETCH`, default false; only with `tma`).
    pub l2_prefetch: bool,
    /// Whether the two consumer warpgroups take alternate paged blocks (`SEESAW`, default false).
    pub seesaw: bool,
    /// Whether the producer-fed paged loop issues the next block's first gemm behind this
    /// block's last one (`QK_AHEAD`, default false; `cuda/lower/first_gemm.rs`).
    pub qk_ahead: bool,
    /// Whether row-stacked warpgroups take turns issuing their gemms (`PINGPONG`, default
    /// false; `cuda/lower/gemm/wgmma.rs`).
    pub pingpong: bool,
    /// Whether the producer-fed paged loop issues each block's P·V behind the next block's
    /// q·kᵀ, overlapping it with that block's softmax (`SOFTMAX_OVERLAP`, default false;
    /// `cuda/lower/softmax_overlap.rs`).
    pub softmax_overlap: bool,
    /// Whether two consumer warpgroups take alternate blocks of the producer-fed paged loop of a
    /// 64-row tile, each with the whole accumulator, merged after the loop (`WG_KV_SPLIT`,
    /// default false; `cuda/lower/kv_split.rs`).
    pub wg_kv_split: bool,
    /// Whether a score warpgroup computes q·kᵀ and the softmax for two value warpgroups that
    /// hold the accumulator (`SCORE_WG`, default false; `cuda/lower/roles.rs`).
    pub score_wg: bool,
    /// Whether the score warpgroup waits for the previous block's P·V before issuing the next
    /// q·kᵀ (`PV_FIRST`, default false; only with `score_wg`; `cuda/lower/roles.rs`).
    pub pv_first: bool,
    /// Whether each value warpgroup refills its own half of a ring slot after its P·V
    /// (`SPLIT_RELEASE`, default false; only with `score_wg` and `tma`; `cuda/lower/roles.rs`).
    pub split_release: bool,
    /// Producer warpgroups converting an FP8 cache beside one consumer warpgroup
    /// (`FP8_PRODUCERS`, 1 or 2, default 1; `cuda/lower/fp8_producer.rs`).
    pub fp8_producers: usize,
    /// Full mbarriers per ring stage, one per column group of the TMA boxes (`FULL_GROUPS`, 1
    /// to 9, default 1; `cuda/full_groups.rs`).
    pub full_groups: usize,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            warps: None,
            wgmma: true,
            wg_split: 128,
            producer: false,
            tma: false,
            l2_prefetch: false,
            seesaw: false,
            qk_ahead: false,
            pingpong: false,
            softmax_overlap: false,
            wg_kv_split: false,
            score_wg: false,
            pv_first: false,
            split_release: false,
            fp8_producers: 1,
            full_groups: 1,
        }
    }
}

fn bad(name: &str, value: i64, why: impl Into<String>) -> IrError {
    IrError::BadConfig {
        name: name.to_string(),
        value,
        why: why.into(),
    }
}

/// The schedule settings `tpla tune` searches beside a kernel's `#[tune]` parameters: each a
/// whole, valid set of knobs (the first, no knob set, is the default), so knobs that only make
/// sense together (`TMA` needs `PRODUCER`) are searched together. The tune database may store
/// any knob value that appears here. They change how a kernel runs, never what it computes, and
/// apply only where the backend says so (a CUDA Hopper target's warpgroup path): elsewhere a
/// tuner times the default alone.
pub const SEARCHED_SETTINGS: &[&[(&str, i64)]] = &[
    &[],
    &[("PRODUCER", 1)],
    &[("PRODUCER", 1), ("TMA", 1)],
    &[("SEESAW", 1)],
    &[("SEESAW", 1), ("PRODUCER", 1), ("TMA", 1)],
    &[("PINGPONG", 1), ("PRODUCER", 1)],
    &[("PINGPONG", 1), ("PRODUCER", 1), ("TMA", 1)],
    &[("SOFTMAX_OVERLAP", 1), ("PRODUCER", 1)],
    &[("SOFTMAX_OVERLAP", 1), ("PRODUCER", 1), ("TMA", 1)],
    // `WG_KV_SPLIT` (the second warpgroup on a 64-row tile's odd KV blocks), only at even ring
    // stage counts (the kernel is emitted without the split otherwise: at one and three stages
    // it deadlocked on the H100). On the H200 (2026-12-05, 2ac3de9) the shard H64 B64x32K ran
    // 383 us with it against 410 without, B128x4K 124 against 118: the tuner picks per bucket.
    &[("WG_KV_SPLIT", 1), ("PRODUCER", 1)],
    &[("WG_KV_SPLIT", 1), ("PRODUCER", 1), ("TMA", 1)],
    // `SCORE_WG` (a score warpgroup feeding the value warpgroups; handoffs on mbarriers,
    // compute-sanitizer clean). On the H200 (2026-12-05, c92ba84) MLA H128 B64x32K ran 1301 us
    // with it against 1386 for the best plain TMA schedule, H64 704 against 718; the TPLA shard
    // (latent 256) H64 471 against 385 with `WG_KV_SPLIT`: the tuner picks per bucket.
    &[("SCORE_WG", 1), ("PRODUCER", 1), ("TMA", 1)],
    // `SPLIT_RELEASE` under it (each value warpgroup refilling its own half of a slot; latent
    // 512 only, elsewhere the same kernel and timed once). On the H100 (2026-12-06, 2b29720) MLA
    // H128 B64x32K ran 1163 us decode-only with it against 1238 (1116 against 1236 without the empty-mbarrier arrivals, 7427c90), H64 792 against 794.
    &[
        ("SCORE_WG", 1),
        ("PRODUCER", 1),
        ("TMA", 1),
        ("SPLIT_RELEASE", 1),
    ],
    // (Opt-in, `--config PREFETCH=1`, not searched: the L2 prefetch a ring round ahead, 15-20 %
    // slower on the H100 on 2026-12-05.)
];

/// Whether `name = value` appears in one of the [`SEARCHED_SETTINGS`] (or is a searched knob's
/// default, 0): what a tune database entry may hold.
pub fn is_searched(name: &str, value: i64) -> Option<bool> {
    let mut known = false;
    for set in SEARCHED_SETTINGS {
        for (n, v) in *set {
            if *n == name {
                known = true;
                if *v == value {
                    return Some(true);
                }
            }
        }
    }
    known.then_some(value == 0)
}

/// The `KV_CHUNKS` knob of a kernel config (see the module table): false when absent, an
/// [`IrError::BadConfig`] naming the knob for a value other than 0 or 1.
pub fn kv_chunks(config: &[(String, i64)]) -> Result<bool, IrError> {
    match config
        .iter()
        .find(|(n, _)| n == "KV_CHUNKS")
        .map(|(_, v)| *v)
    {
        None | Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(v) => Err(bad(
            "KV_CHUNKS",
            v,
            "must be 0 (uniform splits) or 1 (a split table)",
        )),
    }
}

impl Schedule {
    /// Reads the schedule knobs from a kernel's `(name, value)` config pairs; other names are
    /// ignored. Fails with [`IrError::BadConfig`] naming the knob when a value is out of range,
    /// or when `WARPS` and `NUM_WARPS` disagree.
    pub fn from_config(config: &[(String, i64)]) -> Result<Schedule, IrError> {
        let mut s = Schedule::default();
        for (name, v) in config {
            let v = *v;
            match name.as_str() {
                "WARPS" | "NUM_WARPS" => {
                    let w = usize::try_from(v)
                        .ok()
                        .filter(|w| WARPS_VALUES.contains(w))
                        .ok_or_else(|| bad(name, v, format!("must be one of {WARPS_VALUES:?}")))?;
                    if s.warps.is_some_and(|x| x != w) {
                        return Err(bad(name, v, "WARPS and NUM_WARPS disagree"));
                    }
                    s.warps = Some(w);
                }
                "WGMMA" => {
                    s.wgmma = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "PRODUCER" => {
                    s.producer = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "TMA" => {
                    s.tma = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "PREFETCH" => {
                    s.l2_prefetch = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "SEESAW" => {
                    s.seesaw = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "QK_AHEAD" => {
                    s.qk_ahead = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "PINGPONG" => {
                    s.pingpong = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "SOFTMAX_OVERLAP" => {
                    s.softmax_overlap = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "WG_KV_SPLIT" => {
                    s.wg_kv_split = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "SCORE_WG" => {
                    s.score_wg = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "PV_FIRST" => {
                    s.pv_first = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "SPLIT_RELEASE" => {
                    s.split_release = match v {
                        0 => false,
                        1 => true,
                        _ => return Err(bad(name, v, "must be 0 (off) or 1 (on)")),
                    }
                }
                "FP8_PRODUCERS" => {
                    if !(1..=2).contains(&v) {
                        return Err(bad(name, v, "must be 1 or 2 (producer warpgroups)"));
                    }
                    s.fp8_producers = v as usize;
                }
                "FULL_GROUPS" => {
                    if !(1..=9).contains(&v) {
                        return Err(bad(
                            name,
                            v,
                            "must be 1 to 9 (full mbarriers per ring stage)",
                        ));
                    }
                    s.full_groups = v as usize;
                }
                "WG_SPLIT" => {
                    if v < 8 || v % 8 != 0 {
                        return Err(bad(name, v, "must be a positive multiple of 8"));
                    }
                    s.wg_split = v as usize;
                }
                _ => {}
            }
        }
        if s.tma && !s.producer {
            return Err(bad(
                "TMA",
                1,
                "needs PRODUCER = 1 (the TMA copies are issued by the producer warpgroup)",
            ));
        }
        if s.l2_prefetch && !s.tma {
            return Err(bad(
                "PREFETCH",
                1,
                "needs TMA = 1 (the producer's TMA copies issue the prefetches)",
            ));
        }
        // Three orders of one loop's gemms: at most one of them.
        for (other, set) in [("QK_AHEAD", s.qk_ahead), ("PINGPONG", s.pingpong)] {
            if s.softmax_overlap && set {
                return Err(bad(
                    "SOFTMAX_OVERLAP",
                    1,
                    format!("orders the loop's gemms otherwise than {other} = 1: set one of them"),
                ));
            }
        }
        if s.wg_kv_split && !s.producer {
            return Err(bad(
                "WG_KV_SPLIT",
                1,
                "needs PRODUCER = 1 (the warpgroups take their blocks from the producer's ring)",
            ));
        }
        // The split warpgroups run the loop as written, each on its own blocks.
        for (other, set) in [
            ("SEESAW", s.seesaw),
            ("QK_AHEAD", s.qk_ahead),
            ("SOFTMAX_OVERLAP", s.softmax_overlap),
        ] {
            if s.wg_kv_split && set {
                return Err(bad(
                    "WG_KV_SPLIT",
                    1,
                    format!("splits the loop's blocks otherwise than {other} = 1: set one of them"),
                ));
            }
        }
        if s.fp8_producers > 1 && !s.producer {
            return Err(bad(
                "FP8_PRODUCERS",
                s.fp8_producers as i64,
                "needs PRODUCER = 1 (the producer warpgroups convert the FP8 rows)",
            ));
        }
        if s.full_groups > 1 && !s.tma {
            return Err(bad(
                "FULL_GROUPS",
                s.full_groups as i64,
                "needs TMA = 1 (the groups are of the TMA copies' column boxes)",
            ));
        }
        if s.score_wg && !s.producer {
            return Err(bad(
                "SCORE_WG",
                1,
                "needs PRODUCER = 1 (the ring and its copies of the producer schedule, issued by a value warpgroup)",
            ));
        }
        if s.pv_first && !s.score_wg {
            return Err(bad(
                "PV_FIRST",
                1,
                "needs SCORE_WG = 1 (it orders the score warpgroup's wait for the value warpgroups)",
            ));
        }
        if s.split_release && !(s.score_wg && s.tma) {
            return Err(bad(
                "SPLIT_RELEASE",
                1,
                "needs SCORE_WG = 1 and TMA = 1 (the value warpgroups' TMA copies of their halves)",
            ));
        }
        // The score warpgroup's loop is the body as written, minus the accumulator's update.
        for (other, set) in [
            ("SEESAW", s.seesaw),
            ("QK_AHEAD", s.qk_ahead),
            ("SOFTMAX_OVERLAP", s.softmax_overlap),
            ("WG_KV_SPLIT", s.wg_kv_split),
        ] {
            if s.score_wg && set {
                return Err(bad(
                    "SCORE_WG",
                    1,
                    format!("orders the loop's work otherwise than {other} = 1: set one of them"),
                ));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    fn knob_of(e: IrError) -> String {
        match e {
            IrError::BadConfig { name, .. } => name,
            other => panic!("expected BadConfig, got {other:?}"),
        }
    }

    #[test]
    fn every_searched_setting_is_valid_distinct_and_the_first_is_the_default() {
        assert!(SEARCHED_SETTINGS[0].is_empty());
        for (i, set) in SEARCHED_SETTINGS.iter().enumerate() {
            Schedule::from_config(&cfg(set)).unwrap_or_else(|e| panic!("{set:?}: {e}"));
            assert!(!SEARCHED_SETTINGS[..i].contains(set), "{set:?} twice");
        }
        assert_eq!(is_searched("PRODUCER", 1), Some(true));
        assert_eq!(is_searched("PRODUCER", 0), Some(true));
        assert_eq!(is_searched("PRODUCER", 2), Some(false));
        assert_eq!(is_searched("BLOCK_H", 64), None);
        // Opt-in (see the module table): the L2 prefetch was slower on the H100.
        assert_eq!(is_searched("PREFETCH", 1), None);
        assert_eq!(is_searched("SCORE_WG", 1), Some(true));
    }

    #[test]
    fn kv_chunks_is_0_or_1_and_a_bad_value_names_the_knob() {
        assert!(!kv_chunks(&cfg(&[("LAT", 512)])).unwrap());
        assert!(!kv_chunks(&cfg(&[("KV_CHUNKS", 0)])).unwrap());
        assert!(kv_chunks(&cfg(&[("KV_CHUNKS", 1)])).unwrap());
        assert_eq!(
            knob_of(kv_chunks(&cfg(&[("KV_CHUNKS", 2)])).unwrap_err()),
            "KV_CHUNKS"
        );
    }

    #[test]
    fn absent_knobs_give_the_defaults() {
        let s = Schedule::from_config(&cfg(&[("BLOCK_H", 3), ("LAT", 512)])).unwrap();
        assert_eq!(s, Schedule::default());
        assert_eq!((s.warps, s.wgmma, s.wg_split), (None, true, 128));
    }

    #[test]
    fn valid_knobs_are_read() {
        let s =
            Schedule::from_config(&cfg(&[("WARPS", 8), ("WGMMA", 0), ("WG_SPLIT", 32)])).unwrap();
        assert_eq!((s.warps, s.wgmma, s.wg_split), (Some(8), false, 32));
        assert!(!s.producer);
        assert!(
            Schedule::from_config(&cfg(&[("PRODUCER", 1)]))
                .unwrap()
                .producer
        );
        let s = Schedule::from_config(&cfg(&[("PRODUCER", 1), ("TMA", 1)])).unwrap();
        assert!(s.producer && s.tma);
        assert!(!Schedule::from_config(&cfg(&[("TMA", 0)])).unwrap().tma);
        assert!(!s.seesaw);
        assert!(
            Schedule::from_config(&cfg(&[("SEESAW", 1)]))
                .unwrap()
                .seesaw
        );
        assert!(
            !Schedule::from_config(&cfg(&[("SEESAW", 0)]))
                .unwrap()
                .seesaw
        );
        let s = Schedule::from_config(&cfg(&[("NUM_WARPS", 4), ("WARPS", 4)])).unwrap();
        assert_eq!(s.warps, Some(4));
    }

    #[test]
    fn bad_values_name_the_knob() {
        for (knob, v) in [
            ("WARPS", 3),
            ("WARPS", 0),
            ("WARPS", -8),
            ("NUM_WARPS", 64),
            ("WG_SPLIT", 7),
            ("WG_SPLIT", 0),
            ("WG_SPLIT", -16),
            ("WGMMA", 2),
            ("WGMMA", -1),
            ("PRODUCER", 2),
            ("PRODUCER", -1),
            ("TMA", 2),
            ("TMA", -1),
            ("SEESAW", 2),
            ("SEESAW", -1),
            ("QK_AHEAD", 2),
            ("PINGPONG", 2),
            ("SOFTMAX_OVERLAP", 2),
            ("WG_KV_SPLIT", 2),
            ("PREFETCH", 2),
            ("SCORE_WG", 2),
            ("SCORE_WG", -1),
            ("PV_FIRST", 2),
            ("SPLIT_RELEASE", 2),
            ("FP8_PRODUCERS", 0),
            ("FP8_PRODUCERS", 3),
            ("FULL_GROUPS", 0),
            ("FULL_GROUPS", 10),
        ] {
            let e = Schedule::from_config(&cfg(&[(knob, v)])).unwrap_err();
            assert!(e.to_string().contains(knob), "{e}");
            assert_eq!(knob_of(e), knob);
        }
        let e = Schedule::from_config(&cfg(&[("WARPS", 4), ("NUM_WARPS", 8)])).unwrap_err();
        assert_eq!(knob_of(e), "NUM_WARPS");
        let e = Schedule::from_config(&cfg(&[("TMA", 1)])).unwrap_err();
        assert!(e.to_string().contains("PRODUCER"), "{e}");
        assert_eq!(knob_of(e), "TMA");
        let e = Schedule::from_config(&cfg(&[("PRODUCER", 1), ("PREFETCH", 1)])).unwrap_err();
        assert!(e.to_string().contains("TMA = 1"), "{e}");
        assert_eq!(knob_of(e), "PREFETCH");
        for other in ["QK_AHEAD", "PINGPONG"] {
            let e = Schedule::from_config(&cfg(&[("SOFTMAX_OVERLAP", 1), (other, 1)])).unwrap_err();
            assert!(e.to_string().contains(other), "{e}");
            assert_eq!(knob_of(e), "SOFTMAX_OVERLAP");
        }
        let e = Schedule::from_config(&cfg(&[("FP8_PRODUCERS", 2)])).unwrap_err();
        assert!(e.to_string().contains("PRODUCER = 1"), "{e}");
        assert_eq!(knob_of(e), "FP8_PRODUCERS");
        let e = Schedule::from_config(&cfg(&[("WG_KV_SPLIT", 1)])).unwrap_err();
        assert!(e.to_string().contains("PRODUCER"), "{e}");
        assert_eq!(knob_of(e), "WG_KV_SPLIT");
        for other in ["SEESAW", "QK_AHEAD", "SOFTMAX_OVERLAP"] {
            let set = [("WG_KV_SPLIT", 1), ("PRODUCER", 1), (other, 1)];
            let e = Schedule::from_config(&cfg(&set)).unwrap_err();
            assert!(e.to_string().contains(other), "{e}");
            assert_eq!(knob_of(e), "WG_KV_SPLIT");
        }
        let s = Schedule::from_config(&cfg(&[("WG_KV_SPLIT", 1), ("PRODUCER", 1)])).unwrap();
        assert!(s.wg_kv_split && s.producer);
        let e = Schedule::from_config(&cfg(&[("SCORE_WG", 1)])).unwrap_err();
        assert!(e.to_string().contains("PRODUCER"), "{e}");
        assert_eq!(knob_of(e), "SCORE_WG");
        for other in ["SEESAW", "QK_AHEAD", "SOFTMAX_OVERLAP", "WG_KV_SPLIT"] {
            let set = [("SCORE_WG", 1), ("PRODUCER", 1), (other, 1)];
            let e = Schedule::from_config(&cfg(&set)).unwrap_err();
            assert!(e.to_string().contains(other), "{e}");
            assert_eq!(knob_of(e), "SCORE_WG");
        }
        let s = Schedule::from_config(&cfg(&[("SCORE_WG", 1), ("PRODUCER", 1)])).unwrap();
        assert!(s.score_wg && s.producer);
        let e = Schedule::from_config(&cfg(&[("FULL_GROUPS", 3), ("PRODUCER", 1)])).unwrap_err();
        assert!(e.to_string().contains("TMA = 1"), "{e}");
        assert_eq!(knob_of(e), "FULL_GROUPS");
        let set = [("FULL_GROUPS", 3), ("PRODUCER", 1), ("TMA", 1)];
        assert_eq!(Schedule::from_config(&cfg(&set)).unwrap().full_groups, 3);
        let e = Schedule::from_config(&cfg(&[("PV_FIRST", 1), ("PRODUCER", 1)])).unwrap_err();
        assert_eq!(knob_of(e), "PV_FIRST");
        let set = [("PV_FIRST", 1), ("SCORE_WG", 1), ("PRODUCER", 1)];
        assert!(Schedule::from_config(&cfg(&set)).unwrap().pv_first);
        let set = [("SPLIT_RELEASE", 1), ("SCORE_WG", 1), ("PRODUCER", 1)];
        let e = Schedule::from_config(&cfg(&set)).unwrap_err();
        assert_eq!(knob_of(e), "SPLIT_RELEASE");
        let set = [
            ("SPLIT_RELEASE", 1),
            ("SCORE_WG", 1),
            ("PRODUCER", 1),
            ("TMA", 1),
        ];
        assert!(Schedule::from_config(&cfg(&set)).unwrap().split_release);
    }
}
