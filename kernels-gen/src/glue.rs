//! The element-wise steps of an MLA decode layer around its projections and attention: row
//! RMSNorm, the norms of the down-projection, RoPE, the absorbed query and the cache row, and the exact
//! merge of context-parallel partial states.
//!
//! RoPE rotates interleaved pairs `(x[2j], x[2j+1])` by the angle `pos · θ^(−2j/rope)`. The
//! kernels that rotate view their tensors with a trailing axis of 2 (`[.., pairs, 2]`, a free
//! reshape of the flat rows), so `x.tile([.., 0])` is every pair's first element and
//! `x.tile([.., 1])` every pair's second. The cosines and sines come from a per-position table
//! built once on the host (`[positions, rope / 2]`), indexed by the step's position.

use tpla_macros::kernel;

/// `out[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · gain`: RMSNorm of whole rows with a
/// gain vector (a block's input norm). One program normalises `BLOCK_R` rows.
#[kernel(grid = (cdiv(rows, BLOCK_R)), constants(COLS))]
pub fn rms_norm_rows<#[tune(1, 2, 4)] const BLOCK_R: usize>(
    x: Tensor<f32, dims![rows, COLS]>,
    gain: Tensor<f32, dims![COLS]>,
    out: TensorMut<f32, dims![rows, COLS]>,
    eps: f32,
) {
    let r0 = program_id(0) * BLOCK_R;
    let v = load(x.tile([r0..r0 + BLOCK_R, 0..COLS]));
    let inv_rms = rsqrt(reduce_sum(v * v, 1) / COLS + eps);
    let g = load(gain.tile([0..COLS]));
    store(
        out.tile([r0..r0 + BLOCK_R, 0..COLS]),
        v * inv_rms.unsqueeze(1) * g.unsqueeze(0),
    );
}

/// The norms of one token's fused down-projection row `y = [q_a (QL) | c (W) | k_pe (ROPE)]`:
/// `q_out = q_a / sqrt(mean(q_a²) + eps) · gain` (the query latent's RMSNorm with its `γ`, in
/// bf16: the input of the bf16 `W_UQ` gemm, so no cast kernel runs between them) and
/// `c_sq = share · Σ c²` (the kv latent slice's sum of squares, which the cache row's norm
/// divides by; `share` is 0 on a rank whose slice another rank already counts). One program
/// normalises `BLOCK_B` sequences.
#[kernel(grid = (cdiv(batch, BLOCK_B)), constants(QL, W, ROPE))]
pub fn down_norms<#[tune(1, 2, 4)] const BLOCK_B: usize>(
    y: Tensor<f32, dims![batch, QL + W + ROPE]>,
    gain: Tensor<f32, dims![QL]>,
    q_out: TensorMut<bf16, dims![batch, QL]>,
    c_sq: TensorMut<f32, dims![batch, 1]>,
    eps: f32,
    share: f32,
) {
    let b0 = program_id(0) * BLOCK_B;
    let q = load(y.tile([b0..b0 + BLOCK_B, 0..QL]));
    let inv_rms = rsqrt(reduce_sum(q * q, 1) / QL + eps);
    let g = load(gain.tile([0..QL]));
    store(
        q_out.tile([b0..b0 + BLOCK_B, 0..QL]),
        (q * inv_rms.unsqueeze(1) * g.unsqueeze(0)).cast::<bf16>(),
    );
    let c = load(y.tile([b0..b0 + BLOCK_B, QL..QL + W]));
    store(
        c_sq.tile([b0..b0 + BLOCK_B, 0..1]),
        (reduce_sum(c * c, 1) * share).unsqueeze(1),
    );
}

