//! CI without a GPU: the balanced split schedule's kernels are lowered to CUDA C++ and compiled by
//! NVRTC: the decode with a per-sequence split table (`KV_CHUNKS = 1`) over a representative
//! tune subset (BLOCK_H and BLOCK_N extremes, one to three stages, the producer warpgroup) at
//! latent 512 and 256 for sm_90a and two variants for sm_80 (the full tune space of the
//! split-table decode is in `cuda_dump --all`), every `combine_counted` candidate, and
//! `split_schedule` for each BLOCK_N and a small and a large MAX_B. Where ptxas reports, no
//! variant may have a stack frame or spill.
//!
//! Without libnvrtc the test prints a SKIP line and passes, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::Target;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

/// `(kernel name, kernel, config, target)` of every variant compiled.
fn cases() -> Vec<(&'static str, &'static dyn KernelDef, Config, Target)> {
    let mut v: Vec<(&'static str, &'static dyn KernelDef, Config, Target)> = Vec::new();
    let decode = |lat: i64, bh: i64, bn: i64, st: i64| {
        tpla_kernels::latent_decode
            .default_config(&[("LAT", lat), ("ROPE", 64)])
            .unwrap()
            .with("KV_CHUNKS", 1)
            .with("BLOCK_H", bh)
            .with("BLOCK_N", bn)
            .with("STAGES", st)
    };
    let (sm90, sm80) = (Target::sm90(), Target::new(8, 0));
    for (lat, bh, bn, st, t) in [
        (512, 16, 64, 2, sm90),
        (512, 64, 64, 2, sm90),
        (512, 16, 16, 1, sm90),
        (512, 64, 16, 1, sm90),
        (512, 32, 32, 3, sm90),
        (256, 16, 64, 2, sm90),
        (256, 64, 64, 2, sm90),
        (512, 16, 64, 2, sm80),
        (512, 64, 32, 2, sm80),
    ] {
        v.push((
            "latent_decode",
            &tpla_kernels::latent_decode,
            decode(lat, bh, bn, st),
            t,
        ));
    }
    let ws = decode(512, 64, 64, 2).with("PRODUCER", 1);
    v.push(("latent_decode", &tpla_kernels::latent_decode, ws, sm90));
    for cfg in tpla_kernels::combine_counted
        .tune_space(&[("LAT", 512)])
        .unwrap()
    {
        v.push(("combine_counted", &tpla_kernels::combine_counted, cfg, sm90));
    }
    for bn in [16i64, 32, 64] {
        for max_b in [32i64, 1024] {
            let cfg = tpla_kernels::split_schedule
                .default_config(&[
                    ("BLOCK_N", bn),
                    ("MAX_B", max_b),
                    (
                        "PROBES",
                        tpla_kernels::ops::schedule_probes(max_b as usize) as i64,
                    ),
                ])
                .unwrap();
            v.push(("split_schedule", &tpla_kernels::split_schedule, cfg, sm90));
        }
    }
    v
}

/// Compiles one variant: `Ok(what ptxas reported)` or why it failed.
fn compile_one(
    name: &str,
    def: &dyn KernelDef,
    cfg: &Config,
    target: Target,
) -> Result<String, String> {
    let k = def.build(cfg).map_err(|e| format!("build: {e}"))?;
    let src = tpla_codegen::cuda::emit(&k, target).map_err(|e| format!("emit: {e}"))?;
    if name == "latent_decode" && !src.code.contains("_chunk[") {
        return Err("the decode does not read its split table".to_string());
    }
    let opts = default_options(&target.arch_name());
    let c = compile(&src.name, &src.code, &opts).map_err(|e| e.to_string())?;
    match &c.report {
        Some(r) if !r.spill_free() => Err(format!(
            "{} B stack frame, {} / {} B spilled",
            r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes
        )),
        Some(r) => Ok(format!("{} regs", r.registers)),
        None => Ok("no ptxas report".into()),
    }
}

#[test]
fn nvrtc_compiles_the_balanced_schedule_kernels_without_spills() {
    let test = "nvrtc_compiles_the_balanced_schedule_kernels_without_spills";
    if !nvrtc_or_skip(test) {
        return;
    }
    let queue = std::sync::Mutex::new(cases());
    let n = queue.lock().unwrap().len();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((name, def, cfg, target)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let label = format!("{name} [{cfg}] {}", target.arch_name());
                match compile_one(name, def, &cfg, target) {
                    Ok(what) => println!("{label}: ok ({what})"),
                    Err(e) => failures.lock().unwrap().push(format!("{label}: {e}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    println!("{test}: {n} variants, {} failed", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
