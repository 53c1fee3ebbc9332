//! Warp specialisation (schedule knob `PRODUCER = 1`, Hopper warpgroup path only).
//!
//! The block gets one more warpgroup, the producer, after the `nw` consumer warps. The producer
//! streams the blocks of the kernel's paged loop into the loop's shared-memory ring with
//! `cp.async`, each thread signalling the stage's *full* mbarrier with
//! `cp.async.mbarrier.arrive.noinc` (it fires when the thread's copies have landed); before
//! refilling a stage it waits on the stage's *empty* mbarrier, which every consumer thread arrives
//! on once it has finished the iteration that read the stage (the `wgmma`s of an iteration complete
//! in place, so every read of the stage is done by then). Consumers wait on *full*, fence the
//! generic-proxy writes against the `wgmma` (async-proxy) reads, and never copy.
//!
//! The streamed ring is ordered by these mbarriers alone: the ring is not a tracked hazard
//! resource of the sync pass, and the loop's per-block block-wide barrier is dropped. Every other
//! barrier of the consumers becomes the named barrier 1 over the consumer threads (`bar.sync 1, n`),
//! since the producer warpgroup has left the common path. `setmaxnreg` moves registers from the
//! producer (24) to the consumers.
//!
//! Over an FP8 cache (`KV_FP8`) the producer converts instead of copying (`lower/fp8_producer.rs`:
//! raw rows through a staging ring, dequantised into the same ring slots, then a plain arrive on
//! *full*) and keeps more registers (`warpspec_head`'s `regs`).
//!
//! Under `SEESAW = 1` the consumers are the two seesaw warpgroups and every ring slot is a stage
//! (see `lower/seesaw/`).
//!
//! Applies only where the kernel has exactly one paged loop, at the top level of its body, whose
//! sequence / split indices the producer can compute on its own (no scalar variables); elsewhere
//! the knob changes nothing.

use crate::ir::*;

/// Threads of the producer warpgroup.
pub(crate) const PRODUCER_THREADS: usize = 128;
/// Registers per thread the producer keeps (`setmaxnreg.dec`).
pub(crate) const PRODUCER_REGS: usize = 24;

/// Registers a thread holds at launch in a warp-specialised kernel of `threads` threads. The kernel
/// is declared `__launch_bounds__(threads, 1)` and uses `setmaxnreg`, so ptxas gives every thread
/// the most the bound allows, in units of 8, and at most 240 (what NVRTC 13.0's ptxas reports for
/// sm_90a: 168 registers at 384 threads, 240 at 256; `runtime/tests/nvrtc_fp8.rs` prints them).
/// Counted down, so the pool below is never over-estimated.
pub(crate) fn launch_regs(threads: usize) -> usize {
    (65536 / threads).min(240) / 8 * 8
}

/// The block's register pool that `setmaxnreg` redistributes: what its threads hold at launch
/// (not the 64 K register file), with `nw` consumer warps and `pg` producer warpgroups. A
/// `setmaxnreg.inc` that asks for more than the `setmaxnreg.dec`s have released waits forever,
/// so every split must fit it ([`split_fits`]).
pub(crate) fn register_pool(nw: usize, pg: usize) -> usize {
    let threads = nw * 32 + pg * PRODUCER_THREADS;
    launch_regs(threads) * threads
}

/// Whether `producer_regs` per producer thread (of `pg` producer warpgroups) and `consumer_regs`
/// per consumer thread (of `nw` consumer warps) fit the block's [`register_pool`].
pub(crate) fn split_fits(
    (nw, pg): (usize, usize),
    producer_regs: usize,
    consumer_regs: usize,
) -> bool {
    pg * PRODUCER_THREADS * producer_regs + nw * 32 * consumer_regs <= register_pool(nw, pg)
}

/// Registers per consumer thread after `setmaxnreg.inc`: what the producer (keeping
/// `producer_regs`) frees of the [`register_pool`], shared by the consumer warps, at most 240, a
/// multiple of 8.
pub(crate) fn consumer_regs((nw, pg): (usize, usize), producer_regs: usize) -> usize {
    let total = register_pool(nw, pg).saturating_sub(pg * PRODUCER_THREADS * producer_regs);
    (total / (nw * 32)).min(240) / 8 * 8
}

