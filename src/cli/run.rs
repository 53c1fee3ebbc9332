//! `tpla run`: decode attention on named tensors from a safetensors file, so any other
//! implementation can be checked against tpla.
//!
//! Inputs (names, dtypes, shapes):
//! - `q`: bf16 or f32 `[batch, heads, lat + rope]` (f32 is rounded to bf16: the kernels take
//!   bf16 queries, as FlashMLA does)
//! - `cache`: bf16 `[num_pages, page_size, lat + rope]` (the page pool)
//! - `block_table`: i32 `[batch, pages_per_seq]`
//! - `seq_lens`: i32 `[batch]`
//! - `scale`: f32 `[]` or `[1]`
//!
//! Outputs (f32): `out [batch, heads, lat]`, `lse [batch, heads]` (natural log); with
//! `--groups g > 1` also `out_tpla [batch, heads, lat]` (the g shard outputs side by side) and
//! `lse_tpla [g, batch, heads]`.

use std::collections::HashMap;

use clap::Args;
use safetensors::{Dtype, SafeTensors};
use tpla::decoder::{concat_shards, shard_rows};
use tpla_kernels::ops::{decode_attention, shard_width, DecodeParams};
use tpla_runtime::half::bf16;
use tpla_runtime::{Executor, HostPagedCache, HostTensor};

use super::backend::{dispatch, ExecJob};
use super::error::CliError;
use super::BackendArg;

/// Options of `tpla run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Input safetensors file (see the module docs for names and shapes).
    #[arg(long)]
    pub inputs: String,
    /// Output safetensors file.
    #[arg(long)]
    pub out: String,
    /// RoPE width at the end of each row.
    #[arg(long, default_value_t = 64)]
    pub rope: usize,
    /// Also run TPLA with this many latent groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// KV splits per sequence.
    #[arg(long, default_value_t = 4)]
    pub splits: usize,
    /// Executor.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
}

/// Decoded inputs.
struct Inputs {
    q: HostTensor<bf16>,
    cache: HostPagedCache<bf16>,
    scale: f32,
    lat: usize,
}

fn io(path: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Io {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn tensor<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
) -> Result<safetensors::tensor::TensorView<'a>, CliError> {
    st.tensor(name)
        .map_err(|_| CliError::MissingTensor(name.to_string()))
}

fn shape_err(name: &str, got: &[usize], expected: &str) -> CliError {
    CliError::TensorShape {
        name: name.into(),
        got: got.to_vec(),
        expected: expected.into(),
    }
}

fn dtype_err(name: &str, got: Dtype, expected: &str) -> CliError {
    CliError::TensorDType {
        name: name.into(),
        got: format!("{got:?}"),
        expected: expected.into(),
    }
}

fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

fn read_inputs(path: &str, rope: usize) -> Result<Inputs, CliError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io(path, format!("not a safetensors file: {e}")))?;

    let q = tensor(&st, "q")?;
    if q.shape().len() != 3 || q.shape()[2] <= rope {
        return Err(shape_err(
            "q",
            q.shape(),
            &format!("[batch, heads, lat + {rope}]"),
        ));
    }
    let qv: Vec<f32> = match q.dtype() {
        Dtype::F32 => words::<4>(q.data()).map(f32::from_le_bytes).collect(),
        Dtype::BF16 => words::<2>(q.data())
            .map(|w| bf16::from_bits(u16::from_le_bytes(w)).to_f32())
            .collect(),
        d => return Err(dtype_err("q", d, "F32 or BF16")),
    };
    let (batch, heads, row) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let q = HostTensor::<bf16>::from_f32(&[batch, heads, row], &qv)
        .map_err(|e| CliError::Usage(e.to_string()))?;

    let cache = tensor(&st, "cache")?;
    if cache.dtype() != Dtype::BF16 {
        return Err(dtype_err("cache", cache.dtype(), "BF16"));
    }
    if cache.shape().len() != 3 || cache.shape()[2] != row || cache.shape()[1] == 0 {
        return Err(shape_err(
            "cache",
            cache.shape(),
            &format!("[num_pages, page_size >= 1, {row}]"),
        ));
    }
    let page_size = cache.shape()[1];
    let pool: Vec<bf16> = words::<2>(cache.data())
        .map(|w| bf16::from_bits(u16::from_le_bytes(w)))
        .collect();

    let bt = tensor(&st, "block_table")?;
    if bt.dtype() != Dtype::I32 {
        return Err(dtype_err("block_table", bt.dtype(), "I32"));
    }
    if bt.shape().len() != 2 || bt.shape()[0] != batch {
        return Err(shape_err(
            "block_table",
            bt.shape(),
            &format!("[{batch}, pages_per_seq]"),
        ));
    }
    let table: Vec<i32> = words::<4>(bt.data()).map(i32::from_le_bytes).collect();

    let sl = tensor(&st, "seq_lens")?;
    if sl.dtype() != Dtype::I32 {
        return Err(dtype_err("seq_lens", sl.dtype(), "I32"));
    }
    if sl.shape() != [batch] {
        return Err(shape_err("seq_lens", sl.shape(), &format!("[{batch}]")));
    }
    let lens: Vec<i32> = words::<4>(sl.data()).map(i32::from_le_bytes).collect();
    if let Some(bad) = lens.iter().find(|&&l| l < 0) {
        return Err(CliError::Usage(format!(
            "seq_lens holds a negative length {bad}"
        )));
    }
    let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();

    let sc = tensor(&st, "scale")?;
    if sc.dtype() != Dtype::F32 {
        return Err(dtype_err("scale", sc.dtype(), "F32"));
    }
    if sc.data().len() != 4 {
        return Err(shape_err("scale", sc.shape(), "[] or [1]"));
    }
    let scale = f32::from_le_bytes(sc.data().try_into().expect("4 bytes"));

    let cache = HostPagedCache::from_parts(pool, page_size, row, table, &lens)?;
    Ok(Inputs {
        q,
        cache,
        scale,
        lat: row - rope,
    })
}

