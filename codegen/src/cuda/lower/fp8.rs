//! The FP8 row format of a paged cache on CUDA ([`PagedFormat::Fp8`], see
//! [`crate::kv_format`]).
//!
//! Reads: a paged block copy fills the kernel's bf16 (swizzled) ring slot as for bf16 rows, so
//! the kernel's gemms are untouched. Per 8-column chunk of the tile, a latent chunk is 8 e4m3
//! bytes loaded from global memory, dequantised (`bf16(e4m3 · scale)`) and stored as one 16-byte
//! shared-memory write; a RoPE chunk (bf16 in the pool, 16-byte aligned) is a `cp.async` as
//! before. Under `PRODUCER = 1` the producer warpgroup converts instead (`fp8_producer.rs`).
//! The later alternative, feeding e4m3 to an fp8 `wgmma` for `q·kᵀ`, is a compiler
//! choice this module leaves open. The conversion is the hardware `cvt.rn.f16x2.e4m3x2` on
//! sm_89+ and exact bit arithmetic elsewhere, with the same results (see `DECODE`).
//!
//! Writes: a paged row store quantises each row's 128-column groups with one warp per
//! (row, group): lanes take 4 columns each, a warp max gives `amax`, then `scale = amax / 448`
//! and the e4m3 bytes (round to nearest even, saturating), exactly as the reference rule.

use crate::cuda::lower::iter::{Access, Ctx, Iter};
use crate::cuda::lower::*;
use crate::cuda::node::*;
use crate::cuda::util::backend_err;
use crate::error::IrError;
use crate::ir::*;
use crate::kv_format::{fp8_rope_offset, fp8_row_bytes, FP8_GROUP};

/// `tpla_e8_`: an e4m3 byte to f32 (exact; `0x7f`/`0xff` are NaN), as a local lambda; and
/// `tpla_e8x2_`: two e4m3 bytes (low byte first) times the scale, packed as bf16x2. On sm_89+ the
/// pair goes through the hardware `cvt.rn.f16x2.e4m3x2` then f16 -> f32: every finite e4m3 value
/// is exact in f16 and f32, so the product and its single rounding to bf16 are the software
/// rule's bit for bit; a NaN byte stays NaN, and `cvt.rn.bf16x2.f32` (the pack on the GPU) writes
/// every NaN as the same canonical bf16 NaN on both paths. Elsewhere (sm_80, the host emulator)
/// the software decode.
pub(crate) const DECODE: &str = "auto tpla_e8_ = [](unsigned b) -> float {
        const unsigned m = b & 0x7fu;
        const float f = __uint_as_float(__float_as_uint(__uint_as_float(m << 20) * 0x1p120f) | ((b & 0x80u) << 24));
        return m == 0x7fu ? __uint_as_float(0x7fffffffu) : f;
    };
    auto tpla_e8x2_ = [&](unsigned p, float s, unsigned& o) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
        float a, b;
        asm(\"{ .reg .b32 h2_; .reg .b16 l_, u_; cvt.rn.f16x2.e4m3x2 h2_, %2; mov.b32 {l_, u_}, h2_; cvt.f32.f16 %0, l_; cvt.f32.f16 %1, u_; }\"
            : \"=f\"(a), \"=f\"(b) : \"h\"((unsigned short)p));
        o = tpla_pack_bf16x2(a * s, b * s);
#else
        o = tpla_pack_bf16x2(tpla_e8_(p & 255u) * s, tpla_e8_((p >> 8) & 255u) * s);
#endif
    };";

/// `tpla_q8_`: f32 to an e4m3 byte, round to nearest even, saturating to ±448, NaN to NaN, as a
/// local lambda.
const ENCODE: &str = "auto tpla_q8_ = [](float x) -> unsigned {
        const unsigned u = __float_as_uint(x);
        const unsigned sg = (u >> 24) & 0x80u;
        const unsigned au = u & 0x7fffffffu;
        if (au > 0x7f800000u) return sg | 0x7fu;
        const float a = __uint_as_float(au);
        if (a >= 448.0f) return sg | 0x7eu;
        if (au < (121u << 23)) return sg | (unsigned)(int)((a * 512.0f + 8388608.0f) - 8388608.0f);
        const unsigned keep = (au >> 20) & 7u, rem = au & 0xfffffu;
        const unsigned up = (rem > 0x80000u || (rem == 0x80000u && (keep & 1u))) ? 1u : 0u;
        const unsigned code = (((au >> 23) - 120u) << 3) + keep + up;
        return sg | (code < 0x7eu ? code : 0x7eu);
    };";

