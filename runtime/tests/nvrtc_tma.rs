//! CI without a GPU: the TMA producer (`PRODUCER = 1`, `TMA = 1`, with and without the L2
//! prefetch `PREFETCH = 1`) of the library decode compiles
//! for sm_90a with every warpgroup (BLOCK_H = 64) tune variant at latent 512 (MLA) and 256 (the
//! TPLA shard), plus the split-table ABI (`KV_CHUNKS = 1`): each takes its tensor map parameter,
//! issues bulk tensor copies, and ptxas reports no stack frame and no spill; with the score
//! warpgroup's full mbarriers per column group (`FULL_GROUPS = 3, 9`), whose waits sit inside
//! q·kᵀ's k loop, and no variant has its wgmmas serialised by ptxas (C7520).
//!
//! Without libnvrtc the test prints a SKIP line and passes, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

use tpla_codegen::cuda::ParamAbi;
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::Target;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

fn cases() -> Vec<Config> {
    let mut v = Vec::new();
    for lat in [512i64, 256] {
        let consts = [("LAT", lat), ("ROPE", 64)];
        for cfg in tpla_kernels::latent_decode.tune_space(&consts).unwrap() {
            let (bh, bn, st) = (
                cfg.get("BLOCK_H").ok(),
                cfg.get("BLOCK_N").ok().unwrap_or(0),
                cfg.get("STAGES").ok().unwrap_or(0),
            );
            // Every warpgroup config; the producer feeding mma.sync warps (BLOCK_H 16 / 32) at
            // the blocks and depths the bench times; 128-row blocks (two warpgroups along the
            // rows) at the shard width, where they build.
            let mma_sync_warps = matches!(bh, Some(16 | 32)) && bn >= 32 && (st == 2 || st == 4);
            let tall =
                bh == Some(128) && lat == 256 && st <= 3 && cfg.get("WG_SPLIT").ok() == Some(128);
            if (bh == Some(64) && st <= 3) || mma_sync_warps || tall {
                v.push(cfg.clone().with("PRODUCER", 1).with("TMA", 1));
            }
            // The L2 prefetch (`PREFETCH = 1`) at the 64-row tiles the tuner times it on.
            if bh == Some(64) && bn == 64 && (2..=4).contains(&st) {
                v.push(cfg.with("PRODUCER", 1).with("TMA", 1).with("PREFETCH", 1));
            }
        }
    }
    let chunked = tpla_kernels::latent_decode
        .default_config(&[("LAT", 512), ("ROPE", 64)])
        .unwrap()
        .with("BLOCK_H", 64)
        .with("KV_CHUNKS", 1)
        .with("PRODUCER", 1)
        .with("TMA", 1);
    v.push(chunked);
    // The score warpgroup's ring with its full mbarriers per column group (`FULL_GROUPS`): the
    // waits inside q·kᵀ's k loop must not make ptxas serialise the kernel's wgmmas (C7520).
    for (lat, bn, st) in [
        (512, 64, 2),
        (512, 32, 3),
        (256, 64, 2),
        (256, 32, 4),
        (128, 64, 2),
    ] {
        for groups in [3, 9] {
            let cfg = tpla_kernels::latent_decode
                .default_config(&[("LAT", lat), ("ROPE", 64)])
                .unwrap()
                .with("BLOCK_H", 64)
                .with("BLOCK_N", bn)
                .with("STAGES", st)
                .with("WG_SPLIT", 128)
                .with("PRODUCER", 1)
                .with("TMA", 1)
                .with("SCORE_WG", 1)
                .with("FULL_GROUPS", groups);
            v.push(cfg);
        }
    }
    // Each value warpgroup refilling its half of the slot (`SPLIT_RELEASE`, latent 512): the
    // score warpgroup's wait for the second half inside q·kᵀ, as above.
    for (bn, st) in [(64, 2), (32, 3)] {
        let cfg = tpla_kernels::latent_decode
            .default_config(&[("LAT", 512), ("ROPE", 64)])
            .unwrap()
            .with("BLOCK_H", 64)
            .with("BLOCK_N", bn)
            .with("STAGES", st)
            .with("WG_SPLIT", 128)
            .with("PRODUCER", 1)
            .with("TMA", 1)
            .with("SCORE_WG", 1)
            .with("SPLIT_RELEASE", 1);
        v.push(cfg);
    }
    // The same groups under the plain producer schedule: q·kᵀ split by columns (latent 512),
    // whole in one warpgroup (latent 256), on alternate blocks (`WG_KV_SPLIT`).
    for (lat, st, knob) in [
        (512, 2, ("WG_SPLIT", 32)),
        (256, 3, ("WG_SPLIT", 128)),
        (256, 4, ("WG_KV_SPLIT", 1)),
    ] {
        let cfg = tpla_kernels::latent_decode
            .default_config(&[("LAT", lat), ("ROPE", 64)])
            .unwrap()
            .with("BLOCK_H", 64)
            .with("BLOCK_N", 64)
            .with("STAGES", st)
            .with("PRODUCER", 1)
            .with("TMA", 1)
            .with(knob.0, knob.1)
            .with("FULL_GROUPS", 3);
        v.push(cfg);
    }
    v
}

/// Compiles one variant: `Ok(what ptxas reported)` or why it failed.
fn compile_one(cfg: &Config) -> Result<String, String> {
    let k = tpla_kernels::latent_decode
        .build(cfg)
        .map_err(|e| format!("build: {e}"))?;
    let target = Target::sm90();
    let src = tpla_codegen::cuda::emit(&k, target).map_err(|e| format!("emit: {e}"))?;
    if !src.code.contains("tpla_tma_load_2d(&") && !src.code.contains("tpla_tma_load_2d(dst_") {
        return Err("no bulk tensor copy".into());
    }
    if !src
        .params
        .iter()
        .any(|p| matches!(p, ParamAbi::PagedTmap { .. }))
    {
        return Err("no tensor map parameter".into());
    }
    let split = cfg.get("SPLIT_RELEASE").is_ok_and(|s| s == 1);
    if (split || cfg.get("FULL_GROUPS").is_ok_and(|g| g > 1)) && !src.group_waits {
        return Err("FULL_GROUPS: no group wait inside q·kᵀ".into());
    }
    let opts = default_options(&target.arch_name());
    let c = compile(&src.name, &src.code, &opts).map_err(|e| e.to_string())?;
    if c.log.contains("C7520") {
        return Err(format!("ptxas serialised the wgmmas:\n{}", c.log));
    }
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
fn tma_producer_variants_compile_for_sm90a_without_spills() {
    let test = "tma_producer_variants_compile_for_sm90a_without_spills";
    if !nvrtc_or_skip(test) {
        return;
    }
    let queue = std::sync::Mutex::new(cases());
    let n = queue.lock().unwrap().len();
    assert_eq!(n, 69 + 9 + 12 + 10 + 2 + 3);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(cfg) = queue.lock().unwrap().pop() else {
                    break;
                };
                match compile_one(&cfg) {
                    Ok(what) => println!("latent_decode [{cfg}]: ok ({what})"),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("latent_decode [{cfg}]: {e}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    println!("{test}: {n} variants, {} failed", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