/// Runs `tpla run`.
pub fn run(args: RunArgs) -> Result<(), CliError> {
    let inputs = read_inputs(&args.inputs, args.rope)?;
    shard_width(inputs.lat, args.groups)?;
    let (backend, out) = (args.backend, args.out.clone());
    let outputs = dispatch(backend, 0, RunJob { args, inputs })?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = outputs
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                    .map_err(|e| io(&out, e))?,
            ))
        })
        .collect::<Result<_, CliError>>()?;
    let bytes = safetensors::serialize(views, &None).map_err(|e| io(&out, e))?;
    std::fs::write(&out, bytes).map_err(|e| io(&out, e))?;
    let names: Vec<&str> = outputs.iter().map(|o| o.0.as_str()).collect();
    println!("wrote {} ({})", out, names.join(", "));
    Ok(())
}

struct RunJob {
    args: RunArgs,
    inputs: Inputs,
}

type Outputs = Vec<(String, Vec<usize>, Vec<u8>)>;

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl ExecJob for RunJob {
    type Out = Outputs;
    fn run<X: Executor>(self, exec: &X) -> Result<Outputs, CliError> {
        let RunJob { args, inputs } = self;
        let (batch, heads) = (inputs.q.shape()[0], inputs.q.shape()[1]);
        let (lat, rope) = (inputs.lat, args.rope);
        eprintln!(
            "tpla run: batch {batch}, heads {heads}, latent {lat} + rope {rope}, on {}",
            exec.backend_name()
        );
        let mut results = HashMap::new();
        for g in [1, args.groups] {
            if g == 1 && results.contains_key(&1) {
                continue;
            }
            let w = shard_width(lat, g)?;
            let p = DecodeParams::new(batch, heads, w, rope, args.splits, inputs.scale);
            let mut outs = Vec::new();
            let mut lses = Vec::new();
            for i in 0..g {
                let q = HostTensor::from_vec(
                    &[batch, heads, w + rope],
                    shard_rows(inputs.q.data(), batch * heads, lat, rope, w, i)?,
                )
                .map_err(|e| CliError::Usage(e.to_string()))?;
                let rows = inputs.cache.data().len() / (lat + rope);
                let pool = shard_rows(inputs.cache.data(), rows, lat, rope, w, i)?;
                let lens: Vec<usize> = inputs
                    .cache
                    .seq_lens()
                    .iter()
                    .map(|&l| l as usize)
                    .collect();
                let cache = HostPagedCache::from_parts(
                    pool,
                    inputs.cache.page_size(),
                    w + rope,
                    inputs.cache.block_table().to_vec(),
                    &lens,
                )?;
                let (q, cache) = (exec.upload(&q)?, exec.upload_paged(&cache)?);
                let mut out = exec.alloc::<f32>(&[batch, heads, w])?;
                let mut lse = exec.alloc::<f32>(&[batch, heads])?;
                decode_attention(exec, &p, &q, &cache, &mut out, &mut lse)?;
                outs.push(exec.download(&out)?.into_vec());
                lses.extend(exec.download(&lse)?.into_vec());
            }
            results.insert(g, (concat_shards(&outs, batch * heads, w)?, lses));
        }
        let mut out: Outputs = Vec::new();
        let (o, l) = &results[&1];
        out.push(("out".into(), vec![batch, heads, lat], le_bytes(o)));
        out.push(("lse".into(), vec![batch, heads], le_bytes(l)));
        if args.groups > 1 {
            let (o, l) = &results[&args.groups];
            out.push(("out_tpla".into(), vec![batch, heads, lat], le_bytes(o)));
            out.push((
                "lse_tpla".into(),
                vec![args.groups, batch, heads],
                le_bytes(l),
            ));
        }
        Ok(out)
    }
}
