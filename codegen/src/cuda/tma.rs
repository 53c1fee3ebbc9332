//! TMA (Hopper's tensor memory accelerator) for the warp-specialised producer (schedule knob
//! `TMA = 1`, with `PRODUCER = 1`): the device functions, the producer's per-block copy, and the
//! host-side plan of the tensor map a launch passes.
//!
//! # The page-aware tensor map
//!
//! A paged cache's page pool `data [num_pages, page_size, row]` is viewed as the 2-D tensor
//! `[num_pages * page_size, row]` (row stride `row * elem` bytes). The kernel takes one
//! `CUtensorMap` per streamed cache, by value (`const __grid_constant__`), right after the
//! cache's other slots ([`crate::cuda::ParamAbi::PagedTmap`]): box `[min(box_rows, page_size), 64]` elements
//! (64 bf16 = 128 bytes, the swizzle span), `CU_TENSOR_MAP_SWIZZLE_128B`, no interleave, zero
//! out-of-bounds fill. One box lands exactly as one 64-column block of the column-blocked ring
//! (`Buf::blocked`, 1024-byte aligned: the hardware swizzle of the address is the ring's swizzle).
//!
//! # Which blocks use it
//!
//! A KV block of `BLOCK_N` tokens `t0 .. t0 + BLOCK_N` is copied by TMA (one elected producer
//! thread, `mbarrier.arrive.expect_tx` of the block's bytes on the stage's full barrier) when the
//! whole block lies inside the split's bounds and in valid pages, and either lies in one page
//! (`page_size >= BLOCK_N`: `row / 64` boxes of `BLOCK_N` rows starting at pool row
//! `page * page_size + t0 % page_size`) or is made of whole pages (`page_size < BLOCK_N`, a
//! multiple of 8 dividing `BLOCK_N`, `t0` on a page boundary: `row / 64` boxes of `page_size` rows
//! per page, each at its rows of the ring's 8-row swizzle atoms). Any other block (the last,
//! partial block of a split, whose rows past the end may hold anything, NaN included; a block
//! across a page boundary; pages of 1 or 4 tokens) is copied by the `cp.async` producer as
//! before, which zero-fills rows past the end, so `P = 0` never meets a NaN row in `P·V`. The full
//! barrier counts the 128 producer threads in both cases: on a TMA block the other threads arrive
//! at once and the elected thread's arrival carries the expected bytes. Every producer thread
//! looks the block's pages up itself (the same few table entries), so the choice is uniform.

use crate::cuda::elem::Elem;
use crate::cuda::full_groups::FullGroups;
use crate::cuda::memory::Buf;
use crate::ir::DType;
use crate::launch::LaunchError;

/// Columns (elements) of a box: one 128-byte swizzle span of bf16.
pub const BOX_COLS: u32 = 64;
/// Bytes of a box row and of the swizzle span (`CU_TENSOR_MAP_SWIZZLE_128B`).
pub const SWIZZLE_BYTES: u32 = 128;

/// The tensor map a launch must build for a [`crate::cuda::ParamAbi::PagedTmap`] slot, as
/// `cuTensorMapEncodeTiled` takes it (rank 2, innermost dimension first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TmapPlan {
    /// Device address of the page pool (16-byte aligned).
    pub global_address: u64,
    /// `[row, num_pages * page_size]` elements.
    pub dims: [u64; 2],
    /// Bytes between pool rows (a multiple of 16).
    pub row_stride_bytes: u64,
    /// `[BOX_COLS, min(box_rows, page_size)]` elements.
    pub box_dims: [u32; 2],
    /// Bytes per element (2: bf16).
    pub elem_bytes: u32,
}

