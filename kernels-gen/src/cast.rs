//! Element-wise cast of f32 activations to bf16: the input of a bf16 library gemm (cuBLAS) for
//! whole-layer projections whose activations are f32.

use tpla_macros::kernel;

/// `out[r, m, :] = bf16(x[r, m, :])` over `BLOCK_R` rows × `BLOCK_C` columns of one `m` per
/// program.
#[kernel(grid = (cdiv(rows, BLOCK_R), mid, cdiv(COLS, BLOCK_C)), constants(COLS))]
pub fn cast_bf16<
    #[tune(16, 4, 64)] const BLOCK_R: usize,
    #[tune(128, 64, 256)] const BLOCK_C: usize,
>(
    x: Tensor<f32, dims![rows, mid, COLS]>,
    out: TensorMut<bf16, dims![rows, mid, COLS]>,
) {
    let r0 = program_id(0) * BLOCK_R;
    let m = program_id(1);
    let c0 = program_id(2) * BLOCK_C;
    let t = load(x.tile([r0..r0 + BLOCK_R, m, c0..c0 + BLOCK_C]));
    store(
        out.tile([r0..r0 + BLOCK_R, m, c0..c0 + BLOCK_C]),
        t.cast::<bf16>(),
    );
}

/// `out[r, m, :] = f32(x[r, m, :])`: bf16 back to f32 (exact), e.g. after a collective with a
/// bf16 payload. `BLOCK_R` rows × `BLOCK_C` columns of one `m` per program.
#[kernel(grid = (cdiv(rows, BLOCK_R), mid, cdiv(COLS, BLOCK_C)), constants(COLS))]
pub fn widen_f32<
    #[tune(16, 4, 64)] const BLOCK_R: usize,
    #[tune(128, 64, 256)] const BLOCK_C: usize,
>(
    x: Tensor<bf16, dims![rows, mid, COLS]>,
    out: TensorMut<f32, dims![rows, mid, COLS]>,
) {
    let r0 = program_id(0) * BLOCK_R;
    let m = program_id(1);
    let c0 = program_id(2) * BLOCK_C;
    let t = load(x.tile([r0..r0 + BLOCK_R, m, c0..c0 + BLOCK_C]));
    store(
        out.tile([r0..r0 + BLOCK_R, m, c0..c0 + BLOCK_C]),
        t.cast::<f32>(),
    );
}
