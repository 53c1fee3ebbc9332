//! Hopper warpgroup gemms (`wgmma.mma_async`).

use crate::cuda::elem::*;
use crate::cuda::lower::*;
use crate::cuda::memory::*;
use crate::cuda::repr::*;

impl<'a> Lower<'a> {
    /// Whether a `[m, kd]` register fragment can be wgmma's A operand: the warpgroup geometry
    /// gives each warp whole 16-row slices (64 rows per warpgroup, one column group), the
    /// accumulator layout that is also wgmma's register-A layout per 16 columns.
    pub(crate) fn rs_geometry(&self, m: usize, kd: usize) -> bool {
        self.geo.wg_rows(m).is_some() && self.geo.wn(m, kd) == 1 && kd.is_multiple_of(16)
    }

    /// The first row of this warpgroup's 64-row slice of an `m`-row A operand (a C expression):
    /// 0, or `64 ×` the warpgroup's row slice where warpgroups are stacked along the rows.
    fn wg_row0(&self, m: usize) -> String {
        match self.geo.wg_rows(m) {
            Some(rows) if rows > 1 => format!("(wm{m} / 4) * 64"),
            _ => "0".to_string(),
        }
    }

    /// Where a wgmma shared-memory operand starts and how it is described, if it qualifies:
    /// bf16 in a blocked buffer, a 2-d view whose K axis (`k_axis` of the logical operand) is
    /// either physical axis, aligned to whole core matrices.
    /// `mn0` is the operand's first M/N index for this warpgroup, `mn_len` its M/N extent.
    pub(crate) fn wgmma_operand(
        &self,
        buf: &Buf,
        view: &View,
        k_axis: usize,
        mn0: &str,
        mn_len: usize,
    ) -> Option<WgmmaOperand> {
        if buf.elem != Elem::Bf16 || !buf.blocked || view.axes.len() != 2 {
            return None;
        }
        let (kp, mp) = (view.axes[k_axis]?, view.axes[1 - k_axis]?);
        let [r0, c0] = view.off;
        let (at, at0, mn_major, lbo) = if kp == 1 && mp == 0 {
            // K-major: K along the contiguous columns, 8-row core-matrix groups 1024 B apart.
            if r0 % 8 != 0 || c0 % 16 != 0 {
                return None;
            }
            let at = |k: &str| buf.blocked_bytes(&format!("{r0} + {mn0}"), &format!("{c0} + {k}"));
            (at("k_"), at("0"), false, 16)
        } else if kp == 0 && mp == 1 {
            // MN-major: 64-column blocks `rows * 128` B apart (LBO), 8-row K groups 1024 B.
            if r0 % 8 != 0 || c0 % 64 != 0 || !mn_len.is_multiple_of(64) {
                return None;
            }
            let at = |k: &str| buf.blocked_bytes(&format!("{r0} + {k}"), &format!("{c0} + {mn0}"));
            (at("k_"), at("0"), true, buf.rows * 128)
        } else {
            return None;
        };
        (lbo < 1 << 18).then_some(WgmmaOperand {
            at,
            at0,
            mn_major,
            lbo,
        })
    }

