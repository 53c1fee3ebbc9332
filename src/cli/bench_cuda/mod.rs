//! `tpla bench` on a CUDA GPU: split-KV latent decode (the `tpla-kernels` DSL kernels) for MLA
//! (latent 512 + RoPE 64) and a TPLA shard (256 + 64) at H ∈ {16, 64, 128}, (B, L) ∈
//! {(128, 4096), (64, 32768)}, page size 64, s_q = 1; then page sizes 1 and 16 (MLA, B 128 x 4K,
//! H 16/64) and a variable-length batch (64 sequences, lengths uniform in 1..=32768; MLA H 16/64,
//! the shard at H 64), each with a smaller sweep; a variable-length case is run with uniform
//! splits and again (row `+bal`) with the balanced schedule computed on the device
//! (`super::bench_balanced`). For each case a sweep of tune configs
//! (BLOCK_H × BLOCK_N × STAGES × warps) times the decode (median of 20 event-timed runs after
//! warm-up); the full op (decode, plus the combine when there is more than one split) then decides
//! among the four fastest. A same-process roofline (streaming read, device copy), cold NVRTC
//! compile times per variant and cache-hit times are reported beside it, and each case's bandwidth
//! as a fraction of both (bytes: KV once + q + out, bf16; the FP8 cache rows `mla-fp8`, H 16/64
//! at 4K and 32K, count 656 bytes a token); the table is printed and
//! `DIR/cuda-decode-DATE-COMMIT.json` written (device, driver, date, commit).

use std::path::PathBuf;

use tpla_codegen::{Config, KernelDef};
use tpla_kernels::fp8::{fp8_carrier_row, launch_decode};
use tpla_kernels::{combine_splits, latent_decode};
use tpla_runtime::cuda::bench::{
    self, measure, roofline_default, BenchReport, CompileTimes, DecodeCaseResult, DecodeShape,
    Measurement, Roofline,
};
use tpla_runtime::cuda::{
    compile_kernel, nvrtc, CudaExecutor, CudaPagedCache, CudaTensor, KernelCache,
};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, Executor, HostPagedCache, HostTensor, RuntimeError};

mod cache;
mod check;
mod sweep;

use cache::*;
use check::*;
use sweep::*;

/// What the GPU benchmark runs.
#[derive(Clone, Debug)]
pub struct GpuBenchOpts {
    /// Fewer shapes and configs (B 128 x 4K only; BLOCK_N 64, 2 stages).
    pub quick: bool,
    /// Directory for the JSON report.
    pub out: PathBuf,
    /// Only this variant (`mla` or `tpla-shard`).
    pub variant: Option<String>,
    /// Head counts.
    pub heads: Vec<usize>,
    /// Only configs with these `KEY=value,..` values (profiling one variant).
    pub config: Option<String>,
    /// Store the fastest config of each equal-length single-token bf16 case in the tune database.
    pub record_tune: bool,
    /// Only this equal-length `(batch, context)` case, page 64, none of the extra cases (the FP8
    /// one of that shape with `variant` `mla-fp8`).
    pub shape: Option<(usize, usize)>,
    /// Each sequence's pages in order in the pool (`--contiguous-pages`), not shuffled.
    pub contiguous_pages: bool,
}

/// A config from its `KEY=value,...` display form.
pub(crate) fn parse_config(text: &str) -> Config {
    let mut cfg = Config::new();
    for kv in text.split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            if let Ok(v) = v.parse() {
                cfg.set(k, v);
            }
        }
    }
    cfg
}