/// Whether the kernel's paged loop can be fed by a producer warpgroup (see the module docs).
pub(crate) fn producer_applies(k: &Kernel) -> bool {
    fn count(body: &[Stmt]) -> usize {
        body.iter()
            .map(|s| match s {
                Stmt::For { body, .. } => count(body),
                Stmt::PagedBlocks { body, .. } => 1 + count(body),
                _ => 0,
            })
            .sum()
    }
    // The scalars the producer can compute: those of the top-level `let`s before the loop whose
    // values need nothing else (it repeats them, see [`producer_lets`]).
    fn pure(i: &Index, defined: &[ScalarId]) -> bool {
        match i {
            Index::Var(v) => defined.contains(v),
            Index::Bin(_, a, b) => pure(a, defined) && pure(b, defined),
            Index::SeqLen { batch, .. } => pure(batch, defined),
            Index::Load { index, .. } => index.iter().all(|x| pure(x, defined)),
            _ => true,
        }
    }
    let mut defined = Vec::new();
    let mut top = Vec::new();
    for s in &k.body {
        match s {
            Stmt::Let { dst, value } if pure(value, &defined) => defined.push(*dst),
            Stmt::PagedBlocks {
                batch,
                split,
                num_splits,
                ..
            } => top
                .push(pure(batch, &defined) && pure(split, &defined) && pure(num_splits, &defined)),
            _ => {}
        }
    }
    count(&k.body) == 1 && top == [true]
}

/// Device functions of the warp-specialised schedule, printed after the prelude only when used
/// (so every other kernel's source stays as it was).
pub(crate) const WARPSPEC_FNS: &str = r#"
// ---- warp specialisation: mbarriers, named barriers, register rebalancing (sm_90a) ----------
__device__ __forceinline__ void tpla_mbar_init(unsigned long long* b, int count) {
#ifdef __CUDA_ARCH__
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(tpla_smem_addr(b)), "r"(count) : "memory");
#else
    tpla_emu_mbar_init(b, count);
#endif
}
// Makes the initialised mbarriers visible (then a block-wide barrier).
__device__ __forceinline__ void tpla_mbar_init_fence() {
#ifdef __CUDA_ARCH__
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// [thread] Arrives once on `b` (release).
__device__ __forceinline__ void tpla_mbar_arrive(unsigned long long* b) {
#ifdef __CUDA_ARCH__
    asm volatile("{\n.reg .b64 st_;\nmbarrier.arrive.shared::cta.b64 st_, [%0];\n}\n" :: "r"(tpla_smem_addr(b)) : "memory");
#else
    tpla_emu_mbar_arrive(b);
#endif
}
// [thread] Arrives on `b` once every cp.async this thread issued before has completed.
__device__ __forceinline__ void tpla_cp_async_mbar_arrive(unsigned long long* b) {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(tpla_smem_addr(b)) : "memory");
#else
    tpla_emu_mbar_arrive(b);
#endif
}
// [thread] Waits until the phase of `b` with parity `parity` has completed (acquire).
__device__ __forceinline__ void tpla_mbar_wait(unsigned long long* b, int parity) {
#ifdef __CUDA_ARCH__
    asm volatile(
        "{\n.reg .pred p_;\nWAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p_, [%0], %1;\n"
        "@!p_ bra WAIT_%=;\n}\n" :: "r"(tpla_smem_addr(b)), "r"(parity) : "memory");
#else
    tpla_emu_mbar_wait(b, parity);
#endif
}
// [threads] Named barrier `id` over `n` threads (whole warps).
__device__ __forceinline__ void tpla_bar_sync(int id, int n) {
#ifdef __CUDA_ARCH__
    asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(n) : "memory");
#else
    tpla_emu_bar_sync(id, n);
#endif
}
// [threads] Arrive at named barrier `id` over `n` threads without waiting.
__device__ __forceinline__ void tpla_bar_arrive(int id, int n) {
#ifdef __CUDA_ARCH__
    asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory");
#else
    tpla_emu_bar_arrive(id, n);
#endif
}
// [warpgroup] Register rebalancing between the roles.
template <int N>
__device__ __forceinline__ void tpla_setmaxnreg_dec() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(N));
#elif !defined(__CUDA_ARCH__)
    tpla_emu_setmaxnreg(N, false);
#endif
}
template <int N>
__device__ __forceinline__ void tpla_setmaxnreg_inc() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(N));
#elif !defined(__CUDA_ARCH__)
    tpla_emu_setmaxnreg(N, true);
#endif
}
"#;

/// The kernel-scope pointer to the ring's mbarriers: `full[0..st]` then `empty[0..st]`.
pub(crate) const MBAR: &str = "tpla_mbar";

/// The producer's wait for block `j_`'s stage (of `st`) to be empty, from the second round on.
pub(crate) fn empty_wait(st: usize) -> String {
    format!("if (j_ >= {st}) tpla_mbar_wait(&{MBAR}[{st} + j_ % {st}], ((j_ / {st}) + 1) & 1);")
}

