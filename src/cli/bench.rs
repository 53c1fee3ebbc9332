//! `tpla bench`: speed measured, never assumed.
//!
//! On a CUDA GPU (`--backend cuda`, or `auto` where one is usable): the decode matrix of
//! [`super::bench_cuda`] against a same-process roofline. On the CPU: the JIT-compiled
//! `latent_decode` (+ combine) against a plain rustc -O implementation of the same math on the
//! same thread count, next to a streaming-read roofline measured in the same process. Results are
//! printed and stored as JSON in `--out-dir` (default: the user's data directory, see
//! [`default_out_dir`]), labelled with the commit this binary was built from ([`BUILD_COMMIT`]).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tpla_kernels::ops::{decode_attention, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::rel_error;
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor};

use super::error::CliError;
use super::BackendArg;

/// Options of `tpla bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Executor to benchmark.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Sequences (CPU benchmark).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Heads (CPU benchmark).
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    /// Tokens per sequence (CPU benchmark).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Latent width (CPU benchmark); RoPE is 64.
    #[arg(long, default_value_t = 512)]
    pub lat: usize,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 9)]
    pub reps: usize,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Directory for the JSON result [default: $XDG_DATA_HOME/tpla/bench, else
    /// ~/.local/share/tpla/bench].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// GPU: fewer shapes and configs (B 128 x 4K; BLOCK_N 64, 2 stages).
    #[arg(long)]
    pub quick: bool,
    /// GPU: head counts of the matrix.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    pub gpu_heads: Vec<usize>,
    /// GPU: only this variant's cases (`mla`, `tpla-shard`, the FP8 cache `mla-fp8`, or the
    /// multi-token `mla-sq2`, `mla-sq4`, `tpla-shard-sq2`, `tpla-shard-sq4`).
    #[arg(long, value_parser = ["mla", "tpla-shard", "mla-fp8", "mla-sq2", "mla-sq4", "tpla-shard-sq2", "tpla-shard-sq4"])]
    pub variant: Option<String>,
    /// GPU: only configs with these values, e.g. `BLOCK_H=64,BLOCK_N=32` (profiling).
    #[arg(long)]
    pub config: Option<String>,
    /// GPU: store each equal-length single-token case's fastest config in this device's tune
    /// database (as `tpla tune` would for that shape, uniform splits), so `tpla decode` uses it.
    #[arg(long)]
    pub record_tune: bool,
    /// GPU: only this equal-length shape, `BATCHxCONTEXT` (e.g. `64x32768`, page 64), and none of
    /// the page-size, variable-length or multi-token cases (profiling one case); the FP8 case of
    /// that shape only with `--variant mla-fp8`.
    #[arg(long, value_parser = parse_shape)]
    pub gpu_shape: Option<(usize, usize)>,
    /// GPU: compile every sm_90a kernel the matrix would sweep into the kernel cache
    /// (`$TPLA_KERNEL_CACHE_DIR`) instead of timing: no GPU needed, only NVRTC. A later bench on a
    /// Hopper GPU with the same NVRTC major.minor loads them (scripts/gpu-kernel-cache.sh).
    #[arg(long)]
    pub compile_only: bool,
    /// GPU: keep each sequence's pages in order, one after another in the pool, instead of
    /// shuffled between sequences (an engine's pool after a long run): whether the decode's speed
    /// depends on where the pages lie (address translation, DRAM locality).
    #[arg(long)]
    pub contiguous_pages: bool,
}

/// Parses `BATCHxCONTEXT` (both positive).
fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (b, l) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not BATCHxCONTEXT (e.g. 64x32768)"))?;
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("`{t}` in `{s}` is not a positive integer"))
    };
    Ok((num(b)?, num(l)?))
}

#[derive(Serialize)]
struct CpuBenchResult {
    kind: &'static str,
    date: String,
    git_commit: String,
    cpu: String,
    threads: usize,
    batch: usize,
    heads: usize,
    context: usize,
    lat: usize,
    rope: usize,
    splits: usize,
    config: String,
    jit_ms: f64,
    plain_rust_ms: f64,
    speedup_jit_over_plain: f64,
    jit_gflops: f64,
    jit_gbps: f64,
    plain_gflops: f64,
    read_roofline_gbps: f64,
    jit_vs_plain_rel_diff: f64,
}