/// Runs the GPU benchmark matrix on `exec`, prints the table and writes the JSON report.
pub fn run(exec: &CudaExecutor, opts: &GpuBenchOpts) -> Result<(), RuntimeError> {
    let out = opts.out.as_path();
    println!("tpla bench (cuda) on {}", exec.backend_name());
    let roof = roofline_default(exec)?;
    println!(
        "roofline: read {:.0} GB/s, copy {:.0} GB/s; L2 emptied before each timed run by {} \
         (TPLA_BENCH_FLUSH=read: a streaming read, no dirty lines); programmatic dependent \
         launch {} (TPLA_PDL)",
        roof.read_gbps,
        roof.copy_gbps,
        tpla_runtime::cuda::bench::flush_mode()?,
        if exec.dependent_launch() { "on" } else { "off" }
    );

    // Compile times: a fresh disk cache in a temporary directory.
    let tmp = std::env::temp_dir().join(format!("tpla-bench-kcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut compile = CompileTimes {
        variants: Vec::new(),
    };
    for (name, def, consts) in [
        (
            "latent_decode",
            &latent_decode as &dyn KernelDef,
            vec![("LAT", 512i64), ("ROPE", 64)],
        ),
        (
            "latent_decode",
            &latent_decode as &dyn KernelDef,
            vec![("LAT", 256i64), ("ROPE", 64)],
        ),
        (
            "combine_splits",
            &combine_splits as &dyn KernelDef,
            vec![("LAT", 512i64)],
        ),
    ] {
        let cfg = def.default_config(&consts)?;
        let ir = def.build(&cfg)?;
        let cold_cache = KernelCache::new(Some(tmp.clone()));
        let cold = compile_kernel(&ir, exec.target(), &cold_cache).map_err(RuntimeError::from)?;
        let warm = compile_kernel(&ir, exec.target(), &cold_cache).map_err(RuntimeError::from)?;
        let disk = compile_kernel(&ir, exec.target(), &KernelCache::new(Some(tmp.clone())))
            .map_err(RuntimeError::from)?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "compile {name} [{cfg}]: cold {:.0} ms, memory hit {:.3} ms, disk hit {:.3} ms",
            ms(cold.lookup.elapsed),
            ms(warm.lookup.elapsed),
            ms(disk.lookup.elapsed)
        );
        compile.variants.push((
            format!("{name} [{cfg}]"),
            ms(cold.lookup.elapsed),
            ms(warm.lookup.elapsed),
            ms(disk.lookup.elapsed),
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let mut cases = Vec::new();
    let specs = case_specs(opts);
    let total: usize = specs.iter().map(|c| c.heads.len()).sum();
    let progress = super::bench::progress_bar(total as u64, "cases");
    for spec in specs {
        let d = spec.lat + 64;
        let lens = match spec.variable {
            true => variable_lengths(spec.batch, spec.context),
            false => vec![spec.context; spec.batch],
        };
        let fp8 = spec.variant.contains("fp8");
        let cache = if fp8 {
            device_cache_fp8(exec, spec.context, spec.lat, spec.page_size, &lens)?
        } else {
            device_cache(
                exec,
                spec.context,
                d,
                spec.page_size,
                &lens,
                !opts.contiguous_pages,
            )?
        };
        for &heads in &spec.heads {
            let mut shape = DecodeShape::equal(
                spec.batch,
                heads * spec.sq,
                spec.context,
                spec.lat,
                64,
                spec.page_size,
            );
            if fp8 {
                shape.kv_row_bytes = fp8_carrier_row(spec.lat, 64) * 2;
            }
            if spec.variable {
                shape.total_tokens = lens.iter().sum();
                shape.lengths = format!("uniform 1..={}", spec.context);
            }
            let (variant, batch, context) = (spec.variant, spec.batch, spec.context);
            let page = spec.page_size;
            progress.inc(1);
            match run_case(
                exec, variant, &cache, shape, opts, spec.sweep, &roof, spec.sq,
            ) {
                Ok(mut r) => {
                    r.check_rel_diff =
                        check_small(exec, &r.config, spec.lat, page).unwrap_or(f64::NAN);
                    progress.suspend(|| println!(
                        "{variant} H={heads} B={batch} L={context} page {page} ({}): {:.1} us, {:.0} GB/s ({:.2}x read, {:.2}x copy roofline), {:.1} TFLOPS, {} splits {}, vs CPU {:.1e}",
                        r.shape.lengths,
                        r.time.median_ms * 1e3,
                        r.gbps,
                        r.fraction_of_read_roofline,
                        r.fraction_of_copy_roofline,
                        r.tflops,
                        r.config,
                        r.splits,
                        r.check_rel_diff
                    ));
                    // Where a combine follows, the parts beside the whole: a full op far above
                    // decode + combine is a gap between the launches, not a slow kernel.
                    if let Some(c) = &r.combine_only {
                        progress.suspend(|| println!(
                            "    decode alone {:.1} us, combine alone {:.1} us [{}], full op median {:.1} us (min {:.1}, max {:.1})",
                            r.decode_only.median_ms * 1e3,
                            c.median_ms * 1e3,
                            r.combine_config.as_deref().unwrap_or("default"),
                            r.time.median_ms * 1e3,
                            r.time.min_ms * 1e3,
                            r.time.max_ms * 1e3
                        ));
                    }
                    // The queue guard of `measure` should hide the host's launches; where a
                    // run's queueing outlasted it, the row's event times may hold host time.
                    if r.time.host_exposed_runs > 0 {
                        progress.suspend(|| println!(
                            "    note: {} of {} runs queued longer than the guard before them (host up to {:.1} us): their times may include the host's",
                            r.time.host_exposed_runs,
                            r.time.reps,
                            r.time.host_queue_max_us
                        ));
                    }
                    // A pinned `--config` usually leaves a few candidates (the emitter's warps
                    // and a forced count, say): each one's decode time, so a knob's kernel is
                    // seen even where another candidate wins.
                    if opts.config.is_some() && (2..=8).contains(&r.tried.len()) {
                        for (cfg, splits, ms) in &r.tried {
                            progress.suspend(|| {
                                println!(
                                    "    tried {:>9.1} us decode, {splits} splits  {cfg}",
                                    ms * 1e3
                                )
                            });
                        }
                    }
                    let balanced = spec
                        .variable
                        .then(|| super::bench_balanced::balanced_row(exec, &r, &cache, &roof));
                    cases.push(r);
                    match balanced {
                        None => {}
                        Some(Ok(row)) => {
                            let r = row.result;
                            progress.suspend(|| println!(
                                "{} H={heads} B={batch} L={context} page {page} ({}): {:.1} us (schedule {:.1} us, pieces of {} wave(s)), {:.0} GB/s ({:.2}x read, {:.2}x copy roofline), {} max splits {}, vs uniform {:.1e}",
                                r.variant,
                                r.shape.lengths,
                                r.time.median_ms * 1e3,
                                row.schedule.median_ms * 1e3,
                                row.waves,
                                r.gbps,
                                r.fraction_of_read_roofline,
                                r.fraction_of_copy_roofline,
                                r.config,
                                r.splits,
                                r.check_rel_diff
                            ));
                            cases.push(r);
                        }
                        Some(Err(e)) => progress.suspend(|| {
                            println!("{variant}+bal H={heads} B={batch} L={context}: FAILED: {e}")
                        }),
                    }
                }
                Err(e) => progress.suspend(|| {
                    println!("{variant} H={heads} B={batch} L={context} page {page}: FAILED: {e}")
                }),
            }
        }
    }
    progress.finish_and_clear();
    if opts.record_tune {
        record_tune(exec, &cases)?;
    }
    let report = BenchReport {
        kind: "cuda-latent-decode".into(),
        date: bench::today(),
        git_commit: super::bench::BUILD_COMMIT.to_string(),
        device: exec.info().clone(),
        nvrtc: nvrtc::nvrtc().map(|l| l.version).unwrap_or((0, 0)),
        roofline: roof,
        cases,
        compile,
    };
    println!("\n{}", bench::table(&report));
    let path = bench::write_report(out, &report)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `tpla bench --compile-only`: every sm_90a decode kernel the matrix sweeps (the same
/// [`sweep_configs`] per case) and each case's combine, compiled by NVRTC into the kernel cache
/// (`$TPLA_KERNEL_CACHE_DIR`), without a device. A later bench on a Hopper GPU whose NVRTC has
/// the same major.minor loads them from disk instead of compiling.
pub fn compile_only(opts: &GpuBenchOpts) -> Result<(), RuntimeError> {
    let mut pre = super::precompile::Precompiler::new("bench")?;
    for spec in case_specs(opts) {
        for &heads in &spec.heads {
            let shape = DecodeShape::equal(
                spec.batch,
                heads * spec.sq,
                spec.context,
                spec.lat,
                64,
                spec.page_size,
            );
            let configs = sweep_configs(
                spec.variant,
                &shape,
                spec.sweep,
                opts.quick,
                spec.sq,
                pre.target(),
                opts.config.as_deref(),
            );
            for cfg in configs {
                pre.compile(&latent_decode, &cfg);
            }
        }
        for (bd, bh) in check::COMBINE_CANDIDATES {
            pre.compile(
                &combine_splits,
                &combine_splits
                    .default_config(&[("LAT", spec.lat as i64)])?
                    .with("BLOCK_D", bd)
                    .with("BLOCK_H", bh),
            );
        }
    }
    pre.report();
    Ok(())
}

/// One cache (variant, batch, lengths, page size) of the matrix and the head counts run on it.
struct CaseSpec {
    variant: &'static str,
    lat: usize,
    batch: usize,
    context: usize,
    page_size: usize,
    variable: bool,
    heads: Vec<usize>,
    sweep: Sweep,
    /// Query tokens per sequence (MTP); with `s_q > 1` the case's `heads` in the report are the
    /// kernel's rows, `s_q · H` (what its flops count), and the variant says `-sq2` / `-sq4`.
    sq: usize,
}

impl CaseSpec {
    /// The FP8 latent cache's case (MLA rows of 656 bytes, page 64, equal lengths, the narrow
    /// sweep) at `batch` x `context` for `heads`.
    fn fp8(batch: usize, context: usize, heads: Vec<usize>) -> CaseSpec {
        CaseSpec {
            variant: "mla-fp8",
            lat: 512,
            batch,
            context,
            page_size: 64,
            variable: false,
            heads,
            sweep: Sweep::Narrow,
            sq: 1,
        }
    }
}

/// The bench matrix: MLA and the shard at (128, 4K) and (64, 32K), page 64, every `--gpu-heads`;
/// then (not with `--quick`) page sizes 1 and 16 and the variable-length batch at H 16 / 64.
fn case_specs(opts: &GpuBenchOpts) -> Vec<CaseSpec> {
    let one = opts.shape.map(|s| [s]);
    let bl: &[(usize, usize)] = if let Some(one) = &one {
        one
    } else if opts.quick {
        &[(128, 4096)]
    } else {
        &[(128, 4096), (64, 32768)]
    };
    let mut specs = Vec::new();
    for &(variant, lat) in &[("mla", 512usize), ("tpla-shard", 256usize)] {
        for &(batch, context) in bl {
            specs.push(CaseSpec {
                variant,
                lat,
                batch,
                context,
                page_size: 64,
                variable: false,
                heads: opts.heads.clone(),
                sweep: Sweep::Full,
                sq: 1,
            });
        }
    }
    // `--gpu-shape` with `--variant mla-fp8`: the FP8 case of that one shape (profiling it).
    if let (Some((batch, context)), Some("mla-fp8")) = (opts.shape, opts.variant.as_deref()) {
        specs.push(CaseSpec::fp8(batch, context, opts.heads.clone()));
    }
    if !opts.quick && opts.shape.is_none() {
        let small: Vec<usize> = opts.heads.iter().copied().filter(|&h| h <= 64).collect();
        for page_size in [1, 16] {
            specs.push(CaseSpec {
                variant: "mla",
                lat: 512,
                batch: 128,
                context: 4096,
                page_size,
                variable: false,
                heads: small.clone(),
                sweep: Sweep::Narrow,
                sq: 1,
            });
        }
        for (variant, lat, heads) in [
            ("mla", 512, small.clone()),
            (
                "tpla-shard",
                256,
                small.iter().copied().filter(|&h| h == 64).collect(),
            ),
        ] {
            specs.push(CaseSpec {
                variant,
                lat,
                batch: 64,
                context: 32768,
                page_size: 64,
                variable: true,
                heads,
                sweep: Sweep::Narrow,
                sq: 1,
            });
        }
        // The FP8 latent cache (656-byte rows) beside bf16: MLA at H 16 / 64, 4K and 32K.
        for (batch, context) in [(128, 4096), (64, 32768)] {
            specs.push(CaseSpec::fp8(batch, context, small.clone()));
        }
        // Multi-token queries (MTP, speculative verify) beside s_q = 1: MLA at H 16 / 64 / 128
        // and the shard at H 128, on the long-context batch where the decode turns compute-bound.
        for (variant, lat, sq, heads) in [
            ("mla-sq2", 512, 2, [16, 64, 128].as_slice()),
            ("mla-sq4", 512, 4, &[16, 64, 128]),
            ("tpla-shard-sq2", 256, 2, &[128]),
            ("tpla-shard-sq4", 256, 4, &[128]),
        ] {
            specs.push(CaseSpec {
                variant,
                lat,
                batch: 64,
                context: 32768,
                page_size: 64,
                variable: false,
                heads: heads
                    .iter()
                    .copied()
                    .filter(|h| opts.heads.contains(h))
                    .collect(),
                sweep: Sweep::Narrow,
                sq,
            });
        }
    }
    specs.retain(|c| !c.heads.is_empty() && opts.variant.as_deref().is_none_or(|v| v == c.variant));
    specs
}
