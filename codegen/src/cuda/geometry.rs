//! Geometry pass: warps per block, warpgroups, and the fragment split of each tile.

use crate::cuda::analysis::*;
use crate::cuda::util::*;
use crate::cuda::{F32Gemm, Target};
use crate::schedule::Schedule;

/// Warp geometry: `nw` warps per block. A fragment tile `[m, n]` is split over `wm(m)` warps
/// along rows and `wn(m, n)` along columns; remaining warps hold replicas.
///
/// With `wg` (warpgroup geometry, for `wgmma`), 64-row tiles are split over 4 warps along rows:
/// warps `4g .. 4g + 3` form warpgroup `g`, which owns a column slice of `n / wn` columns, and
/// each warp's fragments are exactly the `wgmma` accumulator layout (warp `w % 4` holds rows
/// `16 (w % 4) ..`, thread `lane` the mma.sync m16n8 positions). Taller tiles (128 rows with
/// two warpgroups) stack the warpgroups along the rows instead: warpgroup `g` owns rows
/// `64 g ..` whole, so row statistics never cross warpgroups and both share one B operand
/// (FlashAttention-3's two consumer warpgroups; [`Geo::wg_rows`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Geo {
    pub(crate) nw: usize,
    pub(crate) wg: bool,
    /// Under `wg`: the fewest columns a warpgroup takes when warpgroups split a tile (config
    /// `WG_SPLIT`, default 128). 128 keeps q·kᵀ whole per warpgroup (duplicated, P stays in
    /// registers); 32 splits it too (no duplicate tensor work; P and the row statistics go
    /// through shared memory).
    pub(crate) wg_split: usize,
    /// A producer warpgroup (after the `nw` consumer warps) streams the paged blocks (schedule
    /// `PRODUCER`, see `warpspec.rs`); set by the pipeline where it applies.
    pub(crate) producer: bool,
    /// Producer warpgroups under `producer`: 1, or 2 where two convert an FP8 cache beside one
    /// consumer warpgroup (schedule `FP8_PRODUCERS = 2`, see `lower/fp8_producer.rs`).
    pub(crate) producer_wgs: usize,
    /// Under `wg`: the warpgroups past the first are replicas of it, each holding every tile
    /// whole, and take alternate blocks of the paged loop (schedule `WG_KV_SPLIT`, see
    /// `lower/kv_split.rs`); set by the geometry pass where it applies.
    pub(crate) kv_split: bool,
    /// Under `wg` (`SCORE_WG`, see `lower/roles.rs`): the accumulator's width where warps
    /// `0 .. 3` form the score warpgroup and warps `4 .. nw - 1` the one or two value warpgroups
    /// (0: off). A `[64, roles_wide]` tile is split over the value warpgroups; any other 64-row
    /// tile lies whole in the score warpgroup.
    pub(crate) roles_wide: usize,
}

impl Geo {
    pub(crate) fn frag_ok(m: usize, n: usize) -> bool {
        m > 0 && n > 0 && m.is_multiple_of(16) && n.is_multiple_of(8)
    }
    /// Warps along M. At most about `sqrt(nw)`: each warp then reuses every B fragment it loads
    /// from shared memory for `mt` m-tiles, which halves the `ldmatrix` traffic of wide gemms
    /// (P·V) against splitting M over all warps.
    pub(crate) fn wm(&self, m: usize) -> usize {
        if let Some(rows) = self.wg_rows(m) {
            return 4 * rows;
        }
        let mut w = gcd(m / 16, self.nw);
        while w > 1 && w * w > self.nw {
            w /= 2;
        }
        w
    }
    pub(crate) fn wn(&self, m: usize, n: usize) -> usize {
        if let Some(rows) = self.wg_rows(m) {
            if self.kv_split {
                return 1;
            }
            if self.roles_wide > 0 {
                // The value warpgroups (after the score one) split the accumulator's columns.
                return if n == self.roles_wide {
                    (self.nw - 4) / 4
                } else {
                    1
                };
            }
            // Warpgroups split wide tiles (at least 128 columns each, e.g. P·V); narrower
            // tiles (q·kᵀ) are computed whole by every warpgroup, so each warp holds whole rows:
            // row statistics stay in registers and P feeds wgmma from registers.
            let groups = self.nw / 4 / rows;
            return if (n / 8).is_multiple_of(groups) && n / groups >= self.wg_split {
                groups
            } else {
                1
            };
        }
        gcd(n / 8, self.nw / self.wm(m))
    }
    /// Under `wg`: how many warpgroups are stacked along the rows of an `m`-row tile, each
    /// owning 64 rows (1 for 64-row tiles, 2 for 128 rows over two warpgroups); `None` where the
    /// warpgroup geometry does not cover the tile (not a multiple of 64 rows, or more row
    /// slices than warpgroups).
    pub(crate) fn wg_rows(&self, m: usize) -> Option<usize> {
        if !self.wg || !self.nw.is_multiple_of(4) || m == 0 || !m.is_multiple_of(64) {
            return None;
        }
        let rows = m / 64;
        (self.nw / 4).is_multiple_of(rows).then_some(rows)
    }
    /// m-tiles of 16 rows per warp.
    pub(crate) fn mt(&self, m: usize) -> usize {
        m / 16 / self.wm(m)
    }
    /// n-tiles of 8 columns per warp.
    pub(crate) fn ntl(&self, m: usize, n: usize) -> usize {
        n / 8 / self.wn(m, n)
    }
    pub(crate) fn frag_regs(&self, m: usize, n: usize) -> usize {
        self.mt(m) * self.ntl(m, n) * 4
    }
}

