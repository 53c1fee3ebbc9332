//! `tpla decode`: the main job. A DeepSeek-shaped attention decode, exact MLA and TPLA side by
//! side on one executor: time per step, tokens/s, and how far TPLA's output is from MLA's.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use tpla::decoder::{concat_shards, DecoderShape, LatentDecoder};
use tpla_codegen::KernelDef;
use tpla_kernels::latent_decode;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention, rel_error};
use tpla_runtime::tune::{decode_bucket, default_dir, TuneDb};
use tpla_runtime::{Executor, HostTensor};

use super::backend::{dispatch, ExecJob};
use super::decode_args::{DecodeArgs, LAT, ROPE};
use super::error::CliError;
use super::sample::{self, check_against_reference, median};

/// Runs `tpla decode`: checks every size first, then one device or `--devices k` ranks.
pub fn decode(args: DecodeArgs) -> Result<(), CliError> {
    args.validate()?;
    if args.layer.form.is_some() || args.layer.max_batch {
        return super::decode_layer::decode_layer(args);
    }
    if args.devices > 1 {
        return super::decode_tp::decode_tp(args);
    }
    let backend = args.backend;
    let threads = args.threads;
    dispatch(backend, threads, DecodeJob(args))
}

struct DecodeJob(DecodeArgs);

/// Seconds per step: the host clock around each attention call and a synchronisation (launch
/// and wait included), and, on a CUDA executor, the device's own time of a second call of it.
struct Timing {
    mla: Vec<f64>,
    tpla_shards: Vec<Vec<f64>>,
    mla_device: Vec<f64>,
    tpla_shards_device: Vec<Vec<f64>>,
}

impl ExecJob for DecodeJob {
    type Out = ();
    fn run<X: Executor + 'static>(self, exec: &X) -> Result<(), CliError> {
        let a = self.0;
        a.check_memory(exec.backend_name().starts_with("cpu"))?;
        let cfg = a.preset.preset().config();
        let heads = cfg.heads;
        let scale = cfg.scale as f32;
        let max_tokens = a.context + a.steps;
        let splits = a.splits;
        let shape = |groups| DecoderShape {
            batch: a.batch,
            heads,
            lat: LAT,
            rope: ROPE,
            groups,
            page_size: a.page_size,
            max_tokens,
            splits,
            scale,
        };
        let mut mla = LatentDecoder::new(exec, shape(1))?;
        let mut tpla = LatentDecoder::new(exec, shape(a.g))?;
        let (db, warnings) =
            TuneDb::open(&default_dir(), &exec.device_identity(), &[&latent_decode]);
        for w in warnings {
            eprintln!("tpla: {w}");
        }
        let mut tuned = Vec::new();
        for dec in [&mut mla, &mut tpla] {
            let bucket = decode_bucket(a.batch, heads, dec.shard_width(), ROPE, max_tokens);
            let name = latent_decode.name();
            if let (Some(c), Some(e)) = (db.get(name, &bucket), db.entry(name, &bucket)) {
                let shown = c.to_string();
                let how = dec.apply_tuned(c, e);
                tuned.push(format!("{shown}{how} from {}", db.path().display()));
            }
        }
        println!(
            "tpla decode: {} (H={heads}, latent {LAT} + rope {ROPE}, scale {scale:.4}), batch {}, context {}, g={}, page {}, splits {}",
            cfg.name,
            a.batch,
            a.context,
            a.g,
            a.page_size,
            if splits == 0 { "auto (whole waves of resident programs)".to_string() } else { splits.to_string() }
        );
        println!("backend: {}", exec.backend_name());
        if tuned.is_empty() {
            println!(
                "kernel configs: defaults (run `tpla tune` to pick the fastest for this device)"
            );
        } else {
            println!("kernel configs: tuned ({})", tuned.join("; "));
        }

        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
        let random_rows = |n: usize, rng: &mut rand::rngs::StdRng| {
            sample::random_rows(a.batch, n, LAT + ROPE, rng)
        };
        let t0 = Instant::now();
        let prefix = random_rows(a.context, &mut rng)?;
        mla.append(exec, &prefix)?;
        tpla.append(exec, &prefix)?;
        exec.synchronize()?;
        println!("prefill: {} tokens per sequence written to the MLA cache and {} TPLA shard caches in {:.2} s", a.context, a.g, t0.elapsed().as_secs_f64());

