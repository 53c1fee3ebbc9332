//! The library API an engine calls: per-shard paged caches, append then attend, on any executor.
//!
//! Run: `cargo run --release --example decode_api`.

use rand::{Rng, SeedableRng};
use tpla::decoder::{concat_shards, DecoderShape, LatentDecoder};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, Executor, HostTensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exec = CpuExecutor::new(0)?;
    let (batch, heads, lat, rope) = (2, 16, 512, 64);
    let shape = |groups| DecoderShape {
        batch,
        heads,
        lat,
        rope,
        groups,
        page_size: 64,
        max_tokens: 1024,
        splits: 2,
        scale: 0.1352,
    };
    let mut mla = LatentDecoder::new(&exec, shape(1))?;
    let mut tpla = LatentDecoder::new(&exec, shape(2))?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Prefill writes 500 cache rows [ĉ | k_pe] per sequence; each shard keeps its latent slice.
    let rows: Vec<bf16> = (0..batch * 500 * (lat + rope))
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let rows = HostTensor::from_vec(&[batch, 500, lat + rope], rows)?;
    mla.append(&exec, &rows)?;
    tpla.append(&exec, &rows)?;

    // One decode step: attend with an absorbed query.
    let q: Vec<f32> = (0..batch * heads * (lat + rope))
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let q = HostTensor::<bf16>::from_f32(&[batch, heads, lat + rope], &q)?;
    let exact = mla.attend(&exec, &q)?;
    let shards = tpla.attend(&exec, &q)?;
    let exact = exec.download(&exact[0].0)?.into_vec();
    let parts: Vec<Vec<f32>> = shards
        .iter()
        .map(|(o, _)| exec.download(o).map(|t| t.into_vec()))
        .collect::<Result<_, _>>()?;
    let approx = concat_shards(&parts, batch * heads, lat / 2)?;
    let e = tpla_runtime::reference::rel_error(
        &approx.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &exact.iter().map(|&x| x as f64).collect::<Vec<_>>(),
    );
    println!(
        "lengths {:?}; TPLA (g=2) vs MLA attention output on random data: rel diff {e:.3e}",
        tpla.lens()
    );
    Ok(())
}