/// Plans the page-pool tensor map of paged parameter `param` (for error messages) for blocks of
/// `box_rows` tokens (a box of a page's rows when pages are smaller): refuses, with
/// a [`LaunchError::Paged`] naming the parameter, what TMA cannot address (a pool address or row
/// stride not 16-byte aligned, a dtype other than bf16, rows not whole boxes, more pool rows than
/// a 32-bit coordinate reaches, a box of more than 256 rows).
pub fn plan_paged_tmap(
    param: &str,
    global_address: u64,
    dtype: DType,
    num_pages: usize,
    page_size: usize,
    row: usize,
    box_rows: u32,
) -> Result<TmapPlan, LaunchError> {
    let bad = |why: String| LaunchError::Paged {
        param: param.to_string(),
        why: format!("cannot build its TMA tensor map: {why}"),
    };
    if dtype != DType::BF16 {
        return Err(bad(format!("dtype {dtype} (TMA boxes are bf16)")));
    }
    let elem = 2u64;
    if !global_address.is_multiple_of(16) {
        return Err(bad(format!(
            "page pool address {global_address:#x} is not 16-byte aligned"
        )));
    }
    let stride = row as u64 * elem;
    if row == 0 || !row.is_multiple_of(BOX_COLS as usize) || !stride.is_multiple_of(16) {
        return Err(bad(format!(
            "rows of {row} elements are not whole {BOX_COLS}-column boxes with a 16-byte-aligned stride"
        )));
    }
    let rows = (num_pages as u64).checked_mul(page_size as u64);
    let rows = match rows {
        Some(r) if r >= 1 && r <= i32::MAX as u64 => r,
        _ => {
            return Err(bad(format!(
                "{num_pages} pages of {page_size} tokens: pool rows must be 1 ..= {}",
                i32::MAX
            )))
        }
    };
    if !(1..=256).contains(&box_rows) {
        return Err(bad(format!("a box of {box_rows} rows (1 ..= 256)")));
    }
    // A block of smaller pages is copied a page per box.
    let box_rows = box_rows.min(page_size.min(256) as u32);
    Ok(TmapPlan {
        global_address,
        dims: [row as u64, rows],
        row_stride_bytes: stride,
        box_dims: [BOX_COLS, box_rows],
        elem_bytes: elem as u32,
    })
}

/// Device functions of the TMA producer, printed after the warp-specialisation functions only
/// when used (every other kernel's source stays as it was).
pub(crate) const TMA_FNS: &str = r#"
// ---- TMA: tensor map parameter, expect-tx arrivals, 2-D bulk tensor copies (sm_90a) ---------
// An opaque CUtensorMap (built on the host by cuTensorMapEncodeTiled), passed by value.
struct __align__(64) tpla_tmap { unsigned long long w[16]; };
// [thread] Arrives once on `b` and expects `bytes` more transaction bytes in its current phase.
__device__ __forceinline__ void tpla_mbar_arrive_expect_tx(unsigned long long* b, unsigned bytes) {
#ifdef __CUDA_ARCH__
    asm volatile("{\n.reg .b64 st_;\nmbarrier.arrive.expect_tx.shared::cta.b64 st_, [%0], %1;\n}\n"
                 :: "r"(tpla_smem_addr(b)), "r"(bytes) : "memory");
#else
    tpla_emu_mbar_arrive_expect_tx(b, bytes);
#endif
}
// [thread] Fetches a tensor map into the cache ahead of its first use.
__device__ __forceinline__ void tpla_tmap_prefetch(const tpla_tmap* m) {
#ifdef __CUDA_ARCH__
    asm volatile("prefetch.tensormap [%0];\n" :: "l"((unsigned long long)m) : "memory");
#endif
}
// [thread] Prefetches the box at (column c0, row c1) of `m` into L2 (a hint: nothing waits on it).
__device__ __forceinline__ void tpla_tma_prefetch_2d(const tpla_tmap* m, int c0, int c1) {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global [%0, {%1, %2}];\n"
                 :: "l"((unsigned long long)m), "r"(c0), "r"(c1) : "memory");
#else
    tpla_emu_tma_prefetch_2d(m, c0, c1);
#endif
}
// [thread] Copies the box at (column c0, row c1) of `m` to `dst` (1024-byte aligned), completing
// its bytes on the mbarrier `b`.
__device__ __forceinline__ void tpla_tma_load_2d(void* dst, const tpla_tmap* m, int c0, int c1, unsigned long long* b) {
#ifdef __CUDA_ARCH__
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
        :: "r"(tpla_smem_addr(dst)), "l"((unsigned long long)m), "r"(c0), "r"(c1), "r"(tpla_smem_addr(b))
        : "memory");
#else
    tpla_emu_tma_load_2d(dst, m, c0, c1, b);