/// Steps of a lane's latent loads issued together before their conversions (see
/// [`Fp8Copy::issue`]): the loads a lane keeps in flight, two registers and a scale each.
const LOADS_IN_FLIGHT: usize = 8;

/// What the FP8 block copy needs to know about its loop.
pub(crate) struct Fp8Copy<'s> {
    /// Quantised columns and columns per row.
    pub lat: usize,
    pub row: usize,
    /// Rows per block.
    pub block: usize,
    /// C names: pool, block table, page size, pages per sequence, pages, sequence, bounds.
    pub data: &'s str,
    pub bt: &'s str,
    pub ps: &'s str,
    pub pps: &'s str,
    pub np: &'s str,
    pub bvar: &'s str,
    pub lo: &'s str,
    pub hi: &'s str,
    /// The ring's base pointer, slot size (elements) and stages.
    pub base: &'s str,
    pub slot: usize,
    pub st: usize,
}

impl Fp8Copy<'_> {
    /// The copy of block `j_` into its ring slot by the `nw` warps numbered `warp`, each lane
    /// taking 8-column chunks of the warp's rows (the bf16 tile's address of `(r, c)` is
    /// `addr(r, c)`).
    pub(crate) fn issue(
        &self,
        warp: &str,
        nw: usize,
        addr: &dyn Fn(&str, &str) -> String,
    ) -> String {
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
        } = *self;
        let (rb, rope_at) = (fp8_row_bytes(lat, row), fp8_rope_offset(lat));
        let (cpr, lat8) = (row / 8, lat / 8);
        let dst = addr("r_", "(ch_ * 8)");
        let rows_per_warp = block.div_ceil(nw);
        // The chunk: a latent chunk converted in registers, a RoPE chunk copied.
        let chunk = format!(
            "if (ch_ < {lat8}) {{
            uint4 o_ = make_uint4(0u, 0u, 0u, 0u);
            if (ok_) {{
                const unsigned long long r64_ = *(const unsigned long long*)(src_ + ch_ * 8);
                const unsigned rx_ = (unsigned)r64_, ry_ = (unsigned)(r64_ >> 32);
                const float sc_ = *(const float*)(src_ + {lat} + ((ch_ * 8) / {FP8_GROUP}) * 4);
                tpla_e8x2_(rx_ & 0xffffu, sc_, o_.x);
                tpla_e8x2_(rx_ >> 16, sc_, o_.y);
                tpla_e8x2_(ry_ & 0xffffu, sc_, o_.z);
                tpla_e8x2_(ry_ >> 16, sc_, o_.w);
            }}
            *(uint4*)&dst_[{dst}] = o_;
        }} else {{
            tpla_cp_async16(&dst_[{dst}], src_ + {rope_at} + (ch_ - {lat8}) * 16, ok_);
        }}"
        );
        let head = format!(
            "{{
    {DECODE}
    const int t0_ = tpla_iadd({lo}, tpla_imul(j_, {block}));
    tpla_bf16* dst_ = {base} + (j_ % {st}) * {slot};
    const unsigned char* const d8_ = (const unsigned char*){data};
"
        );
        if rows_per_warp <= 32 {
            // As for bf16 rows: lane `i` resolves the page of the warp's row `i` (one load
            // latency per block), the chunks of the warp's rows are spread flat over its lanes
            // and take their row from the lane that looked it up. The latent loads go in
            // batches of `LOADS_IN_FLIGHT` steps: every load of a batch is issued before any
            // shared store of it (the compiler cannot move a global load above a store it
            // cannot prove disjoint), so a batch pays one load latency, not one per step.
            let total = rows_per_warp * cpr;
            let iters = total.div_ceil(32);
            let nb = iters.min(LOADS_IN_FLIGHT);
            let mut guard = vec![format!("q_ < {iters}")];
            if !total.is_multiple_of(32) {
                guard.push(format!("f_ < {total}"));
            }
            if !block.is_multiple_of(nw) {
                guard.push(format!("r_ < {block}"));
            }
            let guard = guard.join(" && ");
            let step = format!(
                "const int q_ = q0_ + u_;
            const int f_ = lane + q_ * 32;
            const int rl_ = f_ / {cpr};
            const int ch_ = f_ - rl_ * {cpr};
            const int r_ = {warp} + rl_ * {nw};"
            );
            return format!(
                "{head}    int row_ = -1;
    {{
        const int r_ = {warp} + lane * {nw};
        const int t_ = t0_ + r_;
        if (r_ < {block} && t_ < {hi} && {ps} > 0) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            if (pg_ >= 0 && pg_ < {np}) row_ = pg_ * {ps} + (t_ % {ps});
        }}
    }}
    for (int q0_ = 0; q0_ < {iters}; q0_ += {nb}) {{
        unsigned long long raw_[{nb}];
        float sc_[{nb}];
        int rw_[{nb}];
#pragma unroll
        for (int u_ = 0; u_ < {nb}; ++u_) {{
            {step}
            (void)r_;
            rw_[u_] = tpla_shfl_idx(row_, rl_ & 31);
            raw_[u_] = 0ull;
            sc_[u_] = 0.0f;
            if ({guard} && ch_ < {lat8} && rw_[u_] >= 0) {{
                const unsigned char* const src_ = d8_ + (tpla_i64)rw_[u_] * {rb};
                raw_[u_] = *(const unsigned long long*)(src_ + ch_ * 8);
                sc_[u_] = *(const float*)(src_ + {lat} + ((ch_ * 8) / {FP8_GROUP}) * 4);
            }}
        }}
#pragma unroll
        for (int u_ = 0; u_ < {nb}; ++u_) {{
            {step}
            if ({guard}) {{
                const bool ok_ = rw_[u_] >= 0;
                if (ch_ < {lat8}) {{
                    const unsigned rx_ = (unsigned)raw_[u_], ry_ = (unsigned)(raw_[u_] >> 32);
                    const float s_ = sc_[u_];
                    uint4 o_ = make_uint4(0u, 0u, 0u, 0u);
                    if (ok_) {{
                        tpla_e8x2_(rx_ & 0xffffu, s_, o_.x);
                        tpla_e8x2_(rx_ >> 16, s_, o_.y);
                        tpla_e8x2_(ry_ & 0xffffu, s_, o_.z);
                        tpla_e8x2_(ry_ >> 16, s_, o_.w);
                    }}
                    *(uint4*)&dst_[{dst}] = o_;
                }} else {{
                    const unsigned char* const src_ = d8_ + (ok_ ? (tpla_i64)rw_[u_] * {rb} : (tpla_i64)0);
                    tpla_cp_async16(&dst_[{dst}], src_ + {rope_at} + (ch_ - {lat8}) * 16, ok_);
                }}
            }}
        }}
    }}
}}
"
            );
        }
        format!(
            "{head}    for (int f_ = lane; f_ < {per_warp}; f_ += 32) {{
        const int r_ = {warp} + (f_ / {cpr}) * {nw};
        const int ch_ = f_ % {cpr};
        if (r_ >= {block}) continue;
        const int t_ = t0_ + r_;
        bool ok_ = t_ < {hi} && {ps} > 0;
        const unsigned char* src_ = d8_;
        if (ok_) {{
            const int pi_ = t_ / {ps};
            const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64){bvar} * {pps} + pi_] : -1;
            ok_ = pg_ >= 0 && pg_ < {np};
            if (ok_) src_ = d8_ + ((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {rb};
        }}
        {chunk}
    }}
}}
",
            per_warp = rows_per_warp * cpr,
        )
    }
}

