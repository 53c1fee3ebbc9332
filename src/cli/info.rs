//! `tpla info`: which backends this machine has.

use super::backend::probe_cuda;

/// Prints each backend and whether it can run here.
pub fn info() {
    println!("tpla {}", env!("CARGO_PKG_VERSION"));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "  cpu   available: Cranelift JIT for {} ({}), {threads} threads",
        std::env::consts::ARCH,
        cpu_features()
    );
    println!("        host gemm: {}", host_gemm());
    match probe_cuda() {
        Ok(desc) => println!("  cuda  available: {desc}"),
        Err(why) => println!("  cuda  unavailable: {why}"),
    }
    match probe_nccl() {
        Ok(desc) => println!("  nccl  available: {desc}"),
        Err(why) => println!("  nccl  unavailable: {why}"),
    }
}

/// Whether tensor parallelism over NCCL can run here: libnccl loads and how many GPUs there
/// are (the layer forms need one per rank).
fn probe_nccl() -> Result<String, String> {
    use tpla_runtime::cuda::device::device_count;
    let gpus = device_count();
    if gpus == 0 {
        return Err("no CUDA GPU".into());
    }
    tpla_runtime::cuda::nccl::NcclId::new().map_err(|e| e.to_string())?;
    Ok(if gpus >= 2 {
        format!(
            "libnccl loads, {gpus} GPUs: `tpla decode --devices k` and `--form all --tp k --devices k` run over them"
        )
    } else {
        "libnccl loads, 1 GPU: one process per rank needs one GPU each (the layer forms run their ranks in sequence on it)".into()
    })
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        if std::arch::is_x86_feature_detected!("sse4.1") {
            f.push("sse4.1");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        f.join(", ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "native".to_string()
    }
}

/// Which gemm the CPU JIT's larger tile gemms run here (`codegen/src/cpu/host_gemm.rs`).
fn host_gemm() -> String {
    use tpla_codegen::cpu::host_gemm::{vector_kernel, VectorKernel, HOST_GEMM_MIN_MACS};
    use tpla_codegen::cpu::CpuOptions;
    let loops = "the generated 4-lane loops";
    match (vector_kernel(), CpuOptions::default().host_gemm) {
        (Some(k), true) => {
            let what = match k {
                VectorKernel::Avx512 => "AVX-512F microkernels, 16 lanes",
                VectorKernel::Avx2 => "AVX2 + FMA microkernels, 8 lanes",
            };
            format!("{what}, for tiles of {HOST_GEMM_MIN_MACS}+ multiply-adds")
        }
        (Some(_), false) => format!("off ({}=0): {loops}", CpuOptions::HOST_GEMM_VAR),
        (None, _) => format!("no AVX-512F or AVX2 + FMA on this CPU: {loops}"),
    }
}
