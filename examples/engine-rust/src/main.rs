//! An engine-style program over tpla's decode API, outside the tpla workspace, depending only on
//! `tpla` (`default-features = false, features = ["cuda"]`).
//!
//! The engine owns everything: the KV page pool, a block table filled from a shuffled free list
//! of pages, per-sequence lengths, and the slot mapping of each append. Sequences grow by their
//! own counts, one is freed and its batch slot reused for a new sequence; each step appends the
//! new tokens through their slots and runs one decode that returns the output and its
//! log-sum-exp. Every result is checked against tpla's f64 reference
//! (`tpla::runtime::reference`); the program exits with status 1 when any output is off by more
//! than 1e-2 relative, 2 on an error.
//!
//! On a machine with a CUDA GPU the pool and tables live in device memory the program allocates
//! (through `tpla::runtime::cudarc`), tpla sees them through `unsafe` `from_device` views and
//! runs on the program's own stream (`CudaExecutor::with_stream`). Elsewhere (or with `--cpu`)
//! the same calls run on the CPU backend over host views. `TPLA_REQUIRE_GPU=1` makes a missing
//! GPU an error.
//!
//! Arguments: `--cpu` forces the CPU backend; `--bench [CALLS]` (default 2000) then times
//! `EnginePlan::decode` alone and prints one JSON line: the host time per call (on a GPU, the
//! launches only; the target is under 10 µs).

mod cpu;
mod gpu;

use std::error::Error;
use std::process::ExitCode;

use tpla::engine::{Capacities, KvDtype};
use tpla::runtime::half::bf16;
use tpla::runtime::reference::{latent_attention, rel_error};
use tpla::runtime::view::slot_of;

/// Query heads.
const HEADS: usize = 16;
/// Latent width (MLA).
const LAT: usize = 512;
/// RoPE width.
const ROPE: usize = 64;
/// Values per token row.
const ROW: usize = LAT + ROPE;
/// Tokens per page.
const PAGE: usize = 32;
/// Block-table entries per sequence (longest sequence: 256 tokens).
const PPS: usize = 8;
/// Sequences per decode.
const BATCH: usize = 4;
/// Pages in the pool (more than the batch can hold at once, so freed pages get reused).
const PAGES: usize = 40;
/// Most rows in one append.
const MAX_APPEND: usize = 512;
/// Softmax scale.
const SCALE: f32 = 0.1352;
/// Largest relative error of an output accepted against the f64 reference.
const TOLERANCE: f64 = 1e-2;

type Res<T> = Result<T, Box<dyn Error>>;

/// What the program needs from a backend: append rows at slots, decode one step.
trait Backend {
    /// The backend in words.
    fn name(&self) -> String;
    /// KV splits of the plan.
    fn splits(&self) -> usize;
    /// Writes `rows` (`[n, ROW]`) into the pool at `slots` (`[n]`).
    fn append(&mut self, slots: &[i32], rows: &[bf16]) -> Res<()>;
    /// One decode over the pool through `table` (`[BATCH, PPS]`) and `lens` (`[BATCH]`) for `q`
    /// (`[BATCH, HEADS, ROW]`): `(out [BATCH, HEADS, LAT], lse [BATCH, HEADS])`.
    fn decode(&mut self, table: &[i32], lens: &[i32], q: &[bf16]) -> Res<(Vec<f32>, Vec<f32>)>;
    /// Host seconds per call of `EnginePlan::decode` alone, over `calls` calls on the inputs of
    /// the last `decode` (on a GPU: the launches only; the device work is not waited for).
    fn time_decode(&mut self, calls: usize) -> Res<f64>;
}

/// The plan's capacities.
fn capacities() -> Capacities {
    Capacities {
        max_batch: BATCH,
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: MAX_APPEND,
        kv_dtype: KvDtype::Bf16,
    }
}

/// A small deterministic generator (xorshift64*), so the program needs nothing but tpla.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn values(&mut self, n: usize) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.unit())).collect()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// The engine's bookkeeping, on the host: free pages, block table, lengths, and (only to check
/// results) a host copy of every row it wrote, by slot.
struct Engine {
    rng: Rng,
    free: Vec<i32>,
    table: Vec<i32>,
    pages: [usize; BATCH],
    lens: [i32; BATCH],
    written: Vec<bf16>,
}

