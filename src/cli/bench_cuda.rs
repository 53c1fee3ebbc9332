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
    /// Only this equal-length `(batch, context)` case, page 64, none of the extra cases.
    pub shape: Option<(usize, usize)>,
}

/// Whether `cfg` is in the sweep: every `KEY=value` of `want` (for profiling one variant); a
/// key the config does not carry counts as 0 (a schedule knob's default), so `SEESAW=0` selects
/// the configs without the knob.
fn config_selected(cfg: &Config, want: Option<&str>) -> bool {
    let Some(want) = want else {
        return true;
    };
    let have = parse_config(&cfg.to_string());
    parse_config(want)
        .iter()
        .all(|(k, v)| have.get(k).unwrap_or(0) == v)
}

/// Whether `SEESAW = 1` in `cfg` changes the emitted decode kernel on this device (at BLOCK_N 64
/// its pair ring does not fit and the kernel is the base config's): a sweep times it only then.
fn seesaw_applies(exec: &CudaExecutor, cfg: &Config) -> bool {
    latent_decode
        .build(cfg)
        .ok()
        .and_then(|k| tpla_codegen::cuda::emit(&k, exec.target()).ok())
        .is_some_and(|src| src.seesaw)
}

/// Pseudo-random bf16 in [-1, 1) without a slow RNG (the pool can be gigabytes).
fn pattern(i: usize, salt: u64) -> f32 {
    let x = (i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Sequence lengths of the variable-length case: uniform in `1..=max`, fixed by `i`.
fn variable_lengths(batch: usize, max: usize) -> Vec<usize> {
    (0..batch)
        .map(|i| 1 + ((i as u64 ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize % max)
        .collect()
}

/// A device cache with pages shuffled between sequences; `lens` tokens per sequence (each at
/// most `context`), `page_size` tokens per page.
fn device_cache(
    exec: &CudaExecutor,
    context: usize,
    d: usize,
    page_size: usize,
    lens: &[usize],
) -> Result<CudaPagedCache<bf16>, RuntimeError> {
    let batch = lens.len();
    let mut c = HostPagedCache::<bf16>::new(batch, context, page_size, d)?;
    // Shuffle whole pages between sequences so the block table matters.
    let mut table = c.block_table().to_vec();
    let n = table.len();
    for i in 0..n {
        table.swap(i, (i * 7919 + 13) % n);
    }
    c.set_block_table(table)?;
    for (i, x) in c.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(pattern(i, 7));
    }
    c.set_seq_lens(lens)?;
    exec.upload_paged(&c)
}

/// [`device_cache`] holding FP8 rows of `lat + 64` columns (a bf16 carrier pool, see
/// `tpla_kernels::fp8`): 1024 distinct quantised pattern rows repeated over the pool.
fn device_cache_fp8(
    exec: &CudaExecutor,
    context: usize,
    lat: usize,
    page_size: usize,
    lens: &[usize],
) -> Result<CudaPagedCache<bf16>, RuntimeError> {
    let carrier = fp8_carrier_row(lat, 64);
    let mut c = HostPagedCache::<bf16>::new(lens.len(), context, page_size, carrier)?;
    let mut table = c.block_table().to_vec();
    let n = table.len();
    for i in 0..n {
        table.swap(i, (i * 7919 + 13) % n);
    }
    c.set_block_table(table)?;
    let rows: Vec<Vec<bf16>> = (0..1024)
        .map(|r| {
            let v: Vec<f32> = (0..lat + 64)
                .map(|j| pattern(r * (lat + 64) + j, 7))
                .collect();
            let b = tpla_codegen::kv_format::quantise_row(&v, lat);
            b.chunks(2)
                .map(|p| bf16::from_bits(u16::from_le_bytes([p[0], p[1]])))
                .collect()
        })
        .collect();
    for (i, row) in c.data_mut().chunks_mut(carrier).enumerate() {
        row.copy_from_slice(&rows[i % rows.len()]);
    }
    c.set_seq_lens(lens)?;
    exec.upload_paged(&c)
}

/// How wide a case's config sweep is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// BLOCK_H x BLOCK_N {32, 64} x STAGES {2, 3} x warps x WG_SPLIT (or `--quick`'s subset).
    Full,
    /// BLOCK_H x BLOCK_N 64 x STAGES {2, 3}, the emitter's warps, WG_SPLIT 128 (the extra cases).
    Narrow,
}

/// Warp counts tried per config: 0 = the emitter's choice, 8 = forced.
const WARPS: [i64; 2] = [0, 8];

/// Resident blocks per SM of a variant: the driver's occupancy for the loaded function.
fn blocks_per_sm(exec: &CudaExecutor, cfg: &Config) -> usize {
    exec.resident_programs(&latent_decode, cfg)
        .unwrap_or_else(|e| {
            eprintln!("blocks_per_sm [{cfg}]: {e}; assuming 1");
            1
        })
        .max(1)
}

/// KV splits: the count whose grid wastes the least of the last wave of resident blocks
/// (time ~ waves / splits), with a 1% charge per split for the combine; ties go to fewer splits.
fn splits_for(
    exec: &CudaExecutor,
    per_sm: usize,
    batch: usize,
    heads: usize,
    bh: usize,
    bn: usize,
    context: usize,
) -> usize {
    let programs = batch * heads.div_ceil(bh);
    let slots = exec.info().sm_count as usize * per_sm;
    let max_s = (context / (4 * bn)).clamp(1, 64);
    let cost =
        |s: usize| (programs * s).div_ceil(slots) as f64 / s as f64 * (1.0 + 0.01 * s as f64);
    (1..=max_s)
        .min_by(|&x, &y| cost(x).partial_cmp(&cost(y)).unwrap().then(x.cmp(&y)))
        .unwrap_or(1)
}

struct Bufs {
    q: CudaTensor<bf16>,
    out: CudaTensor<f32>,
    lse: CudaTensor<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    exec: &CudaExecutor,
    variant: &str,
    cache: &CudaPagedCache<bf16>,
    shape: DecodeShape,
    opts: &GpuBenchOpts,
    sweep: Sweep,
    roof: &Roofline,
    sq: usize,
) -> Result<DecodeCaseResult, RuntimeError> {
    let quick = opts.quick;
    let narrow = sweep == Sweep::Narrow;
    let d = shape.lat + shape.rope;
    let (b, h) = (shape.batch, shape.heads);
    let q: Vec<f32> = (0..b * h * d).map(|i| pattern(i, 3)).collect();
    let scale = 1.0 / (d as f32).sqrt();
    // FP8 rows also at BLOCK_H 64 below 64 heads: the producer warpgroup that converts them
    // needs the 64-row warpgroup gemms.
    let fp8_rows = variant.contains("fp8");
    let bhs: Vec<i64> = [16i64, 32, 64]
        .into_iter()
        .filter(|&x| x as usize <= h.max(16) || (fp8_rows && x == 64))
        .collect();
    let bns: &[i64] = if quick || narrow { &[64] } else { &[32, 64] };
    // Four stages fit only small blocks (BLOCK_N 32: more bytes in flight than 64-token blocks
    // at two stages); the emitter caps the depth at what fits either way.
    let sts_for = |bn: i64| -> &'static [i64] {
        match (quick, bn) {
            (true, _) => &[2],
            (false, 32) => &[2, 3, 4],
            _ => &[2, 3],
        }
    };
    let max_splits = 64;
    let mut bufs = Bufs {
        q: exec.upload(
            &HostTensor::<bf16>::from_f32(&[b, h, d], &q)
                .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
        )?,
        out: exec.alloc(&[b, h, shape.lat])?,
        lse: exec.alloc(&[b, h])?,
    };
    let mut tried = Vec::new();
    let mut best: Option<(Config, usize, f64)> = None;
    for &bh in &bhs {
        for &bn in bns {
            // WG_SPLIT only matters for the 64-row (warpgroup) tiles.
            let splits_wg: &[i64] = if bh == 64 && !narrow {
                &[128, 32]
            } else {
                &[128]
            };
            // So does PRODUCER (warp specialisation: a producer warpgroup feeds the ring); 2 is
            // PRODUCER = 1 with TMA = 1 (bulk tensor copies), where blocks lie in one page or
            // are whole pages of a multiple of 8 tokens. With FP8 rows the producer converts
            // the raw rows into the ring (TMA does not apply: its boxes are bf16), and the
            // bench times it first: the fastest config is reported, with its knobs.
            let fp8 = variant.contains("fp8");
            let (page, n) = (shape.page_size, bn as usize);
            let tma = page % n == 0 || (page % 8 == 0 && n % page == 0);
            // Below 64 rows the producer feeds mma.sync warps: timed with TMA where it applies.
            let producers: &[i64] = match (bh, tma, fp8) {
                (64, _, true) => &[1, 0],
                (_, _, true) => &[0],
                (64, true, _) => &[0, 1, 2],
                (64, false, _) => &[0, 1],
                (_, true, _) if exec.target().wgmma => &[0, 2],
                _ => &[0],
            };
            // And SEESAW (two consumer warpgroups on alternate blocks, alone or fed by either
            // producer; bf16 rows only: not emulated with FP8 rows).
            let seesaws: &[i64] = if bh == 64 && !fp8 { &[0, 1] } else { &[0] };
            let warps_tried: &[i64] = if narrow { &WARPS[..1] } else { &WARPS };
            let knobs = sts_for(bn).iter().flat_map(|s| {
                warps_tried.iter().flat_map(move |w| {
                    splits_wg.iter().flat_map(move |g| {
                        producers
                            .iter()
                            .flat_map(move |pr| seesaws.iter().map(move |ss| (s, w, g, pr, ss)))
                    })
                })
            });
            for (&st, &warps, &wg_split, &producer, &seesaw) in knobs {
                let mut cfg = Config::new()
                    .with("BLOCK_H", bh)
                    .with("BLOCK_N", bn)
                    .with("STAGES", st)
                    .with("WG_SPLIT", wg_split)
                    .with("LAT", shape.lat as i64)
                    .with("ROPE", shape.rope as i64);
                if producer > 0 {
                    cfg.set("PRODUCER", 1);
                }
                if producer == 2 {
                    cfg.set("TMA", 1);
                }
                if fp8 {
                    cfg.set("KV_FP8", shape.lat as i64);
                }
                if seesaw > 0 {
                    cfg.set("SEESAW", seesaw);
                }
                if sq > 1 {
                    // Multi-token queries: `h` counts rows, s_q tokens x heads.
                    cfg.set("SQ", sq as i64);
                }
                if warps > 0 {
                    // The emitter's warp-count override (not a tune parameter of the kernel).
                    cfg.set("WARPS", warps);
                }
                if !config_selected(&cfg, opts.config.as_deref()) {
                    continue;
                }
                if seesaw > 0 && !seesaw_applies(exec, &cfg) {
                    // The knob changes nothing here: the same kernel as the config without it.
                    continue;
                }
                let per_sm = blocks_per_sm(exec, &cfg);
                let splits =
                    splits_for(exec, per_sm, b, h, bh as usize, bn as usize, shape.context)
                        .min(max_splits);
                let mut part = exec.alloc::<f32>(&[splits, b, h, shape.lat])?;
                let mut part_lse = exec.alloc::<f32>(&[splits, b, h])?;
                let m = measure(exec, 3, 20, || {
                    launch_decode(exec, &cfg, &bufs.q, cache, &mut part, &mut part_lse, scale)
                });
                match m {
                    Ok(m) => {
                        tried.push((cfg.to_string(), splits, m.median_ms));
                        if best.as_ref().is_none_or(|(_, _, t)| m.median_ms < *t) {
                            best = Some((cfg.clone(), splits, m.median_ms));
                        }
                    }
                    Err(e) => tried.push((format!("{cfg} failed: {e}"), splits, f64::NAN)),
                }
            }
        }
    }
    if best.is_none() {
        return Err(RuntimeError::InvalidInput("no config ran".into()));
    }
    // The full op (decode, plus the combine when there is more than one split) decides among
    // the fastest decodes: a split count that needs a combine can lose to one that does not.
    let mut ranked: Vec<&(String, usize, f64)> = tried.iter().filter(|t| t.2.is_finite()).collect();
    ranked.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut finals: Vec<(Config, usize, Measurement, Measurement)> = Vec::new();
    for (cfg_s, splits, _) in ranked.into_iter().take(4) {
        let cfg = parse_config(cfg_s);
        let splits = *splits;
        let (decode_only, time) =
            time_full_op(exec, &cfg, splits, &mut bufs, cache, &shape, scale)?;
        finals.push((cfg, splits, decode_only, time));
    }
    let (cfg, splits, decode_only, time) = finals
        .into_iter()
        .min_by(|x, y| x.3.median_ms.total_cmp(&y.3.median_ms))
        .expect("at least one config ran");
    let gbps = shape.bytes() / (time.median_ms * 1e-3) / 1e9;
    let tflops = shape.flops() / (time.median_ms * 1e-3) / 1e12;
    Ok(DecodeCaseResult {
        variant: variant.into(),
        config: cfg.to_string(),
        splits,
        gbps,
        tflops,
        fraction_of_read_roofline: gbps / roof.read_gbps,
        fraction_of_copy_roofline: gbps / roof.copy_gbps,
        time,
        decode_only,
        tried,
        check_rel_diff: f64::NAN,
        shape,
    })
}

/// Stores the fastest config of each case a decode of that shape would look up (`mla` and
/// `tpla-shard`, equal lengths, one query token, bf16 rows, 64-token pages) in this device's tune
/// database, with
/// uniform splits. Configs with a forced `WARPS` are not a tune-database value and are skipped.
fn record_tune(exec: &CudaExecutor, cases: &[DecodeCaseResult]) -> Result<(), RuntimeError> {
    use tpla_runtime::tune::{decode_bucket, default_dir, SplitPolicy, TuneDb};
    let (mut db, warnings) =
        TuneDb::open(&default_dir(), &exec.device_identity(), &[&latent_decode]);
    for w in warnings {
        eprintln!("tpla: {w}");
    }
    let mut recorded = Vec::new();
    for c in cases {
        let s = &c.shape;
        let plain = c.variant == "mla" || c.variant == "tpla-shard";
        if !plain || s.lengths != "equal" || s.page_size != 64 {
            continue;
        }
        let cfg = parse_config(&c.config);
        if cfg.get("WARPS").is_ok() || cfg.get("SQ").is_ok_and(|v| v > 1) {
            continue;
        }
        let bucket = decode_bucket(s.batch, s.heads, s.lat, s.rope, s.context);
        let us = c.decode_only.median_ms * 1e3;
        db.put_with_policy(
            latent_decode.name(),
            &bucket,
            &cfg,
            Some(SplitPolicy::Uniform),
            us,
            &bench::today(),
        );
        recorded.push(bucket);
    }
    for w in db.save()? {
        eprintln!("tpla: {w}");
    }
    println!(
        "recorded {} tune entries ({}) in {}",
        recorded.len(),
        recorded.join(", "),
        db.path().display()
    );
    Ok(())
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

/// Times the decode alone (into preallocated partials) and the full op: with one split the
/// decode writes `out` / `lse` directly (as the library's `decode_attention` does), otherwise
/// the combine follows.
#[allow(clippy::too_many_arguments)]
fn time_full_op(
    exec: &CudaExecutor,
    cfg: &Config,
    splits: usize,
    bufs: &mut Bufs,
    cache: &CudaPagedCache<bf16>,
    shape: &DecodeShape,
    scale: f32,
) -> Result<(Measurement, Measurement), RuntimeError> {
    let (b, h) = (shape.batch, shape.heads);
    let mut part = exec.alloc::<f32>(&[splits, b, h, shape.lat])?;
    let mut part_lse = exec.alloc::<f32>(&[splits, b, h])?;
    let ccfg = combine_splits.default_config(&[("LAT", shape.lat as i64)])?;
    let decode_only = measure(exec, 3, 30, || {
        launch_decode(exec, cfg, &bufs.q, cache, &mut part, &mut part_lse, scale)
    })?;
    let time = if splits == 1 {
        bufs.out.reshape(&[1, b, h, shape.lat])?;
        bufs.lse.reshape(&[1, b, h])?;
        let t = measure(exec, 3, 30, || {
            launch_decode(
                exec,
                cfg,
                &bufs.q,
                cache,
                &mut bufs.out,
                &mut bufs.lse,
                scale,
            )
        });
        bufs.out.reshape(&[b, h, shape.lat])?;
        bufs.lse.reshape(&[b, h])?;
        t?
    } else {
        measure(exec, 3, 30, || {
            launch_decode(exec, cfg, &bufs.q, cache, &mut part, &mut part_lse, scale)?;
            combine_splits::launch(exec, &ccfg, &part, &part_lse, &mut bufs.out, &mut bufs.lse)
        })?
    };
    Ok((decode_only, time))
}

/// GPU vs CPU executor on a small problem with the chosen config (max relative difference).
fn check_small(
    exec: &CudaExecutor,
    cfg: &str,
    lat: usize,
    page_size: usize,
) -> Result<f64, RuntimeError> {
    let (b, h, l, d) = (2usize, 16usize, 300usize, lat + 64);
    let cfg = parse_config(cfg).with("BLOCK_H", 16);
    let fp8 = cfg.try_get("KV_FP8").is_some_and(|v| v > 0);
    let width = if fp8 { fp8_carrier_row(lat, 64) } else { d };
    let mut c = HostPagedCache::<bf16>::new(b, l, page_size.min(16), width)?;
    for (i, x) in c.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(pattern(i, 11));
    }
    if fp8 {
        for t in 0..l {
            for s in 0..b {
                let v: Vec<f32> = (0..d).map(|j| pattern((s * l + t) * d + j, 11)).collect();
                tpla_kernels::fp8::write_fp8_token(&mut c, s, t, &v, lat)?;
            }
        }
    }
    c.set_seq_lens(&[l, l / 3])?;
    let qv: Vec<f32> = (0..b * h * d).map(|i| pattern(i, 5)).collect();
    let q = HostTensor::<bf16>::from_f32(&[b, h, d], &qv)
        .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    let splits = 3;
    let cpu = CpuExecutor::new(0)?;
    let mut po = HostTensor::<f32>::full(&[splits, b, h, lat], f32::NAN);
    let mut pl = HostTensor::<f32>::full(&[splits, b, h], f32::NAN);
    launch_decode(&cpu, &cfg, &q, &c, &mut po, &mut pl, 0.1)?;
    let gq = exec.upload(&q)?;
    let gc = exec.upload_paged(&c)?;
    let mut go = exec.upload(&HostTensor::<f32>::full(&[splits, b, h, lat], f32::NAN))?;
    let mut gl = exec.upload(&HostTensor::<f32>::full(&[splits, b, h], f32::NAN))?;
    launch_decode(exec, &cfg, &gq, &gc, &mut go, &mut gl, 0.1)?;
    let go = exec.download(&go)?;
    let num: f64 = go
        .data()
        .iter()
        .zip(po.data())
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = po.data().iter().map(|b| (*b as f64).powi(2)).sum();
    Ok((num / den.max(1e-30)).sqrt())
}

/// Runs the GPU benchmark matrix on `exec`, prints the table and writes the JSON report.
pub fn run(exec: &CudaExecutor, opts: &GpuBenchOpts) -> Result<(), RuntimeError> {
    let out = opts.out.as_path();
    println!("tpla bench (cuda) on {}", exec.backend_name());
    let roof = roofline_default(exec)?;
    println!(
        "roofline: read {:.0} GB/s, copy {:.0} GB/s",
        roof.read_gbps, roof.copy_gbps
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
            device_cache(exec, spec.context, d, spec.page_size, &lens)?
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
                    let balanced = spec
                        .variable
                        .then(|| super::bench_balanced::balanced_row(exec, &r, &cache, &roof));
                    cases.push(r);
                    match balanced {
                        None => {}
                        Some(Ok(row)) => {
                            let r = row.result;
                            progress.suspend(|| println!(
                                "{} H={heads} B={batch} L={context} page {page} ({}): {:.1} us (schedule {:.1} us), {:.0} GB/s ({:.2}x read, {:.2}x copy roofline), {} max splits {}, vs uniform {:.1e}",
                                r.variant,
                                r.shape.lengths,
                                r.time.median_ms * 1e3,
                                row.schedule.median_ms * 1e3,
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
            specs.push(CaseSpec {
                variant: "mla-fp8",
                lat: 512,
                batch,
                context,
                page_size: 64,
                variable: false,
                heads: small.clone(),
                sweep: Sweep::Narrow,
                sq: 1,
            });
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