/// Runs `tpla bench`.
pub fn bench(a: BenchArgs) -> Result<(), CliError> {
    if let Some(&h) = a.gpu_heads.iter().max() {
        super::limits::at_most("--gpu-heads", h, super::limits::MAX_HEADS)?;
    }
    if a.gpu_heads.is_empty() || a.gpu_heads.contains(&0) {
        return Err(CliError::Usage(
            "--gpu-heads needs positive head counts".into(),
        ));
    }
    let opts = super::bench_cuda::GpuBenchOpts {
        quick: a.quick,
        out: out_dir(&a),
        variant: a.variant.clone(),
        heads: a.gpu_heads.clone(),
        config: a.config.clone(),
        record_tune: a.record_tune,
        shape: a.gpu_shape,
        contiguous_pages: a.contiguous_pages,
    };
    if a.compile_only {
        return Ok(super::bench_cuda::compile_only(&opts)?);
    }
    let gpu = |exec: tpla_runtime::cuda::CudaExecutor| -> Result<(), CliError> {
        Ok(super::bench_cuda::run(&exec, &opts)?)
    };
    match a.backend {
        BackendArg::Cuda => gpu(super::backend::open_cuda()?),
        BackendArg::Auto => match super::backend::open_cuda() {
            Ok(exec) => gpu(exec),
            Err(e) => {
                eprintln!("tpla bench: no usable CUDA GPU ({e}); benchmarking the CPU JIT");
                cpu_bench(&a)
            }
        },
        BackendArg::Cpu => cpu_bench(&a),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.total_cmp(y));
    v[v.len() / 2]
}

/// Streaming-read bandwidth of this machine with `threads` threads (GB/s).
fn read_roofline(pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20; // 256 MiB of f32
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = pool.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0.0f32, |a, b| a + b))
                .sum()
        });
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / dt / 1e9);
    }
    best
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub use tpla_runtime::cuda::bench::today;

/// The commit this binary was built from (`git rev-parse --short HEAD` at build time, `-dirty`
/// when tracked files differed from it; `unknown` when built without git metadata): recorded in
/// every JSON report, whatever directory the binary runs in.
pub const BUILD_COMMIT: &str = env!("TPLA_BUILD_COMMIT");

/// Where `tpla bench` writes its JSON by default: `$XDG_DATA_HOME/tpla/bench`, else
/// `~/.local/share/tpla/bench`, else `tpla/bench` under the temporary directory.
pub fn default_out_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".local").join("share"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("tpla")
        .join("bench")
}

fn out_dir(a: &BenchArgs) -> PathBuf {
    a.out_dir.clone().unwrap_or_else(default_out_dir)
}