    /// The gemm as warpgroup `wgmma` instructions, where the geometry and both operands allow:
    /// 64 rows per warpgroup (a 128-row tile is two warpgroups' m64 gemms on one B), B (and A unless it is a register fragment) bf16 in blocked (128-byte swizzled)
    /// shared memory, and a column slice per warpgroup of at most 256. Issues `kd / 16`
    /// instructions, commits and waits, so the gemm completes in place like the `mma.sync` loop
    /// it replaces.
    ///
    /// With `zero_init` the first instruction ignores the accumulator's old value (`wgmma`'s
    /// scale-d predicate off), so no zeroing instruction writes the accumulator registers: a
    /// register write inside an open `wgmma` pipeline stage (the next block's q·kᵀ issued behind
    /// a P·V, `first_gemm.rs`) would make ptxas serialise every `wgmma` of the kernel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wgmma_gemm(
        &mut self,
        m: usize,
        n: usize,
        kd: usize,
        acc: &str,
        a: WgmmaA,
        b: (&Buf, &View),
        zero_init: bool,
    ) -> Option<String> {
        let scale = if zero_init { ", k_ == 0 ? 0 : 1" } else { "" };
        let wn = self.geo.wn(m, n);
        if self.geo.wg_rows(m).is_none() || !kd.is_multiple_of(16) {
            return None;
        }
        let nwg = n / wn;
        if !nwg.is_multiple_of(8) || nwg > 256 {
            return None;
        }
        let n0 = format!("wn{m}_{n} * {nwg}");
        let bop = self.wgmma_operand(b.0, b.1, 0, &n0, nwg)?;
        let tb = bop.mn_major;
        let regs = nwg / 2;
        let tbi = tb as u8;
        let bdesc = bop.step("db_");
        let (setup, issue) = match a {
            WgmmaA::Smem(ab, av) => {
                let aop = self.wgmma_operand(ab, av, 1, &self.wg_row0(m), 64)?;
                self.decl
                    .wgmma_fns
                    .insert((nwg, WgmmaForm::Smem(aop.mn_major), tb));
                (
                    format!(
                        "const unsigned long long da_ = tpla_wgmma_desc(tpla_smem_addr({}) + {}, {}u);\n",
                        ab.name, aop.at0, aop.lbo
                    ),
                    format!(
                        "    tpla_wgmma_m64n{nwg}k16_{}{tbi}({acc}, {}, {bdesc}{scale});\n",
                        aop.mn_major as u8,
                        aop.step("da_"),
                    ),
                )
            }
            WgmmaA::Regs(arr) => {
                if !self.rs_geometry(m, kd) {
                    return None;
                }
                self.decl.wgmma_fns.insert((nwg, WgmmaForm::Regs, tb));
                (
                    format!("unsigned pa_[{np}];\n{}", pack_a_regs(arr, "pa_", kd), np = kd / 4),
                    format!(
                        "    tpla_wgmma_m64n{nwg}k16_r{tbi}({acc}, &pa_[(k_ / 16) * 4], {bdesc}{scale});\n"
                    ),
                )
            }
            WgmmaA::Packed(packed) => {
                if !self.rs_geometry(m, kd) {
                    return None;
                }
                self.decl.wgmma_fns.insert((nwg, WgmmaForm::Regs, tb));
                (
                    String::new(),
                    format!(
                        "    tpla_wgmma_m64n{nwg}k16_r{tbi}({acc}, &{packed}[(k_ / 16) * 4], {bdesc}{scale});\n"
                    ),
                )
            }
        };
        // `PINGPONG`: wait for this warpgroup's turn before issuing, hand the turn to the other
        // warpgroup once issued (FlashAttention-3's ping-pong; the loop gives warpgroup 0 the
        // first turn and takes the last hand-off, `lower/paged.rs`).
        let (turn, hand_off) = if self.paging.pingpong && self.geo.wg_rows(m) == Some(2) {
            self.paging.pingponged = true;
            (
                format!("tpla_bar_sync({PINGPONG_BAR} + (warp >> 2), 256);\n"),
                format!("tpla_bar_arrive({PINGPONG_BAR} + ((warp >> 2) ^ 1), 256);\n"),
            )
        } else {
            (String::new(), String::new())
        };
        // Every early return is above: the deferred copy is placed exactly once.
        let (overlap, wait) = match &self.paging.deferred_prefetch {
            Some((_, d)) if *d == self.depth => (
                self.paging.deferred_prefetch.take().unwrap().0,
                self.paging
                    .deferred_wait
                    .take()
                    .unwrap_or_else(|| "tpla_wgmma_wait0();\n".into()),
            ),
            _ => (String::new(), "tpla_wgmma_wait0();\n".into()),
        };
        // `FULL_GROUPS`: the waits for the ring's later column groups, each before the first
        // k-step that reads it (only over the whole K-major ring row, else left to the caller).
        let k_waits: Vec<(usize, String)> = match self.paging.k_waits.take() {
            Some(w)
                if w.ring == b.0.name
                    && !bop.mn_major
                    && b.1.off[1] == 0
                    && w.waits.iter().all(|(k, _)| k % 16 == 0 && *k < kd) =>
            {
                self.paging.k_waits_placed = true;
                w.waits
            }
            other => {
                self.paging.k_waits = other;
                Vec::new()
            }
        };
        // The k loop, one commit group per column group: each group's wait (and a fence, so
        // ptxas adds no arrive of its own on the wait's divergent path) between two commits,
        // as CUTLASS's mainloop waits for its next stage, not inside an open group.
        let starts: Vec<usize> = std::iter::once(0)
            .chain(k_waits.iter().map(|(k, _)| *k))
            .collect();
        let k_loop: String = starts
            .iter()
            .enumerate()
            .map(|(i, &lo)| {
                let hi = starts.get(i + 1).copied().unwrap_or(kd);
                let wait = match i {
                    0 => String::new(),
                    _ => format!("{}tpla_wgmma_fence();\n", k_waits[i - 1].1),
                };
                format!(
                    "{wait}#pragma unroll\nfor (int k_ = {lo}; k_ < {hi}; k_ += 16) {{\n{issue}}}\ntpla_wgmma_commit();\n"
                )
            })
            .collect();
        // Without its wait (the caller's): nothing after the commit.
        let after = if self.paging.gemm_no_wait {
            String::new()
        } else {
            format!(
                "{overlap}{wait}#pragma unroll\nfor (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);\n"
            )
        };
        Some(format!(
            "{{
{setup}const unsigned long long db_ = tpla_wgmma_desc(tpla_smem_addr({bn}) + {bat0}, {blbo}u);
#pragma unroll
for (int i_ = 0; i_ < {regs}; ++i_) tpla_fence_operand({acc}[i_]);
{turn}tpla_wgmma_fence();
{k_loop}{hand_off}{after}}}
",
            bn = b.0.name,
            bat0 = bop.at0,
            blbo = bop.lbo,
        ))
    }
}

