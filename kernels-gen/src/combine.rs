//! Log-sum-exp combine of split-KV partial outputs.

use tpla_macros::kernel;

/// `out[b, h, :] = Σ_s w_s · part[s, b, h, :]` with `w_s = exp(lse_s − lse_max) / Σ exp(..)`,
/// and the merged log-sum-exp in `lse_out[b, h]`. Columns are processed `BLOCK_D` at a time.
#[kernel(grid = (batch, heads, cdiv(LAT, BLOCK_D)), constants(LAT))]
pub fn combine_splits<#[tune(128, 64, 256)] const BLOCK_D: usize>(
    part: Tensor<f32, dims![splits, batch, heads, LAT]>,
    lse: Tensor<f32, dims![splits, batch, heads]>,
    out: TensorMut<f32, dims![batch, heads, LAT]>,
    lse_out: TensorMut<f32, dims![batch, heads]>,
) {
    let b = program_id(0);
    let h = program_id(1);
    let d0 = program_id(2) * BLOCK_D;
    let mut m = full::<f32>([1], -INF);
    for s in range(0, splits) {
        m = max(m, load(lse.tile([s..s + 1, b, h])));
    }
    let mut total = zeros::<f32>([1]);
    let mut acc = zeros::<f32>([1, BLOCK_D]);
    for s in range(0, splits) {
        let w = exp2((load(lse.tile([s..s + 1, b, h])) - m) * LOG2_E);
        total = total + w;
        acc = acc + load(part.tile([s..s + 1, b, h, d0..d0 + BLOCK_D])) * w.unsqueeze(1);
    }
    store(
        out.tile([b, h..h + 1, d0..d0 + BLOCK_D]),
        acc / total.unsqueeze(1),
    );
    store(lse_out.tile([b, h..h + 1]), m + log2(total) * LN_2);
}
