//! CI without a GPU: what NVRTC compilation promises beside the kernels themselves. A compile
//! error returns NVRTC's log and saves the source; the kernel cache serves memory, then disk,
//! and recompiles past a corrupt or truncated entry without leaving temporary files; the CUBIN
//! reader (`nvrtc_compile/cubin.rs`, what the spill checks of `nvrtc_compile.rs` rely on where
//! ptxas prints no report) agrees with ptxas on registers and stack frames.
//!
//! Without libnvrtc the tests print a SKIP line and pass, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

#[path = "../../codegen/tests/support/samples.rs"]
mod samples;

/// Resources of a function read from a CUBIN without ptxas' log.
#[path = "nvrtc_compile/cubin.rs"]
mod cubin;

use samples::{latent_decode, DecodeParams};
use tpla_runtime::cuda::nvrtc::{compile, default_options, Image};
use tpla_runtime::cuda::Target;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

#[test]
fn a_compile_error_returns_the_log_and_saves_the_source() {
    if !nvrtc_or_skip("a_compile_error_returns_the_log_and_saves_the_source") {
        return;
    }
    let src = "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_thing; }\n";
    match compile("broken", src, &default_options("sm_90a")) {
        Err(tpla_runtime::cuda::NvrtcError::Compile {
            kernel,
            log,
            source_path,
            ..
        }) => {
            assert_eq!(kernel, "broken");
            assert!(log.contains("undefined_thing"), "log: {log}");
            let p = source_path.expect("source saved");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), src);
        }
        other => panic!("expected a compile error, got {:?}", other.map(|c| c.log)),
    }
}

#[test]
fn kernel_cache_serves_memory_then_disk_and_survives_corruption() {
    use tpla_runtime::cuda::{compile_kernel, CacheSource, KernelCache};
    if !nvrtc_or_skip("kernel_cache_serves_memory_then_disk_and_survives_corruption") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tpla-kcache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let k = latent_decode(DecodeParams {
        lat: 128,
        rope: 64,
        block_h: 16,
        block_n: 32,
        stages: 2,
        q_bf16: true,
        p_bf16: true,
    })
    .unwrap();
    let t = Target::sm90();
    let cache = KernelCache::new(Some(dir.clone()));
    let cold = compile_kernel(&k, t, &cache).unwrap();
    assert_eq!(cold.lookup.source, CacheSource::Compiled);
    let warm = compile_kernel(&k, t, &cache).unwrap();
    assert_eq!(warm.lookup.source, CacheSource::Memory);
    assert_eq!(warm.lookup.kernel.image, cold.lookup.kernel.image);
    let fresh = KernelCache::new(Some(dir.clone()));
    let disk = compile_kernel(&k, t, &fresh).unwrap();
    assert_eq!(disk.lookup.source, CacheSource::Disk);
    assert_eq!(disk.lookup.kernel.image, cold.lookup.kernel.image);
    assert_eq!(disk.lookup.kernel.report, cold.lookup.kernel.report);
    println!(
        "cold compile {:.1} ms, memory hit {:.3} ms, disk hit {:.3} ms",
        cold.lookup.elapsed.as_secs_f64() * 1e3,
        warm.lookup.elapsed.as_secs_f64() * 1e3,
        disk.lookup.elapsed.as_secs_f64() * 1e3
    );
    // Corrupt the entry: one flipped payload byte, then a truncated file.
    let entry = dir.join(format!("{}.bin", cold.lookup.kernel.key));
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&entry, &bytes).unwrap();
    let again = compile_kernel(&k, t, &KernelCache::new(Some(dir.clone()))).unwrap();
    assert_eq!(again.lookup.source, CacheSource::Compiled);
    assert_eq!(again.lookup.kernel.image, cold.lookup.kernel.image);
    std::fs::write(&entry, &bytes[..10]).unwrap();
    let again = compile_kernel(&k, t, &KernelCache::new(Some(dir.clone()))).unwrap();
    assert_eq!(again.lookup.source, CacheSource::Compiled);
    // Rewritten: served from disk again.
    let healed = compile_kernel(&k, t, &KernelCache::new(Some(dir.clone()))).unwrap();
    assert_eq!(healed.lookup.source, CacheSource::Disk);
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CUBIN reader sees what the spill check needs: a kernel with a dynamically indexed local
/// array has a stack frame, in ptxas' report and in the CUBIN alike; one without has none.
#[test]
fn cubin_attributes_show_registers_and_stack_frame() {
    if !nvrtc_or_skip("cubin_attributes_show_registers_and_stack_frame") {
        return;
    }
    let framed = "extern \"C\" __global__ void framed(float* x, int i) {\n\
                  float a[64];\n\
                  for (int j = 0; j < 64; ++j) a[j] = x[j];\n\
                  #pragma unroll 1\n\
                  for (int j = 0; j < 64; ++j) a[(j * i) & 63] += a[(j + i) & 63];\n\
                  x[threadIdx.x] = a[threadIdx.x & 63];\n}\n";
    let flat = "extern \"C\" __global__ void flat(float* x) { x[threadIdx.x] *= 2.0f; }\n";
    for (name, src, has_frame) in [("framed", framed, true), ("flat", flat, false)] {
        for arch in ["sm_80", "sm_90a"] {
            let c = compile(name, src, &default_options(arch)).unwrap();
            let Image::Cubin(elf) = &c.image else {
                panic!("{name} {arch}: no CUBIN");
            };
            let e = cubin::report(elf, name).unwrap();
            println!(
                "{name} {arch}: CUBIN {} registers, {} B stack; ptxas {:?}",
                e.registers,
                e.stack_frame_bytes,
                c.report
                    .as_ref()
                    .map(|r| (r.registers, r.stack_frame_bytes))
            );
            assert_eq!(e.stack_frame_bytes > 0, has_frame, "{name} {arch}");
            assert!(e.registers > 0);
            if let Some(r) = &c.report {
                assert_eq!(
                    (e.registers, e.stack_frame_bytes),
                    (r.registers, r.stack_frame_bytes)
                );
            }
            assert!(cubin::report(elf, "no_such_kernel").is_err());
            assert!(cubin::report(&elf[..elf.len() / 3], name).is_err());
        }
    }
}