/// The first of the two named barriers of `PINGPONG` (one per row-stacked warpgroup: the turn
/// of warpgroup g is barrier `PINGPONG_BAR + g`); 0 is `__syncthreads`, 1 the consumers'
/// barrier under warp specialisation, 2 the FP8 producer's.
pub(crate) const PINGPONG_BAR: usize = 3;

/// A wgmma shared-memory operand: its byte offset in the buffer at step `k_` and at `k_ = 0`
/// (C expressions), whether it is M/N-major and its descriptor's leading byte offset.
pub(crate) struct WgmmaOperand {
    pub(crate) at: String,
    pub(crate) at0: String,
    pub(crate) mn_major: bool,
    pub(crate) lbo: usize,
}

impl WgmmaOperand {
    /// The descriptor at step `k_` from the one at step 0: the start address is the low field
    /// (16-byte units, no carry out for shared-memory addresses), and the difference folds to a
    /// constant once the K loop is unrolled.
    pub(crate) fn step(&self, desc0: &str) -> String {
        format!(
            "({desc0} + (unsigned long long)((({}) - ({})) >> 4))",
            self.at, self.at0
        )
    }
}

/// wgmma's A operand.
pub(crate) enum WgmmaA<'a> {
    Smem(&'a Buf, &'a View),
    /// An f32 accumulator-layout fragment, packed to bf16 pairs in front of the gemm.
    Regs(&'a str),
    /// An array already packed by [`pack_a_regs`] (`kd / 4` registers), which must stay
    /// untouched until the gemm is waited for (`softmax_overlap.rs`).
    Packed(&'a str),
}

/// C statements packing the f32 accumulator-layout fragment `src` of a `[64·k, kd]` tile into
/// wgmma's register-A layout in `dst` (`kd / 4` registers of bf16 pairs): columns `16k..` of
/// rows g / g + 8 are n-tiles `2k` and `2k + 1` of the fragment.
pub(crate) fn pack_a_regs(src: &str, dst: &str, kd: usize) -> String {
    format!(
        "#pragma unroll
for (int k_ = 0; k_ < {ks}; ++k_) {{
    {dst}[k_ * 4 + 0] = tpla_pack_bf16x2({src}[(2 * k_) * 4 + 0], {src}[(2 * k_) * 4 + 1]);
    {dst}[k_ * 4 + 1] = tpla_pack_bf16x2({src}[(2 * k_) * 4 + 2], {src}[(2 * k_) * 4 + 3]);
    {dst}[k_ * 4 + 2] = tpla_pack_bf16x2({src}[(2 * k_ + 1) * 4 + 0], {src}[(2 * k_ + 1) * 4 + 1]);
    {dst}[k_ * 4 + 3] = tpla_pack_bf16x2({src}[(2 * k_ + 1) * 4 + 2], {src}[(2 * k_ + 1) * 4 + 3]);
}}
",
        ks = kd / 16
    )
}

/// The A-operand form of a wgmma instruction variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WgmmaForm {
    /// Shared-memory descriptor; `true`: M-major.
    Smem(bool),
    /// Registers (bf16 pairs in the mma.sync A-fragment order).
    Regs,
}

