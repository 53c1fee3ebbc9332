//! CI without a GPU: every kernel of `tpla-kernels` × every tune candidate × latent width
//! {512, 256, 128, 64} (+ RoPE 64) is lowered to CUDA C++ and compiled by NVRTC for sm_90a; ptxas'
//! report must show no stack frame and no spilled bytes. The builder-made decode variants of
//! test-support samples (`codegen/tests/support/samples.rs`: bf16 q, bf16 p) are compiled too.
//!
//! Without libnvrtc the test prints a SKIP line and passes, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

use std::sync::Mutex;
use std::time::Duration;

#[path = "../../codegen/tests/support/samples.rs"]
mod samples;

use samples::{latent_decode, DecodeParams};
use tpla_codegen::ir::Kernel;
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options, nvrtc, PtxasReport};
use tpla_runtime::cuda::Target;

const WIDTHS: [usize; 4] = [512, 256, 128, 64];
const ROPE: usize = 64;

/// Returns false (after printing SKIP) when NVRTC is unavailable and not required.
fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc() {
        Ok(lib) => {
            println!(
                "{test}: NVRTC {}.{} from {}",
                lib.version.0,
                lib.version.1,
                lib.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the loader path".into())
            );
            true
        }
        Err(e) => {
            if std::env::var("TPLA_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!("{test}: TPLA_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}");
            }
            tpla_runtime::cuda::device::skip_notice(&format!(
                "SKIP {test}: NVRTC unavailable ({e})"
            ));
            false
        }
    }
}

struct Case {
    label: String,
    kernel: Result<Kernel, String>,
}

fn library_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |def: &dyn KernelDef, consts: &[(&str, i64)]| {
        for cfg in def.tune_space(consts) {
            cases.push(Case {
                label: format!("{} [{cfg}]", def.name()),
                kernel: def.build(&cfg).map_err(|e| e.to_string()),
            });
        }
    };
    for lat in WIDTHS {
        let lat = lat as i64;
        add(
            &tpla_kernels::latent_decode,
            &[("LAT", lat), ("ROPE", ROPE as i64)],
        );
        add(&tpla_kernels::combine_splits, &[("LAT", lat)]);
        add(&tpla_kernels::append_rows, &[("ROW", lat + ROPE as i64)]);
        add(&tpla_kernels::head_proj, &[("LAT", lat), ("DV", 128)]);
    }
    cases
}

fn sample_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for lat in WIDTHS {
        for bh in [16, 32, 64] {
            for bn in [16, 32, 64] {
                for st in [1, 2, 3] {
                    let p = DecodeParams {
                        lat,
                        rope: ROPE,
                        block_h: bh,
                        block_n: bn,
                        stages: st,
                        q_bf16: true,
                        p_bf16: true,
                    };
                    let cfg = Config::new()
                        .with("BLOCK_H", bh as i64)
                        .with("BLOCK_N", bn as i64)
                        .with("STAGES", st as i64)
                        .with("LAT", lat as i64);
                    cases.push(Case {
                        label: format!("samples::latent_decode(bf16 q, bf16 p) [{cfg}]"),
                        kernel: latent_decode(p).map_err(|e| e.to_string()),
                    });
                }
            }
        }
    }
    cases
}

/// Where NVRTC's log has no ptxas report (the toolkit NVRTC on the GPU hosts leaves it out for
/// some programs) and a GPU is present: the loaded function's registers and local memory from
/// the driver, as a report (local memory = stack frame + spills, so 0 means spill-free).
fn driver_report(k: &Kernel, target: Target) -> Option<PtxasReport> {
    use std::sync::OnceLock;
    use tpla_runtime::cuda::CudaExecutor;
    static GPU: OnceLock<Option<Mutex<CudaExecutor>>> = OnceLock::new();
    let gpu = GPU
        .get_or_init(|| CudaExecutor::new(0).ok().map(Mutex::new))
        .as_ref()?;
    let exec = gpu.lock().unwrap_or_else(|p| p.into_inner());
    if exec.target().arch_name() != target.arch_name() {
        return None;
    }
    let r = exec.load(k.clone()).ok()?.resources().ok()?;
    println!(
        "  (ptxas report from the driver: {} registers, {} B local)",
        r.registers, r.local_bytes
    );
    Some(PtxasReport {
        function: k.name.clone(),
        registers: r.registers,
        stack_frame_bytes: r.local_bytes,
        spill_store_bytes: 0,
        spill_load_bytes: 0,
        static_shared_bytes: 0,
    })
}

struct Outcome {
    label: String,
    result: Result<(PtxasReport, Duration, u32, u32), String>,
}