        let mut timing = Timing {
            mla: Vec::new(),
            tpla_shards: vec![Vec::new(); a.g],
            mla_device: Vec::new(),
            tpla_shards_device: vec![Vec::new(); a.g],
        };
        let mut last = None;
        for step in 0..a.steps {
            let row = random_rows(1, &mut rng)?;
            mla.append(exec, &row)?;
            tpla.append(exec, &row)?;
            let qv: Vec<f32> = (0..a.batch * heads * (LAT + ROPE))
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect();
            let q = HostTensor::<bf16>::from_f32(&[a.batch, heads, LAT + ROPE], &qv)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let qm = mla.shard_queries(exec, &q)?;
            let qt = tpla.shard_queries(exec, &q)?;
            if step == 0 {
                // Warm-up: compiles the kernels, so that every step (even of `--steps 1`) is
                // timed without compilation. Attention leaves the caches unchanged.
                mla.attend_prepared(exec, &qm)?;
                for (i, qi) in qt.iter().enumerate() {
                    tpla.attend_shard(exec, &tpla.shards()[i], qi)?;
                }
            }
            exec.synchronize()?;
            // Which width is timed first alternates per step: the first call after the step's
            // host work (milliseconds with the device idle) may pay for the idle device, and
            // timing MLA first every step charged that to MLA alone (session 17: the host clock
            // read 88 us over the device time for MLA, 36 us for the shard).
            let time_mla = |timing: &mut Timing| -> Result<_, CliError> {
                let t = Instant::now();
                let om = mla.attend_prepared(exec, &qm)?;
                exec.synchronize()?;
                timing.mla.push(t.elapsed().as_secs_f64());
                Ok(om)
            };
            let time_shards = |timing: &mut Timing| -> Result<_, CliError> {
                let mut ot = Vec::new();
                for (i, qi) in qt.iter().enumerate() {
                    let t = Instant::now();
                    ot.push(tpla.attend_shard(exec, &tpla.shards()[i], qi)?);
                    exec.synchronize()?;
                    timing.tpla_shards[i].push(t.elapsed().as_secs_f64());
                }
                Ok(ot)
            };
            let (om, ot) = if step % 2 == 0 {
                let om = time_mla(&mut timing)?;
                (om, time_shards(&mut timing)?)
            } else {
                let ot = time_shards(&mut timing)?;
                (time_mla(&mut timing)?, ot)
            };
            // The same calls again, timed by the device alone (attention leaves the caches as
            // they are; these outputs are dropped).
            if let Some(s) =
                super::clock::device_seconds(exec, || mla.attend_prepared(exec, &qm).map(drop))?
            {
                timing.mla_device.push(s);
            }
            for (i, qi) in qt.iter().enumerate() {
                let shard = &tpla.shards()[i];
                if let Some(s) = super::clock::device_seconds(exec, || {
                    tpla.attend_shard(exec, shard, qi).map(drop)
                })? {
                    timing.tpla_shards_device[i].push(s);
                }
            }
            if step + 1 == a.steps {
                last = Some((q, om, ot));
            }
        }
        let (q, om, ot) = last.expect("steps >= 1");
        let mla_out = exec.download(&om[0].0)?.into_vec();
        let parts: Vec<Vec<f32>> = ot
            .iter()
            .map(|(o, _)| exec.download(o).map(|t| t.into_vec()))
            .collect::<Result<_, _>>()?;
        let tpla_out = concat_shards(&parts, a.batch * heads, LAT / a.g)?;

