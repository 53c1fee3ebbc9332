use tpla_macros::kernel;

#[kernel(crate = tpla_kernels, grid = (batch), constants(D))]
pub fn k<#[tune(16)] const BH: usize>(x: Tensor<f32, dims![batch, D]>, y: TensorMut<bf16, dims![batch, D]>) {
    let b = program_id(0);
    let t = load(x.tile([b..b + 1, ..]));
    store(y.tile([b..b + 1, ..]), t * 2.0);
}

fn main() {}