/// The cache row of sequence `b`'s new token, bf16 `[c · gain / sqrt(ms + eps) | RoPE(k_pe)]`
/// with `ms = c_sq[b] · inv_n` (the mean square the norm uses: of this slice, or of the whole
/// latent when `c_sq` was summed over the ranks), from the down-projection row
/// `y = [q_a | c | k_pe]` viewed as pairs. With `SQ` new tokens per sequence (MTP, speculative
/// verify) the rows are sequence-major, `b = seq · SQ + j`, and row `b`'s token sits at
/// position `pos + b % SQ`. One program per row.
#[kernel(grid = (batch), constants(QL_PAIRS, W_PAIRS, ROPE_PAIRS, SQ = 1))]
pub fn cache_row(
    y: Tensor<f32, dims![batch, QL_PAIRS + W_PAIRS + ROPE_PAIRS, 2]>,
    c_sq: Tensor<f32, dims![batch, 1]>,
    cos: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    sin: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    row: TensorMut<bf16, dims![batch, W_PAIRS + ROPE_PAIRS, 2]>,
    pos: i32,
    gain: f32,
    inv_n: f32,
    eps: f32,
) {
    let b = program_id(0);
    let scale = rsqrt(load(c_sq.tile([b..b + 1, 0..1])) * inv_n + eps) * gain;
    let c = load(y.tile([b, QL_PAIRS..QL_PAIRS + W_PAIRS, ..]));
    store(row.tile([b, 0..W_PAIRS, ..]), (c * scale).cast::<bf16>());
    let k = QL_PAIRS + W_PAIRS;
    let x0 = load(y.tile([b, k..k + ROPE_PAIRS, 0]));
    let x1 = load(y.tile([b, k..k + ROPE_PAIRS, 1]));
    let at = pos + b % SQ;
    let cs = load(cos.tile([at, ..]));
    let sn = load(sin.tile([at, ..]));
    store(
        row.tile([b, W_PAIRS..W_PAIRS + ROPE_PAIRS, 0]),
        (x0 * cs - x1 * sn).cast::<bf16>(),
    );
    store(
        row.tile([b, W_PAIRS..W_PAIRS + ROPE_PAIRS, 1]),
        (x0 * sn + x1 * cs).cast::<bf16>(),
    );
}

/// [`down_norms`] and [`cache_row`] in one program per row, where the kv norm needs no sum over
/// the ranks (every form but TPLA's exact norm): from the down-projection row
/// `y = [q_a | c | k_pe]` viewed as pairs, the normalised query latent `q_out = bf16(q_a /
/// sqrt(mean(q_a²) + eps) · γ)` (`gain` viewed as pairs too) and the cache row `bf16([c · kv_gain
/// / sqrt(Σ c² · inv_n + eps) | RoPE(k_pe)])`. One kernel where the two were, reading `y` once.
/// With `SQ` new tokens per sequence row `b`'s token is at position `pos + b % SQ`.
#[kernel(grid = (batch), constants(QL_PAIRS, W_PAIRS, ROPE_PAIRS, SQ = 1))]
pub fn down_row(
    y: Tensor<f32, dims![batch, QL_PAIRS + W_PAIRS + ROPE_PAIRS, 2]>,
    gain: Tensor<f32, dims![QL_PAIRS, 2]>,
    cos: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    sin: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    q_out: TensorMut<bf16, dims![batch, QL_PAIRS, 2]>,
    row: TensorMut<bf16, dims![batch, W_PAIRS + ROPE_PAIRS, 2]>,
    pos: i32,
    kv_gain: f32,
    inv_n: f32,
    eps: f32,
) {
    let b = program_id(0);
    let q = load(y.tile([b, 0..QL_PAIRS, ..]));
    let inv_rms = rsqrt(reduce_sum(reduce_sum(q * q, 1), 0) / (QL_PAIRS * 2) + eps);
    let g = load(gain.tile([0..QL_PAIRS, ..]));
    store(
        q_out.tile([b, 0..QL_PAIRS, ..]),
        (q * inv_rms * g).cast::<bf16>(),
    );
    let c = load(y.tile([b, QL_PAIRS..QL_PAIRS + W_PAIRS, ..]));
    let scale = rsqrt(reduce_sum(reduce_sum(c * c, 1), 0) * inv_n + eps) * kv_gain;
    store(row.tile([b, 0..W_PAIRS, ..]), (c * scale).cast::<bf16>());
    let k = QL_PAIRS + W_PAIRS;
    let x0 = load(y.tile([b, k..k + ROPE_PAIRS, 0]));
    let x1 = load(y.tile([b, k..k + ROPE_PAIRS, 1]));
    let at = pos + b % SQ;
    let cs = load(cos.tile([at, ..]));
    let sn = load(sin.tile([at, ..]));
    store(
        row.tile([b, W_PAIRS..W_PAIRS + ROPE_PAIRS, 0]),
        (x0 * cs - x1 * sn).cast::<bf16>(),
    );
    store(
        row.tile([b, W_PAIRS..W_PAIRS + ROPE_PAIRS, 1]),
        (x0 * sn + x1 * cs).cast::<bf16>(),
    );
}

