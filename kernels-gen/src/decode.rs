//! Split-KV latent decode: MQA with one kv head over a paged latent cache.
//!
//! One kernel serves MLA (`LAT = 512`) and every TPLA shard (`LAT = 512 / g`): the latent width is
//! a shape constant. Each program handles `BLOCK_H` heads of one sequence over one split of its
//! tokens, runs an online softmax written from primitives, and writes an unnormalised-free partial
//! output plus the split's log-sum-exp (natural log) for [`crate::combine_splits`].

use tpla_macros::kernel;

/// Partial attention of one split: `out[split, b, h, :] = softmax(scale · q·kᵀ) · V` over the
/// split's tokens (V = the first `LAT` columns of each cache row) and `lse[split, b, h]`.
///
/// Queries and the cache are bf16, accumulation is f32; `P` is labelled bf16 for the second gemm
/// (FlashMLA's precision contract: a GPU feeds both gemms to bf16 tensor cores, the CPU JIT keeps
/// f32). Scores use `exp2` with `scale · log2(e)` folded in. An empty split writes zeros and an lse of
/// about -6.9e29, which the combine weighs as zero.
///
/// `WG_SPLIT` is a schedule knob for Hopper's warpgroup path and changes no result: the fewest
/// columns a warpgroup takes when warpgroups split a tile. 128 keeps `q·kᵀ` whole in each
/// warpgroup (P stays in registers); 32 splits it (no duplicate tensor work, P through shared
/// memory), which pays off where the decode is compute-bound (128 heads). The CPU JIT and
/// pre-Hopper GPUs ignore it.
///
/// Multi-token queries (MTP, speculative verify): `SQ` new tokens per sequence, the last `SQ` of
/// its cache, packed with the heads into the row block. Here `heads` counts query rows, `SQ ×` the
/// model's heads: q `[batch, SQ, H, D]` seen as `[batch, SQ·H, D]`, so row `r` is token
/// `j = r / H`, and 32 heads × 2 tokens fill a 64-row tile. Token `j` sees the cache up to its
/// own position, `len − SQ + j`; masked scores are −2e30, below the running max's start, so a row
/// that sees nothing in a block (or at all: `len < SQ − j`) adds nothing and ends as an empty
/// split does (zero output, lse ≈ −6.9e29). The mask sits under `if SQ > 1`, a condition on a
/// constant that the macro decides when the kernel is built: at `SQ = 1` (the default, so
/// configs without `SQ` are single-token) not one op is added, and the generated code is the
/// single-token kernel's, byte for byte (a runtime mask the backends would have to fold could not
/// promise that on the hot H = 128 path).
///
/// The head blocks of one sequence come first in the grid (the fastest launch axis): where there
/// are more programs than fit on the device at once, the programs that read the same tokens run
/// side by side and share them through the L2 cache, instead of one wave reading every sequence
/// for the first head block and the next reading them all again for the second.
#[kernel(grid = (cdiv(heads, BLOCK_H), batch, splits), constants(LAT, ROPE, SQ = 1))]
pub fn latent_decode<
    #[tune(16, 32, 64, 128)] const BLOCK_H: usize,
    #[tune(64, 32, 16)] const BLOCK_N: usize,
    #[tune(2, 1, 3, 4)] const STAGES: usize,
    #[tune(128, 32)] const WG_SPLIT: usize,
>(
    q: Tensor<bf16, dims![batch, heads, LAT + ROPE]>,
    cache: Paged<bf16, dims![LAT + ROPE]>,
    out: TensorMut<f32, dims![splits, batch, heads, LAT]>,
    lse: TensorMut<f32, dims![splits, batch, heads]>,
    scale: f32,
) {
    let h0 = program_id(0) * BLOCK_H;
    let b = program_id(1);
    let split = program_id(2);
    let qt = load(q.tile([b, h0..h0 + BLOCK_H, ..]));
    let mut acc = zeros::<f32>([BLOCK_H, LAT]);
    let mut m = full::<f32>([BLOCK_H], -1.0e30);
    let mut l = zeros::<f32>([BLOCK_H]);
    for kv in cache.blocks::<BLOCK_N>(b, split, splits).pipelined(STAGES) {
        let s = gemm(qt, kv.t()) * (scale * LOG2_E);
        let mut s = select(kv.valid().unsqueeze(0), s, -1.0e30);
        if SQ > 1 {
            // Row r is token j = r / (heads / SQ); it sees up to len − SQ + j, column n of the
            // block is token kv.start() + n.
            let j = (h0 + iota([BLOCK_H, 1], 0)) / (heads / SQ);
            let last_col = cache.len(b) - SQ + j - kv.start();
            s = select(iota([1, BLOCK_N], 1) <= last_col, s, -2.0e30);
        }
        let m_new = max(m, reduce_max(s, 1));
        let p = exp2(s - m_new.unsqueeze(1));
        let alpha = exp2(m - m_new);
        l = l * alpha + reduce_sum(p, 1);
        acc = acc * alpha.unsqueeze(1) + gemm(p.cast::<bf16>(), kv.cols(0..LAT));
        m = m_new;
    }
    let l_safe = max(l, 1.0e-30);
    store(
        out.tile([split, b, h0..h0 + BLOCK_H, ..]),
        acc / l_safe.unsqueeze(1),
    );
    store(
        lse.tile([split, b, h0..h0 + BLOCK_H]),
        (m + log2(l_safe)) * LN_2,
    );
}
