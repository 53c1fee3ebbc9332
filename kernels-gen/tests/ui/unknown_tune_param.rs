use tpla_macros::kernel;

#[kernel(crate = tpla_kernels, grid = (batch), constants(D))]
pub fn k<#[tune(16, 32)] const BLOCK_H: usize>(x: Tensor<f32, dims![batch, heads, D]>, y: TensorMut<f32, dims![batch, heads, D]>) {
    let b = program_id(0);
    let t = load(x.tile([b, 0..BLOCK_M, ..]));
    store(y.tile([b, 0..BLOCK_H, ..]), t);
}

fn main() {}