#endif
}
"#;

/// Whether the ring `ring` of a paged loop over `block` tokens of `row` elements can be filled by
/// TMA boxes: bf16, column-blocked (1024-byte aligned 64-column blocks of 8-row swizzle atoms).
pub(crate) fn tma_applies(ring: &Buf, elem: Elem, block: usize, row: usize) -> bool {
    ring.blocked
        && elem == Elem::Bf16
        && row.is_multiple_of(BOX_COLS as usize)
        && block.is_multiple_of(8)
        && (8..=256).contains(&block)
}

/// The kernel parameter name of paged parameter `cache`'s tensor map.
pub(crate) fn tmap_name(cache: usize) -> String {
    format!("p{cache}_tmap")
}

/// The producer's copy of block `j_` (in scope: `j_`, `pw_`, `lane`, the loop's bounds and
/// base), TMA where the block allows (see the module docs), else `fallback` (the `cp.async`
/// copy, each thread then arriving when its copies land). `wait` (the wait for the stage to be
/// empty) comes after the block-table reads that decide between the two, so their global-memory
/// latency overlaps the wait instead of following it: a freed stage's copy is issued at once.
/// With `prefetch` (`PREFETCH = 1`) the issuing thread then prefetches into L2 the block `st`
/// ahead (the next to use this stage) where it lies in one valid page.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tma_issue(
    names: &TmaNames,
    block: usize,
    row: usize,
    st: usize,
    slot: usize,
    fallback: &str,
    wait: &str,
    prefetch: bool,
) -> String {
    let TmaNames {
        tmap,
        bt,
        ps,
        pps,
        np,
        bvar,
        lo,
        hi,
        groups,
        ..
    } = names;
    let boxes = row / BOX_COLS as usize;
    let [expect, arrive, cp_arrive, tile_bar] = full_bars(groups, block, st);
    let cols = BOX_COLS;
    let ahead = if prefetch {
        format!(
            "            {{
                // L2 prefetch of block j_ + {st}, the next for this stage (pages of at least a block).
                const int tp_ = tpla_iadd({lo}, tpla_imul(j_ + {st}, {block}));
                if ({ps} >= {block} && tp_ + {block} <= {hi} && tp_ % {ps} + {block} <= {ps}) {{
                    const int pi_ = tp_ / {ps};
                    const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
                    if (pg_ >= 0 && pg_ < {np}) {{
#pragma unroll 1
                        for (int c_ = 0; c_ < {boxes}; ++c_)
                            tpla_tma_prefetch_2d(&{tmap}, c_ * {cols}, pg_ * {ps} + tp_ % {ps});
                    }}
                }}
            }}
"
        )
    } else {
        String::new()
    };
    let copies = box_copies(names, block, st, slot, (0, boxes), &tile_bar);
    let check = tma_check(names, block);
    format!(
        "{{
{check}    {wait}
    if (tma_) {{
        if (pw_ == 0 && lane == 0) {{
{expect}{copies}{ahead}        }} else {{
{arrive}        }}
    }} else {{
{fallback}{cp_arrive}    }}
}}
",
    )
}

/// The elected thread's TMA copies of block `j_` into its ring slot: boxes `c0 .. c1` (64
/// columns each) of every page run of the block, each onto the mbarrier `bar` (a C lvalue, which
/// may name the box `c_`).
#[allow(clippy::too_many_arguments)]
fn box_copies(
    names: &TmaNames,
    block: usize,
    st: usize,
    slot: usize,
    (c0, c1): (usize, usize),
    bar: &str,
) -> String {
    let TmaNames {
        tmap,
        bt,
        ps,
        pps,
        bvar,
        base,
        ..
    } = names;
    let cols = BOX_COLS;
    format!(
        "            // The stage may last have been filled by cp.async (generic proxy).
            tpla_fence_proxy_async();
            tpla_bf16* dst_ = {base} + (j_ % {st}) * {slot};
#pragma unroll 1
            for (int k_ = 0; k_ < {block} / rb_; ++k_) {{
                const int t_ = t0_ + k_ * rb_;
                const int r0_ = {bt}[(tpla_i64){bvar} * {pps} + t_ / {ps}] * {ps} + t_ % {ps};
#pragma unroll 1
                for (int c_ = {c0}; c_ < {c1}; ++c_)
                    tpla_tma_load_2d(dst_ + c_ * {box} + k_ * rb_ * {cols}, &{tmap}, c_ * {cols}, r0_, &{bar});
            }}
",
        box = block * BOX_COLS as usize,
    )
}