impl Engine {
    fn new(seed: u64) -> Engine {
        let mut rng = Rng(seed);
        let mut free: Vec<i32> = (0..PAGES as i32).collect();
        rng.shuffle(&mut free);
        Engine {
            rng,
            free,
            table: vec![0; BATCH * PPS],
            pages: [0; BATCH],
            lens: [0; BATCH],
            written: vec![bf16::ZERO; PAGES * PAGE * ROW],
        }
    }

    /// Sequence `b` grows by `counts[b]` tokens: pages come off the free list as needed; returns
    /// the slot mapping and the new rows. The lengths move once the append is queued.
    fn grow(&mut self, counts: &[usize; BATCH]) -> Res<(Vec<i32>, Vec<bf16>)> {
        let (mut slots, mut rows) = (Vec::new(), Vec::new());
        for (b, &n) in counts.iter().enumerate() {
            let start = self.lens[b] as usize;
            for t in start..start + n {
                if t / PAGE >= self.pages[b] {
                    let page = self.free.pop().ok_or("the pool is out of pages")?;
                    self.table[b * PPS + self.pages[b]] = page;
                    self.pages[b] += 1;
                }
                let slot = slot_of(&self.table[b * PPS..(b + 1) * PPS], PAGE, t)?;
                let row = self.rng.values(ROW);
                let at = slot as usize * ROW;
                self.written[at..at + ROW].copy_from_slice(&row);
                slots.push(slot);
                rows.extend(row);
            }
        }
        Ok((slots, rows))
    }

    /// Sequence `b` ends: its pages go back to the free list (in a shuffled order) and its
    /// length to 0, so its batch slot decodes as empty until reused.
    fn free(&mut self, b: usize) {
        let mut pages = self.table[b * PPS..b * PPS + self.pages[b]].to_vec();
        self.rng.shuffle(&mut pages);
        self.free.extend(pages);
        self.pages[b] = 0;
        self.lens[b] = 0;
    }

    /// Appends `counts` through `backend`, then moves the lengths.
    fn append(&mut self, backend: &mut dyn Backend, counts: &[usize; BATCH]) -> Res<()> {
        let (slots, rows) = self.grow(counts)?;
        backend.append(&slots, &rows)?;
        for (len, &n) in self.lens.iter_mut().zip(counts) {
            *len += n as i32;
        }
        Ok(())
    }

    /// One decode step with fresh queries, checked against the f64 reference; returns the worst
    /// relative error of the outputs and of the LSE.
    fn step(&mut self, backend: &mut dyn Backend) -> Res<(f64, f64)> {
        let q = self.rng.values(BATCH * HEADS * ROW);
        let (out, lse) = backend.decode(&self.table, &self.lens, &q)?;
        let (mut worst_out, mut worst_lse) = (0.0f64, 0.0f64);
        for b in 0..BATCH {
            let ob = &out[b * HEADS * LAT..(b + 1) * HEADS * LAT];
            let lb = &lse[b * HEADS..(b + 1) * HEADS];
            if self.lens[b] == 0 {
                // An empty sequence: zero output, an LSE of about −6.9e29.
                if ob.iter().any(|&x| x != 0.0) || !lb.iter().all(|&x| x < -1e29) {
                    worst_out = f64::INFINITY;
                }
                continue;
            }
            let mut rows = Vec::with_capacity(self.lens[b] as usize * ROW);
            for t in 0..self.lens[b] as usize {
                let at = slot_of(&self.table[b * PPS..(b + 1) * PPS], PAGE, t)? as usize * ROW;
                rows.extend(self.written[at..at + ROW].iter().map(|x| x.to_f64()));
            }
            let qb: Vec<f64> = q[b * HEADS * ROW..(b + 1) * HEADS * ROW]
                .iter()
                .map(|x| x.to_f64())
                .collect();
            let r = latent_attention(&qb, &rows, HEADS, LAT, ROPE, SCALE as f64);
            let got: Vec<f64> = ob.iter().map(|&x| x as f64).collect();
            worst_out = worst_out.max(rel_error(&got, &r.out));
            for (&g, &w) in lb.iter().zip(&r.lse) {
                let e = (g as f64 - w).abs() / w.abs().max(1.0);
                worst_lse = worst_lse.max(if e.is_nan() { f64::INFINITY } else { e });
            }
        }
        Ok((worst_out, worst_lse))
    }
}

