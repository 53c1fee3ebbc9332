//! Prints the generated CUDA C++ of the decode kernel for one config and, where NVRTC loads, the
//! ptxas report. Usage: [WARPS=n] [PRODUCER=1 [TMA=1]] [SEESAW=1] [WG_SPLIT=n] [KV_FP8=LAT] cuda_dump LAT BLOCK_H BLOCK_N STAGES [out.cu]
//!
//! `cuda_dump --all DIR` instead writes the CUDA source of every kernel variant the backend's
//! tests cover into `DIR`, one file per variant (see [`dump_all`]): regenerate it before and after
//! a change to the emitter and `diff -r` the two directories to see exactly what the change does
//! to the code the GPU runs.
#[path = "../../codegen/tests/support/samples.rs"]
mod samples;

use samples::{latent_decode, DecodeParams};
use tpla_codegen::ir::Kernel;
use tpla_codegen::{Config, KernelDef};
use tpla_runtime::cuda::nvrtc::{compile, default_options};
use tpla_runtime::cuda::{F32Gemm, Target};

const WIDTHS: [i64; 4] = [512, 256, 128, 64];
const ROPE: i64 = 64;

/// One file: the launch facts of the emitted source (or the emit error), then the code without
/// the shared prelude (written once, as `prelude.cu`, and checked to start every source).
fn write_variant(dir: &std::path::Path, file: &str, k: Result<Kernel, String>, t: Target) {
    let text = match k.and_then(|k| tpla_codegen::cuda::emit(&k, t).map_err(|e| e.to_string())) {
        Ok(src) => {
            let prelude = tpla_codegen::cuda::PRELUDE;
            assert!(src.code.starts_with(prelude), "{file}: no prelude");
            format!(
                "// name {} threads {} smem {} stages {:?} f32_gemm {:?}\n// params {:?}\n{}",
                src.name,
                src.block_threads,
                src.shared_bytes,
                src.stages,
                src.f32_gemm,
                src.params,
                &src.code[prelude.len()..]
            )
        }
        Err(e) => format!("ERROR {e}\n"),
    };
    std::fs::write(dir.join(file), text).expect("write variant");
}