/// Whether block `j_` goes by TMA (`tma_`: it lies inside the split's bounds and in valid pages,
/// in one page or in whole pages of at least 8 rows), with `t0_` its first token and `rb_` the
/// rows a copy takes.
fn tma_check(names: &TmaNames, block: usize) -> String {
    let TmaNames {
        bt,
        ps,
        pps,
        np,
        bvar,
        hi,
        ..
    } = names;
    format!(
        "{}    bool tma_ = t0_ + {block} <= {hi} && {ps} > 0
        && ({ps} >= {block} ? t0_ % {ps} + {block} <= {ps} : ({ps} % 8 == 0 && {block} % {ps} == 0 && t0_ % {ps} == 0));
#pragma unroll 1
    for (int k_ = 0; tma_ && k_ < {block} / rb_; ++k_) {{
        const int pi_ = (t0_ + k_ * rb_) / {ps};
        const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
        tma_ = pg_ >= 0 && pg_ < {np};
    }}
",
        block_rows(names, block)
    )
}

/// Block `j_`'s first token `t0_` and the rows a copy takes, `rb_` (a page, at most the block).
fn block_rows(names: &TmaNames, block: usize) -> String {
    let TmaNames { ps, lo, .. } = names;
    format!(
        "    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    const int rb_ = {ps} < {block} ? {ps} : {block};
"
    )
}

/// Under `SPLIT_RELEASE`, at the head of the value warpgroups' iteration `it_` (before their
/// waits for the block and for `P_READY`): whether block `it_ + st` will go by TMA, as
/// `tma_pre_` ([`tma_check`], false past the last block). The check reads the block table from
/// global memory and divides by the runtime page size; in the refill after the P·V, where it sat
/// before, that load's latency (an L2 hit behind the TMA stream) delayed every copy on the ring's
/// critical path (the H100 profile of 2026-12-06: the refill's compare on the loaded entry held
/// more samples than any other value instruction outside the waits). Here it runs under the
/// waits.
pub(crate) fn tma_check_ahead(names: &TmaNames, block: usize, st: usize, nblk: &str) -> String {
    let check: String = tma_check(names, block)
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "bool tma_pre_ = false;
if (it_ + {st} < {nblk}) {{
    const int j_ = it_ + {st};
{check}    tma_pre_ = tma_;
}}
"
    )
}

/// One column group's share of block `j_`'s copy (`SPLIT_RELEASE`, `lower/roles.rs`), with
/// `tma_pre_` from [`tma_check_ahead`] in scope: where the block goes by TMA, the warpgroup whose first warp is `pw_ == first` copies the boxes of group
/// `g` of `names.groups` onto that group's full mbarrier (its elected thread carries the bytes,
/// its other 127 threads arrive). A block that does not go by TMA is copied whole by the
/// warpgroup of group 0 after `wait` (the slot's release by every reader), its threads arriving
/// on every group when their `cp.async` copies land (`fallback`); the other group's warpgroup
/// then does nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tma_issue_group(
    names: &TmaNames,
    block: usize,
    st: usize,
    slot: usize,
    g: usize,
    first: usize,
    fallback: &str,
    wait: &str,
) -> String {
    let groups = &names.groups;
    // `t0_` and `rb_` as `tma_check` defines them (the copies read them), `tma_` from ahead.
    let check = format!(
        "{}    const bool tma_ = tma_pre_;\n",
        block_rows(names, block)
    );
    let stage = format!("j_ % {st}");
    let bar = groups.bar(&stage, g);
    let bytes = groups.bytes(g, block);
    let boxes = groups.tiles_of(g);
    let (c0, c1) = (boxes.start, boxes.end);
    let whole = if g == 0 {
        let cp_arrive = groups.each(&stage, |b| {
            format!("        tpla_cp_async_mbar_arrive(&{b});\n")
        });
        format!(
            " else {{
    {wait}
{fallback}{cp_arrive}    }}"
        )
    } else {
        String::new()
    };
    let copies = box_copies(names, block, st, slot, (c0, c1), &bar);
    format!(
        "{{
{check}    if (tma_) {{
        if (pw_ == {first} && lane == 0) {{
            tpla_mbar_arrive_expect_tx(&{bar}, {bytes}u);
{copies}        }} else {{
            tpla_mbar_arrive(&{bar});
        }}
    }}{whole}
}}
",
    )
}

