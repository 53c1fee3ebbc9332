//! `tpla decode --devices k`: one attention layer of decode under tensor parallelism over `k`
//! executors (GPUs with NCCL, or CPU ranks with a host all-reduce), TPLA (g = k) against
//! head-parallel MLA, with the result checked against the f64 reference.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use tpla::decoder::DecoderShape;
use tpla::tp::{HeadParallelMla, TpDecoder};
use tpla_codegen::KernelDef;
use tpla_kernels::latent_decode;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::tpla_attention;
use tpla_runtime::tune::{decode_bucket, default_dir, TuneDb};
use tpla_runtime::{AllReduce, CpuExecutor, Executor, HostAllReduce, HostTensor, RuntimeError};

use super::decode_args::{DecodeArgs, LAT, ROPE};
use super::error::CliError;
use super::sample::{self, check_against_reference, median};
use super::BackendArg;

/// Runs the tensor-parallel decode on `args.devices` ranks of the chosen backend.
pub fn decode_tp(a: DecodeArgs) -> Result<(), CliError> {
    let k = a.devices;
    let cpu = |why: Option<String>| -> Result<(), CliError> {
        if let Some(why) = why {
            eprintln!("tpla: {why}; running the {k} ranks on the CPU JIT");
        }
        let threads = (if a.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            a.threads
        } / k)
            .max(1);
        let make = || -> Result<Vec<CpuExecutor>, RuntimeError> {
            (0..k).map(|_| CpuExecutor::new(threads)).collect()
        };
        run(
            &a,
            make()?,
            make()?,
            HostAllReduce { ranks: k },
            "host all-reduce",
        )
    };
    match a.backend {
        BackendArg::Cpu => cpu(None),
        BackendArg::Cuda => {
            let (execs, mla_execs, group) = open_gpus(k)?;
            run(&a, execs, mla_execs, group, "NCCL all-reduce")
        }
        BackendArg::Auto => match open_gpus(k) {
            Ok((execs, mla_execs, group)) => run(&a, execs, mla_execs, group, "NCCL all-reduce"),
            Err(e) => cpu(Some(format!("no {k}-GPU group ({e})"))),
        },
    }
}

type GpuGroup = (
    Vec<tpla_runtime::cuda::CudaExecutor>,
    Vec<tpla_runtime::cuda::CudaExecutor>,
    tpla_runtime::cuda::nccl::NcclGroup,
);

/// `k` GPUs (device `r` for rank `r`; a second executor per device for the baseline) and an
/// NCCL group over them.
fn open_gpus(k: usize) -> Result<GpuGroup, RuntimeError> {
    use tpla_runtime::cuda::{nccl::NcclGroup, CudaExecutor};
    let open = || -> Result<Vec<CudaExecutor>, RuntimeError> {
        (0..k)
            .map(|r| {
                CudaExecutor::new(r).map_err(|e| RuntimeError::BackendUnavailable {
                    backend: "cuda".into(),
                    reason: format!("rank {r} needs GPU {r}: {e}"),
                })
            })
            .collect()
    };
    super::backend::open_cuda()?;
    let execs = open()?;
    let group = NcclGroup::new(&execs)?;
    Ok((execs, open()?, group))
}