/// Every library kernel x tune candidate x latent width {512, 256, 128, 64} on sm_90a, sm_80,
/// sm_89 and sm_75; on sm_90a also the decode kernel with `WARPS` = 4 / 8, with `WGMMA` = 0 and
/// with `PRODUCER` = 1, with `PRODUCER` = `TMA` = 1, with `KV_CHUNKS` = 1 (a per-sequence split table) and with
/// `SEESAW` = 1, with `SEESAW` = `PRODUCER` = 1 and with `SEESAW` = `PRODUCER` = `TMA` = 1; `combine_counted`
/// and `split_schedule` (the balanced schedule); and the builder decode samples (bf16 / f32 q, bf16 / f32 p, every tile
/// size) on sm_90a and sm_80, and on sm_90a with f32 gemm operands rounded to bf16 and with FMA
/// gemms.
fn dump_all(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("create dir");
    std::fs::write(dir.join("prelude.cu"), tpla_codegen::cuda::PRELUDE).expect("write prelude");
    let targets = [
        ("sm90a", Target::sm90()),
        ("sm80", Target::new(8, 0)),
        ("sm89", Target::new(8, 9)),
        ("sm75", Target::new(7, 5)),
    ];
    // The builder samples also under the other f32 gemm policies.
    let sample_targets = [
        ("sm90a", Target::sm90()),
        ("sm80", Target::new(8, 0)),
        (
            "sm90a_round",
            Target::sm90().with_f32_gemm(F32Gemm::RoundBf16),
        ),
        ("sm90a_fma", Target::sm90().with_f32_gemm(F32Gemm::Fma)),
    ];
    let defs: [(&dyn KernelDef, &str); 5] = [
        (&tpla_kernels::latent_decode, "LAT"),
        (&tpla_kernels::combine_splits, "LAT"),
        (&tpla_kernels::combine_counted, "LAT"),
        (&tpla_kernels::append_rows, "ROW"),
        (&tpla_kernels::head_proj, "LAT"),
    ];
    let mut n = 0;
    for lat in WIDTHS {
        for (def, shape) in defs {
            let consts: Vec<(&str, i64)> = match shape {
                "ROW" => vec![("ROW", lat + ROPE)],
                _ if def.name() == "head_proj" => vec![("LAT", lat), ("DV", 128)],
                _ if def.name() == "latent_decode" => vec![("LAT", lat), ("ROPE", ROPE)],
                _ => vec![("LAT", lat)],
            };
            for cfg in def.tune_space(&consts).expect("tune space") {
                let mut extras: Vec<(&str, Config)> = vec![("", cfg.clone())];
                if def.name() == "latent_decode" {
                    for (tag, knob, v) in [
                        ("w4", "WARPS", 4),
                        ("w8", "WARPS", 8),
                        ("nowg", "WGMMA", 0),
                        ("ws", "PRODUCER", 1),
                        ("chunks", "KV_CHUNKS", 1),
                        ("ss", "SEESAW", 1),
                    ] {
                        extras.push((tag, cfg.clone().with(knob, v)));
                    }
                    let tma = cfg.clone().with("PRODUCER", 1).with("TMA", 1);
                    extras.push(("tma", tma));
                    let base = cfg.clone().with("SEESAW", 1).with("PRODUCER", 1);
                    extras.push(("ssws", base.clone()));
                    extras.push(("sstma", base.with("TMA", 1)));
                    // Every searched schedule setting the lines above do not name (`PINGPONG`,
                    // `SOFTMAX_OVERLAP`, `WG_KV_SPLIT`, `SCORE_WG`, `SPLIT_RELEASE`, ...).
                    for set in tpla_codegen::schedule::SEARCHED_SETTINGS {
                        let named = set
                            .iter()
                            .all(|(n, _)| ["PRODUCER", "TMA", "SEESAW"].contains(n));
                        if !named {
                            let mut c = cfg.clone();
                            for (knob, v) in *set {
                                c.set(knob, *v);
                            }
                            extras.push(("set", c));
                        }
                    }
                    // Knobs the tuner does not search, but a config may set.
                    for knobs in [
                        &[("PRODUCER", 1), ("QK_AHEAD", 1)][..],
                        &[("PRODUCER", 1), ("TMA", 1), ("QK_AHEAD", 1)],
                        &[("PRODUCER", 1), ("TMA", 1), ("PREFETCH", 1)],
                    ] {
                        let mut c = cfg.clone();
                        for (knob, v) in knobs {
                            c.set(knob, *v);
                        }
                        extras.push(("opt", c));
                    }
                }
                for (tag, cfg) in extras {
                    for (tname, t) in targets {
                        if !tag.is_empty() && tname != "sm90a" {
                            continue;
                        }
                        let file = format!("{}.{cfg}{tag}.{tname}.cu", def.name())
                            .replace(['=', ','], "_");
                        write_variant(dir, &file, def.build(&cfg).map_err(|e| e.to_string()), t);
                        n += 1;
                    }
                }
            }
        }
    }
    for lat in WIDTHS {
        for bh in [16, 32, 64] {
            for bn in [16, 32, 64] {
                for st in [1, 2, 3] {
                    for (q_bf16, p_bf16) in
                        [(true, true), (false, true), (true, false), (false, false)]
                    {
                        let p = DecodeParams {
                            lat: lat as usize,
                            rope: ROPE as usize,
                            block_h: bh,
                            block_n: bn,
                            stages: st,
                            q_bf16,
                            p_bf16,
                        };
                        for (tname, t) in &sample_targets {
                            let file = format!(
                                "samples.lat{lat}_bh{bh}_bn{bn}_st{st}_q{}_p{}.{tname}.cu",
                                q_bf16 as u8, p_bf16 as u8
                            );
                            write_variant(
                                dir,
                                &file,
                                latent_decode(p).map_err(|e| e.to_string()),
                                *t,
                            );
                            n += 1;
                        }
                    }
                }
            }
        }
    }
    // The balanced schedule's kernel per BLOCK_N, for a small and a large batch.
    for bn in [16, 32, 64] {
        for max_b in [32, 1024] {
            let cfg = tpla_kernels::split_schedule
                .default_config(&[
                    ("BLOCK_N", bn),
                    ("MAX_B", max_b),
                    (
                        "PROBES",
                        tpla_kernels::ops::schedule_probes(max_b as usize) as i64,
                    ),
                ])
                .expect("split_schedule constants");
            let file = format!("split_schedule.{cfg}.sm90a.cu").replace(['=', ','], "_");
            let k = tpla_kernels::split_schedule.build(&cfg);
            write_variant(dir, &file, k.map_err(|e| e.to_string()), Target::sm90());
            n += 1;
        }
    }
    println!("{n} variants written to {}", dir.display());
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--all") {
        let dir = std::env::args().nth(2).expect("usage: cuda_dump --all DIR");
        dump_all(std::path::Path::new(&dir));
        return;
    }
    let a: Vec<i64> = std::env::args()
        .skip(1)
        .take(4)
        .map(|s| s.parse().expect("integer"))
        .collect();
    let path = std::env::args().nth(5);
    let path: Option<String> = path;
    let cfg = Config::new()
        .with("LAT", a[0])
        .with("ROPE", 64)
        .with("BLOCK_H", a[1])
        .with("BLOCK_N", a[2])
        .with("STAGES", a[3]);
    let mut cfg = cfg.with("WG_SPLIT", 128);
    for knob in [
        "WARPS",
        "PRODUCER",
        "TMA",
        "WG_SPLIT",
        "SQ",
        "SEESAW",
        "KV_FP8",
        "QK_AHEAD",
        "WG_KV_SPLIT",
        "PINGPONG",
        "SOFTMAX_OVERLAP",
        "SCORE_WG",
        "PREFETCH",
        "FP8_PRODUCERS",
        "FULL_GROUPS",
        "PV_FIRST",
        "SPLIT_RELEASE",
        "KV_CHUNKS",
    ] {
        if let Some(w) = std::env::var(knob).ok().and_then(|w| w.parse().ok()) {
            cfg.set(knob, w);
        }
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
            // ptxas' warnings (e.g. wgmma serialised) beside its report.
            for line in c.log.lines().filter(|l| {
                std::env::var("FULL_LOG").is_ok()
                    || l.contains("arning")
                    || l.contains("wgmma")
                    || l.contains("C7")
            }) {
                println!("{line}");
            }
            // Beside the source: the CUBIN (for nvdisasm / cuobjdump) when one was produced.
            if let (Some(p), tpla_runtime::cuda::nvrtc::Image::Cubin(bytes)) = (&path, &c.image) {
                std::fs::write(format!("{p}.cubin"), bytes).unwrap();
            }
        }
        Err(e) => println!("compile: {e}"),
    }
}
