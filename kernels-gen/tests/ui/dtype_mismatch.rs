use tpla_macros::kernel;

#[kernel(crate = tpla_kernels, grid = (batch), constants(D))]
pub fn k<#[tune(16)] const BH: usize>(
    x: Tensor<f32, dims![batch, BH, D]>,
    w: Tensor<bf16, dims![batch, BH, D]>,
    y: TensorMut<f32, dims![batch, BH, D]>,
) {
    let b = program_id(0);
    let a = load(x.tile([b, .., ..]));
    let c = load(w.tile([b, .., ..]));
    store(y.tile([b, .., ..]), a + c);
}

fn main() {}
