//! Writing a new kernel with the DSL: the TPLA sliced RMSNorm (TPLA.md §2), which normalises each
//! device's latent slice with its local RMS and a correction `m` folded in:
//! `ĉ_i = c_i / sqrt(m/g · mean(c_i²) + eps)`.
//!
//! Run: `cargo run --release --example custom_kernel` (add `TPLA_DUMP=ir` to see the IR).

use tpla::codegen::KernelDef;
use tpla::kernel;
use tpla::runtime::{CpuExecutor, Executor, HostTensor};

/// Normalises `BLOCK_T` rows of width `W` per program with their own RMS times `corr`.
#[kernel(grid = (cdiv(tokens, BLOCK_T)), constants(W))]
pub fn rms_norm_slice<#[tune(8, 32)] const BLOCK_T: usize>(
    x: Tensor<f32, dims![tokens, W]>,
    y: TensorMut<f32, dims![tokens, W]>,
    corr: f32,
    eps: f32,
) {
    let t0 = program_id(0) * BLOCK_T;
    let c = load(x.tile([t0..t0 + BLOCK_T, ..]));
    let mean_sq = reduce_sum(c * c, 1) * (1.0 / W);
    let inv = rsqrt(mean_sq * corr + eps);
    store(y.tile([t0..t0 + BLOCK_T, ..]), c * inv.unsqueeze(1));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (tokens, w) = (100usize, 256usize);
    let data: Vec<f32> = (0..tokens * w)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0 + 1e-3)
        .collect();
    let x = HostTensor::from_vec(&[tokens, w], data.clone())?;
    let mut y = HostTensor::<f32>::full(&[tokens, w], f32::NAN);
    let exec = CpuExecutor::new(0)?;
    let config = rms_norm_slice.default_config(&[("W", w as i64)])?;
    // m_i / g = 1 for a Hadamard-balanced slice.
    rms_norm_slice::launch(&exec, &config, &x, &mut y, 1.0, 1e-6)?;

    let mut worst = 0.0f64;
    for r in 0..tokens {
        let row = &data[r * w..(r + 1) * w];
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w as f64;
        for (c, &v) in row.iter().enumerate() {
            let want = v as f64 / (ms + 1e-6).sqrt();
            worst = worst.max((y.data()[r * w + c] as f64 - want).abs() / want.abs().max(1e-3));
        }
    }
    println!(
        "rms_norm_slice on {tokens} x {w}: worst relative error vs f64 {worst:.2e} ({})",
        exec.backend_name()
    );
    if worst > 1e-5 {
        return Err(format!("kernel disagrees with the reference: {worst:.3e}").into());
    }
    Ok(())
}
