//! GPU benchmarking: event-timed medians, a roofline measured in the same process (a
//! streaming-read kernel and a device-to-device copy), the FLOP and byte counts of decode
//! attention (../shared/TPLA.md §5, FlashMLA's convention) and the JSON report written under
//! `bench/results/`.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::driver::result;

use super::device::{driver_err, CudaExecutor, DeviceInfo, RawKernel};
use crate::RuntimeError;

/// Timing of repeated runs, in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    /// Median over the timed runs.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// Timed runs (after warm-up).
    pub reps: usize,
    /// The longest the host took to queue one timed run (µs): what the queue guard must cover.
    pub host_queue_max_us: f64,
    /// Timed runs whose queueing outlasted the guard queued before them, so that their event
    /// time may include host time (0 where the guard held every run).
    pub host_exposed_runs: usize,
    /// How the L2 was emptied before each timed run: `"memset"` (zeroing a 256 MB buffer, as
    /// Triton's `do_bench`: the L2 then holds dirty lines the run writes back) or `"read"`
    /// (streaming through it: clean lines, as after a step's weight reads). [`flush_mode`].
    pub flush: &'static str,
}

/// Bytes the timing loop of [`measure`] zeroes before each timed run: more than any Hopper L2
/// (50-60 MB).
const FLUSH_BYTES: usize = 256 << 20;

/// One thread waiting `ns` nanoseconds of the global timer: queued between the flush and the
/// start event, it holds the stream while the host queues the run.
const QUEUE_GUARD: &str = r#"
extern "C" __global__ void tpla_queue_guard(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
"#;

/// The hand-written kernels of the timing loop and the roofline, as (symbol, CUDA C++ source):
/// what `nvrtc_compile` compiles in CI, where no GPU loads them.
pub fn timing_kernels() -> [(&'static str, &'static str); 2] {
    [
        ("tpla_queue_guard", QUEUE_GUARD),
        ("tpla_stream_read", STREAM_READ),
    ]
}

/// The guard before a run: twice the longest queueing seen so far, within 20 µs ..= 2 ms.
fn guard_ns(host_queue_s: f64) -> u64 {
    ((2.0 * host_queue_s * 1e9) as u64).clamp(20_000, 2_000_000)
}

/// Whether [`measure`] runs its queue guard: yes unless `TPLA_BENCH_QUEUE_GUARD=off` (the A/B
/// switch of scripts/gpu-guard-ab.sh, timing as before 2026-12-07 with one binary). A value
/// other than `on`/`off`/`1`/`0` is an error naming the variable.
pub fn queue_guard_enabled() -> Result<bool, RuntimeError> {
    super::env_switch(QUEUE_GUARD_VAR)
}

const QUEUE_GUARD_VAR: &str = "TPLA_BENCH_QUEUE_GUARD";

/// How [`measure`] empties the L2 before each timed run: `"memset"` (the default) or, with
/// `TPLA_BENCH_FLUSH=read`, `"read"`: the streaming-read kernel over the same 256 MB, which
/// leaves the L2 as cold for the run's data but holding clean lines. After a memset the run also
/// writes back the L2's dirty lines (~50 MB on an H100: 10 us more per decode at Kimi-K2 B32
/// on an H100, 2026-12-07), a cost no engine step has where the previous kernels mostly read
/// weights. Another value is an error naming the variable.
pub fn flush_mode() -> Result<&'static str, RuntimeError> {
    parse_flush(std::env::var("TPLA_BENCH_FLUSH").ok().as_deref())
}

fn parse_flush(v: Option<&str>) -> Result<&'static str, RuntimeError> {
    match v {
        None | Some("memset") => Ok("memset"),
        Some("read") => Ok("read"),
        Some(other) => Err(RuntimeError::InvalidInput(format!(
            "TPLA_BENCH_FLUSH={other}: expected memset or read"
        ))),
    }
}

