//! `tpla tune`: time every tune candidate of the decode kernel on this device for a decode shape
//! (MLA width and the TPLA shard width) and store the fastest in the tune database, which
//! `tpla decode` then uses.
//!
//! The space searched: the kernel's `#[tune]` values (head block, KV block, stages, warpgroup
//! split), times the schedule settings of [`SEARCHED_SETTINGS`] where they apply (a CUDA Hopper
//! target: producer warpgroup, ...), all with the occupancy rule's uniform split count; the
//! fastest few again at other uniform counts (half, two to four times the rule's); then the
//! winner with the balanced split schedule. The fastest policy (and a uniform count that is not
//! the rule's) is stored with the config. On a GPU every time is the device's own (events, the L2
//! flushed before each run, as `tpla bench` times), elsewhere the host clock.

use clap::Args;
use rand::{Rng, SeedableRng};
use tpla_codegen::schedule::SEARCHED_SETTINGS;
use tpla_codegen::{Config, KernelDef};
use tpla_kernels::latent_decode;
use tpla_kernels::ops::{
    choose_balanced, choose_splits, decode_attention, decode_attention_balanced, max_splits_for,
    shard_width, uniform_split_candidates, BalancedWorkspace, DecodeParams, BALANCED_WAVES,
};
use tpla_runtime::half::bf16;
use tpla_runtime::tune::{decode_bucket, default_dir, SplitPolicy, TuneDb};
use tpla_runtime::{Executor, HostPagedCache, HostTensor};

use super::backend::{dispatch, ExecJob};
use super::bench::today;
use super::clock::median_us;
use super::error::CliError;
use super::{BackendArg, PresetArg};

/// Options of `tpla tune`.
#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// Model preset (heads, scale).
    #[arg(long, value_enum, default_value = "deepseek-v3")]
    pub preset: PresetArg,
    /// Sequences.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Query heads to tune for, instead of the preset's: what one rank of a head-split form
    /// holds (e.g. 32 for Kimi-K2's 64 heads split over 2 ranks).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// TPLA latent groups (the shard width 512/g is tuned too).
    #[arg(long, short, default_value_t = 2)]
    pub g: usize,
    /// Timed runs per candidate (median kept).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Executor.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Sequence lengths drawn uniformly from 1..=context (seeded) instead of all equal to it:
    /// the mixed-length batches a serving engine sees, where the split policy matters most.
    #[arg(long)]
    pub var_len: bool,
    /// Compile every candidate for sm_90a (Hopper) into the kernel cache instead of timing:
    /// no GPU needed, only NVRTC. A later `tpla tune` on a Hopper GPU with the same NVRTC
    /// major.minor then loads them from `$TPLA_KERNEL_CACHE_DIR` instead of compiling (a cold
    /// tune of one width compiles for minutes); the cache directory can be copied to that host.
    #[arg(long)]
    pub compile_only: bool,
}

/// Whether `SEESAW = 1` in `cand` changes the sm_90a decode kernel at latent `lat` (at BLOCK_N
/// 64 its pair ring does not fit in shared memory and the kernel is the config's without it).
fn seesaw_applies_sm90(cand: &Config, lat: usize, rope: usize) -> bool {
    emit_sm90(cand, lat, rope).is_some_and(|src| src.seesaw)
}

/// The sm_90a decode kernel `cand` emits at latent `lat`, if it builds and emits.
fn emit_sm90(cand: &Config, lat: usize, rope: usize) -> Option<tpla_codegen::cuda::CudaSource> {
    let cfg = cand
        .clone()
        .with("LAT", lat as i64)
        .with("ROPE", rope as i64);
    let k = latent_decode.build(&cfg).ok()?;
    tpla_codegen::cuda::emit(&k, tpla_codegen::cuda::Target::sm90()).ok()
}

