//! Per-head projection of latent attention outputs (MLA's absorbed `W_UV`).

use tpla_macros::kernel;

/// `out[b, h, :] = bf16(x[b, h, :]) · w[h, :, :]` with f32 accumulation: every head's latent
/// output (`LAT` wide) times its own `[LAT, DV]` matrix. Under TPLA each device projects its
/// latent slice with the matching rows of `w`, and the devices' results sum to the full
/// projection (one all-reduce). Each program covers `BLOCK_B` sequences of one head and `BLOCK_V`
/// output columns, `BLOCK_K` latent columns at a time.
#[kernel(grid = (heads, cdiv(batch, BLOCK_B), cdiv(DV, BLOCK_V)), constants(LAT, DV))]
pub fn head_proj<
    #[tune(16, 32, 64)] const BLOCK_B: usize,
    #[tune(64, 128, 32)] const BLOCK_V: usize,
    #[tune(64, 128)] const BLOCK_K: usize,
>(
    x: Tensor<f32, dims![batch, heads, LAT]>,
    w: Tensor<bf16, dims![heads, LAT, DV]>,
    out: TensorMut<f32, dims![batch, heads, DV]>,
) {
    let h = program_id(0);
    let b0 = program_id(1) * BLOCK_B;
    let v0 = program_id(2) * BLOCK_V;
    let mut acc = zeros::<f32>([BLOCK_B, BLOCK_V]);
    for kb in range(0, cdiv(LAT, BLOCK_K)) {
        let k0 = kb * BLOCK_K;
        let xt = load(x.tile([b0..b0 + BLOCK_B, h, k0..k0 + BLOCK_K]));
        let wt = load(w.tile([h, k0..k0 + BLOCK_K, v0..v0 + BLOCK_V]));
        acc = acc + gemm(xt.cast::<bf16>(), wt);
    }
    store(out.tile([b0..b0 + BLOCK_B, h, v0..v0 + BLOCK_V]), acc);
}