        let steps_timed = timing.mla.len();
        let mla_s = median(&mut timing.mla);
        let shard_s: Vec<f64> = timing.tpla_shards.iter_mut().map(|v| median(v)).collect();
        let per_device = shard_s.iter().copied().fold(0.0, f64::max);
        let len = a.context + a.steps;
        let bytes = |w: usize| (a.batch * len * (w + ROPE) * 2) as f64;
        // One table line: `t` seconds per step over a cache of latent width `w`.
        let row = |name: &str, w: usize, t: f64| {
            println!(
                "{:<24} {:>10} {:>14.3} {:>12.1} {:>10.1}",
                name,
                (w + ROPE) * 2,
                t * 1e3,
                a.batch as f64 / t,
                bytes(w) / t / 1e9
            )
        };
        println!();
        println!(
            "{:<24} {:>10} {:>14} {:>12} {:>10}",
            "attention per layer", "row (B)", "ms / step", "tokens/s", "GB/s"
        );
        row("MLA (one device)", LAT, mla_s);
        row(
            &format!("TPLA g={} (per device)", a.g),
            LAT / a.g,
            per_device,
        );
        let byte_ratio = (LAT + ROPE) as f64 / (LAT / a.g + ROPE) as f64;
        // On a GPU, the device's own time of the same calls (what `tpla bench` and `tpla tune`
        // report, and what a step queued or replayed as a graph pays): the host clock above
        // adds a launch and a synchronisation to each call, the same for both kernels, so it
        // weighs more on the shorter one.
        let device = if timing.mla_device.is_empty() {
            None
        } else {
            let mla_d = median(&mut timing.mla_device);
            let shard_d = timing
                .tpla_shards_device
                .iter_mut()
                .map(|v| median(v))
                .fold(0.0, f64::max);
            row("MLA, device time", LAT, mla_d);
            row(&format!("TPLA g={}, device time", a.g), LAT / a.g, shard_d);
            // What the host clock adds to each call (launch, wait, host work): equal for both
            // widths unless one call does more on the host (see the alternating order above).
            println!(
                "host clock over device time per call: MLA {:+.1} us, TPLA {:+.1} us",
                (mla_s - mla_d) * 1e6,
                (per_device - shard_d) * 1e6
            );
            Some(mla_d / shard_d)
        };
        match device {
            Some(d) => println!("per-device speedup TPLA vs MLA: {d:.2}x by device time (events on the stream, as `tpla bench` times), {:.2}x by the host clock (launch and synchronisation included) (cache bytes ratio {byte_ratio:.2}x; median of {steps_timed} steps)", mla_s / per_device),
            None => println!("per-device speedup TPLA vs MLA: {:.2}x (cache bytes ratio {byte_ratio:.2}x; median of {steps_timed} steps)", mla_s / per_device),
        }

        let m64: Vec<f64> = mla_out.iter().map(|&x| x as f64).collect();
        let t64: Vec<f64> = tpla_out.iter().map(|&x| x as f64).collect();
        let cos = cosine(&t64, &m64);
        println!("TPLA vs MLA attention output (random cache, no transform): rel diff {:.3e}, cosine {:.4}", rel_error(&t64, &m64), cos);

        // Check sequence 0 of the MLA output against the f64 reference.
        let d = LAT + ROPE;
        let host_cache = exec.download_paged(&mla.shards()[0])?;
        let mut rows = Vec::with_capacity(len * d);
        for t in 0..len {
            rows.extend(host_cache.token(0, t)?.iter().map(|x| x.to_f32() as f64));
        }
        let q0: Vec<f64> = q.data()[..heads * d]
            .iter()
            .map(|x| x.to_f32() as f64)
            .collect();
        let r = latent_attention(&q0, &rows, heads, LAT, ROPE, scale as f64);
        check_against_reference("MLA output", &m64[..heads * LAT], &r.out)
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}
