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
    match probe_cuda() {
        Ok(desc) => println!("  cuda  available: {desc}"),
        Err(why) => println!("  cuda  unavailable: {why}"),
    }
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
        f.join(", ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "native".to_string()
    }
}
