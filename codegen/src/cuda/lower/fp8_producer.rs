//! The FP8 cache fed by the producer warpgroup (`KV_FP8` with `PRODUCER = 1`), FlashMLA's FP8
//! decode path as a compiler choice.
//!
//! The producer warpgroup (128 threads, `warpspec.rs`) streams each block's raw rows (`lat` e4m3
//! bytes, the f32 scales, the bf16 RoPE columns: [`crate::kv_format`]) with `cp.async` into a
//! *staging ring* of raw rows, pieces of `rows` tokens in `slots` slots (the shared-memory plan
//! picks them, [`staging_choices`]), so `slots - 1` pieces are in flight while it converts one.
//! After a piece has landed (`cp.async.wait_group` then a named barrier over the producer threads,
//! which also ends every read of the slot refilled next), the producer dequantises it
//! (`bf16(e4m3 · scale)`, the hardware `cvt.rn.f16x2.e4m3x2` on sm_89+, the software rule
//! elsewhere: the same bits, see `fp8.rs`) into the bf16 ring slot of its block, in the same
//! swizzled, column-blocked layout the consumers' `wgmma`s read, and copies the RoPE columns.
//! Before the first piece of a block it waits for the slot's *empty* mbarrier; after the last it
//! fences (`fence.proxy.async`: the generic-proxy stores against the tensor cores' async-proxy
//! reads) and arrives on the slot's *full* mbarrier. The consumers' code is the bf16 producer
//! schedule's, unchanged.
//!
//! A piece whose rows are all before the split's end and lie in one valid page is one contiguous
//! run of the pool with the staging slot's layout: its 16-byte chunks are spread flat over the
//! producer's threads. Other pieces are copied row by row: rows past the split's end and rows of
//! invalid pages are zero-filled in the staging slot, so they dequantise to 0 (bytes 0, scale 0),
//! never NaN: `P = 0` never meets a NaN in `P·V`.
//!
//! Registers: beside two consumer warpgroups the producer gets 40 and they 232 (the pool of 384
//! threads at 168 each); its conversion loop is unrolled where it has 40 or more. Measured on the
//! H200 (`bench/NOTES-fp8.md`, 2026-12-04 night), the producer's instruction count is what bounds
//! this decode.
//!
//! The conversion loop maps a warp's lanes to 8 consecutive rows x 4 16-byte units: the staging
//! rows (656 bytes apart, 16 modulo 128) and the ring's 128-byte XOR swizzle then spread the
//! lanes' 16-byte reads and writes over all 8 bank groups (4 wavefronts per 512 bytes, the
//! minimum).

use crate::cuda::lower::fp8::{Fp8Copy, DECODE};
use crate::cuda::warpspec::{register_pool, MBAR, PRODUCER_THREADS};
use crate::kv_format::{fp8_rope_offset, fp8_row_bytes, FP8_GROUP};

/// Registers per consumer thread the FP8 producer leaves at least: 8 fewer than the bf16
/// producer's consumers hold (240), which NVRTC fits without spills, so that beside two consumer
/// warpgroups the converting producer gets 40 instead of 24 and its loop can be unrolled (at 24
/// it spilled unrolled; the 2026-12-04 H200 profile had the producer, about 1100 instructions a
/// 32-token block issued one at a time, bounding the FP8 decode).
const CONSUMER_REGS: usize = 232;

/// Registers per producer thread for the FP8 producer of `pg` warpgroups beside `nw` consumer
/// warps (`setmaxnreg.dec`): what [`CONSUMER_REGS`] leave of the block's register pool
/// ([`register_pool`]: the registers its threads hold at launch), between 24 and 72, a multiple
/// of 8: 72 beside one consumer warpgroup (one or two producer warpgroups), 40 beside two (384
/// threads hold 168 registers each at launch: 40 x 128 + 232 x 256 is the whole pool).
///
/// The pool, not the 64 K register file: a split that asks for more than the pool makes the
/// consumers' `setmaxnreg.inc` wait forever (the H200 hang of 2026-12-04, 32 + 240 beside two
/// consumer warpgroups).
pub(crate) fn fp8_producer_regs(nw: usize, pg: usize) -> usize {
    let left =
        register_pool(nw, pg).saturating_sub(nw * 32 * CONSUMER_REGS) / (pg * PRODUCER_THREADS);
    left.clamp(24, 72) / 8 * 8
}

/// Whether a paged parameter of `k` stores FP8 rows (`KV_FP8`).
pub(crate) fn has_fp8_cache(k: &crate::ir::Kernel) -> bool {
    k.params.iter().any(|p| {
        matches!(
            crate::cuda::lower::paged::format_of(&p.kind),
            crate::ir::PagedFormat::Fp8 { .. }
        )
    })
}