/// Runs `f` `warmup` times, then `reps` times each between two events recorded on the
/// executor's stream, and returns the median (and extremes) of the event times.
///
/// Before each timed run the stream zeroes a 256 MB buffer (as Triton's `do_bench` does), so the
/// L2 starts cold, then runs a guard kernel that waits on the device (twice the longest time
/// the host has taken to queue a run so far, 200 µs before any was seen, within 20 µs ..= 2 ms):
/// the start event runs only once the guard ends, by which time the host has queued the run,
/// so the time is the GPU's alone. Until 2026-12-07 the memset alone was the guard (~55 µs on
/// an H200): a run whose launches took the host longer than that was timed with the host's
/// share in it, the suspected cause of session 15's full ops timed 100 µs over their kernels.
/// Each run's queueing is timed by the host clock; [`Measurement::host_exposed_runs`] counts
/// the runs it outlasted the guard.
pub fn measure<F>(
    exec: &CudaExecutor,
    warmup: usize,
    reps: usize,
    mut f: F,
) -> Result<Measurement, RuntimeError>
where
    F: FnMut() -> Result<(), RuntimeError>,
{
    if reps == 0 {
        return Err(RuntimeError::InvalidInput("at least one timed run".into()));
    }
    let stream = exec.stream();
    let guard = exec.raw_kernel("tpla_queue_guard", QUEUE_GUARD)?;
    let guarded = queue_guard_enabled()?;
    let flush_by = flush_mode()?;
    // The read flush: the streaming-read kernel and its 16-byte sink (never written: the flush
    // buffer is zeros, the kernel writes only on a non-zero hash).
    let reader = if flush_by == "read" {
        Some((
            exec.raw_kernel("tpla_stream_read", STREAM_READ)?,
            exec.alloc_raw(16)?,
        ))
    } else {
        None
    };
    // The first warm-up run may compile; the guard learns from the later ones.
    let mut queue_s: Option<f64> = None;
    for i in 0..warmup {
        let t = Instant::now();
        f()?;
        if i > 0 {
            queue_s = Some(queue_s.unwrap_or(0.0).max(t.elapsed().as_secs_f64()));
        }
    }
    stream
        .synchronize()
        .map_err(|e| driver_err("synchronize", e))?;
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut flush = stream
        .alloc_zeros::<u8>(FLUSH_BYTES)
        .map_err(|e| driver_err("allocate the timing loop's flush buffer", e))?;
    let flush_ptr = {
        use cudarc::driver::DevicePtr;
        flush.device_ptr(stream).0
    };
    let mut times = Vec::with_capacity(reps);
    let (mut host_max, mut exposed) = (0.0f64, 0usize);
    for _ in 0..reps {
        match &reader {
            None => stream
                .memset_zeros(&mut flush)
                .map_err(|e| driver_err("flush memset", e))?,
            Some((k, (_sink, sink))) => stream_read(exec, k, flush_ptr, FLUSH_BYTES, *sink)?,
        }
        let mut ns = if guarded {
            queue_s.map_or(200_000, guard_ns)
        } else {
            0
        };
        if guarded {
            let mut params = [&mut ns as *mut u64 as *mut c_void];
            // SAFETY: one u64 parameter, as the kernel declares; it touches no memory.
            unsafe { exec.launch_raw(&guard, (1, 1, 1), 1, 0, &mut params) }?;
        }
        let start = stream
            .record_event(flags)
            .map_err(|e| driver_err("event record", e))?;
        let t = Instant::now();
        f()?;
        let queued = t.elapsed().as_secs_f64();
        let end = stream
            .record_event(flags)
            .map_err(|e| driver_err("event record", e))?;
        end.synchronize()
            .map_err(|e| driver_err("event synchronize", e))?;
        times.push(
            start
                .elapsed_ms(&end)
                .map_err(|e| driver_err("event elapsed", e))? as f64,
        );
        if queued * 1e9 > ns as f64 {
            exposed += 1;
        }
        host_max = host_max.max(queued);
        queue_s = Some(queue_s.unwrap_or(0.0).max(queued));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Measurement {
        median_ms: times[times.len() / 2],
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        reps,
        host_queue_max_us: host_max * 1e6,
        host_exposed_runs: exposed,
        flush: flush_by,
    })
}

/// Bandwidths measured on this device in this process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Roofline {
    /// Streaming read (16-byte loads over a buffer far larger than L2), GB/s.
    pub read_gbps: f64,
    /// Bytes read per run.
    pub read_bytes: u64,
    /// Device-to-device copy, counting read + write, GB/s.
    pub copy_gbps: f64,
    /// Bytes copied per run (traffic is twice that).
    pub copy_bytes: u64,
}

const STREAM_READ: &str = r#"
extern "C" __global__ void __launch_bounds__(512) tpla_stream_read(
    const uint4* __restrict__ p, unsigned long long n, unsigned* __restrict__ sink) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0u;
    for (; i + 3 * stride < n; i += 4 * stride) {
        uint4 a = p[i], b = p[i + stride], c = p[i + 2 * stride], d = p[i + 3 * stride];
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        uint4 a = p[i];
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}
"#;

