//! The per-case sweep of tune configs: which configs a case times, how they are timed, and
//! the winners recorded in the tune database.

use super::*;
use tpla_kernels::ops::uniform_split_candidates;

/// Whether `cfg` is in the sweep: every `KEY=value` of `want` (for profiling one variant); a
/// key the config does not carry counts as 0 (a schedule knob's default), so `SEESAW=0` selects
/// the configs without the knob.
pub(super) fn config_selected(cfg: &Config, want: Option<&str>) -> bool {
    let Some(want) = want else {
        return true;
    };
    let have = parse_config(&cfg.to_string());
    parse_config(want)
        .iter()
        .all(|(k, v)| have.get(k).unwrap_or(0) == v)
}

/// The knobs a sweep varies or sets itself; any other `KEY=value` of `--config` (a schedule knob
/// the tuner does not search, e.g. `QK_AHEAD=1`) is set on every swept config instead of
/// filtering them all out ([`pinned_knobs`]).
const SWEPT_KNOBS: [&str; 18] = [
    "BLOCK_H",
    "BLOCK_N",
    "STAGES",
    "WG_SPLIT",
    "LAT",
    "ROPE",
    "PRODUCER",
    "TMA",
    "KV_FP8",
    "SEESAW",
    "SQ",
    "WARPS",
    "PINGPONG",
    "SOFTMAX_OVERLAP",
    "WG_KV_SPLIT",
    "SCORE_WG",
    "SPLIT_RELEASE",
    "FP8_PRODUCERS",
];