/// The producer warpgroup's loop: the paged loop's `setup` (sequence, split bounds, ring base),
/// then per block `j_`: wait for its stage to be empty ([`empty_wait`]), `issue` its copies (by
/// producer warp `pw_` of 4), arrive on the stage's full barrier when they land. With a tensor
/// map `tmap` (`TMA = 1`) the issue waits and arrives itself (see `tma.rs`) and the map is
/// prefetched first.
pub(crate) fn producer_loop(
    setup: &str,
    issue: &str,
    nblk: &str,
    st: usize,
    tmap: Option<&str>,
) -> String {
    let (prefetch, wait, arrive) = match tmap {
        Some(m) => (
            format!("if (pw_ == 0 && lane == 0) tpla_tmap_prefetch(&{m});\n"),
            String::new(),
            String::new(),
        ),
        None => (
            String::new(),
            format!("    {}\n", empty_wait(st)),
            format!("    tpla_cp_async_mbar_arrive(&{MBAR}[j_ % {st}]);\n"),
        ),
    };
    format!(
        "{{
{prefetch}{setup}for (int j_ = 0; j_ < {nblk}; ++j_) {{
{wait}    {issue}{arrive}}}
}}
"
    )
}

/// The kernel's opening under warp specialisation: the mbarriers (at `mbar_off` in shared memory,
/// `st` stages) initialised and published block-wide, then the `pg` producer warpgroups (warps
/// `nw ..`; two only for the FP8 producer, `FP8_PRODUCERS = 2`) run `producer` with `regs`
/// registers (0: [`PRODUCER_REGS`]; the FP8 producer converts, so it keeps more) and leave; the
/// consumers take the freed registers and go on to the body. Each stage's full mbarrier counts
/// every producer thread's arrival, its empty mbarrier `releasers` arrivals: the consumer
/// threads that read a block (all of them, or one warpgroup's under `WG_KV_SPLIT`).
pub(crate) fn warpspec_head(
    producer: &str,
    st: usize,
    mbar_off: usize,
    (nw, pg, releasers): (usize, usize, usize),
    regs: usize,
    groups: Option<&crate::cuda::full_groups::FullGroups>,
) -> String {
    let regs = if regs == 0 { PRODUCER_REGS } else { regs };
    let consumers = consumer_regs((nw, pg), regs);
    debug_assert!(
        split_fits((nw, pg), regs, consumers),
        "setmaxnreg split {regs} + {consumers} past the register pool of {nw} consumer warps"
    );
    let fillers = pg * PRODUCER_THREADS;
    // `FULL_GROUPS`: the later column groups' full mbarriers, counting what the stage's does.
    let extra = crate::cuda::full_groups::FullGroups::init_extra(groups, fillers);
    let mut s = format!(
        "    unsigned long long* const {MBAR} = (unsigned long long*)(tpla_smem + {mbar_off});
    if (tid == 0) {{
        for (int i_ = 0; i_ < {st}; ++i_) {{
            tpla_mbar_init(&{MBAR}[i_], {fillers});
            tpla_mbar_init(&{MBAR}[{st} + i_], {releasers});
        }}
{extra}        tpla_mbar_init_fence();
    }}
    __syncthreads();
    if (warp >= {nw}) {{
        tpla_setmaxnreg_dec<{regs}>();
        const int pw_ = warp - {nw};
",
    );
    for line in producer.lines().filter(|l| !l.is_empty()) {
        s.push_str("        ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "        tpla_cp_async_commit();
        tpla_cp_async_wait<0>();
        return;
    }}
    tpla_setmaxnreg_inc<{consumers}>();
"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_splits_fit_the_pool_the_block_holds_at_launch() {
        assert_eq!(launch_regs(384), 168);
        assert_eq!(launch_regs(256), 240);
        for nw in [4, 8] {
            let c = consumer_regs((nw, 1), PRODUCER_REGS);
            assert_eq!(c, 240);
            assert!(split_fits((nw, 1), PRODUCER_REGS, c));
        }
        // FA3's and FlashMLA's 24 + 2 x 240 is the whole pool of 384 threads; 32 + 2 x 240 (the
        // split that hung on the H200) is past it, so `setmaxnreg.inc` would wait forever.
        assert_eq!(register_pool(8, 1), 128 * 24 + 256 * 240);
        assert!(!split_fits((8, 1), 32, 240));
        assert_eq!(consumer_regs((8, 1), 32), 232);
        // Two producer warpgroups beside one consumer warpgroup (`FP8_PRODUCERS = 2`): 384
        // threads at 168, the consumers keep 240 beside two converting warpgroups of 72.
        assert_eq!(consumer_regs((4, 2), 72), 240);
        assert!(split_fits((4, 2), 72, 240));
    }
}