/// Named barrier over the producer warpgroup's threads (the consumers use 1).
const PRODUCER_BAR: usize = 2;

/// Most raw rows worth keeping in flight (beyond, the shared memory is better spent on stages).
const MAX_IN_FLIGHT_ROWS: usize = 128;

/// The staging ring of raw FP8 rows: `slots` slots of `rows` tokens (`rows` divides the block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Staging {
    pub(crate) rows: usize,
    pub(crate) slots: usize,
    /// Bytes of one raw row.
    pub(crate) row_bytes: usize,
}

impl Staging {
    /// Bytes of the ring (a multiple of 128).
    pub(crate) fn bytes(&self) -> usize {
        (self.rows * self.slots * self.row_bytes).next_multiple_of(128)
    }

    /// Rows in flight while one piece is converted.
    pub(crate) fn in_flight(&self) -> usize {
        (self.slots - 1) * self.rows
    }
}

/// The staging rings worth trying for blocks of `block` tokens of `row_bytes`-byte raw rows, best
/// first: pieces dividing the block (at most 128 rows: one row a lane per producer warp), 2 to 4
/// slots, at least `min(32, block)` rows in flight; more rows in flight first (up to
/// [`MAX_IN_FLIGHT_ROWS`]), then less shared memory. The memory plan takes the first that fits.
pub(crate) fn staging_choices(block: usize, row_bytes: usize) -> Vec<Staging> {
    let min_in_flight = block.min(32);
    let mut v: Vec<Staging> = (1..=block.min(128))
        .filter(|r| block.is_multiple_of(*r))
        .flat_map(|rows| {
            (2..=4).map(move |slots| Staging {
                rows,
                slots,
                row_bytes,
            })
        })
        .filter(|s| s.in_flight() >= min_in_flight)
        .collect();
    v.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.in_flight().min(MAX_IN_FLIGHT_ROWS)),
            s.bytes(),
            // Fewer, larger pieces: fewer producer barriers per block.
            std::cmp::Reverse(s.rows),
        )
    });
    v
}