/// Why `tpla tune` does not time `cand` for `heads` heads at latent `lat`, if it does not: a
/// 128-row head block needs more than 64 heads, and on Hopper the warpgroup geometry (two
/// warpgroups stacked along the rows), which fits its accumulators only at latent 256 and below.
fn block_rows_skip(
    cand: &Config,
    heads: usize,
    lat: usize,
    rope: usize,
    hopper: bool,
) -> Option<&'static str> {
    let bh = cand.get("BLOCK_H").ok()?;
    if bh <= 64 {
        return None;
    }
    if heads <= 64 {
        return Some("128-row blocks need more than 64 heads");
    }
    let wg = emit_sm90(cand, lat, rope).is_some_and(|src| src.warpgroups);
    (hopper && !wg)
        .then_some("128-row blocks need two warpgroups' registers, which this width does not fit")
}

/// The sm_90a decode kernel `cand` emits at latent `lat`, without its header comment (which
/// names the config): two candidates with the same text are the same kernel (a knob that does
/// not apply, a depth capped to what fits), so a sweep times the first alone.
fn sm90_kernel_text(cand: &Config, lat: usize, rope: usize) -> Option<String> {
    let src = emit_sm90(cand, lat, rope)?;
    Some(
        src.code
            .lines()
            .filter(|l| !l.starts_with("// ---- kernel "))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The schedule settings to search on a backend: every one of [`SEARCHED_SETTINGS`] where they
/// apply (`hopper`), else only the default (no knob set).
fn knob_settings(hopper: bool) -> &'static [&'static [(&'static str, i64)]] {
    if hopper {
        SEARCHED_SETTINGS
    } else {
        &SEARCHED_SETTINGS[..1]
    }
}

/// Runs `tpla tune`.
pub fn tune(a: TuneArgs) -> Result<(), CliError> {
    super::limits::check_sizes(&[
        ("--batch", a.batch, 1, super::limits::MAX_BATCH),
        ("--context", a.context, 1, super::limits::MAX_CONTEXT),
        ("--reps", a.reps, 1, super::limits::MAX_REPS),
        ("--threads", a.threads, 0, super::limits::MAX_THREADS),
    ])?;
    let heads = a.heads.unwrap_or(a.preset.preset().config().heads);
    super::limits::check_sizes(&[("--heads", heads, 1, super::limits::MAX_HEADS)])?;
    super::limits::MemoryPlan::default()
        .add(&[2, a.batch, a.context + 64, 512 + 64], 2)
        .add(&[67, a.batch, heads, 512], 4)
        .check_host("--batch and --context")?;
    shard_width(512, a.g)?;
    if a.compile_only {
        return compile_candidates(&a);
    }
    let (backend, threads) = (a.backend, a.threads);
    dispatch(backend, threads, TuneJob(a))
}

/// The candidates `tpla tune` times on a backend: the kernel's tune space (every warpgroup split
/// on CUDA, the default elsewhere) times the schedule settings searched there.
fn tune_candidates(cuda: bool, hopper: bool) -> Result<Vec<Config>, CliError> {
    let default_split = latent_decode
        .default_config(&[])
        .map_err(tpla_runtime::RuntimeError::from)?
        .get("WG_SPLIT")
        .ok();
    let knobs = knob_settings(hopper);
    Ok(latent_decode
        .tune_space(&[])
        .map_err(tpla_runtime::RuntimeError::from)?
        .into_iter()
        .filter(|c| cuda || c.get("WG_SPLIT").ok() == default_split)
        .flat_map(|c| {
            knobs
                .iter()
                .map(move |set| set.iter().fold(c.clone(), |c, (k, v)| c.with(k, *v)))
        })
        .collect())
}

/// `tpla tune --compile-only`: every sm_90a kernel a Hopper tune of these widths would time (the
/// decode candidates, skipped as there, duplicates of text included, and the combine), compiled by NVRTC
/// into the kernel cache.
fn compile_candidates(a: &TuneArgs) -> Result<(), CliError> {
    let cfg = a.preset.preset().config();
    let (heads, rope, scale) = (a.heads.unwrap_or(cfg.heads), 64usize, cfg.scale as f32);
    let mut pre = super::precompile::Precompiler::new("tune")?;
    let candidates = tune_candidates(true, true)?;
    let mut widths = vec![512usize];
    if a.g > 1 {
        widths.push(512 / a.g);
    }
    for lat in widths {
        for cand in &candidates {
            if cand.get("SEESAW").ok() == Some(1) && !seesaw_applies_sm90(cand, lat, rope) {
                continue;
            }
            if block_rows_skip(cand, heads, lat, rope, true).is_some() {
                continue;
            }
            // Candidates whose kernel text repeats an earlier one's are compiled too (the tune
            // times only the first): the cache key hashes the whole source, whose header names
            // the config, and `decode_cuda`'s every-candidate test loads each config's own.
            let mut p = DecodeParams::new(a.batch, heads, lat, rope, 1, scale);
            p.decode = cand.clone();
            pre.compile(&latent_decode, &p.decode_config());
            pre.compile(&tpla_kernels::combine_splits, &p.combine_config());
        }
    }
    pre.report();
    Ok(())
}

struct TuneJob(TuneArgs);

impl ExecJob for TuneJob {
    type Out = ();
    fn run<X: Executor + 'static>(self, exec: &X) -> Result<(), CliError> {
        let a = self.0;
        let cfg = a.preset.preset().config();
        let (heads, rope, scale) = (a.heads.unwrap_or(cfg.heads), 64usize, cfg.scale as f32);
        let dir = default_dir();
        let (mut db, warnings) = TuneDb::open(&dir, &exec.device_identity(), &[&latent_decode]);
        for w in warnings {
            eprintln!("tpla: {w}");
        }
        println!(
            "tpla tune: {} on {}, batch {}, context {}, H={heads}",
            cfg.name,
            exec.backend_name(),
            a.batch,
            a.context
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut widths = vec![512usize];
        if a.g > 1 {
            widths.push(512 / a.g);
        }
        // WG_SPLIT steers only the CUDA warpgroup schedule: elsewhere its values are the
        // same kernel, so only the default is timed.
        let cuda = exec.backend_name().starts_with("cuda");
        let hopper = cuda && exec.backend_name().contains("sm_90");
        let candidates = tune_candidates(cuda, hopper)?;
        let progress = super::bench::progress_bar(
            (widths.len() * (candidates.len() + 2)) as u64,
            "timing candidates",
        );
        let say = |line: String| progress.suspend(|| println!("{line}"));
        // On a GPU the device's own time (events, the L2 flushed before each run), as `tpla
        // bench` times; elsewhere the host clock.
        let clock_name = if cuda {
            "median us (device)"
        } else {
            "median us"
        };
        for lat in widths {
            let d = lat + rope;
            let q: Vec<bf16> = (0..a.batch * heads * d)
                .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
                .collect();
            let q = exec.upload(
                &HostTensor::from_vec(&[a.batch, heads, d], q)
                    .map_err(|e| CliError::Usage(e.to_string()))?,
            )?;
            let mut host = HostPagedCache::<bf16>::new(a.batch, a.context, 64, d)?;
            host.data_mut()
                .iter_mut()
                .for_each(|x| *x = bf16::from_f32(rng.gen_range(-1.0f32..1.0)));
            let lens: Vec<usize> = if a.var_len {
                (0..a.batch).map(|_| rng.gen_range(1..=a.context)).collect()
            } else {
                vec![a.context; a.batch]
            };
            host.set_seq_lens(&lens)?;
            let cache = exec.upload_paged(&host)?;
            let bucket = decode_bucket(a.batch, heads, lat, rope, a.context);
            // Every candidate timed, with the occupancy rule's split count.
            let mut ranked: Vec<(f64, Config, usize)> = Vec::new();
            // Kernel texts timed so far (sm_90a), with the config that first emitted each.
            let mut timed: std::collections::HashMap<String, String> = Default::default();
            say(format!(
                "  {:<52} {:>12}",
                format!("latent_decode, {bucket}"),
                clock_name
            ));
            for cand in candidates.iter().cloned() {
                progress.inc(1);
                let mut p = DecodeParams::new(a.batch, heads, lat, rope, 1, scale);
                p.decode = cand.clone();
                if hopper
                    && cand.get("SEESAW").ok() == Some(1)
                    && !seesaw_applies_sm90(&cand, lat, rope)
                {
                    say(format!(
                        "  {:<52} skipped: SEESAW changes nothing here (its ring does not fit)",
                        cand.to_string()
                    ));
                    continue;
                }
                if let Some(why) = block_rows_skip(&cand, heads, lat, rope, hopper) {
                    say(format!("  {:<52} skipped: {why}", cand.to_string()));
                    continue;
                }
                if let Some(text) = hopper.then(|| sm90_kernel_text(&cand, lat, rope)).flatten() {
                    if let Some(first) = timed.get(&text) {
                        say(format!(
                            "  {:<52} skipped: the same kernel as {first}",
                            cand.to_string()
                        ));
                        continue;
                    }
                    timed.insert(text, cand.to_string());
                }
                let splits = match choose_splits(exec, &p, a.context) {
                    Ok(s) => s,
                    Err(e) => {
                        say(format!("  {:<52} skipped: {e}", cand.to_string()));
                        continue;
                    }
                };
                p.splits = splits;
                // The first (untimed) run compiles; a candidate that cannot build here (e.g. too
                // much shared memory) is reported and skipped.
                let med = match time_uniform(exec, &p, a.reps, &q, &cache) {
                    Ok(t) => t,
                    Err(e) => {
                        say(format!("  {:<52} skipped: {e}", cand.to_string()));
                        continue;
                    }
                };
                say(format!(
                    "  {:<52} {med:>12.1}",
                    format!("{cand} splits={splits}")
                ));
                ranked.push((med, cand, splits));
            }
            ranked.sort_by(|x, y| x.0.total_cmp(&y.0));
            if ranked.is_empty() {
                continue;
            }
            // The fastest few again at other uniform split counts: the occupancy rule counts
            // waves of resident programs but not what a split's start, its tail or the combine
            // cost on this device.
            progress.inc(1);
            let (mut t, mut c, rule_splits) = ranked[0].clone();
            let mut splits = rule_splits;
            for (_, cand, s0) in ranked.iter().take(SPLIT_SEARCH_TOP) {
                let mut p = DecodeParams::new(a.batch, heads, lat, rope, 1, scale);
                p.decode = cand.clone();
                let bn = p.block_n();
                for n in uniform_split_candidates(*s0, max_splits_for(bn, a.context)) {
                    if n == *s0 {
                        continue;
                    }
                    p.splits = n;
                    match time_uniform(exec, &p, a.reps, &q, &cache) {
                        Ok(tn) => {
                            say(format!("  {:<52} {tn:>12.1}", format!("{cand} splits={n}")));
                            if tn < t {
                                (t, c, splits) = (tn, cand.clone(), n);
                            }
                        }
                        Err(e) => say(format!(
                            "  {:<52} skipped: {e}",
                            format!("{cand} splits={n}")
                        )),
                    }
                }
            }
            // The winner again with the balanced split schedule (pieces computed on the device
            // from the lengths): the faster policy is stored with it.
            progress.inc(1);
            let mut p = DecodeParams::new(a.batch, heads, lat, rope, 1, scale);
            p.decode = c.clone();
            match time_balanced(exec, &p, a.context, a.reps, &q, &cache) {
                Ok(tb) if tb < t => {
                    say(format!("  {:<52} {tb:>12.1}", format!("{c} balanced")));
                    say(format!("  best: {c}, balanced splits ({tb:.1} us)"));
                    let policy = Some(SplitPolicy::Balanced);
                    db.put_with_policy(latent_decode.name(), &bucket, &c, policy, tb, &today());
                }
                other => {
                    match other {
                        Ok(tb) => say(format!("  {:<52} {tb:>12.1}", format!("{c} balanced"))),
                        Err(e) => say(format!("  {:<52} skipped: {e}", format!("{c} balanced"))),
                    }
                    say(format!(
                        "  best: {c}, uniform splits ({splits}) ({t:.1} us)"
                    ));
                    let name = latent_decode.name();
                    // A count is stored only where it is not what the occupancy rule picks.
                    let rule = choose_splits(exec, &p, a.context).ok();
                    if rule == Some(splits) {
                        let policy = Some(SplitPolicy::Uniform);
                        db.put_with_policy(name, &bucket, &c, policy, t, &today());
                    } else {
                        db.put_with_uniform_splits(name, &bucket, &c, splits, t, &today());
                    }
                }
            }
        }
        progress.finish_and_clear();
        for w in db.save()? {
            eprintln!("tpla: {w}");
        }
        println!("wrote {}", db.path().display());
        Ok(())
    }
}

/// How many of the fastest candidates `tpla tune` times again at other uniform split counts.
const SPLIT_SEARCH_TOP: usize = 3;

/// Median time (µs) of `reps` uniform decodes of `p` with its `splits` (after an untimed
/// warm-up, which compiles): device time on CUDA ([`median_us`]).
fn time_uniform<X: Executor + 'static>(
    exec: &X,
    p: &DecodeParams,
    reps: usize,
    q: &X::Tensor<bf16>,
    cache: &X::Paged<bf16>,
) -> Result<f64, CliError> {
    let mut out = exec.alloc::<f32>(&[p.batch, p.heads, p.lat])?;
    let mut lse = exec.alloc::<f32>(&[p.batch, p.heads])?;
    median_us(exec, reps, || {
        decode_attention(exec, p, q, cache, &mut out, &mut lse)
    })
}

/// Median time (µs) of `reps` balanced decodes of `p` (after an untimed warm-up): device time
/// on CUDA ([`median_us`]).
fn time_balanced<X: Executor + 'static>(
    exec: &X,
    p: &DecodeParams,
    max_len: usize,
    reps: usize,
    q: &X::Tensor<bf16>,
    cache: &X::Paged<bf16>,
) -> Result<f64, CliError> {
    let sched = choose_balanced(exec, p, max_len)?.with_waves(BALANCED_WAVES);
    let mut ws = BalancedWorkspace::new(exec, p, sched)?;
    let mut out = exec.alloc::<f32>(&[p.batch, p.heads, p.lat])?;
    let mut lse = exec.alloc::<f32>(&[p.batch, p.heads])?;
    median_us(exec, reps, || {
        decode_attention_balanced(exec, p, &mut ws, q, cache, &mut out, &mut lse)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_are_searched_only_where_they_apply() {
        assert_eq!(knob_settings(false), &[&[] as &[(&str, i64)]]);
        assert_eq!(knob_settings(true).len(), SEARCHED_SETTINGS.len());
        assert!(knob_settings(true).len() > 1);
        // SEESAW applies at BLOCK_N 32 and changes nothing at 64 (its pair ring does not fit).
        let base = latent_decode
            .default_config(&[])
            .unwrap()
            .with("BLOCK_H", 64);
        let ss = |bn: i64| base.clone().with("BLOCK_N", bn).with("SEESAW", 1);
        assert!(seesaw_applies_sm90(&ss(32), 512, 64));
        assert!(!seesaw_applies_sm90(&ss(64), 512, 64));
    }

    #[test]
    fn candidates_that_emit_the_same_kernel_are_timed_once() {
        let cfg = |knobs: &[(&str, i64)]| {
            let mut c = latent_decode.default_config(&[]).unwrap();
            for (k, v) in knobs {
                c.set(k, *v);
            }
            sm90_kernel_text(&c, 512, 64).unwrap()
        };
        let h16 = [("BLOCK_H", 16), ("BLOCK_N", 64), ("STAGES", 2)];
        // WG_SPLIT only matters to 64-row warpgroup tiles.
        let mut split = h16.to_vec();
        split.push(("WG_SPLIT", 32));
        assert_eq!(cfg(&h16), cfg(&split));
        // The ring's depth is capped to what fits: 3 or 4 stages of 64 tokens at 64 rows are 2.
        let h64 = |st| [("BLOCK_H", 64), ("BLOCK_N", 64), ("STAGES", st)];
        assert_eq!(cfg(&h64(3)), cfg(&h64(4)));
        // A knob that applies changes the text.
        let mut producer = h16.to_vec();
        producer.extend([("PRODUCER", 1), ("TMA", 1)]);
        assert_ne!(cfg(&h16), cfg(&producer));
        assert_ne!(cfg(&h64(2)), cfg(&h64(1)));
    }
}
