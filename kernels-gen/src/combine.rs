//! Log-sum-exp combine of split-KV partial outputs.

use tpla_macros::kernel;

/// `out[b, h, :] = Σ_s w_s · part[s, b, h, :]` with `w_s = exp(lse_s − lse_max) / Σ exp(..)`,
/// and the merged log-sum-exp in `lse_out[b, h]`. Each program merges `BLOCK_H` heads × `BLOCK_D`
/// columns (a program per head and column block was launch-bound: tens of thousands of tiny
/// programs cost more than the decode itself on a GPU).
#[kernel(grid = (batch, cdiv(heads, BLOCK_H), cdiv(LAT, BLOCK_D)), constants(LAT))]
pub fn combine_splits<
    #[tune(128, 64, 256)] const BLOCK_D: usize,
    #[tune(16, 8, 32)] const BLOCK_H: usize,
>(
    part: Tensor<f32, dims![splits, batch, heads, LAT]>,
    lse: Tensor<f32, dims![splits, batch, heads]>,
    out: TensorMut<f32, dims![batch, heads, LAT]>,
    lse_out: TensorMut<f32, dims![batch, heads]>,
) {
    let b = program_id(0);
    let h0 = program_id(1) * BLOCK_H;
    let d0 = program_id(2) * BLOCK_D;
    let mut m = full::<f32>([BLOCK_H], -INF);
    for s in range(0, splits) {
        m = max(m, load(lse.tile([s, b, h0..h0 + BLOCK_H])));
    }
    let mut total = zeros::<f32>([BLOCK_H]);
    let mut acc = zeros::<f32>([BLOCK_H, BLOCK_D]);
    for s in range(0, splits) {
        let w = exp2((load(lse.tile([s, b, h0..h0 + BLOCK_H])) - m) * LOG2_E);
        total = total + w;
        acc = acc + load(part.tile([s, b, h0..h0 + BLOCK_H, d0..d0 + BLOCK_D])) * w.unsqueeze(1);
    }
    store(
        out.tile([b, h0..h0 + BLOCK_H, d0..d0 + BLOCK_D]),
        acc / total.unsqueeze(1),
    );
    store(lse_out.tile([b, h0..h0 + BLOCK_H]), m + log2(total) * LN_2);
}

/// [`combine_splits`] over a per-sequence count of partials: sequence `b` merges
/// `part[0..n_b, b]` with `n_b = clamp(counts[b], 1, splits)` and never reads a later split (the
/// balanced schedule's decode leaves them unwritten). `counts` is `nsplits` from
/// [`crate::split_schedule`].
#[kernel(grid = (batch, cdiv(heads, BLOCK_H), cdiv(LAT, BLOCK_D)), constants(LAT))]
pub fn combine_counted<
    #[tune(128, 64, 256)] const BLOCK_D: usize,
    #[tune(16, 8, 32)] const BLOCK_H: usize,
>(
    part: Tensor<f32, dims![splits, batch, heads, LAT]>,
    lse: Tensor<f32, dims![splits, batch, heads]>,
    counts: Tensor<i32, dims![batch]>,
    out: TensorMut<f32, dims![batch, heads, LAT]>,
    lse_out: TensorMut<f32, dims![batch, heads]>,
) {
    let b = program_id(0);
    let h0 = program_id(1) * BLOCK_H;
    let d0 = program_id(2) * BLOCK_D;
    let n = max(min(counts.get([b]), splits), 1);
    let mut m = full::<f32>([BLOCK_H], -INF);
    for s in range(0, n) {
        m = max(m, load(lse.tile([s, b, h0..h0 + BLOCK_H])));
    }
    let mut total = zeros::<f32>([BLOCK_H]);
    let mut acc = zeros::<f32>([BLOCK_H, BLOCK_D]);
    for s in range(0, n) {
        let w = exp2((load(lse.tile([s, b, h0..h0 + BLOCK_H])) - m) * LOG2_E);
        total = total + w;
        acc = acc + load(part.tile([s, b, h0..h0 + BLOCK_H, d0..d0 + BLOCK_D])) * w.unsqueeze(1);
    }
    store(
        out.tile([b, h0..h0 + BLOCK_H, d0..d0 + BLOCK_D]),
        acc / total.unsqueeze(1),
    );
    store(lse_out.tile([b, h0..h0 + BLOCK_H]), m + log2(total) * LN_2);
}
