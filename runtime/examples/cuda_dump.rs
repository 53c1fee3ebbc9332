//! Prints the generated CUDA C++ of the decode kernel for one config and, where NVRTC loads, the
//! ptxas report. Usage: [WARPS=n] cuda_dump LAT BLOCK_H BLOCK_N STAGES [out.cu]
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::Target;

fn main() {
    let a: Vec<i64> = std::env::args()
        .skip(1)
        .take(4)
        .map(|s| s.parse().expect("integer"))
        .collect();
    let path = std::env::args().nth(5);
    let path: Option<String> = path;
    let mut cfg = Config::new()
        .with("LAT", a[0])
        .with("ROPE", 64)
        .with("BLOCK_H", a[1])
        .with("BLOCK_N", a[2])
        .with("STAGES", a[3]);
    if let Some(w) = std::env::var("WARPS").ok().and_then(|w| w.parse().ok()) {
        cfg.set("WARPS", w);
    }
    let k = if std::env::var("COMBINE").is_ok() {
        // COMBINE=1 cuda_dump LAT BLOCK_H BLOCK_D 0: the split combine instead.
        let c = Config::new()
            .with("LAT", a[0])
            .with("BLOCK_H", a[1])
            .with("BLOCK_D", a[2]);
        tpla_kernels::combine_splits.build(&c).expect("build")
    } else {
        tpla_kernels::latent_decode.build(&cfg).expect("build")
    };
    let t = Target::sm90();
    let src = tpla_codegen::cuda::emit(&k, t).expect("emit");
    if let Some(p) = &path {
        std::fs::write(p, &src.code).unwrap();
    }
    println!(
        "[{cfg}] threads {} smem {} stages {:?}",
        src.block_threads, src.shared_bytes, src.stages
    );
    match compile(&src.name, &src.code, &default_options(&t.arch_name())) {
        Ok(c) => {
            println!(
                "{:?} {:.0} ms",
                c.report,
                c.compile_time.as_secs_f64() * 1e3
            );
            // Beside the source: the CUBIN (for nvdisasm / cuobjdump) when one was produced.
            if let (Some(p), tpla_runtime::cuda::nvrtc::Image::Cubin(bytes)) = (&path, &c.image) {
                std::fs::write(format!("{p}.cubin"), bytes).unwrap();
            }
        }
        Err(e) => println!("compile: {e}"),
    }
}