/// `q_nope[b, h, :] = bf16(q[b, h, 0..NOPE])`: the non-rotary part of every head's query, the
/// input of the (bf16) absorption gemm into the latent. One program per sequence and `BLOCK_H`
/// heads.
#[kernel(grid = (batch, cdiv(heads, BLOCK_H)), constants(NOPE, ROPE))]
pub fn query_nope<#[tune(16, 4, 64)] const BLOCK_H: usize>(
    q: Tensor<f32, dims![batch, heads, NOPE + ROPE]>,
    q_nope: TensorMut<bf16, dims![batch, heads, NOPE]>,
) {
    let b = program_id(0);
    let h0 = program_id(1) * BLOCK_H;
    let x = load(q.tile([b, h0..h0 + BLOCK_H, 0..NOPE]));
    store(q_nope.tile([b, h0..h0 + BLOCK_H, ..]), x.cast::<bf16>());
}

/// The absorbed query, bf16 `[absorbed (W) | RoPE(q_pe) (ROPE)]` per head: `absorbed` is
/// `q_nope · W_UK` (`[batch, heads, W]`, bf16 as the gemm wrote it) and `q_pe` the last `ROPE`
/// columns of the head's query
/// `q` (`[batch, heads, NOPE + ROPE]`), all viewed as pairs. The latent part is copied pair
/// half by pair half, so that every store addresses the output the same way. With `SQ` new
/// tokens per sequence the rows are sequence-major and row `b` is at position `pos + b % SQ`
/// (as [`cache_row`]). One program per row and `BLOCK_H` heads.
#[kernel(
    grid = (batch, cdiv(heads, BLOCK_H)),
    constants(W_PAIRS, NOPE_PAIRS, ROPE_PAIRS, SQ = 1)
)]
pub fn assemble_query<#[tune(16, 4, 64)] const BLOCK_H: usize>(
    absorbed: Tensor<bf16, dims![batch, heads, W_PAIRS, 2]>,
    q: Tensor<f32, dims![batch, heads, NOPE_PAIRS + ROPE_PAIRS, 2]>,
    cos: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    sin: Tensor<f32, dims![positions, ROPE_PAIRS]>,
    out: TensorMut<bf16, dims![batch, heads, W_PAIRS + ROPE_PAIRS, 2]>,
    pos: i32,
) {
    let b = program_id(0);
    let h0 = program_id(1) * BLOCK_H;
    let a0 = load(absorbed.tile([b, h0..h0 + BLOCK_H, .., 0]));
    let a1 = load(absorbed.tile([b, h0..h0 + BLOCK_H, .., 1]));
    store(out.tile([b, h0..h0 + BLOCK_H, 0..W_PAIRS, 0]), a0);
    store(out.tile([b, h0..h0 + BLOCK_H, 0..W_PAIRS, 1]), a1);
    let x0 = load(q.tile([b, h0..h0 + BLOCK_H, NOPE_PAIRS..NOPE_PAIRS + ROPE_PAIRS, 0]));
    let x1 = load(q.tile([b, h0..h0 + BLOCK_H, NOPE_PAIRS..NOPE_PAIRS + ROPE_PAIRS, 1]));
    let at = pos + b % SQ;
    let cs = load(cos.tile([at, ..])).unsqueeze(0);
    let sn = load(sin.tile([at, ..])).unsqueeze(0);
    store(
        out.tile([b, h0..h0 + BLOCK_H, W_PAIRS..W_PAIRS + ROPE_PAIRS, 0]),
        (x0 * cs - x1 * sn).cast::<bf16>(),
    );
    store(
        out.tile([b, h0..h0 + BLOCK_H, W_PAIRS..W_PAIRS + ROPE_PAIRS, 1]),
        (x0 * sn + x1 * cs).cast::<bf16>(),
    );
}

/// Slot `s` of `parts`/`lses` gets this rank's attention state `(out, lse)` when `s == slot`
/// and zeros otherwise: summed over the ranks (an all-reduce), every slot then holds its
/// rank's state exactly (`x + 0 = x`): an all-gather written as a sum. One program per slot,
/// sequence and `BLOCK_H` heads.
#[kernel(grid = (slots, batch, cdiv(heads, BLOCK_H)), constants(LAT))]
pub fn place_state<#[tune(16, 4, 64)] const BLOCK_H: usize>(
    out: Tensor<f32, dims![batch, heads, LAT]>,
    lse: Tensor<f32, dims![batch, heads]>,
    parts: TensorMut<f32, dims![slots, batch, heads, LAT]>,
    lses: TensorMut<f32, dims![slots, batch, heads]>,
    slot: i32,
) {
    let s = program_id(0);
    let b = program_id(1);
    let h0 = program_id(2) * BLOCK_H;
    let mine = iota([1, 1], 0) + s == slot;
    let o = load(out.tile([b, h0..h0 + BLOCK_H, ..]));
    store(
        parts.tile([s, b, h0..h0 + BLOCK_H, ..]),
        select(mine, o, 0.0),
    );
    let l = load(lse.tile([b, h0..h0 + BLOCK_H])).unsqueeze(0);
    store(
        lses.tile([s, b..b + 1, h0..h0 + BLOCK_H]),
        select(mine, l, 0.0),
    );
}