/// The command line: `[--cpu] [--bench [CALLS]]`.
struct Args {
    /// Use the CPU backend even when a GPU is present.
    cpu: bool,
    /// Time `EnginePlan::decode` over this many calls after the checks.
    bench: Option<usize>,
}

fn args() -> Res<Args> {
    let mut a = Args {
        cpu: false,
        bench: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cpu" => a.cpu = true,
            "--bench" => {
                let calls =
                    match it.next_if(|n| !n.starts_with("--")) {
                        None => 2000,
                        Some(n) => n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                            format!("--bench takes a positive call count, got `{n}`")
                        })?,
                    };
                a.bench = Some(calls);
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (usage: [--cpu] [--bench [CALLS]])"
                )
                .into())
            }
        }
    }
    Ok(a)
}

/// The GPU backend when a device is usable (and `--cpu` not given), else the CPU backend.
fn backend(want_cpu: bool) -> Res<Box<dyn Backend>> {
    let require_gpu = std::env::var("TPLA_REQUIRE_GPU").as_deref() == Ok("1");
    if !want_cpu {
        match tpla::runtime::cuda_devices() {
            Ok(n) if n > 0 => return Ok(Box::new(gpu::Gpu::new(0)?)),
            Ok(_) if require_gpu => return Err("TPLA_REQUIRE_GPU=1 but no CUDA device".into()),
            Err(e) if require_gpu => return Err(format!("TPLA_REQUIRE_GPU=1: {e}").into()),
            Ok(_) => eprintln!("no CUDA device: running on the CPU backend"),
            Err(e) => eprintln!("{e}: running on the CPU backend"),
        }
    }
    Ok(Box::new(cpu::Cpu::new()?))
}

fn run() -> Res<bool> {
    let Args { cpu, bench } = args()?;
    let mut backend = backend(cpu)?;
    let mut engine = Engine::new(0x7e57_c0de);
    println!(
        "backend {}, {} KV splits, batch {BATCH}, {HEADS} heads, latent {LAT}+{ROPE}, \
         pages of {PAGE} tokens",
        backend.name(),
        backend.splits()
    );
    // Step 1: prefill four sequences of different lengths. Step 2: sequence 2 finishes and is
    // freed; the others grow by their own counts (sequence 1 crosses a page). Step 3: a new
    // sequence takes batch slot 2 (on recycled pages); the others grow by one token.
    let steps: [(&str, Option<usize>, [usize; BATCH]); 3] = [
        ("prefill", None, [150, 7, 64, 200]),
        ("free seq 2, grow", Some(2), [1, 30, 0, 2]),
        ("new seq in slot 2", None, [1, 1, 45, 1]),
    ];
    let mut ok = true;
    for (i, (what, free, counts)) in steps.iter().enumerate() {
        if let Some(b) = free {
            engine.free(*b);
        }
        engine.append(backend.as_mut(), counts)?;
        let (e_out, e_lse) = engine.step(backend.as_mut())?;
        let pass = e_out <= TOLERANCE && e_lse <= TOLERANCE;
        ok &= pass;
        println!(
            "step {} ({what}): lengths {:?}, rel error out {e_out:.2e}, lse {e_lse:.2e}: {}",
            i + 1,
            engine.lens,
            if pass { "ok" } else { "MISMATCH" }
        );
    }
    if let (Some(calls), true) = (bench, ok) {
        let secs = backend.time_decode(calls)?;
        println!(
            "{{\"bench\":\"engine_decode_host\",\"backend\":\"{}\",\"splits\":{},\
             \"batch\":{BATCH},\"heads\":{HEADS},\"lens\":{:?},\"calls\":{calls},\
             \"host_us_per_call\":{:.3}}}",
            backend.name().replace('"', "'"),
            backend.splits(),
            engine.lens,
            secs * 1e6
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: decode differs from the f64 reference by more than {TOLERANCE:e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