/// The `expect_tx` of every full mbarrier of block `j_`'s stage (each group's bytes of a
/// `block`-row bf16 block), the plain arrival on each, the `cp.async` arrival on each, and the
/// mbarrier of tile `c_`: the pieces of [`tma_issue`] that name a full mbarrier.
fn full_bars(groups: &FullGroups, block: usize, st: usize) -> [String; 4] {
    let stage = format!("j_ % {st}");
    let expect = (0..groups.groups)
        .map(|g| {
            format!(
                "            tpla_mbar_arrive_expect_tx(&{}, {}u);\n",
                groups.bar(&stage, g),
                groups.bytes(g, block)
            )
        })
        .collect();
    let arrive = groups.each(&stage, |b| format!("            tpla_mbar_arrive(&{b});\n"));
    let cp_arrive = groups.each(&stage, |b| {
        format!("        tpla_cp_async_mbar_arrive(&{b});\n")
    });
    [expect, arrive, cp_arrive, groups.bar_of_tile(&stage, "c_")]
}

/// Names the TMA producer's copy refers to (see [`tma_issue`]).
pub(crate) struct TmaNames {
    pub(crate) tmap: String,
    pub(crate) bt: String,
    pub(crate) ps: String,
    pub(crate) pps: String,
    pub(crate) np: String,
    pub(crate) bvar: String,
    pub(crate) lo: String,
    pub(crate) hi: String,
    pub(crate) base: String,
    /// The ring's full mbarriers: one per stage, or one per column group (`FULL_GROUPS`).
    pub(crate) groups: crate::cuda::full_groups::FullGroups,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(r: Result<TmapPlan, LaunchError>) -> String {
        match r.unwrap_err() {
            LaunchError::Paged { param, why } => {
                assert_eq!(param, "kv");
                why
            }
            e => panic!("expected a paged-cache error, got {e:?}"),
        }
    }

    #[test]
    fn the_plan_views_the_pool_as_rows() {
        let p = plan_paged_tmap("kv", 0x1000, DType::BF16, 10, 64, 576, 64).unwrap();
        assert_eq!(p.dims, [576, 640]);
        assert_eq!(p.row_stride_bytes, 1152);
        assert_eq!(p.box_dims, [64, 64]);
        assert_eq!(p.elem_bytes, 2);
        let small = plan_paged_tmap("kv", 16, DType::BF16, 3, 1, 320, 32).unwrap();
        assert_eq!((small.dims, small.box_dims), ([320, 3], [64, 1]));
        let p16 = plan_paged_tmap("kv", 16, DType::BF16, 8, 16, 576, 64).unwrap();
        assert_eq!(p16.box_dims, [64, 16]);
    }

    #[test]
    fn what_tma_cannot_address_is_refused_with_the_reason() {
        assert!(
            why(plan_paged_tmap("kv", 0x1008, DType::BF16, 10, 64, 576, 64))
                .contains("not 16-byte aligned")
        );
        assert!(
            why(plan_paged_tmap("kv", 0x1000, DType::BF16, 10, 64, 520, 64))
                .contains("whole 64-column boxes")
        );
        assert!(why(plan_paged_tmap("kv", 0x1000, DType::F32, 10, 64, 576, 64)).contains("dtype"));
        assert!(
            why(plan_paged_tmap("kv", 0x1000, DType::BF16, 0, 64, 576, 64)).contains("pool rows")
        );
        assert!(why(plan_paged_tmap(
            "kv",
            0x1000,
            DType::BF16,
            1 << 26,
            64,
            576,
            64
        ))
        .contains("pool rows"));
        assert!(why(plan_paged_tmap("kv", 0x1000, DType::BF16, 10, 64, 576, 512)).contains("box"));
    }
}
