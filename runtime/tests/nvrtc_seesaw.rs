//! CI without a GPU: every variant of the library decode kernel that the two-consumer schedule
//! (`SEESAW = 1`, `codegen/src/cuda/lower/seesaw/`) applies to — the 64-row tune candidates at
//! latent 512, 256 and 128, and at latent 512 with `SQ = 2` (the causal limit in each warpgroup's
//! registers since 2026-12-05) — is lowered and compiled by
//! NVRTC for sm_90a with no stack frame, no spill and no wgmma serialised by ptxas; the
//! registers per variant are printed.
//! Variants whose code is the same (up to the config comment) are compiled once.
//!
//! Without libnvrtc the test prints a SKIP line and passes, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

use tpla_codegen::KernelDef;
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::Target;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

#[test]
fn nvrtc_compiles_every_seesaw_decode_variant_without_spills() {
    compile_every_variant(
        "nvrtc_compiles_every_seesaw_decode_variant_without_spills",
        &[("SEESAW", 1)],
    );
}

/// The seesaw consumers fed by the TMA producer warpgroup (384 threads; the consumers' code
/// after `setmaxnreg.inc` must fit its 240 registers, the producer's its 24; the TMA producer
/// holds the `cp.async` producer's copy as its fallback, so this covers `PRODUCER = 1` alone too).
#[test]
fn nvrtc_compiles_every_seesaw_tma_producer_variant_without_spills() {
    compile_every_variant(
        "nvrtc_compiles_every_seesaw_tma_producer_variant_without_spills",
        &[("SEESAW", 1), ("PRODUCER", 1), ("TMA", 1)],
    );
}

/// Compiles every distinct variant the schedule applies to with the knobs `knobs`.
fn compile_every_variant(test: &str, knobs: &[(&str, i64)]) {
    if !nvrtc_or_skip(test) {
        return;
    }
    let t = Target::sm90();
    // (label, code) of the distinct variants the schedule applies to.
    let mut distinct: Vec<(String, String, String)> = Vec::new();
    for (lat, sq) in [(512i64, 1i64), (256, 1), (128, 1), (512, 2)] {
        let space = tpla_kernels::latent_decode
            .tune_space(&[("LAT", lat), ("ROPE", 64), ("SQ", sq)])
            .unwrap();
        for cfg in space {
            if cfg.get("BLOCK_H").ok() != Some(64) {
                continue;
            }
            let cfg = knobs.iter().fold(cfg, |c, &(n, v)| c.with(n, v));
            let k = tpla_kernels::latent_decode.build(&cfg).unwrap();
            let src = tpla_codegen::cuda::emit(&k, t).unwrap();
            if !src.code.contains("_oth = ") {
                continue;
            }
            let body = src.code[src.code.find("extern \"C\"").unwrap()..].to_string();
            if distinct.iter().all(|(_, _, b)| *b != body) {
                distinct.push((format!("[{cfg}]"), src.code.clone(), body));
            }
        }
    }
    assert!(
        distinct.len() >= 10,
        "the schedule applies to too few variants"
    );
    let queue = std::sync::Mutex::new(distinct);
    let n = queue.lock().unwrap().len();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((label, code, _)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let opts = default_options(&t.arch_name());
                match compile("tpla_latent_decode", &code, &opts) {
                    // ptxas serialises wgmma it cannot prove safe: a silent slowdown.
                    Ok(c) if c.log.contains("serialized") => failures
                        .lock()
                        .unwrap()
                        .push(format!("{label}: ptxas serialises its wgmma:\n{}", c.log)),
                    Ok(c) => match &c.report {
                        Some(r) if !r.spill_free() => failures.lock().unwrap().push(format!(
                            "{label}: {} B stack frame, {} / {} B spilled",
                            r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes
                        )),
                        Some(r) => println!(
                            "{label}: ok ({} regs, {:.0} ms)",
                            r.registers,
                            c.compile_time.as_secs_f64() * 1e3
                        ),
                        None => println!("{label}: ok (no ptxas report)"),
                    },
                    Err(e) => failures.lock().unwrap().push(format!("{label}: {e}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    println!("{test}: {n} variants, {} failed", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