/// Shapes `(m, n)` of the gemms that take the fragment (tensor-core) path.
pub(crate) fn frag_gemms(info: &Info) -> Vec<(usize, usize)> {
    info.gemms
        .iter()
        .copied()
        .filter(|&(m, n)| Geo::frag_ok(m, n))
        .collect()
}

/// The geometry pass: warps per block and whether the warpgroup geometry is used.
pub(crate) fn geometry(sched: &Schedule, info: &Info, target: &Target) -> Geo {
    let mut nw = choose_warps(sched, info, target);
    let mut wg = use_warpgroups(sched, info, target, nw);
    // Tiles taller than 64 rows take one warpgroup per 64 rows (two for 128) where the
    // warpgroup geometry then applies, rather than fewer mma.sync warps.
    let tallest = frag_gemms(info).iter().map(|&(m, _)| m).max().unwrap_or(0);
    let stacked = 4 * tallest / 64;
    if !wg
        && sched.warps.is_none()
        && tallest > 64
        && stacked <= 8
        && stacked > nw
        && use_warpgroups(sched, info, target, stacked)
    {
        (nw, wg) = (stacked, true);
    }
    Geo {
        nw,
        wg,
        wg_split: sched.wg_split,
        producer: false,
        producer_wgs: 1,
        kv_split: false,
        roles_wide: 0,
    }
}

/// Warps per block: the fewest (4 or 8) that keep the largest fragment tile within a register
/// budget per thread (128 accumulators, 96 when a gemm splits f32 operands into hi/lo parts,
/// which needs more temporaries), else 8. The schedule's `WARPS` overrides.
fn choose_warps(sched: &Schedule, info: &Info, target: &Target) -> usize {
    if let Some(w) = sched.warps {
        return w;
    }
    let frag = frag_gemms(info);
    if frag.is_empty() {
        return 8;
    }
    let split = target.f32_gemm == F32Gemm::Split && target.has_tensor_cores() && info.split_gemm;
    let budget = if split { 96 } else { 128 };
    // At most 8 warps: a 512-thread block may use only 128 registers per thread.
    for nw in [4usize, 8] {
        let g = Geo {
            nw,
            wg: false,
            wg_split: 128,
            producer: false,
            producer_wgs: 1,
            kv_split: false,
            roles_wide: 0,
        };
        if frag.iter().all(|&(m, n)| g.frag_regs(m, n) <= budget) {
            return nw;
        }
    }
    8
}

/// Whether the kernel uses the warpgroup geometry (and with it `wgmma` where operands allow):
/// the target allows it, the schedule does not say `WGMMA = 0`, every tensor-core gemm has 64
/// rows (or 64 per warpgroup, [`Geo::wg_rows`]), the block is whole warpgroups and the
/// accumulators fit the register budget under that geometry.
fn use_warpgroups(sched: &Schedule, info: &Info, target: &Target, nw: usize) -> bool {
    let frag = frag_gemms(info);
    let g = Geo {
        nw,
        wg: true,
        wg_split: sched.wg_split,
        producer: false,
        producer_wgs: 1,
        kv_split: false,
        roles_wide: 0,
    };
    target.wgmma
        && sched.wgmma
        && nw.is_multiple_of(4)
        && !frag.is_empty()
        && frag.iter().all(|&(m, _)| g.wg_rows(m).is_some())
        && frag.iter().all(|&(m, n)| g.frag_regs(m, n) <= 128)
}

/// Why the geometry cannot hold the kernel's register tiles, if it cannot: a tensor-core tile
/// whose accumulators need more than 128 registers per thread even at 8 warps (e.g. 128 heads
/// × latent 512: 256 per thread), which would spill on every target. A config error a tuner
/// skips, not a kernel to time.
pub(crate) fn registers_exceeded(geo: &Geo, info: &Info) -> Option<String> {
    let (m, n) = frag_gemms(info)
        .into_iter()
        .find(|&(m, n)| geo.frag_regs(m, n) > 128)?;
    Some(format!(
        "a [{m}, {n}] accumulator tile needs {} registers per thread at {} warps (at most 128 \
         fit beside the operands): use fewer rows (BLOCK_H) or a narrower latent",
        geo.frag_regs(m, n),
        geo.nw
    ))
}

/// Threads that run the kernel body (the consumers under warp specialisation).
pub(crate) fn nt_total(geo: &Geo) -> usize {
    geo.nw * 32
}

/// Threads per block: the body's, plus the producer warpgroups under warp specialisation.
pub(crate) fn nt_launch(geo: &Geo) -> usize {
    // (Under `SCORE_WG` the first value warpgroup issues the copies: no producer warpgroup.)
    nt_total(geo)
        + if geo.producer && geo.roles_wide == 0 {
            geo.producer_wgs * crate::cuda::warpspec::PRODUCER_THREADS
        } else {
            0
        }
}