/// The FP8 producer warpgroup's program (see the module docs): `copy` names the loop's pool,
/// bounds and bf16 ring, `nblk` its block count, `addr(r, c)` the ring slot's element index of
/// `(r, c)`; the staging ring lies at byte `staging_off` of shared memory. `setup` (the
/// producer's `let`s and the loop's bounds) comes first. `pg` producer warpgroups share every
/// piece's copies and conversion. In scope: `pw_` (producer warp `0 .. 4 pg`), `lane`. With
/// `regs` producer registers below 40 the conversion loop is not unrolled (the units in flight
/// need more live registers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fp8_producer_loop(
    copy: &Fp8Copy,
    nblk: &str,
    staging: Staging,
    staging_off: usize,
    setup: &str,
    (regs, pg): (usize, usize),
    addr: &dyn Fn(&str, &str) -> String,
) -> String {
    // Unrolled at 24 registers, the producer spills (NVRTC 13.0, sm_90a); at 40 eight units
    // in flight do not.
    let unroll = if regs >= 40 { 8 } else { 1 };
    let Fp8Copy {
        lat,
        row,
        block,
        data,
        bt,
        ps,
        pps,
        np,
        bvar,
        lo,
        hi,
        base,
        slot,
        st,
    } = *copy;
    let Staging {
        rows: pr,
        slots: sg,
        ..
    } = staging;
    let (rb, rope_at) = (fp8_row_bytes(lat, row), fp8_rope_offset(lat));
    debug_assert_eq!(rb, staging.row_bytes);
    let ppb = block / pr;
    let piece = pr * rb;
    let (nt, npw) = (pg * PRODUCER_THREADS, pg * 4);
    // The copy of piece `gi_`: producer warp `pw_` takes rows `pw_ + npw i`, lane `i` looks up
    // row `pw_ + npw i`'s page, and the rows' 16-byte chunks go flat over the lanes.
    let (cpr, rpw) = (rb / 16, pr.div_ceil(npw));
    let total = rpw * cpr;
    let mut guard = Vec::new();
    if !total.is_multiple_of(32) {
        guard.push(format!("f_ < {total}"));
    }
    if !pr.is_multiple_of(npw) {
        guard.push(format!("r_ < {pr}"));
    }
    let guard = if guard.is_empty() {
        String::new()
    } else {
        format!("if ({}) ", guard.join(" && "))
    };
    // A piece whose rows are all valid and lie in one page is one contiguous run of `piece`
    // bytes in the pool, laid out as the staging slot is: its 16-byte chunks go flat over the
    // producer's threads (about 11 `cp.async` a thread for 32 rows of 656 bytes, no page lookup
    // or row split per chunk). Otherwise each row is looked up (rows past the split or in an
    // invalid page zero-filled).
    let issue = format!(
        "{{
    const int jb_ = gi_ / {ppb};
    const int t0_ = tpla_iadd({lo}, tpla_iadd(tpla_imul(jb_, {block}), (gi_ - jb_ * {ppb}) * {pr}));
    unsigned char* const sd_ = stg_ + (gi_ % {sg}) * {piece};
    int pf_ = -1;
    if ({ps} > 0 && t0_ + {pr} <= {hi} && t0_ % {ps} + {pr} <= {ps}) {{
        const int pi_ = t0_ / {ps};
        const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
        if (pg_ >= 0 && pg_ < {np}) pf_ = pg_ * {ps} + t0_ % {ps};
    }}
    if (pf_ >= 0) {{
        const unsigned char* const sp_ = d8_ + (tpla_i64)pf_ * {rb};
#pragma unroll 1
        for (int c_ = pt_; c_ < {chunks}; c_ += {nt}) tpla_cp_async16(sd_ + c_ * 16, sp_ + c_ * 16, true);
    }} else {{
    int row_ = -1;
    {{
        const int r_ = pw_ + lane * {npw};
        const int t_ = t0_ + r_;
        if (r_ < {pr} && t_ < {hi} && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) row_ = pg_ * {ps} + (t_ % {ps});
        }}
    }}
#pragma unroll 1
    for (int q_ = 0; q_ < {iters}; ++q_) {{
        const int f_ = lane + q_ * 32;
        const int rl_ = f_ / {cpr};
        const int ch_ = f_ - rl_ * {cpr};
        const int r_ = pw_ + rl_ * {npw};
        const int rw_ = tpla_shfl_idx(row_, rl_ & 31);
        const bool ok_ = rw_ >= 0;
        {guard}tpla_cp_async16(sd_ + r_ * {rb} + ch_ * 16, d8_ + (ok_ ? (tpla_i64)rw_ * {rb} : (tpla_i64)0) + ch_ * 16, ok_);
    }}
    }}
}}",
        iters = total.div_ceil(32),
        chunks = piece / 16,
    );
    // The conversion of piece `g_` (rows `pc_ * pr ..` of block `j_`): latent units of 16 bytes
    // (8 rows x 4 units a warp), then the RoPE columns' 16-byte chunks.
    let units = lat / 16;
    let lat_items = pr.div_ceil(8) * 8 * units;
    let rc = (row - lat) / 8;
    let rope = if rc == 0 {
        String::new()
    } else {
        format!(
            "
#pragma unroll 1
    for (int f_ = pt_; f_ < {n}; f_ += {nt}) {{
        const int rl_ = f_ / {rc};
        const int c_ = f_ - rl_ * {rc};
        const int r_ = rb0_ + rl_;
        *(uint4*)&dst_[{a}] = *(const uint4*)(ss_ + rl_ * {rb} + {rope_at} + c_ * 16);
    }}",
            n = pr * rc,
            a = addr("r_", &format!("({lat} + c_ * 8)")),
        )
    };
    // Thread `pt_` takes items `pt_ + nt i` of the piece (`oct` items a group of 8 rows: row
    // `pt_ & 7` of the group, 16-byte unit `in >> 3`): where `nt` divides `oct`, group `i / per`
    // and unit `(pt_ >> 3) + (nt / 8) (i % per)`; where `oct` divides `nt`, group
    // `pt_ / oct + (nt / oct) i` and unit `(pt_ % oct) >> 3`. No division left in the loop.
    let oct = 8 * units;
    let (first, group, unit) = if oct.is_multiple_of(nt) {
        let per = oct / nt;
        (
            "const int u0_ = pt_ >> 3;".to_string(),
            format!("(i_ / {per})"),
            format!("(u0_ + (i_ - (i_ / {per}) * {per}) * {})", nt / 8),
        )
    } else {
        debug_assert!(nt.is_multiple_of(oct));
        (
            format!("const int g0_ = pt_ / {oct}, u0_ = (pt_ % {oct}) >> 3;"),
            format!("(g0_ + i_ * {})", nt / oct),
            "u0_".to_string(),
        )
    };
    let iters = lat_items.div_ceil(nt);
    let row_guard = match (lat_items.is_multiple_of(nt), pr.is_multiple_of(8)) {
        (true, true) => "true".to_string(),
        (true, false) => format!("rl_ < {pr}"),
        (false, _) => format!("oc_ < {} && rl_ < {pr}", pr.div_ceil(8)),
    };
    let convert = format!(
        "{{
    const unsigned char* const ss_ = stg_ + (g_ % {sg}) * {piece};
    tpla_bf16* const dst_ = {base} + (j_ % {st}) * {slot};
    const int rb0_ = pc_ * {pr};
    const int r7_ = pt_ & 7;
    {first}
#pragma unroll {unroll}
    for (int i_ = 0; i_ < {iters}; ++i_) {{
        const int oc_ = {group};
        const int rl_ = oc_ * 8 + r7_;
        const int u_ = {unit};
        if ({row_guard}) {{
            const unsigned char* const s_ = ss_ + rl_ * {rb};
            const uint4 w_ = *(const uint4*)(s_ + u_ * 16);
            const float sc_ = *(const float*)(s_ + {lat} + ((u_ * 16) / {FP8_GROUP}) * 4);
            uint4 a_, b_;
            tpla_e8x2_(w_.x & 0xffffu, sc_, a_.x);
            tpla_e8x2_(w_.x >> 16, sc_, a_.y);
            tpla_e8x2_(w_.y & 0xffffu, sc_, a_.z);
            tpla_e8x2_(w_.y >> 16, sc_, a_.w);
            tpla_e8x2_(w_.z & 0xffffu, sc_, b_.x);
            tpla_e8x2_(w_.z >> 16, sc_, b_.y);
            tpla_e8x2_(w_.w & 0xffffu, sc_, b_.z);
            tpla_e8x2_(w_.w >> 16, sc_, b_.w);
            const int r_ = rb0_ + rl_;
            *(uint4*)&dst_[{a0}] = a_;
            *(uint4*)&dst_[{a1}] = b_;
        }}
    }}{rope}
}}",
        a0 = addr("r_", "(u_ * 16)"),
        a1 = addr("r_", "(u_ * 16 + 8)"),
    );
    let bar = format!("tpla_bar_sync({PRODUCER_BAR}, {nt});");
    format!(
        "{{
{setup}{DECODE}
unsigned char* const stg_ = tpla_smem + {staging_off};
const unsigned char* const d8_ = (const unsigned char*){data};
const int pt_ = pw_ * 32 + lane;
const int npc_ = {nblk} * {ppb};
#pragma unroll 1
for (int gi_ = 0; gi_ < {pre}; ++gi_) {{
    if (gi_ < npc_) {issue}
    tpla_cp_async_commit();
}}
#pragma unroll 1
for (int g_ = 0; g_ < npc_; ++g_) {{
    // Piece `g_` has landed for every producer thread, and every thread is done with the slot
    // refilled next (it held piece `g_ - 1`).
    tpla_cp_async_wait<{wait}>();
    {bar}
    {{
        const int gi_ = g_ + {pre};
        if (gi_ < npc_) {issue}
        tpla_cp_async_commit();
    }}
    const int j_ = g_ / {ppb};
    const int pc_ = g_ - j_ * {ppb};
    if (pc_ == 0 && j_ >= {st}) tpla_mbar_wait(&{MBAR}[{st} + j_ % {st}], ((j_ / {st}) + 1) & 1);
    {convert}
    if (pc_ == {ppb} - 1) {{
        tpla_fence_proxy_async();
        tpla_mbar_arrive(&{MBAR}[j_ % {st}]);
    }}
}}
}}
",
        pre = sg - 1,
        wait = sg - 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_leaves_the_consumers_their_registers() {
        assert_eq!(fp8_producer_regs(4, 1), 72);
        assert_eq!(fp8_producer_regs(8, 1), 40);
        assert_eq!(fp8_producer_regs(4, 2), 72);
        for (nw, pg) in [(4, 1), (8, 1), (4, 2)] {
            let p = fp8_producer_regs(nw, pg);
            let c = crate::cuda::warpspec::consumer_regs((nw, pg), p);
            assert!(c >= CONSUMER_REGS);
            // Every split asked for fits the registers the block holds at launch: one that does
            // not makes `setmaxnreg.inc` wait forever.
            assert!(
                crate::cuda::warpspec::split_fits((nw, pg), p, c),
                "{nw} / {pg}: {p} + {c}"
            );
        }
    }

    #[test]
    fn staging_choices_keep_rows_in_flight_and_prefer_more() {
        let v = staging_choices(64, 656);
        assert!(!v.is_empty());
        for s in &v {
            assert!(64 % s.rows == 0 && (2..=4).contains(&s.slots));
            assert!(s.in_flight() >= 32, "{s:?}");
        }
        assert!(v
            .windows(2)
            .all(|w| w[0].in_flight().min(128) >= w[1].in_flight().min(128)));
        // The best keeps 128 rows in flight with the least memory (4 slots of 64 rows: 3 x 64
        // in flight, more than 128, uses more; 3 slots of 64 is the smallest with 128).
        assert_eq!((v[0].rows, v[0].slots), (64, 3));
        // Small blocks: at least the whole block in flight.
        assert!(staging_choices(16, 400).iter().all(|s| s.in_flight() >= 16));
        assert!(staging_choices(256, 656).iter().all(|s| s.rows <= 128));
    }
}
