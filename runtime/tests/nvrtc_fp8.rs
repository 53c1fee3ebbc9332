//! CI without a GPU: the FP8 latent cache (`KV_FP8`) variants lowered to CUDA C++ and compiled
//! by NVRTC for sm_90a and sm_80: the decode reading FP8 rows at latent 512 (MLA, 656-byte
//! rows) and 256 (a g = 2 TPLA shard, 400-byte rows) over a representative tune subset
//! (BLOCK_H and BLOCK_N extremes, one to three stages, two query tokens; at BLOCK_H 64 also fed
//! by the producer warpgroup, `PRODUCER = 1`, which converts into the ring), and the append
//! quantising rows for every row width and BLOCK_T. Where ptxas reports, no variant may have a
//! stack frame or spill.
//!
//! Without libnvrtc the test prints a SKIP line and passes, unless `TPLA_REQUIRE_NVRTC=1`
//! (`.ci/nvrtc.sh` installs the `nvidia-cuda-nvrtc` wheel and sets both).

use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::Target;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

/// `(kernel, config, target)` of every variant compiled.
fn cases() -> Vec<(&'static dyn KernelDef, Config, Target)> {
    let mut v: Vec<(&'static dyn KernelDef, Config, Target)> = Vec::new();
    let decode = |lat: i64, bh: i64, bn: i64, st: i64| {
        tpla_kernels::latent_decode
            .default_config(&[("LAT", lat), ("ROPE", 64)])
            .unwrap()
            .with("KV_FP8", lat)
            .with("BLOCK_H", bh)
            .with("BLOCK_N", bn)
            .with("STAGES", st)
    };
    let (sm90, sm80) = (Target::sm90(), Target::new(8, 0));
    for (lat, bh, bn, st, t) in [
        (512, 16, 64, 2, sm90),
        (512, 64, 64, 2, sm90),
        (512, 16, 16, 1, sm90),
        (512, 64, 32, 3, sm90),
        (256, 16, 64, 2, sm90),
        (256, 64, 64, 2, sm90),
        (512, 16, 64, 2, sm80),
        (256, 64, 32, 2, sm80),
    ] {
        v.push((&tpla_kernels::latent_decode, decode(lat, bh, bn, st), t));
    }
    v.push((
        &tpla_kernels::latent_decode,
        decode(512, 64, 64, 2).with("SQ", 2),
        sm90,
    ));
    // The producer warpgroup converting into the ring (`PRODUCER = 1`, `lower/fp8_producer.rs`):
    // the bench's H 64 sweep (BLOCK_N 32 / 64, 2 / 3 stages, WG_SPLIT 128 / 32, TMA = 1 which
    // changes nothing with FP8 rows), the shard, two query tokens.
    for (lat, bn, st, extra) in [
        (512, 64, 2, None),
        (512, 32, 2, None),
        (512, 32, 3, None),
        (512, 32, 2, Some(("WG_SPLIT", 32))),
        (512, 64, 2, Some(("TMA", 1))),
        (512, 32, 2, Some(("SQ", 2))),
        (256, 64, 2, None),
        (256, 32, 3, None),
    ] {
        let mut cfg = decode(lat, 64, bn, st).with("PRODUCER", 1);
        if let Some((k, x)) = extra {
            cfg.set(k, x);
        }
        v.push((&tpla_kernels::latent_decode, cfg, sm90));
    }
    // The producer feeding 16- / 32-row mma.sync consumer warps (one warpgroup).
    for (lat, bh, bn, st) in [
        (512, 16, 32, 2),
        (512, 16, 64, 2),
        (512, 32, 32, 3),
        (256, 16, 32, 2),
    ] {
        let cfg = decode(lat, bh, bn, st).with("PRODUCER", 1);
        v.push((&tpla_kernels::latent_decode, cfg.clone(), sm90));
    }
    // Two producer warpgroups converting beside one consumer warpgroup (`FP8_PRODUCERS = 2`):
    // 16- / 32-row blocks and the shard's 64-row block.
    for (lat, bh, bn, st) in [
        (512, 16, 64, 3),
        (512, 16, 32, 2),
        (512, 32, 32, 3),
        (256, 16, 64, 3),
        (256, 64, 64, 2),
        (128, 16, 64, 3),
    ] {
        let cfg = decode(lat, bh, bn, st)
            .with("PRODUCER", 1)
            .with("FP8_PRODUCERS", 2);
        v.push((&tpla_kernels::latent_decode, cfg, sm90));
    }
    // What `EnginePlan` builds with `kv_dtype: Fp8` on its default tune values: the uniform and
    // the balanced (`KV_CHUNKS`) decode, one and two query tokens, MLA and a g = 2 shard.
    for (heads, lat) in [(16usize, 512usize), (128, 512), (128, 256)] {
        let mut p = tpla_kernels::ops::DecodeParams::new(8, heads, lat, 64, 4, 0.1);
        p.set_fp8_cache();
        for p in [p.clone(), p.with_query_len(2)] {
            v.push((&tpla_kernels::latent_decode, p.decode_config(), sm90));
            v.push((
                &tpla_kernels::latent_decode,
                p.balanced_decode_config(),
                sm90,
            ));
        }
    }
    // And on a Hopper device, where the plan's FP8 default is the producer-fed schedule
    // (`src/engine/kv_dtype.rs`: 16-row blocks of three 64-token stages converted by two
    // producer warpgroups up to 16 heads, 64-row blocks of two 32-token stages above and for two
    // query tokens).
    let wide = [
        ("BLOCK_H", 64),
        ("BLOCK_N", 32),
        ("STAGES", 2),
        ("PRODUCER", 1),
        ("FP8_PRODUCERS", 1),
    ];
    for (heads, lat) in [(16usize, 512usize), (64, 512), (128, 256)] {
        let mut p = tpla_kernels::ops::DecodeParams::new(8, heads, lat, 64, 4, 0.1);
        p.set_fp8_cache();
        let narrow = [
            ("BLOCK_H", 16),
            ("BLOCK_N", 64),
            ("STAGES", 3),
            ("PRODUCER", 1),
            ("FP8_PRODUCERS", 2),
        ];
        for (k, x) in if heads <= 16 { narrow } else { wide } {
            p.decode.set(k, x);
        }
        let mut p2 = p.clone().with_query_len(2);
        for (k, x) in wide {
            p2.decode.set(k, x);
        }
        for p in [p, p2] {
            v.push((&tpla_kernels::latent_decode, p.decode_config(), sm90));
            v.push((
                &tpla_kernels::latent_decode,
                p.balanced_decode_config(),
                sm90,
            ));
        }
    }
    for lat in [512i64, 256, 128] {
        for bt in [1i64, 16] {
            for t in [sm90, sm80] {
                let cfg = tpla_kernels::append_rows
                    .default_config(&[("ROW", lat + 64)])
                    .unwrap()
                    .with("BLOCK_T", bt)
                    .with("KV_FP8", lat);
                v.push((&tpla_kernels::append_rows, cfg, t));
            }
        }
    }
    v
}

/// Compiles one variant: `Ok(what ptxas reported)` or why it failed.
fn compile_one(def: &dyn KernelDef, cfg: &Config, target: Target) -> Result<String, String> {
    let k = def.build(cfg).map_err(|e| format!("build: {e}"))?;
    let src = tpla_codegen::cuda::emit(&k, target).map_err(|e| format!("emit: {e}"))?;
    if !src.code.contains("tpla_e8_") && !src.code.contains("tpla_q8_") {
        return Err("the kernel does not convert FP8 rows".to_string());
    }
    let producer = cfg.try_get("PRODUCER") == Some(1) && target == Target::sm90();
    if producer
        && !src
            .code
            .contains("unsigned char* const stg_ = tpla_smem + ")
    {
        return Err("PRODUCER = 1 without the FP8 producer's staging ring".to_string());
    }
    let opts = default_options(&target.arch_name());
    let t0 = std::time::Instant::now();
    let c = compile(&src.name, &src.code, &opts).map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let what = format!(
        "{} threads, {} B shared, compiled in {secs:.2} s",
        src.block_threads, src.shared_bytes
    );
    match &c.report {
        Some(r) if !r.spill_free() => Err(format!(
            "{} B stack frame, {} / {} B spilled ({what})",
            r.stack_frame_bytes, r.spill_store_bytes, r.spill_load_bytes
        )),
        Some(r) => Ok(format!("{} regs, {what}", r.registers)),
        None => Ok(format!("no ptxas report, {what}")),
    }
}

#[test]
fn nvrtc_compiles_the_fp8_cache_kernels_without_spills() {
    let test = "nvrtc_compiles_the_fp8_cache_kernels_without_spills";
    if !nvrtc_or_skip(test) {
        return;
    }
    let queue = std::sync::Mutex::new(cases());
    let n = queue.lock().unwrap().len();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((def, cfg, target)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let label = format!("{} [{cfg}] {}", def.name(), target.arch_name());
                match compile_one(def, &cfg, target) {
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
