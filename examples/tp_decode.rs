//! Tensor-parallel TPLA through the library: a rank per executor, each holding one latent group
//! of the cache for every head, one all-reduce per step. Two GPUs with NCCL when present, else
//! two CPU ranks with the host all-reduce (the same code: `TpDecoder` is generic).
//!
//! Run: `cargo run --release --example tp_decode`.

use rand::{Rng, SeedableRng};
use tpla::decoder::DecoderShape;
use tpla::tp::TpDecoder;
use tpla_runtime::half::bf16;
use tpla_runtime::{AllReduce, CpuExecutor, Executor, HostAllReduce, HostTensor};

fn run<X: Executor, C: AllReduce<X>>(
    execs: Vec<X>,
    group: C,
) -> Result<(), Box<dyn std::error::Error>> {
    let (batch, heads, lat, rope, dv) = (2, 16, 512, 64, 128);
    let shape = DecoderShape {
        batch,
        heads,
        lat,
        rope,
        groups: execs.len(),
        page_size: 64,
        max_tokens: 1024,
        splits: 0,
        scale: 0.1352,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rand = |n: usize, s: f32| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0) * s))
            .collect()
    };
    // Each head's W_UV [lat, dv]: rank r keeps rows [r·lat/g, (r+1)·lat/g).
    let w = HostTensor::from_vec(&[heads, lat, dv], rand(heads * lat * dv, 0.05))?;
    let mut tp = TpDecoder::new(execs, group, shape, &w)?;
    println!(
        "{} ranks: {}",
        tp.execs().len(),
        tp.execs()
            .iter()
            .map(|e| e.backend_name())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // Prefill 500 rows per sequence (each rank keeps its latent group), then decode 3 tokens.
    tp.append(&HostTensor::from_vec(
        &[batch, 500, lat + rope],
        rand(batch * 500 * (lat + rope), 1.0),
    )?)?;
    for step in 0..3 {
        tp.append(&HostTensor::from_vec(
            &[batch, 1, lat + rope],
            rand(batch * (lat + rope), 1.0),
        )?)?;
        let q = HostTensor::from_vec(
            &[batch, heads, lat + rope],
            rand(batch * heads * (lat + rope), 1.0),
        )?;
        let ys = tp.step(&tp.rank_queries(&q)?)?;
        // After the all-reduce every rank holds the same [batch, heads, dv] projection.
        let y0 = tp.execs()[0].download(&ys[0])?;
        let y1 = tp.execs()[1].download(&ys[1])?;
        let same = y0.data() == y1.data();
        println!(
            "step {step}: y[0, 0, 0..4] = {:?}, ranks agree: {same}",
            &y0.data()[..4]
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tpla_runtime::cuda::{nccl::NcclGroup, CudaExecutor};
    if let (Ok(a), Ok(b)) = (CudaExecutor::new(0), CudaExecutor::new(1)) {
        let execs = vec![a, b];
        match NcclGroup::new(&execs) {
            Ok(group) => return run(execs, group),
            Err(e) => eprintln!("no NCCL group ({e}); using CPU ranks"),
        }
    }
    run(
        vec![CpuExecutor::new(1)?, CpuExecutor::new(1)?],
        HostAllReduce { ranks: 2 },
    )
}
