use tpla_macros::kernel;
use tpla_runtime::{CpuExecutor, HostTensor};

#[kernel(crate = tpla_kernels, grid = (batch), constants(D))]
pub fn scale_rows<#[tune(16)] const BH: usize>(x: Tensor<f32, dims![batch, D]>, y: TensorMut<f32, dims![batch, D]>, s: f32) {
    let b = program_id(0);
    let t = load(x.tile([b..b + 1, ..]));
    store(y.tile([b..b + 1, ..]), t * s);
}

fn main() {
    let ex = CpuExecutor::new(1).unwrap();
    let x = HostTensor::<f32>::zeros(&[2, 8]);
    let mut y = HostTensor::<f32>::zeros(&[2, 8]);
    let cfg = tpla_codegen::Config::new();
    let _ = scale_rows::launch(&ex, &cfg, &x, &mut y);
}
