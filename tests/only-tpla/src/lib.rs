//! A kernel written in a crate whose only dependency is `tpla`: the code `#[kernel]` emits must
//! name nothing but `::tpla` (issue 16, item 17).

use tpla::kernel;

/// `y = x · s + 1`, `BLOCK` rows of width `W` per program.
#[kernel(grid = (cdiv(rows, BLOCK)), constants(W))]
pub fn affine_rows<#[tune(2, 4)] const BLOCK: usize>(
    x: Tensor<f32, dims![rows, W]>,
    y: TensorMut<f32, dims![rows, W]>,
    s: f32,
) {
    let r0 = program_id(0) * BLOCK;
    let t = load(x.tile([r0..r0 + BLOCK, ..]));
    store(y.tile([r0..r0 + BLOCK, ..]), t * s + 1.0);
}