/// The non-zero `KEY=value`s of `want` that the sweep does not vary (see [`SWEPT_KNOBS`]):
/// pinned on every config of the sweep, so `--config BLOCK_N=32,QK_AHEAD=1` times the BLOCK_N 32
/// configs with the knob on.
pub(super) fn pinned_knobs(want: Option<&str>) -> Vec<(String, i64)> {
    let Some(want) = want else {
        return Vec::new();
    };
    parse_config(want)
        .iter()
        .filter(|(k, v)| *v != 0 && !SWEPT_KNOBS.contains(k))
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Whether `SEESAW = 1` in `cfg` changes the emitted decode kernel on this device (at BLOCK_N 64
/// its pair ring does not fit and the kernel is the base config's): a sweep times it only then.
pub(super) fn seesaw_applies(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    emitted(target, cfg).is_some_and(|src| src.seesaw)
}

/// Whether `WG_KV_SPLIT = 1` in `cfg` changes the emitted decode kernel on this device (two
/// consumer warpgroups on one 64-row tile; not at latent 512, whose accumulator needs both).
pub(super) fn kv_split_applies(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    emitted(target, cfg).is_some_and(|src| src.kv_split)
}

/// Whether `SCORE_WG = 1` in `cfg` changes the emitted decode kernel on this device (a score
/// warpgroup beside the value warpgroups of a 64-row tile over bf16 rows).
pub(super) fn score_wg_applies(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    emitted(target, cfg).is_some_and(|src| src.score_wg)
}

/// Whether `SPLIT_RELEASE = 1` in `cfg` changes the emitted decode kernel on this device (under
/// the score warpgroup over TMA, where two value warpgroups each refill their half of a slot).
pub(super) fn split_release_applies(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    emitted(target, cfg).is_some_and(|src| src.split_release)
}

/// Whether `FP8_PRODUCERS = 2` in `cfg` changes the emitted decode kernel on this device (two
/// producer warpgroups converting the FP8 rows: 384 threads where one consumer warpgroup computes).
pub(super) fn two_fp8_producers_apply(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    let one = cfg.clone().with("FP8_PRODUCERS", 1);
    match (emitted(target, cfg), emitted(target, &one)) {
        (Some(two), Some(one)) => two.block_threads > one.block_threads,
        _ => false,
    }
}

/// The decode kernel `cfg` emits on `target`, if it builds and emits.
fn emitted(
    target: tpla_codegen::cuda::Target,
    cfg: &Config,
) -> Option<tpla_codegen::cuda::CudaSource> {
    latent_decode
        .build(cfg)
        .ok()
        .and_then(|k| tpla_codegen::cuda::emit(&k, target).ok())
}

/// Whether a 128-row config (`BLOCK_H = 128`) emits a kernel on the warpgroup geometry on this
/// device: two warpgroups of 64 rows, which fit their accumulators only at latent 256 and below
/// (elsewhere the config does not build or would spill, and is not timed).
pub(super) fn warpgroup_rows_apply(target: tpla_codegen::cuda::Target, cfg: &Config) -> bool {
    emitted(target, cfg).is_some_and(|src| src.warpgroups)
}

/// How wide a case's config sweep is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sweep {
    /// BLOCK_H x BLOCK_N {32, 64} x STAGES {2, 3} x warps x WG_SPLIT (or `--quick`'s subset).
    Full,
    /// BLOCK_H x BLOCK_N 64 x STAGES {2, 3}, the emitter's warps, WG_SPLIT 128 (the extra cases).
    Narrow,
}

/// Warp counts tried per config: 0 = the emitter's choice, 8 = forced.
pub(super) const WARPS: [i64; 2] = [0, 8];

/// Resident blocks per SM of a variant: the driver's occupancy for the loaded function.
pub(super) fn blocks_per_sm(exec: &CudaExecutor, cfg: &Config) -> usize {
    exec.resident_programs(&latent_decode, cfg)
        .unwrap_or_else(|e| {
            eprintln!("blocks_per_sm [{cfg}]: {e}; assuming 1");
            1
        })
        .max(1)
}

/// KV splits: the count whose grid wastes the least of the last wave of resident blocks
/// (time ~ waves / splits), with a 1% charge per split for the combine; ties go to fewer splits.
pub(super) fn splits_for(
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
    let max_s = bench_max_splits(bn, context);
    let cost =
        |s: usize| (programs * s).div_ceil(slots) as f64 / s as f64 * (1.0 + 0.01 * s as f64);
    (1..=max_s)
        .min_by(|&x, &y| cost(x).partial_cmp(&cost(y)).unwrap().then(x.cmp(&y)))
        .unwrap_or(1)
}

/// The most KV splits the bench gives a case of `context` tokens in blocks of `bn` (its rule's
/// and its split search's cap): four blocks a split at least, at most 64.
fn bench_max_splits(bn: usize, context: usize) -> usize {
    (context / (4 * bn.max(1))).clamp(1, 64)
}

/// The query, output and log-sum-exp buffers a case's runs share.
pub(super) struct Bufs {
    pub(super) q: CudaTensor<bf16>,
    pub(super) out: CudaTensor<f32>,
    pub(super) lse: CudaTensor<f32>,
    /// The combine chosen for each split count of the case (its shapes depend on nothing else,
    /// so every decode config at that count reuses it).
    pub(super) combines: std::collections::HashMap<usize, ChosenCombine>,
}

/// The configs a case's sweep times, in order, on `target` (pure: `tpla bench --compile-only`
/// compiles the same list without a device): BLOCK_H x BLOCK_N x STAGES x warps x WG_SPLIT x
/// PRODUCER x SEESAW as they apply to the variant (`fp8` rows, `sq` query tokens), minus the
/// configs `want` leaves out and SEESAW where it changes nothing on `target`.
pub(super) fn sweep_configs(
    variant: &str,
    shape: &DecodeShape,
    sweep: Sweep,
    quick: bool,
    sq: usize,
    target: tpla_codegen::cuda::Target,
    want: Option<&str>,
) -> Vec<Config> {
    let narrow = sweep == Sweep::Narrow;
    let h = shape.heads;
    // FP8 rows also at BLOCK_H 64 below 64 heads: their producer-fed form was first built for
    // 64-row warpgroup gemms (it feeds 16- / 32-row mma.sync warps too).
    let fp8 = variant.contains("fp8");
    // 128-row blocks (two warpgroups stacked along the rows) only where the rows fill them and
    // the kernel keeps the warpgroup geometry (latent 256 and below; checked per config below).
    let bhs: Vec<i64> = [16i64, 32, 64, 128]
        .into_iter()
        .filter(|&x| x as usize <= h.max(16) || (fp8 && x == 64))
        .filter(|&x| x < 128 || (target.wgmma && !fp8))
        .collect();
    // FP8 rows sweep BLOCK_N 32 too, even narrowly: at latent 512 a 64-token block leaves room
    // for one bf16 ring stage beside the staging ring (`bench/NOTES-fp8.md`), 32 for two or three.
    let bns: &[i64] = if quick || (narrow && !fp8) {
        &[64]
    } else {
        &[32, 64]
    };
    // Four stages fit only small blocks (BLOCK_N 32: more bytes in flight than 64-token blocks
    // at two stages), and 64-token blocks of 64 rows at the shard widths (40 KB of query and
    // four 40 KB stages at latent 256: the depth `SOFTMAX_OVERLAP`, which holds one more block,
    // needs); the emitter caps the depth at what fits either way.
    let deep64 = shape.lat <= 256;
    let sts_for = |bh: i64, bn: i64| -> &'static [i64] {
        match (quick, bn) {
            (true, _) => &[2],
            (false, 32) => &[2, 3, 4],
            (false, 64) if bh == 64 && deep64 => &[2, 3, 4],
            _ => &[2, 3],
        }
    };
    let pinned = pinned_knobs(want);
    let mut out = Vec::new();
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
            let (page, n) = (shape.page_size, bn as usize);
            let tma = page % n == 0 || (page % 8 == 0 && n % page == 0);
            // Below 64 rows the producer feeds mma.sync warps: timed with TMA where it applies.
            let producers: &[i64] = match (bh, tma, fp8) {
                (64, _, true) => &[1, 0],
                // The FP8 producer feeding 16- / 32-row mma.sync warps (Hopper).
                (_, _, true) if target.wgmma => &[1, 0],
                (_, _, true) => &[0],
                (64 | 128, true, _) => &[0, 1, 2],
                (64 | 128, false, _) => &[0, 1],
                (_, true, _) if target.wgmma => &[0, 2],
                _ => &[0],
            };
            // And SEESAW (two consumer warpgroups on alternate blocks, alone or fed by either
            // producer; bf16 rows only: not emulated with FP8 rows).
            let seesaws: &[i64] = if bh == 64 && !fp8 { &[0, 1] } else { &[0] };
            // And how the warpgroups order their gemms under a producer: 1 is PINGPONG
            // (row-stacked warpgroups taking turns), 2 SOFTMAX_OVERLAP (each block's P·V behind
            // the next block's q·kᵀ, FlashAttention-3's overlap inside a warpgroup), 3
            // WG_KV_SPLIT (a second warpgroup on the 64-row tile's odd blocks), 4 SCORE_WG (a
            // score warpgroup feeding the value warpgroups; at latent 512 only: at the shard
            // widths it ran 20-25 % slower than WG_KV_SPLIT on the H200, 2026-12-05, and at 128
            // heads 65 % slower than the 128-row PINGPONG tile on the H100, 2026-12-06), 5 SCORE_WG
            // with SPLIT_RELEASE (each value warpgroup refilling its half; TMA only).
            let orders: &[i64] = match (bh, fp8) {
                (128, _) => &[0, 1, 2],
                (64, false) if shape.lat >= 512 => &[0, 2, 3, 4, 5],
                (64, false) => &[0, 2, 3],
                _ => &[0],
            };
            // A 128-row block is two warpgroups by construction: no warp count to force.
            let warps_tried: &[i64] = if narrow || bh == 128 {
                &WARPS[..1]
            } else {
                &WARPS
            };
            for &st in sts_for(bh, bn) {
                for &warps in warps_tried {
                    for &wg_split in splits_wg {
                        for &producer in producers {
                            for (&seesaw, &order) in seesaws
                                .iter()
                                .flat_map(|s| orders.iter().map(move |p| (s, p)))
                            {
                                if order > 0 && producer == 0 {
                                    continue;
                                }
                                // The overlap needs two ring stages and P in registers.
                                if order == 2 && (st < 2 || seesaw > 0 || wg_split != 128) {
                                    continue;
                                }
                                // The split takes the emitter's warps (it adds the second
                                // warpgroup itself); WG_SPLIT is moot under it.
                                if order >= 3 && (seesaw > 0 || wg_split != 128 || warps > 0) {
                                    continue;
                                }
                                if order == 5 && producer != 2 {
                                    continue;
                                }
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
                                match order {
                                    1 => cfg.set("PINGPONG", 1),
                                    2 => cfg.set("SOFTMAX_OVERLAP", 1),
                                    3 => cfg.set("WG_KV_SPLIT", 1),
                                    4 => cfg.set("SCORE_WG", 1),
                                    5 => {
                                        cfg.set("SCORE_WG", 1);
                                        cfg.set("SPLIT_RELEASE", 1);
                                    }
                                    _ => {}
                                }
                                if sq > 1 {
                                    // Multi-token queries: `h` counts rows, s_q tokens x heads.
                                    cfg.set("SQ", sq as i64);
                                }
                                if warps > 0 {
                                    // The emitter's warp-count override (not a tune parameter).
                                    cfg.set("WARPS", warps);
                                }
                                for (k, v) in &pinned {
                                    cfg.set(k, *v);
                                }
                                // With FP8 rows converted by the producer, also the variant
                                // with two producer warpgroups (pushed below where it applies;
                                // `--config FP8_PRODUCERS=2` selects only it).
                                let two = (fp8 && producer > 0)
                                    .then(|| cfg.clone().with("FP8_PRODUCERS", 2))
                                    .filter(|two| config_selected(two, want));
                                let one_asked = config_selected(&cfg, want);
                                if !one_asked && two.is_none() {
                                    continue;
                                }
                                // A pinned knob that orders the gemms otherwise (QK_AHEAD with
                                // SOFTMAX_OVERLAP, say) makes a config the backend refuses.
                                let knobs: Vec<(String, i64)> =
                                    cfg.iter().map(|(k, v)| (k.to_string(), v)).collect();
                                if tpla_codegen::schedule::Schedule::from_config(&knobs).is_err() {
                                    continue;
                                }
                                if order == 3 && !kv_split_applies(target, &cfg) {
                                    continue;
                                }
                                if order == 4 && !score_wg_applies(target, &cfg) {
                                    continue;
                                }
                                if order == 5 && !split_release_applies(target, &cfg) {
                                    continue;
                                }
                                if seesaw > 0 && !seesaw_applies(target, &cfg) {
                                    // The knob changes nothing here: the config without it.
                                    continue;
                                }
                                if bh == 128 && !warpgroup_rows_apply(target, &cfg) {
                                    continue;
                                }
                                if let Some(two) = two {
                                    if two_fp8_producers_apply(target, &two) {
                                        out.push(two);
                                    }
                                }
                                if one_asked {
                                    out.push(cfg);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        out.extend(pinned_exactly(variant, shape, sq, target, want));
    }
    out
}

/// A `--config` that names a whole config (at least `BLOCK_H` and `BLOCK_N`) the sweep does not
/// list, e.g. a `tpla tune` winner with a knob the bench sweeps elsewhere only (`SCORE_WG` at the
/// shard widths): that config as given, with the case's `LAT`, `ROPE`, `SQ` and `KV_FP8` where
/// it leaves them out, if it builds on `target`. `None` where a knob it pins contradicts the
/// case (another `LAT`, say) or the kernel does not build.
fn pinned_exactly(
    variant: &str,
    shape: &DecodeShape,
    sq: usize,
    target: tpla_codegen::cuda::Target,
    want: Option<&str>,
) -> Option<Config> {
    let mut cfg = parse_config(want?);
    if cfg.get("BLOCK_H").is_err() || cfg.get("BLOCK_N").is_err() {
        return None;
    }
    let mut needs = vec![("LAT", shape.lat as i64), ("ROPE", shape.rope as i64)];
    if sq > 1 {
        needs.push(("SQ", sq as i64));
    }
    if variant.contains("fp8") {
        needs.push(("KV_FP8", shape.lat as i64));
    }
    for (k, v) in needs {
        match cfg.get(k) {
            Ok(have) if have != v => return None,
            Ok(_) => {}
            Err(_) => cfg.set(k, v),
        }
    }
    let knobs: Vec<(String, i64)> = cfg.iter().map(|(k, v)| (k.to_string(), v)).collect();
    tpla_codegen::schedule::Schedule::from_config(&knobs).ok()?;
    emitted(target, &cfg).map(|_| cfg)
}

/// Times one case: every config of its sweep on `cache` (the decode alone), then the full op
/// (decode plus combine) of the fastest few; returns the case's result row.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_case(
    exec: &CudaExecutor,
    variant: &str,
    cache: &CudaPagedCache<bf16>,
    shape: DecodeShape,
    opts: &GpuBenchOpts,
    sweep: Sweep,
    roof: &Roofline,
    sq: usize,
) -> Result<DecodeCaseResult, RuntimeError> {
    let d = shape.lat + shape.rope;
    let (b, h) = (shape.batch, shape.heads);
    let q: Vec<f32> = (0..b * h * d).map(|i| pattern(i, 3)).collect();
    let scale = 1.0 / (d as f32).sqrt();
    let max_splits = 64;
    let mut bufs = Bufs {
        q: exec.upload(
            &HostTensor::<bf16>::from_f32(&[b, h, d], &q)
                .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
        )?,
        out: exec.alloc(&[b, h, shape.lat])?,
        lse: exec.alloc(&[b, h])?,
        combines: Default::default(),
    };
    let mut tried = Vec::new();
    let mut best: Option<(Config, usize, f64)> = None;
    let configs = sweep_configs(
        variant,
        &shape,
        sweep,
        opts.quick,
        sq,
        exec.target(),
        opts.config.as_deref(),
    );
    for cfg in configs {
        let (bh, bn) = (cfg.get("BLOCK_H")?, cfg.get("BLOCK_N")?);
        let per_sm = blocks_per_sm(exec, &cfg);
        let splits =
            splits_for(exec, per_sm, b, h, bh as usize, bn as usize, shape.context).min(max_splits);
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
    if best.is_none() {
        // Say why: a pinned `--config` can select nothing where the sweep does not try a knob
        // (`SCORE_WG` is tried at latent 512 only, `WG_KV_SPLIT` not there, ...) and the
        // config is not whole or does not build as given ([`pinned_exactly`]).
        let why = match (opts.config.as_deref(), tried.is_empty()) {
            (Some(want), true) => format!(
                "--config {want} selects none of the configs this case sweeps (latent {}, {h} \
                 heads), and does not build as a whole config here: a knob the sweep varies is \
                 pinned only where the sweep tries it",
                shape.lat
            ),
            (_, true) => "no config of this case's sweep builds on this device".to_string(),
            (_, false) => format!("every config failed, e.g. {}", tried[0].0),
        };
        return Err(RuntimeError::InvalidInput(why));
    }
    // The full op (decode, plus the combine when there is more than one split) decides among
    // the fastest decodes: a split count that needs a combine can lose to one that does not.
    let mut ranked: Vec<&(String, usize, f64)> = tried.iter().filter(|t| t.2.is_finite()).collect();
    ranked.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut finals: Vec<(Config, usize, FullOpTimes)> = Vec::new();
    for (cfg_s, splits, _) in ranked.into_iter().take(4) {
        let cfg = parse_config(cfg_s);
        let splits = *splits;
        let times = time_full_op(exec, &cfg, splits, &mut bufs, cache, &shape, scale)?;
        finals.push((cfg, splits, times));
    }
    // The two fastest full ops again at other split counts (half, two to four times the
    // rule's): the rule counts waves of resident programs, not a split's start, the tail on the
    // slowest SM or the combine on this device. A count that cannot run is left out.
    finals.sort_by(|x, y| x.2.time.median_ms.total_cmp(&y.2.time.median_ms));
    let searched: Vec<(Config, usize)> =
        finals.iter().take(2).map(|f| (f.0.clone(), f.1)).collect();
    for (cfg, s0) in searched {
        let bn = cfg.get("BLOCK_N")?.max(1) as usize;
        let max_s = bench_max_splits(bn, shape.context).min(max_splits);
        for n in uniform_split_candidates(s0, max_s) {
            if n == s0 {
                continue;
            }
            if let Ok(times) = time_full_op(exec, &cfg, n, &mut bufs, cache, &shape, scale) {
                tried.push((cfg.to_string(), n, times.decode_only.median_ms));
                finals.push((cfg.clone(), n, times));
            }
        }
    }
    let (cfg, splits, times) = finals
        .into_iter()
        .min_by(|x, y| x.2.time.median_ms.total_cmp(&y.2.time.median_ms))
        .expect("at least one config ran");
    let FullOpTimes {
        decode_only,
        combine_only,
        time,
        combine_config,
        combine_tried,
    } = times;
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
        schedule: None,
        combine_only,
        combine_config,
        combine_tried,
        tried,
        check_rel_diff: f64::NAN,
        shape,
    })
}

/// Stores the fastest config of each case a decode of that shape would look up (`mla` and
/// `tpla-shard`, equal lengths, one query token, bf16 rows, 64-token pages) in this device's tune
/// database, with
/// uniform splits. Configs with a forced `WARPS` are not a tune-database value and are skipped.
pub(super) fn record_tune(
    exec: &CudaExecutor,
    cases: &[DecodeCaseResult],
) -> Result<(), RuntimeError> {
    use tpla_runtime::tune::{decode_bucket, default_dir, TuneDb};
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
        // The count the bench found fastest (its rule's or the split search's).
        let name = latent_decode.name();
        db.put_with_uniform_splits(name, &bucket, &cfg, c.splits, us, &bench::today());
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

#[cfg(test)]
mod tests;