/// The exact merge of `ranks` partial attention states of heads `first_head ..` (`part`
/// `[ranks, batch, heads, LAT]`, natural-log `lse` `[ranks, batch, heads]`) into `out`
/// (`[batch, heads_out, LAT]`): `out = Σ_r w_r · part_r` with `w_r = exp(lse_r − max) /
/// Σ exp(..)`. Context parallelism (DCP): each rank attended over its tokens with every head,
/// and each merges the heads whose output projection it holds. One program per sequence,
/// `BLOCK_H` heads and `BLOCK_D` columns.
#[kernel(grid = (batch, cdiv(heads_out, BLOCK_H), cdiv(LAT, BLOCK_D)), constants(LAT))]
pub fn merge_heads<
    #[tune(128, 64, 256)] const BLOCK_D: usize,
    #[tune(16, 8, 32)] const BLOCK_H: usize,
>(
    part: Tensor<f32, dims![ranks, batch, heads, LAT]>,
    lse: Tensor<f32, dims![ranks, batch, heads]>,
    out: TensorMut<f32, dims![batch, heads_out, LAT]>,
    first_head: i32,
) {
    let b = program_id(0);
    let o0 = program_id(1) * BLOCK_H;
    let h0 = first_head + o0;
    let d0 = program_id(2) * BLOCK_D;
    let mut m = full::<f32>([BLOCK_H], -INF);
    for r in range(0, ranks) {
        m = max(m, load(lse.tile([r, b, h0..h0 + BLOCK_H])));
    }
    let mut total = zeros::<f32>([BLOCK_H]);
    let mut acc = zeros::<f32>([BLOCK_H, BLOCK_D]);
    for r in range(0, ranks) {
        let w = exp2((load(lse.tile([r, b, h0..h0 + BLOCK_H])) - m) * LOG2_E);
        total = total + w;
        acc = acc + load(part.tile([r, b, h0..h0 + BLOCK_H, d0..d0 + BLOCK_D])) * w.unsqueeze(1);
    }
    store(
        out.tile([b, o0..o0 + BLOCK_H, d0..d0 + BLOCK_D]),
        acc / total.unsqueeze(1),
    );
}

/// Slot `s` of `parts` (`[slots, rows, COLS]`) gets `x` (`[rows, COLS]`) when `s == slot` and
/// zeros otherwise: summed over the ranks (an all-reduce), slot `s` holds the sum of the ranks
/// that placed into it. TPLA reduced after `W_UV` with heads split inside each latent group:
/// the ranks holding the same heads place into the same slot. One program per slot and
/// `BLOCK_R` rows.
#[kernel(grid = (slots, cdiv(rows, BLOCK_R)), constants(COLS))]
pub fn place_rows<#[tune(8, 2, 32)] const BLOCK_R: usize>(
    x: Tensor<f32, dims![rows, COLS]>,
    parts: TensorMut<f32, dims![slots, rows, COLS]>,
    slot: i32,
) {
    let s = program_id(0);
    let r0 = program_id(1) * BLOCK_R;
    let mine = iota([1, 1], 0) + s == slot;
    let v = load(x.tile([r0..r0 + BLOCK_R, ..]));
    store(parts.tile([s, r0..r0 + BLOCK_R, ..]), select(mine, v, 0.0));
}

/// `out[b, h, :] = values[row0 + b, first + h, :]`: a rank's output heads out of the reduced
/// values of its head slice (`[rows, heads, DV]`, slot `row0 / batch`), the input of its share
/// of `W_O` when TPLA reduces after `W_UV`. One program per sequence and `BLOCK_H` heads.
#[kernel(grid = (batch, cdiv(heads_out, BLOCK_H)), constants(DV))]
pub fn take_heads<#[tune(16, 4, 32)] const BLOCK_H: usize>(
    values: Tensor<f32, dims![rows, heads, DV]>,
    out: TensorMut<f32, dims![batch, heads_out, DV]>,
    row0: i32,
    first: i32,
) {
    let b = program_id(0);
    let o0 = program_id(1) * BLOCK_H;
    let h0 = first + o0;
    let v = load(values.tile([row0 + b, h0..h0 + BLOCK_H, ..]));
    store(out.tile([b, o0..o0 + BLOCK_H, ..]), v);
}