/// Queues [`STREAM_READ`] (`k`) over the `bytes` (a multiple of 16) at `ptr`, on eight blocks
/// per SM: the read roofline's run and the timing loop's read flush. `sink` is 16 bytes the
/// kernel writes only when the buffer's hash hits its constant.
fn stream_read(
    exec: &CudaExecutor,
    k: &RawKernel,
    ptr: u64,
    bytes: usize,
    sink: u64,
) -> Result<(), RuntimeError> {
    let (mut p, mut n, mut s) = (ptr, (bytes / 16) as u64, sink);
    let mut params = [
        &mut p as *mut u64 as *mut c_void,
        &mut n as *mut u64 as *mut c_void,
        &mut s as *mut u64 as *mut c_void,
    ];
    let blocks = exec.info().sm_count.max(1) * 8;
    // SAFETY: three parameters (pointer, u64 count, pointer) matching the kernel; the caller's
    // buffer holds `n` 16-byte elements at `ptr` and the sink 16 bytes.
    unsafe { exec.launch_raw(k, (blocks, 1, 1), 512, 0, &mut params) }
}

/// Measures the read and copy roofline with buffers of `read_bytes` / `copy_bytes` (use several
/// times the L2 size; 2 GiB and 1 GiB by default in [`roofline_default`]).
pub fn roofline(
    exec: &CudaExecutor,
    read_bytes: usize,
    copy_bytes: usize,
    reps: usize,
) -> Result<Roofline, RuntimeError> {
    let k = exec.raw_kernel("tpla_stream_read", STREAM_READ)?;
    let read_bytes = read_bytes / 16 * 16;
    let (_buf, ptr) = exec.alloc_raw(read_bytes)?;
    let (_sink, sink) = exec.alloc_raw(16)?;
    let read = measure(exec, 2, reps, || {
        stream_read(exec, &k, ptr, read_bytes, sink)
    })?;
    drop(_buf);
    let (_src, src) = exec.alloc_raw(copy_bytes)?;
    let (_dst, dst) = exec.alloc_raw(copy_bytes)?;
    let copy = measure(exec, 2, reps, || {
        exec.context()
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: both buffers hold `copy_bytes` bytes and stay alive until after the final
        // synchronisation inside `measure`.
        unsafe { result::memcpy_dtod_async(dst, src, copy_bytes, exec.stream().cu_stream()) }
            .map_err(|e| driver_err("device copy", e))
    })?;
    Ok(Roofline {
        read_gbps: read_bytes as f64 / (read.median_ms * 1e-3) / 1e9,
        read_bytes: read_bytes as u64,
        copy_gbps: 2.0 * copy_bytes as f64 / (copy.median_ms * 1e-3) / 1e9,
        copy_bytes: copy_bytes as u64,
    })
}

/// [`roofline`] with 2 GiB read, 1 GiB copied, 20 runs each.
pub fn roofline_default(exec: &CudaExecutor) -> Result<Roofline, RuntimeError> {
    roofline(exec, 2 << 30, 1 << 30, 20)
}

/// One decode attention problem (s_q = 1 query token per sequence).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeShape {
    /// Sequences.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Tokens per sequence: every sequence's length, or the longest of a variable-length batch.
    pub context: usize,
    /// Tokens over the whole batch (Σ len): `batch · context` when every length is `context`.
    pub total_tokens: usize,
    /// `equal`, or how the variable lengths were drawn (e.g. `uniform 1..=32768`).
    pub lengths: String,
    /// Latent (value) width: 512 for MLA, 512/g for a TPLA shard.
    pub lat: usize,
    /// RoPE width.
    pub rope: usize,
    /// Tokens per cache page.
    pub page_size: usize,
    /// Bytes of one cache row in the pool: `2 · (lat + rope)` for bf16 rows, 656 for MLA's
    /// FP8 rows (`tpla_codegen::kv_format`).
    pub kv_row_bytes: usize,
}

