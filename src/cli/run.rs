//! `tpla run`: decode attention on named tensors from a safetensors file, so any other
//! implementation can be checked against tpla. The tensors, their shapes and dtypes, and the
//! edge cases (empty sequences, non-finite inputs, f32 `q` rounded to bf16) are documented in
//! [`tpla::run`], which does the work between reading and writing.
//!
//! Before any work the output path is checked (its directory exists and is writable, the path
//! is not a directory), as are the sizes (`--splits`) and the memory the run needs.

use std::path::Path;

use clap::Args;
use safetensors::Dtype;
use tpla::engine::KvDtype;
use tpla::run::{read_inputs, run_decode_as, run_memory, RunError, RunInputs, RunOutputs};
use tpla_kernels::ops::shard_width;
use tpla_runtime::Executor;

use super::backend::{dispatch, ExecJob};
use super::error::CliError;
use super::limits::{check, MemoryPlan, MAX_SPLITS};
use super::BackendArg;

/// Options of `tpla run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Input safetensors file (see `tpla::run` for names and shapes).
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
    /// KV splits per sequence (1 to 1024).
    #[arg(long, default_value_t = 4)]
    pub splits: usize,
    /// Executor.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// How the cache is stored for the kernels: `bf16` (as given) or `fp8` (each row quantised
    /// first: e4m3 latent, one f32 scale per 128 columns, bf16 RoPE; the latent width of every
    /// shard must be a multiple of 128).
    #[arg(long, default_value = "bf16", value_parser = parse_kv_dtype)]
    pub kv_dtype: KvDtype,
}

fn parse_kv_dtype(s: &str) -> Result<KvDtype, String> {
    KvDtype::parse(s).ok_or_else(|| format!("unknown cache dtype `{s}` (expected bf16 or fp8)"))
}

fn io(path: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Io {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// Fails unless `path` can be written: it is not a directory, and its directory exists and
/// takes a new file (probed with a file created and removed at once).
pub fn check_output_path(path: &str) -> Result<(), CliError> {
    let p = Path::new(path);
    if path.is_empty() || p.is_dir() {
        return Err(io(path, "is a directory, not an output file"));
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(io(
            path,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let probe = dir.join(format!(".{name}.tpla-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(f) => {
            drop(f);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(io(
            path,
            format!("directory {} is not writable: {e}", dir.display()),
        )),
    }
}

/// Runs `tpla run`.
pub fn run(args: RunArgs) -> Result<(), CliError> {
    check_output_path(&args.out)?;
    check("--splits", args.splits, 1, MAX_SPLITS)?;
    let bytes = std::fs::read(&args.inputs).map_err(|e| io(&args.inputs, e))?;
    let inputs = read_inputs(&bytes, args.rope).map_err(|e| match e {
        RunError::Format(m) => io(&args.inputs, format!("not a safetensors file: {m}")),
        e => e.into(),
    })?;
    drop(bytes);
    let width = shard_width(inputs.lat, args.groups)?;
    args.kv_dtype.pool_row(width, inputs.rope)?;
    let mut plan = MemoryPlan::default();
    plan.add_bytes(run_memory(&inputs, args.splits));
    plan.check_host(&format!("--splits {} with these inputs", args.splits))?;
    let (backend, out) = (args.backend, args.out.clone());
    let job = RunJob {
        groups: args.groups,
        splits: args.splits,
        kv_dtype: args.kv_dtype,
        inputs: &inputs,
    };
    let outputs = dispatch(backend, 0, job)?;
    if outputs.non_finite > 0 {
        eprintln!(
            "tpla run: warning: non-finite values in q or the cache: {} of {} (sequence, head) outputs are NaN",
            outputs.non_finite,
            inputs.batch() * inputs.query_len() * inputs.heads()
        );
    }
    let tensors = outputs.tensors(&inputs);
    let data: Vec<Vec<u8>> = tensors.iter().map(|t| le_bytes(t.2)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape, _), bytes)| {
            Ok((
                name.to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| io(&out, e))?,
            ))
        })
        .collect::<Result<_, CliError>>()?;
    let bytes = safetensors::serialize(views, &None).map_err(|e| io(&out, e))?;
    // Atomic: a failed write (full disk, killed process) leaves an earlier output intact.
    tpla_runtime::fsutil::write_atomic(std::path::Path::new(&out), &bytes)
        .map_err(|e| io(&out, e))?;
    let names: Vec<&str> = tensors.iter().map(|t| t.0).collect();
    println!("wrote {} ({})", out, names.join(", "));
    Ok(())
}

struct RunJob<'a> {
    groups: usize,
    splits: usize,
    kv_dtype: KvDtype,
    inputs: &'a RunInputs,
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl ExecJob for RunJob<'_> {
    type Out = RunOutputs;
    fn run<X: Executor>(self, exec: &X) -> Result<RunOutputs, CliError> {
        let i = self.inputs;
        eprintln!(
            "tpla run: batch {}, query tokens {}, heads {}, latent {} + rope {}, {} cache, on {}",
            i.batch(),
            i.query_len(),
            i.heads(),
            i.lat,
            i.rope,
            self.kv_dtype.name(),
            exec.backend_name()
        );
        Ok(run_decode_as(
            exec,
            i,
            self.groups,
            self.splits,
            self.kv_dtype,
        )?)
    }
}
