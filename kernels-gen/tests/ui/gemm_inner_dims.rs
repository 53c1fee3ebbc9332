use tpla_macros::kernel;

#[kernel(crate = tpla_kernels, grid = (batch), constants(LAT, ROPE))]
pub fn k<#[tune(16)] const BH: usize>(
    q: Tensor<f32, dims![batch, BH, LAT + ROPE]>,
    kv: Tensor<f32, dims![batch, BH, LAT]>,
    y: TensorMut<f32, dims![batch, BH, BH]>,
) {
    let b = program_id(0);
    let a = load(q.tile([b, .., ..]));
    let c = load(kv.tile([b, .., ..]));
    store(y.tile([b, .., ..]), gemm(a, c.t()));
}

fn main() {}