impl DecodeShape {
    /// A batch whose sequences all hold `context` tokens.
    pub fn equal(
        batch: usize,
        heads: usize,
        context: usize,
        lat: usize,
        rope: usize,
        page_size: usize,
    ) -> DecodeShape {
        DecodeShape {
            batch,
            heads,
            context,
            total_tokens: batch * context,
            lengths: "equal".into(),
            lat,
            rope,
            page_size,
            kv_row_bytes: 2 * (lat + rope),
        }
    }
    /// `2 · s_q · Σlen · H · (d_qk + d_v)` with `d_qk = lat + rope`, `d_v = lat`.
    pub fn flops(&self) -> f64 {
        2.0 * self.total_tokens as f64 * self.heads as f64 * (2 * self.lat + self.rope) as f64
    }
    /// `Σlen · kv_row_bytes + 2 · (B · s_q · H · d_qk + B · s_q · H · d_v)` bytes (the cache rows
    /// as stored, bf16 q and out).
    pub fn bytes(&self) -> f64 {
        let dqk = (self.lat + self.rope) as f64;
        let dv = self.lat as f64;
        let b = self.batch as f64;
        let h = self.heads as f64;
        self.total_tokens as f64 * self.kv_row_bytes as f64 + 2.0 * (b * h * dqk + b * h * dv)
    }
}

/// Result of one decode case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecodeCaseResult {
    /// `mla` or `tpla-shard`.
    pub variant: String,
    /// The problem.
    pub shape: DecodeShape,
    /// Kernel config used (the fastest tried).
    pub config: String,
    /// KV splits.
    pub splits: usize,
    /// Decode + combine.
    pub time: Measurement,
    /// Decode kernel alone (on a balanced row, `+bal`: the whole op, as `time`; the schedule
    /// kernel alone is `schedule`).
    pub decode_only: Measurement,
    /// The balanced split schedule's kernel alone, timed into tables of its own (`+bal` rows
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Measurement>,
    /// The combine alone, on the partials the decode left (uniform rows with more than one
    /// split): with `decode_only` it tells a slow combine from a gap between the two launches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combine_only: Option<Measurement>,
    /// The combine config the full op ran, the fastest of those timed alone (split rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combine_config: Option<String>,
    /// Each combine config timed alone on the same partials: config and median ms (split rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub combine_tried: Vec<(String, f64)>,
    /// Bytes / median time (decode + combine), GB/s.
    pub gbps: f64,
    /// FLOPs / median time, TFLOPS.
    pub tflops: f64,
    /// `gbps / roofline.read_gbps`.
    pub fraction_of_read_roofline: f64,
    /// `gbps / roofline.copy_gbps`: the same bytes (KV once + q + out, bf16) against the
    /// device copy (read + write), the roofline FlashInfer's and FlashMLA's figures are quoted on.
    pub fraction_of_copy_roofline: f64,
    /// Configs tried (config, splits, median ms).
    pub tried: Vec<(String, usize, f64)>,
    /// Max relative difference of the output against the CPU executor (or NaN if not checked).
    pub check_rel_diff: f64,
}

/// Cold and warm compilation times.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompileTimes {
    /// Per variant: (kernel \[config\], cold NVRTC compile ms, memory-cache hit ms, disk-cache hit ms).
    pub variants: Vec<(String, f64, f64, f64)>,
}

/// Everything a benchmark run reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// `cuda-latent-decode`.
    pub kind: String,
    /// UTC date.
    pub date: String,
    /// The commit the benchmarking binary was built from (the caller's build-time constant).
    pub git_commit: String,
    /// The device.
    pub device: DeviceInfo,
    /// NVRTC version.
    pub nvrtc: (i32, i32),
    /// Same-process roofline.
    pub roofline: Roofline,
    /// The cases.
    pub cases: Vec<DecodeCaseResult>,
    /// Compile times.
    pub compile: CompileTimes,
}

