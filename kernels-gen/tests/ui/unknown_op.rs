use tpla_macros::kernel;

#[kernel(crate = tpla_kernels, grid = (batch), constants(D))]
pub fn k<#[tune(16)] const BN: usize>(x: Tensor<f32, dims![batch, D]>, y: TensorMut<f32, dims![batch, D]>) {
    let b = program_id(0);
    let t = load(x.tile([b..b + 1, ..]));
    store(y.tile([b..b + 1, ..]), softmax(t));
}

fn main() {}
