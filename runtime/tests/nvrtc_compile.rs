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
use tpla_runtime::cuda::nvrtc::{compile, default_options, Image, PtxasReport};
use tpla_runtime::cuda::Target;

const WIDTHS: [usize; 4] = [512, 256, 128, 64];
const ROPE: usize = 64;

#[path = "nvrtc_compile/skip.rs"]
mod skip;
use skip::nvrtc_or_skip;

struct Case {
    label: String,
    kernel: Result<Kernel, String>,
}

fn library_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |def: &dyn KernelDef, consts: &[(&str, i64)]| {
        for cfg in def.tune_space(consts).unwrap() {
            if too_tall(&cfg) {
                continue;
            }
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

/// A decode config whose 128-row head block cannot hold the latent's accumulators (256
/// registers per thread at latent 512): the emitter refuses it with a config error
/// (`latent_decode_blocks_too_tall_for_the_registers_are_refused`), so it is not compiled.
fn too_tall(cfg: &Config) -> bool {
    cfg.get("BLOCK_H").ok() == Some(128) && cfg.get("LAT").ok() == Some(512)
}

/// The 128-row decode blocks the library tune space holds at latent 512 are refused before any
/// compile, with an error that names the knob to change; at the shard widths they build on the
/// warpgroup geometry (compiled without spills by the library test above).
#[test]
fn latent_decode_blocks_too_tall_for_the_registers_are_refused() {
    let consts = [("LAT", 512), ("ROPE", ROPE as i64)];
    let tall: Vec<Config> = tpla_kernels::latent_decode
        .tune_space(&consts)
        .unwrap()
        .into_iter()
        .filter(too_tall)
        .collect();
    assert!(!tall.is_empty());
    for cfg in tall {
        let k = tpla_kernels::latent_decode.build(&cfg).unwrap();
        let e = tpla_codegen::cuda::emit(&k, Target::sm90())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BLOCK_H") && e.contains("registers"),
            "{cfg}: {e}"
        );
    }
    for lat in [256i64, 128] {
        let cfg = tpla_kernels::latent_decode
            .default_config(&[("LAT", lat), ("ROPE", ROPE as i64)])
            .unwrap()
            .with("BLOCK_H", 128)
            .with("BLOCK_N", 64);
        let k = tpla_kernels::latent_decode.build(&cfg).unwrap();
        assert!(
            tpla_codegen::cuda::emit(&k, Target::sm90())
                .unwrap()
                .warpgroups,
            "{cfg}"
        );
    }
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

/// Where a variant's resource numbers came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// ptxas' report in the NVRTC log (checked against the CUBIN's attributes too).
    Ptxas,
    /// The CUBIN's `.nv.info` attributes: the log had no report.
    Cubin,
    /// The driver, for a module loaded on this GPU: neither the log nor the CUBIN had them.
    Driver,
}

struct Outcome {
    label: String,
    result: Result<(PtxasReport, Source, Duration, u32, u32), String>,
}

/// The resources of a compiled variant: ptxas' report, which must agree with the CUBIN's
/// attributes (so the CUBIN reader is checked on every variant wherever NVRTC gives the report,
/// as the CI wheel does); without a report (the toolkit NVRTC 13.0 on the GPU hosts leaves it out
/// for some programs) the CUBIN's attributes, else the driver's.
fn resources(
    c: &tpla_runtime::cuda::nvrtc::Compiled,
    k: &Kernel,
    name: &str,
    target: Target,
) -> Result<(PtxasReport, Source), String> {
    let from_cubin = match &c.image {
        Image::Cubin(elf) => cubin::report(elf, name),
        Image::Ptx(_) => Err("NVRTC returned PTX, no CUBIN".into()),
    };
    match (&c.report, from_cubin) {
        (Some(r), Ok(e)) => {
            if (e.registers, e.stack_frame_bytes) != (r.registers, r.stack_frame_bytes) {
                return Err(format!(
                    "the CUBIN says {} registers, {} B stack; ptxas' report {} registers, {} B stack",
                    e.registers, e.stack_frame_bytes, r.registers, r.stack_frame_bytes
                ));
            }
            Ok((r.clone(), Source::Ptxas))
        }
        (Some(_), Err(e)) => Err(format!("CUBIN attributes unreadable: {e}")),
        (None, Ok(e)) => Ok((e, Source::Cubin)),
        (None, Err(e)) => driver_report(k, target)
            .map(|r| (r, Source::Driver))
            .ok_or_else(|| format!("no ptxas report in the log, {e}:\n{}", c.log)),
    }
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
                    // The overlapped loop exists to keep the softmax between the P·V's issue and
                    // its wait, `PINGPONG`'s to wait for the P·V only at the next q·kᵀ
                    // (`pv_defer.rs`): a wait ptxas injects (C7517) or a serialised wgmma
                    // (C7510) undoes either.
                    if (case.label.contains("SOFTMAX_OVERLAP") || case.label.contains("PINGPONG"))
                        && (c.log.contains("C7517") || c.log.contains("C7510"))
                    {
                        return Err(format!("ptxas serialised the overlap:\n{}", c.log));
                    }
                    let (report, source) = resources(&c, &k, &src.name, target)?;
                    Ok((
                        report,
                        source,
                        c.compile_time,
                        src.block_threads,
                        src.shared_bytes,
                    ))
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
    let mut not_from_ptxas = Vec::new();
    for o in outcomes {
        match &o.result {
            Ok((r, source, t, threads, smem)) => {
                if *source != Source::Ptxas {
                    not_from_ptxas.push(format!("{} ({source:?})", o.label));
                }
                println!(
                    "{:<90} {:>3} regs  stack {:>3}  spill {:>3}/{:>3}  {:>4} thr  {:>6} B smem  {:>5.0} ms{}",
                    o.label,
                    r.registers,
                    r.stack_frame_bytes,
                    r.spill_store_bytes,
                    r.spill_load_bytes,
                    threads,
                    smem,
                    t.as_secs_f64() * 1e3,
                    match source {
                        Source::Ptxas => "",
                        Source::Cubin => "  (from the CUBIN: no ptxas report)",
                        Source::Driver => "  (from the driver: no ptxas report)",
                    }
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
    if !not_from_ptxas.is_empty() {
        // Registers and stack frame (which holds any spill) were checked; ptxas' separate spill
        // byte counts were not, for these.
        println!(
            "{test}: {} variant(s) without a ptxas report, checked by registers and stack frame \
             only (spill counts unchecked): {}",
            not_from_ptxas.len(),
            not_from_ptxas.join("; ")
        );
    }
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
        for cfg in tpla_kernels::latent_decode.tune_space(&consts).unwrap() {
            // 64-row blocks, and 128-row ones (two warpgroups along the rows) at the shard
            // widths where they build, WG_SPLIT being moot there.
            let tall = cfg.get("BLOCK_H").ok() == Some(128)
                && lat <= 256
                && cfg.get("WG_SPLIT").ok() == Some(128);
            if cfg.get("BLOCK_H").ok() != Some(64) && !tall {
                continue;
            }
            let cfg = cfg.with("PRODUCER", 1);
            if tall && lat == 256 {
                // The row-stacked warpgroups taking turns (named barriers around each gemm).
                let pp = cfg.clone().with("PINGPONG", 1);
                cases.push(Case {
                    label: format!("latent_decode [{pp}]"),
                    kernel: tpla_kernels::latent_decode
                        .build(&pp)
                        .map_err(|e| e.to_string()),
                });
            }
            let (bn, st) = (cfg.get("BLOCK_N").ok(), cfg.get("STAGES").ok());
            if matches!(bn, Some(32 | 64))
                && matches!(st, Some(2..=4))
                && cfg.get("WG_SPLIT").ok() == Some(128)
            {
                // FlashAttention-3's overlap inside each warpgroup: P kept packed across blocks.
                let ov = cfg.clone().with("SOFTMAX_OVERLAP", 1);
                cases.push(Case {
                    label: format!("latent_decode [{ov}]"),
                    kernel: tpla_kernels::latent_decode
                        .build(&ov)
                        .map_err(|e| e.to_string()),
                });
            }
            if !tall
                && lat <= 256
                && matches!(st, Some(2 | 4))
                && cfg.get("WG_SPLIT").ok() == Some(128)
            {
                // Two warpgroups on alternate blocks of the 64-row tile, each with the whole
                // accumulator (up to 128 registers of it at latent 256).
                let kv = cfg.clone().with("WG_KV_SPLIT", 1);
                let kernel = tpla_kernels::latent_decode
                    .build(&kv)
                    .map_err(|e| e.to_string());
                if let Ok(k) = &kernel {
                    let src = tpla_codegen::cuda::emit(k, Target::sm90()).unwrap();
                    assert!(src.code.contains("it_ += 2)"), "{kv}: not split");
                }
                cases.push(Case {
                    label: format!("latent_decode [{kv}]"),
                    kernel,
                });
            }
            let roles_fit = match lat {
                512 => matches!((bn, st), (Some(32), Some(2..=4)) | (Some(64), Some(2))),
                256 | 128 => matches!((bn, st), (Some(32 | 64), Some(2..=4))),
                _ => false,
            };
            if !tall && roles_fit && cfg.get("WG_SPLIT").ok() == Some(128) {
                // A score warpgroup beside the value warpgroups (`roles.rs`): two at latent
                // 512 (384 threads), one at the shard widths (256).
                let sw = cfg.clone().with("SCORE_WG", 1);
                let kernel = tpla_kernels::latent_decode
                    .build(&sw)
                    .map_err(|e| e.to_string());
                if let Ok(k) = &kernel {
                    let src = tpla_codegen::cuda::emit(k, Target::sm90()).unwrap();
                    assert!(src.score_wg, "{sw}: no roles");
                }
                cases.push(Case {
                    label: format!("latent_decode [{sw}]"),
                    kernel,
                });
            }
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
    // 4 widths x BLOCK_N {16, 32, 64} x STAGES {1, 2, 3, 4} x WG_SPLIT {32, 128}, and 128-row
    // blocks at 3 widths x BLOCK_N x STAGES; SOFTMAX_OVERLAP at BLOCK_N {32, 64} x STAGES
    // {2, 3, 4} on the 4 + 3 widths; WG_KV_SPLIT at the 3 shard widths x BLOCK_N x STAGES
    // {2, 4}; SCORE_WG at latent 512, BLOCK_N 32 x STAGES {2, 3, 4} and BLOCK_N 64 x 2, and
    // at latent 256 and 128, BLOCK_N {32, 64} x STAGES {2, 3, 4}.
    assert_eq!(cases.len(), 96 + 36 + 12 + 24 + 18 + 18 + 4 + 12);
    let outcomes = compile_all(cases, Target::sm90());
    check(&outcomes, "warp-specialised decode variants");
}

/// Resources of a function read from a CUBIN without ptxas' log (`nvrtc_compile/cubin.rs`).
#[path = "nvrtc_compile/cubin.rs"]
mod cubin;

/// Multi-token queries (`SQ = 2, 4`: MTP / speculative verify, causal among the new tokens): the
/// library decode kernel at MLA and shard widths, every `BLOCK_H`, 16- and 64-token blocks and the
/// warp-specialised 64-row variant, compiles for sm_90a without spills; the defaults at every
/// width for Ampere and Ada too. One variant sits at the register limit already at `SQ = 1`
/// (`BLOCK_H = 32, BLOCK_N = 64, LAT = 512`: 254 registers) and the causal mask's extra
/// registers spill a few bytes there: it must compile with at most 16 bytes of spill stores and
/// 64 of spill loads (16 / 16 while the mask went through shared memory with two block barriers
/// per block; since 2026-12-05 the layout pass keeps it in registers, `cuda/layout.rs`).
#[test]
fn multi_token_decode_variants_compile_without_spills() {
    if !nvrtc_or_skip("multi_token_decode_variants_compile_without_spills") {
        return;
    }
    let case = |cfg: Config| Case {
        label: format!("latent_decode [{cfg}]"),
        kernel: tpla_kernels::latent_decode
            .build(&cfg)
            .map_err(|e| e.to_string()),
    };
    let (mut hopper, mut older) = (Vec::new(), Vec::new());
    for sq in [2i64, 4] {
        for lat in WIDTHS {
            let consts = [("LAT", lat as i64), ("ROPE", ROPE as i64), ("SQ", sq)];
            let base = tpla_kernels::latent_decode.default_config(&consts).unwrap();
            older.push(case(base.clone()));
            if lat != 512 && lat != 128 {
                continue;
            }
            for bh in [16, 32, 64] {
                hopper.push(case(base.clone().with("BLOCK_H", bh)));
            }
            if lat == 128 {
                // Two tokens x 64 heads fill a 128-row block: two warpgroups along the rows.
                hopper.push(case(base.clone().with("BLOCK_H", 128)));
            }
            let wide = base.clone().with("BLOCK_H", 64);
            hopper.push(case(wide.clone().with("BLOCK_N", 16)));
            hopper.push(case(wide.with("PRODUCER", 1)));
        }
    }
    assert_eq!((hopper.len(), older.len()), (22, 8));
    let edge = "BLOCK_H=32,BLOCK_N=64,LAT=512,";
    let (at_limit, rest): (Vec<_>, Vec<_>) = compile_all(hopper, Target::sm90())
        .into_iter()
        .partition(|o| o.label.contains(edge));
    check(&rest, "multi-token decode on sm_90a");
    assert_eq!(at_limit.len(), 2);
    for o in &at_limit {
        match &o.result {
            Ok((r, ..)) => assert!(
                r.spill_store_bytes <= 16 && r.spill_load_bytes <= 64,
                "{}: {r:?}",
                o.label
            ),
            Err(e) => panic!("{}: {e}", o.label),
        }
    }
    for target in [Target::new(8, 0), Target::new(8, 9)] {
        let cases: Vec<Case> = older
            .iter()
            .map(|c| Case {
                label: c.label.clone(),
                kernel: c.kernel.clone(),
            })
            .collect();
        check(
            &compile_all(cases, target),
            &format!("multi-token decode on {}", target.arch_name()),
        );
    }
}

#[test]
fn the_timing_loop_and_roofline_kernels_compile_for_hopper_and_ampere() {
    if !nvrtc_or_skip("the_timing_loop_and_roofline_kernels_compile_for_hopper_and_ampere") {
        return;
    }
    for arch in ["sm_90a", "sm_80"] {
        for (name, source) in tpla_runtime::cuda::bench::timing_kernels() {
            let options = tpla_runtime::cuda::nvrtc::default_options(arch);
            let c = tpla_runtime::cuda::nvrtc::compile(name, source, &options)
                .unwrap_or_else(|e| panic!("{name} for {arch}: {e}"));
            println!("{name} {arch}: {:?}", c.report);
        }
    }
}