/// Compiles every case (two worker threads) and returns the outcomes in order.
fn compile_all(cases: Vec<Case>, target: Target) -> Vec<Outcome> {
    let opts = default_options(&target.arch_name());
    let queue = Mutex::new(cases.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((i, case)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let result = (|| {
                    let k = case.kernel?;
                    let src =
                        tpla_codegen::cuda::emit(&k, target).map_err(|e| format!("emit: {e}"))?;
                    let c = compile(&src.name, &src.code, &opts).map_err(|e| e.to_string())?;
                    let report = match c.report {
                        Some(r) => r,
                        None => driver_report(&k, target)
                            .ok_or_else(|| format!("no ptxas report in the log:\n{}", c.log))?,
                    };
                    Ok((report, c.compile_time, src.block_threads, src.shared_bytes))
                })();
                results.lock().unwrap().push((
                    i,
                    Outcome {
                        label: case.label,
                        result,
                    },
                ));
            });
        }
    });
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, o)| o).collect()
}

fn check(outcomes: &[Outcome], test: &str) {
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for o in outcomes {
        match &o.result {
            Ok((r, t, threads, smem)) => {
                println!(
                    "{:<90} {:>3} regs  stack {:>3}  spill {:>3}/{:>3}  {:>4} thr  {:>6} B smem  {:>5.0} ms",
                    o.label,
                    r.registers,
                    r.stack_frame_bytes,
                    r.spill_store_bytes,
                    r.spill_load_bytes,
                    threads,
                    smem,
                    t.as_secs_f64() * 1e3
                );
                slowest = slowest.max(*t);
                if !r.spill_free() {
                    failures.push(format!(
                        "{}: {} bytes stack frame, {} bytes spill stores, {} bytes spill loads",
                        o.label, r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", o.label)),
        }
    }
    println!(
        "{test}: {} variants, {} failed, slowest compile {:.0} ms",
        outcomes.len(),
        failures.len(),
        slowest.as_secs_f64() * 1e3
    );
    assert!(
        failures.is_empty(),
        "{test}: {} variant(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_library_kernel_compiles_for_sm90a_without_spills() {
    if !nvrtc_or_skip("every_library_kernel_compiles_for_sm90a_without_spills") {
        return;
    }
    let outcomes = compile_all(library_cases(), Target::sm90());
    check(&outcomes, "library kernels");
}

/// Ampere (A100, sm_80) and Ada (L40, sm_89) get the mma.sync / cp.async path (no wgmma): every
/// library kernel at its default config and at each latent width compiles there without spills.
#[test]
fn library_kernels_compile_for_ampere_and_ada_without_spills() {
    if !nvrtc_or_skip("library_kernels_compile_for_ampere_and_ada_without_spills") {
        return;
    }
    for target in [Target::new(8, 0), Target::new(8, 9)] {
        let cases = library_cases()
            .into_iter()
            .filter(|c| {
                // Defaults only: the first candidate of every tune parameter.
                [
                    "BLOCK_H=16,BLOCK_N=64",
                    "BLOCK_D=128,BLOCK_H=16",
                    "BLOCK_B=16,BLOCK_K=64,BLOCK_V=64",
                    "append_rows",
                ]
                .iter()
                .any(|d| c.label.contains(d))
                    && !c.label.contains("STAGES=1")
                    && !c.label.contains("STAGES=3")
            })
            .collect::<Vec<_>>();
        assert!(cases.len() >= 16, "{} cases", cases.len());
        let outcomes = compile_all(cases, target);
        check(
            &outcomes,
            &format!("library kernels on {}", target.arch_name()),
        );
    }
}

#[test]
fn builder_decode_variants_compile_for_sm90a_without_spills() {
    if !nvrtc_or_skip("builder_decode_variants_compile_for_sm90a_without_spills") {
        return;
    }
    let outcomes = compile_all(sample_cases(), Target::sm90());
    check(&outcomes, "builder decode variants");
}

/// Warp specialisation (`PRODUCER = 1`: a producer warpgroup, mbarrier ring, `setmaxnreg`): every
/// 64-row (warpgroup) variant of the library decode kernel compiles for sm_90a without spills,
/// with the producer warpgroup in the block.
#[test]
fn producer_decode_variants_compile_for_sm90a_without_spills() {
    if !nvrtc_or_skip("producer_decode_variants_compile_for_sm90a_without_spills") {
        return;
    }
    let mut cases = Vec::new();
    for lat in WIDTHS {
        let consts = [("LAT", lat as i64), ("ROPE", ROPE as i64)];
        for cfg in tpla_kernels::latent_decode.tune_space(&consts) {
            if cfg.get("BLOCK_H").ok() != Some(64) {
                continue;
            }
            let cfg = cfg.with("PRODUCER", 1);
            let kernel = tpla_kernels::latent_decode
                .build(&cfg)
                .map_err(|e| e.to_string());
            if let Ok(k) = &kernel {
                let src = tpla_codegen::cuda::emit(k, Target::sm90()).unwrap();
                assert!(src.code.contains("setmaxnreg"), "{cfg}: no producer");
            }
            cases.push(Case {
                label: format!("latent_decode [{cfg}]"),
                kernel,
            });
        }
    }
    assert_eq!(cases.len(), 72);
    let outcomes = compile_all(cases, Target::sm90());
    check(&outcomes, "warp-specialised decode variants");
}

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
