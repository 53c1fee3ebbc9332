//! Times the CPU JIT decode alone, back to back, as `bench/numpy_decode.py` times numpy (where
//! `tpla bench --backend cpu` alternates each JIT run with its plain-Rust baseline). Used by
//! `JIT=example bench/cpu_vs_numpy.sh`; prints one JSON line.
//!
//! Run: `cargo run --release --example cpu_decode_time -- --batch 4 --heads 16 --context 4096
//! --lat 512 --threads 2 --reps 20`.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use tpla_kernels::ops::{choose_splits, decode_attention, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::{CpuExecutor, HostPagedCache, HostTensor};

/// `--name value` pairs with defaults; an unknown flag or a bad value is an error.
fn args() -> Result<[usize; 6], String> {
    let names = [
        "--batch",
        "--heads",
        "--context",
        "--lat",
        "--threads",
        "--reps",
    ];
    let mut v = [4, 16, 4096, 512, 2, 20];
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let i = names
            .iter()
            .position(|n| *n == flag)
            .ok_or_else(|| format!("unknown argument `{flag}` (expected one of {names:?})"))?;
        let x = it.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
        v[i] = x
            .parse()
            .ok()
            .filter(|n: &usize| (1..=1 << 20).contains(n))
            .ok_or_else(|| format!("`{flag} {x}`: expected an integer in 1..=1048576"))?;
    }
    Ok(v)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [batch, heads, context, lat, threads, reps] = args()?;
    let rope = 64;
    let d = lat + rope;
    let exec = CpuExecutor::new(threads)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let qv: Vec<f32> = (0..batch * heads * d)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let q = HostTensor::<bf16>::from_f32(&[batch, heads, d], &qv)?;
    let mut cache = HostPagedCache::<bf16>::new(batch, context, 64, d)?;
    for x in cache.data_mut() {
        *x = bf16::from_f32(rng.gen_range(-1.0f32..1.0));
    }
    cache.set_seq_lens(&vec![context; batch])?;
    let mut params = DecodeParams::new(batch, heads, lat, rope, 1, 0.1352);
    params.splits = choose_splits(&exec, &params, context)?;
    let mut out = HostTensor::<f32>::full(&[batch, heads, lat], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&[batch, heads], f32::NAN);
    decode_attention(&exec, &params, &q, &cache, &mut out, &mut lse)?; // compiles, warms up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        out.data_mut().fill(f32::NAN);
        let t = Instant::now();
        decode_attention(&exec, &params, &q, &cache, &mut out, &mut lse)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if !out.data().iter().all(|x| x.is_finite()) {
        return Err("the decode left non-finite outputs".into());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "kind": "jit-latent-decode",
            "batch": batch, "heads": heads, "context": context, "lat": lat, "rope": rope,
            "threads": exec.threads(), "splits": params.splits,
            "config": params.decode.to_string(), "reps": reps,
            "ms": times[reps / 2], "min_ms": times[0],
        })
    );
    Ok(())
}
