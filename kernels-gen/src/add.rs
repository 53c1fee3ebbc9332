//! Element-wise sum of two tensors: the device-side stand-in for an all-reduce when the ranks of
//! a tensor-parallel group run one after another on one device.

use tpla_macros::kernel;

/// `out[r, :] = a[r, :] + b[r, :]` over `BLOCK_R` rows × `BLOCK_C` columns per program.
#[kernel(grid = (cdiv(rows, BLOCK_R), cdiv(COLS, BLOCK_C)), constants(COLS))]
pub fn add_rows<
    #[tune(16, 4, 64)] const BLOCK_R: usize,
    #[tune(128, 64, 256)] const BLOCK_C: usize,
>(
    a: Tensor<f32, dims![rows, COLS]>,
    b: Tensor<f32, dims![rows, COLS]>,
    out: TensorMut<f32, dims![rows, COLS]>,
) {
    let r0 = program_id(0) * BLOCK_R;
    let c0 = program_id(1) * BLOCK_C;
    let x = load(a.tile([r0..r0 + BLOCK_R, c0..c0 + BLOCK_C]));
    let y = load(b.tile([r0..r0 + BLOCK_R, c0..c0 + BLOCK_C]));
    store(out.tile([r0..r0 + BLOCK_R, c0..c0 + BLOCK_C]), x + y);
}

/// `out[r, :] = a[r, :]`: a device copy (the last step of the one-device all-reduce, which
/// gives every rank the sum).
#[kernel(grid = (cdiv(rows, BLOCK_R), cdiv(COLS, BLOCK_C)), constants(COLS))]
pub fn copy_rows<
    #[tune(16, 4, 64)] const BLOCK_R: usize,
    #[tune(128, 64, 256)] const BLOCK_C: usize,
>(
    a: Tensor<f32, dims![rows, COLS]>,
    out: TensorMut<f32, dims![rows, COLS]>,
) {
    let r0 = program_id(0) * BLOCK_R;
    let c0 = program_id(1) * BLOCK_C;
    let x = load(a.tile([r0..r0 + BLOCK_R, c0..c0 + BLOCK_C]));
    store(out.tile([r0..r0 + BLOCK_R, c0..c0 + BLOCK_C]), x);
}