/// A progress bar on stderr for long work (`tpla bench`, `tpla tune`); hidden when stderr is not
/// a terminal. Print through [`indicatif::ProgressBar::suspend`] while it is shown.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len}, {elapsed} (eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn cpu_bench(a: &BenchArgs) -> Result<(), CliError> {
    super::limits::check_sizes(&[
        ("--batch", a.batch, 1, super::limits::MAX_BATCH),
        ("--heads", a.heads, 1, super::limits::MAX_HEADS),
        ("--context", a.context, 1, super::limits::MAX_CONTEXT),
        ("--lat", a.lat, 1, super::limits::MAX_LAT),
        ("--reps", a.reps, 1, super::limits::MAX_REPS),
        ("--threads", a.threads, 0, super::limits::MAX_THREADS),
    ])?;
    super::limits::MemoryPlan::default()
        .add(&[2, a.batch, a.context + 64, a.lat + 64], 2)
        .add(&[67, a.batch, a.heads, a.lat], 4)
        .add_bytes(256 << 20)
        .check_host("--batch, --heads, --context and --lat")?;
    let rope = 64;
    let d = a.lat + rope;
    let exec = CpuExecutor::new(a.threads)?;
    let threads = exec.threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let qv: Vec<f32> = (0..a.batch * a.heads * d)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)).to_f32())
        .collect();
    let q = HostTensor::<bf16>::from_f32(&[a.batch, a.heads, d], &qv)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut cache = HostPagedCache::<bf16>::new(a.batch, a.context, 64, d)?;
    cache
        .data_mut()
        .iter_mut()
        .for_each(|x| *x = bf16::from_f32(rng.gen_range(-1.0f32..1.0)));
    cache.set_seq_lens(&vec![a.context; a.batch])?;
    let scale = 0.1352f32;
    let mut params = DecodeParams::new(a.batch, a.heads, a.lat, rope, 1, scale);
    let splits = tpla_kernels::ops::choose_splits(&exec, &params, a.context)?;
    params.splits = splits;
    let mut out = HostTensor::<f32>::full(&[a.batch, a.heads, a.lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[a.batch, a.heads], f32::NAN);
    let mut plain = vec![f32::NAN; a.batch * a.heads * a.lat];

    println!("tpla bench (cpu): B={} H={} L={} latent {} + rope {rope}, {threads} threads, splits {splits}", a.batch, a.heads, a.context, a.lat);
    let roof = read_roofline(&pool);
    // Warm-up: compiles the kernels, touches the caches.
    decode_attention(&exec, &params, &q, &cache, &mut out, &mut lse)?;
    tpla::baseline::plain_decode(&pool, &qv, &cache, a.heads, a.lat, scale, &mut plain);
    let (mut tj, mut tp) = (Vec::new(), Vec::new());
    let progress = progress_bar(a.reps as u64, "timing");
    for _ in 0..a.reps {
        progress.inc(1);
        out.data_mut().iter_mut().for_each(|x| *x = f32::NAN);
        let t = Instant::now();
        decode_attention(&exec, &params, &q, &cache, &mut out, &mut lse)?;
        tj.push(t.elapsed().as_secs_f64());
        plain.iter_mut().for_each(|x| *x = f32::NAN);
        let t = Instant::now();
        tpla::baseline::plain_decode(&pool, &qv, &cache, a.heads, a.lat, scale, &mut plain);
        tp.push(t.elapsed().as_secs_f64());
    }
    progress.finish_and_clear();
    let (jit, pl) = (median(tj), median(tp));
    let diff = rel_error(
        &out.data().iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &plain.iter().map(|&x| x as f64).collect::<Vec<_>>(),
    );
    let tokens = (a.batch * a.context) as f64;
    let flops = 2.0 * tokens * a.heads as f64 * (d + a.lat) as f64;
    let bytes = 2.0
        * (tokens * d as f64 + (a.batch * a.heads * d) as f64 + (a.batch * a.heads * a.lat) as f64);
    let result = CpuBenchResult {
        kind: "cpu-latent-decode",
        date: today(),
        git_commit: BUILD_COMMIT.to_string(),
        cpu: cpu_name(),
        threads,
        batch: a.batch,
        heads: a.heads,
        context: a.context,
        lat: a.lat,
        rope,
        splits,
        config: params.decode.to_string(),
        jit_ms: jit * 1e3,
        plain_rust_ms: pl * 1e3,
        speedup_jit_over_plain: pl / jit,
        jit_gflops: flops / jit / 1e9,
        jit_gbps: bytes / jit / 1e9,
        plain_gflops: flops / pl / 1e9,
        read_roofline_gbps: roof,
        jit_vs_plain_rel_diff: diff,
    };
    println!("{:<28} {:>10} {:>10} {:>10}", "", "ms", "GFLOP/s", "GB/s");
    println!(
        "{:<28} {:>10.2} {:>10.2} {:>10.2}",
        "JIT (Cranelift, DSL kernel)", result.jit_ms, result.jit_gflops, result.jit_gbps
    );
    println!(
        "{:<28} {:>10.2} {:>10.2} {:>10.2}",
        "plain Rust (rustc -O)",
        result.plain_rust_ms,
        result.plain_gflops,
        bytes / pl / 1e9
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10.2}",
        "streaming-read roofline", "", "", roof
    );
    println!(
        "JIT / plain speedup: {:.2}x; outputs agree to rel {:.1e}",
        result.speedup_jit_over_plain, diff
    );
    if diff.is_nan() || diff > 1e-4 {
        return Err(CliError::Usage(format!(
            "JIT and plain outputs disagree: rel {diff:.3e}"
        )));
    }
    let dir = out_dir(a);
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let path = dir.join(format!(
        "cpu-decode-{}-{}.json",
        result.date, result.git_commit
    ));
    let json = serde_json::to_string_pretty(&result).map_err(|e| CliError::Usage(e.to_string()))?;
    tpla_runtime::fsutil::write_atomic(&path, (json + "\n").as_bytes()).map_err(|e| {
        CliError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })?;
    println!("wrote {}", path.display());
    Ok(())
}