/// UTC date as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86400)
        .unwrap_or(0) as i64;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes the report as `DIR/cuda-decode-DATE-COMMIT.json` atomically (a failed write leaves an
/// earlier report of that name intact); returns the path.
pub fn write_report(dir: &Path, r: &BenchReport) -> Result<PathBuf, RuntimeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| RuntimeError::InvalidInput(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("cuda-decode-{}-{}.json", r.date, r.git_commit));
    let json =
        serde_json::to_string_pretty(r).map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
    crate::fsutil::write_atomic(&path, (json + "\n").as_bytes())
        .map_err(|e| RuntimeError::InvalidInput(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// A printable table of the cases.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "device {} (sm_{}{}, {} SMs, driver {}), NVRTC {}.{}, commit {}\n\
         roofline: read {:.0} GB/s, copy {:.0} GB/s (read + write)\n\
         {:<11} {:>4} {:>4} {:>6} {:>4} {:>4} {:>7} {:>10} {:>9} {:>8} {:>7} {:>7}  config\n",
        r.device.name,
        r.device.compute_capability.0,
        r.device.compute_capability.1,
        r.device.sm_count,
        r.device.driver_version,
        r.nvrtc.0,
        r.nvrtc.1,
        r.git_commit,
        r.roofline.read_gbps,
        r.roofline.copy_gbps,
        "variant",
        "H",
        "B",
        "L",
        "lat",
        "page",
        "splits",
        "time(us)",
        "GB/s",
        "TFLOPS",
        "x read",
        "x copy"
    );
    for c in &r.cases {
        s.push_str(&format!(
            "{:<11} {:>4} {:>4} {:>6} {:>4} {:>4} {:>7} {:>10.1} {:>9.0} {:>8.1} {:>7.2} {:>7.2}  {}{}\n",
            c.variant,
            c.shape.heads,
            c.shape.batch,
            c.shape.context,
            c.shape.lat,
            c.shape.page_size,
            c.splits,
            c.time.median_ms * 1e3,
            c.gbps,
            c.tflops,
            c.fraction_of_read_roofline,
            c.fraction_of_copy_roofline,
            c.config,
            if c.shape.lengths == "equal" {
                String::new()
            } else {
                format!(" (lengths {}, Σ {})", c.shape.lengths, c.shape.total_tokens)
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{guard_ns, parse_flush, DecodeShape, QUEUE_GUARD_VAR};
    use crate::cuda::parse_switch;

    fn parse_queue_guard(v: Option<&str>) -> Result<bool, crate::RuntimeError> {
        parse_switch(QUEUE_GUARD_VAR, v)
    }

    #[test]
    fn the_timing_switches_take_their_values_and_name_a_bad_one() {
        assert_eq!(parse_flush(None).unwrap(), "memset");
        assert_eq!(parse_flush(Some("read")).unwrap(), "read");
        assert_eq!(parse_flush(Some("memset")).unwrap(), "memset");
        let e = parse_flush(Some("Read")).unwrap_err().to_string();
        assert!(e.contains("TPLA_BENCH_FLUSH=Read"), "{e}");
        assert!(parse_queue_guard(None).unwrap());
        assert!(!parse_queue_guard(Some("off")).unwrap());
        assert!(!parse_queue_guard(Some("0")).unwrap());
        let e = parse_queue_guard(Some("no")).unwrap_err().to_string();
        assert!(e.contains("TPLA_BENCH_QUEUE_GUARD=no"), "{e}");
    }

    #[test]
    fn the_queue_guard_is_twice_the_queueing_within_its_bounds() {
        assert_eq!(guard_ns(30e-6), 60_000);
        assert_eq!(guard_ns(1e-6), 20_000);
        assert_eq!(guard_ns(0.0), 20_000);
        assert_eq!(guard_ns(5e-3), 2_000_000);
        assert_eq!(guard_ns(f64::INFINITY), 2_000_000);
    }

    #[test]
    fn flop_and_byte_counts_follow_flashmla() {
        let s = DecodeShape::equal(2, 16, 100, 512, 64, 64);
        assert_eq!(s.flops(), 2.0 * 200.0 * 16.0 * (576.0 + 512.0));
        assert_eq!(
            s.bytes(),
            2.0 * (200.0 * 576.0 + 2.0 * 16.0 * 576.0 + 2.0 * 16.0 * 512.0)
        );
        // Intensity tends to H (d_qk + d_v) / d_qk FLOP/B (about 2 H) for long contexts.
        let long = DecodeShape::equal(2, 16, 1 << 20, 512, 64, 64);
        let i = long.flops() / long.bytes();
        assert!((i - 16.0 * 1088.0 / 576.0).abs() < 0.01 * i, "{i}");
    }

    #[test]
    fn variable_lengths_count_the_tokens_present() {
        let mut s = DecodeShape::equal(2, 16, 100, 512, 64, 64);
        s.total_tokens = 100 + 7;
        s.lengths = "given".into();
        assert_eq!(s.flops(), 2.0 * 107.0 * 16.0 * (576.0 + 512.0));
        assert_eq!(
            s.bytes(),
            2.0 * (107.0 * 576.0 + 2.0 * 16.0 * 576.0 + 2.0 * 16.0 * 512.0)
        );
    }
}