/// Device function for one warpgroup `d[64 x n] += A[64 x 16] · B[16 x n]` (bf16 operands, f32
/// accumulators in the mma.sync fragment order: `d[j * 4 + e]` is row `16 (warp % 4) + lane / 4 +
/// 8 (e >> 1)`, column `8 j + 2 (lane % 4) + (e & 1)`), B from a shared-memory descriptor (`tb`:
/// N-major). `tpla_wgmma_m64n{n}k16_{ta}{tb}(d, desc_a, desc_b)` takes A by descriptor (`ta`:
/// M-major); `tpla_wgmma_m64n{n}k16_r{tb}(d, a, desc_b)` takes four registers of bf16 pairs in
/// the mma.sync A-fragment order (rows `16 (warp % 4) ..`).
pub(crate) fn wgmma_fn(n: usize, a: WgmmaForm, tb: bool) -> String {
    let regs = n / 2;
    let list: Vec<String> = (0..regs).map(|i| format!("%{i}")).collect();
    let outs: Vec<String> = (0..regs).map(|i| format!("\"+f\"(d[{i}])")).collect();
    let tb = tb as u8;
    let (name, a_param, a_asm, a_in, trans_a, emu, next) = match a {
        WgmmaForm::Smem(ta) => (
            format!("tpla_wgmma_m64n{n}k16_{}{tb}", ta as u8),
            "unsigned long long da",
            format!("%{regs}"),
            "\"l\"(da)".to_string(),
            format!("{}, ", ta as u8),
            format!(
                "tpla_emu_wgmma(d, da, db, {n}, {}, {tb}, scale_d);",
                ta as u8
            ),
            regs + 1,
        ),
        WgmmaForm::Regs => (
            format!("tpla_wgmma_m64n{n}k16_r{tb}"),
            "const unsigned* a",
            format!("{{%{}, %{}, %{}, %{}}}", regs, regs + 1, regs + 2, regs + 3),
            "\"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3])".to_string(),
            String::new(),
            format!("tpla_emu_wgmma_rs(d, a, db, {n}, {tb}, scale_d);"),
            regs + 4,
        ),
    };
    format!(
        "__device__ __forceinline__ void {name}(float* d, {a_param}, unsigned long long db, int scale_d = 1) {{
#ifdef __CUDA_ARCH__
    asm volatile(
        \"{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{sc}, 0;\\n\"
        \"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{list}}}, {a_asm}, %{db}, p, 1, 1, {trans_a}{tb};\\n}}\\n\"
        : {outs}
        : {a_in}, \"l\"(db), \"r\"(scale_d));
#else
    {emu}
#endif
}}
",
        list = list.join(", "),
        outs = outs.join(", "),
        db = next,
        sc = next + 1,
    )
}