fn run<X: Executor, C: AllReduce<X>>(
    a: &DecodeArgs,
    execs: Vec<X>,
    mla_execs: Vec<X>,
    collective: C,
    how: &str,
) -> Result<(), CliError> {
    let k = a.devices;
    a.check_memory(execs[0].backend_name().starts_with("cpu"))?;
    let cfg = a.preset.preset().config();
    let (heads, dv) = (cfg.heads, cfg.v_head);
    let scale = cfg.scale as f32;
    let max_tokens = a.context + a.steps;
    let shape = DecoderShape {
        batch: a.batch,
        heads,
        lat: LAT,
        rope: ROPE,
        groups: k,
        page_size: a.page_size,
        max_tokens,
        splits: a.splits,
        scale,
    };
    let backend = execs[0].backend_name();
    let names: Vec<String> = execs.iter().map(|e| e.backend_name()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    // W_UV ~ U(-1, 1) / sqrt(lat): outputs of the same order as the attention outputs.
    let wv: Vec<bf16> = (0..heads * LAT * dv)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0) / (LAT as f32).sqrt()))
        .collect();
    let w =
        HostTensor::from_vec(&[heads, LAT, dv], wv).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut tp = TpDecoder::new(execs, collective, shape.clone(), &w)?;
    let mut mla = HeadParallelMla::new(mla_execs, shape, &w)?;
    // Tuned decode configs per rank's device, as `tpla decode` uses them on one device.
    let mut tuned = Vec::new();
    let shards = tp.shards_mut().chain(mla.shards_mut());
    for (exec, shard) in shards {
        let (db, warnings) =
            TuneDb::open(&default_dir(), &exec.device_identity(), &[&latent_decode]);
        for w in warnings {
            eprintln!("tpla: {w}");
        }
        let bucket = decode_bucket(a.batch, shard.heads(), shard.width(), ROPE, max_tokens);
        let name = latent_decode.name();
        if let (Some(c), Some(e)) = (db.get(name, &bucket), db.entry(name, &bucket)) {
            let shown = c.to_string();
            let how = shard.apply_tuned(c, e);
            tuned.push(format!("{shown}{how} for {bucket}"));
        }
    }
    tuned.dedup();
    println!(
        "tpla decode --devices {k}: {} (H={heads}, latent {LAT} + rope {ROPE}, v_head {dv}), batch {}, context {}, page {}",
        cfg.name, a.batch, a.context, a.page_size
    );
    if tuned.is_empty() {
        println!("kernel configs: defaults (run `tpla tune` to pick the fastest for this device)");
    } else {
        println!("kernel configs: tuned ({})", tuned.join("; "));
    }
    println!(
        "ranks: {}; {how}; TPLA g={k} (latent group per rank, all heads) vs MLA (heads split, whole cache per rank)",
        names.join(" | ")
    );

    let d = LAT + ROPE;
    let random_rows =
        |n: usize, rng: &mut rand::rngs::StdRng| sample::random_rows(a.batch, n, d, rng);
    // Sequence 0's rows, kept for the f64 check.
    let mut seq0: Vec<f64> = Vec::with_capacity(max_tokens * d);
    let keep = |rows: &HostTensor<bf16>, seq0: &mut Vec<f64>| {
        let n = rows.shape()[1];
        seq0.extend(rows.data()[..n * d].iter().map(|x| x.to_f64()));
    };
    let t0 = Instant::now();
    let prefix = random_rows(a.context, &mut rng)?;
    keep(&prefix, &mut seq0);
    tp.append(&prefix)?;
    mla.append(&prefix)?;
    tp.synchronize()?;
    mla.synchronize()?;
    println!(
        "prefill: {} tokens per sequence into {k} TPLA shards and {k} full MLA copies in {:.2} s",
        a.context,
        t0.elapsed().as_secs_f64()
    );

    let (mut t_tp, mut t_mla) = (Vec::new(), Vec::new());
    // TPLA step phases, each timed alone with the ranks synchronised between them.
    let (mut t_att, mut t_proj, mut t_ar) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for step in 0..a.steps {
        let row = random_rows(1, &mut rng)?;
        keep(&row, &mut seq0);
        tp.append(&row)?;
        mla.append(&row)?;
        let qv: Vec<f32> = (0..a.batch * heads * d)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let q = HostTensor::<bf16>::from_f32(&[a.batch, heads, d], &qv)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let (qt, qm) = (tp.rank_queries(&q)?, mla.rank_queries(&q)?);
        if step == 0 {
            // Warm-up: compiles the kernels, so that every step (even of `--steps 1`) is timed
            // without compilation. A step leaves the caches unchanged.
            mla.step(&qm)?;
            tp.step(&qt)?;
        }
        tp.synchronize()?;
        mla.synchronize()?;
        let t = Instant::now();
        mla.step(&qm)?;
        mla.synchronize()?;
        t_mla.push(t.elapsed().as_secs_f64());
        let (_, parts) = tp.step_timed(&qt)?;
        t_att.push(parts.attention.as_secs_f64());
        t_proj.push(parts.projection.as_secs_f64());
        t_ar.push(parts.all_reduce.as_secs_f64());
        let t = Instant::now();
        let yt = tp.step(&qt)?;
        tp.synchronize()?;
        t_tp.push(t.elapsed().as_secs_f64());
        if step + 1 == a.steps {
            last = Some((q, yt));
        }
    }
    let (q, yt) = last.expect("steps >= 1");
    let timed = t_tp.len();
    let (mla_s, tp_s) = (median(&mut t_mla), median(&mut t_tp));
    let len = a.context + a.steps;
    let bytes = |w: usize| (a.batch * len * (w + ROPE) * 2) as f64;
    println!();
    println!(
        "{:<34} {:>14} {:>12} {:>16}",
        "attention + W_UV per layer", "ms / step", "tokens/s", "cache GB/s/rank"
    );
    println!(
        "{:<34} {:>14.3} {:>12.1} {:>16.1}",
        format!("MLA, heads split over {k}"),
        mla_s * 1e3,
        a.batch as f64 / mla_s,
        bytes(LAT) / mla_s / 1e9
    );
    println!(
        "{:<34} {:>14.3} {:>12.1} {:>16.1}",
        format!("TPLA g={k} (+ all-reduce)"),
        tp_s * 1e3,
        a.batch as f64 / tp_s,
        bytes(LAT / k) / tp_s / 1e9
    );
    println!(
        "speedup TPLA vs MLA at equal batch: {:.2}x (cache bytes per rank {:.2}x less; median of {timed} steps)",
        mla_s / tp_s,
        (LAT + ROPE) as f64 / (LAT / k + ROPE) as f64
    );
    println!(
        "TPLA step parts: attention {:.3} ms, W_UV {:.3} ms, all-reduce {:.3} ms (medians; each phase timed alone, the ranks synchronised between phases)",
        median(&mut t_att) * 1e3,
        median(&mut t_proj) * 1e3,
        median(&mut t_ar) * 1e3
    );
    if backend.starts_with("cpu") {
        println!(
            "(CPU ranks share this host and run one after another: times are sums over the ranks)"
        );
    }

    // Rank 0's all-reduced output for sequence 0 against the f64 reference.
    let y0 = tp.execs()[0].download(&yt[0])?;
    let got: Vec<f64> = y0.data()[..heads * dv].iter().map(|&x| x as f64).collect();
    let q0: Vec<f64> = q.data()[..heads * d].iter().map(|x| x.to_f64()).collect();
    let o = tpla_attention(&q0, &seq0, heads, LAT, ROPE, scale as f64, k);
    let mut want = vec![0.0f64; heads * dv];
    for h in 0..heads {
        for c in 0..LAT {
            let x = o[h * LAT + c];
            let row = &w.data()[(h * LAT + c) * dv..(h * LAT + c + 1) * dv];
            for (v, wv) in row.iter().enumerate() {
                want[h * dv + v] += x * wv.to_f64();
            }
        }
    }
    check_against_reference("TPLA all-reduced output", &got, &want)
}