impl<'a> Lower<'a> {
    /// A store of the rows of `src` into an FP8 paged cache (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lower_paged_store_fp8(
        &mut self,
        cache: ParamId,
        batch: &Index,
        start: &Index,
        src: TileId,
        lat: usize,
        row: usize,
        out: &mut Vec<Node>,
    ) -> Result<(), IrError> {
        let shape = self.shape(src);
        if shape.len() != 2 || shape[1] != row {
            return Err(backend_err(
                self.k,
                "a store into an FP8 paged cache must write whole rows",
            ));
        }
        let vt = self.tile_vt(src);
        // Shared memory (or an inline value): any thread reads any element.
        let it = Iter::Flat {
            shape: shape.clone(),
        };
        let (a, mut reads) = self.access(src, &it, &shape, out);
        if matches!(a, Access::Reg(..)) {
            return Err(backend_err(
                self.k,
                "an FP8 paged store needs its rows readable by every thread",
            ));
        }
        let at = |r: &str, c: &str| {
            let ctx = Ctx {
                coords: vec![r.into(), c.into()],
                frag_slot: String::new(),
                row_slot: String::new(),
            };
            self.read(&a, &ctx, &shape, &shape, vt)
        };
        let (data, bt, lens, ps, pps, np, nb) = self.paged_names(cache);
        let (n, groups, rope) = (shape[0], lat / FP8_GROUP, row - lat);
        let (rb, rope_at) = (fp8_row_bytes(lat, row), fp8_rope_offset(lat));
        let nw = self.geo.nw;
        let x0 = at("r_", &format!("(g_ * {FP8_GROUP} + lane * 4 + k_)"));
        let rope_loop = if rope == 0 {
            String::new()
        } else {
            format!(
                "for (int i_ = tid; i_ < {n} * {rope}; i_ += {threads}) {{
    const int r_ = i_ / {rope};
    unsigned char* const d_ = prow_(r_);
    if (d_ != nullptr) *(tpla_bf16*)(d_ + {rope_at} + (i_ % {rope}) * 2) = tpla_f32_to_bf16({xr});
}}
",
                xr = at("r_", &format!("({lat} + i_ % {rope})")),
                threads = nw * 32,
            )
        };
        let text = format!(
            "{{
{ENCODE}
const int pb_ = {b};
const int pst_ = {st};
const int plen_ = tpla_ld_i32({lens}, pb_, {nb});
unsigned char* const d8_ = (unsigned char*){data};
auto prow_ = [&](int r_) -> unsigned char* {{
    const int t_ = tpla_iadd(pst_, r_);
    if (t_ < 0 || t_ >= plen_ || {ps} <= 0) return nullptr;
    const int pi_ = t_ / {ps};
    const int pg_ = pi_ < {pps} ? {bt}[(tpla_i64)pb_ * {pps} + pi_] : -1;
    if (pg_ < 0 || pg_ >= {np}) return nullptr;
    return d8_ + ((tpla_i64)pg_ * {ps} + (t_ % {ps})) * {rb};
}};
for (int w_ = warp; w_ < {n} * {groups}; w_ += {nw}) {{
    const int r_ = w_ / {groups}, g_ = w_ % {groups};
    float x_[4];
    float am_ = 0.0f;
#pragma unroll
    for (int k_ = 0; k_ < 4; ++k_) {{
        x_[k_] = {x0};
        const float a_ = __uint_as_float(__float_as_uint(x_[k_]) & 0x7fffffffu);
        am_ = a_ > am_ ? a_ : am_;
    }}
    am_ = tpla_warp_max(am_);
    float s_ = am_ / 448.0f;
    if (!(s_ > 0.0f)) s_ = 1.0f;
    unsigned char* const d_ = prow_(r_);
    if (d_ != nullptr) {{
        unsigned w4_ = 0u;
#pragma unroll
        for (int k_ = 0; k_ < 4; ++k_) w4_ |= tpla_q8_(x_[k_] / s_) << (8 * k_);
        *(unsigned*)(d_ + g_ * {FP8_GROUP} + lane * 4) = w4_;
        if (lane == 0) *(float*)(d_ + {lat} + g_ * 4) = s_;
        if (g_ == 0) for (int p_ = {scales_end} + lane; p_ < {rope_at}; p_ += 32) d_[p_] = 0;
        if (g_ == 0) for (int p_ = {rope_end} + lane; p_ < {rb}; p_ += 32) d_[p_] = 0;
    }}
}}
{rope_loop}}}
",
            b = self.idx(batch),
            st = self.idx(start),
            scales_end = lat + 4 * groups,
            rope_end = rope_at + 2 * rope,
        );
        reads.extend(self.index_reads(batch));
        reads.extend(self.index_reads(start));
        reads.push(GLOBAL_RES + cache);
        out.push(Node::Code {
            text,
            reads,
            writes: vec![GLOBAL_RES + cache],
        });
        Ok(())
    }
}
