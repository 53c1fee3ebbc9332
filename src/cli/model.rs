//! `tpla convert` and `tpla accuracy`: the model tools of `tpla_model`.
//!
//! Output paths are checked before the work, outputs are written atomically, and long work
//! shows a progress bar on stderr (only when stderr is a terminal).

use std::path::PathBuf;
use std::sync::Mutex;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tpla_model::accuracy::run_accuracy_with;
use tpla_model::convert::convert_with;
use tpla_model::fsio::OutputFile;
use tpla_model::kv_cache::KvCache;
use tpla_model::tensors::OutDtype;
use tpla_model::{AccuracyOptions, ConvertOptions, MuConvention, Progress, Transform};

use super::error::CliError;
use super::PresetArg;

/// Latent transform folded into the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransformArg {
    /// Only RMSNorm's γ is folded.
    None,
    /// Seeded randomised Hadamard rotation.
    Hadamard,
    /// PCA of calibration latents.
    Pca,
}

impl TransformArg {
    fn get(self) -> Transform {
        match self {
            TransformArg::None => Transform::None,
            TransformArg::Hadamard => Transform::Hadamard,
            TransformArg::Pca => Transform::Pca,
        }
    }
}

/// Logit correction μ_i of a PCA shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MuArg {
    /// μ_i = 1 (the default: the accuracy harness favours it).
    One,
    /// μ_i = 1 / e_i.
    InverseEnergy,
}

impl MuArg {
    fn get(self) -> MuConvention {
        match self {
            MuArg::One => MuConvention::One,
            MuArg::InverseEnergy => MuConvention::InverseEnergy,
        }
    }
}

/// Dtype of the written shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    /// bfloat16.
    Bf16,
    /// f32.
    F32,
    /// f64.
    F64,
}

/// Options of `tpla convert`.
#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Model preset (shapes, scale); checked against the checkpoint.
    #[arg(long, value_enum, default_value = "deepseek-v2-lite")]
    pub preset: PresetArg,
    /// Checkpoint (safetensors file or directory); a seeded synthetic layer when absent.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Layers to convert (comma list); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// Latent transform.
    #[arg(long, value_enum, default_value = "pca")]
    pub transform: TransformArg,
    /// Latent groups g (must divide 512 and --devices; at most 64).
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Devices k (a multiple of g; k/g head shards per group; at most 64).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Calibration file of --transform pca (safetensors): per layer
    /// `model.layers.N.self_attn.calib_latents` [n, 512] or `calib_hidden` [n, D], else a shared
    /// `latents` or `hidden_states` tensor; n >= 512. Required for PCA of a --checkpoint; without
    /// --checkpoint PCA uses the synthetic calibration stream. Refused with other transforms.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// μ convention.
    #[arg(long, value_enum, default_value = "one")]
    pub mu: MuArg,
    /// Output dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DtypeArg,
    /// Seed (Hadamard signs, synthetic data).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory: rank{r}.safetensors and manifest.json, written whole (a failed run
    /// leaves it as it was). A non-empty directory is refused unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a non-empty --out directory whole: every file in it is removed.
    #[arg(long)]
    pub force: bool,
}

/// Options of `tpla accuracy`.
#[derive(Args, Debug, Clone)]
pub struct AccuracyArgs {
    /// Model preset.
    #[arg(long, value_enum, default_value = "deepseek-v2-lite")]
    pub preset: PresetArg,
    /// Checkpoint to take the layer from; a synthetic layer when absent.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Layer index in the checkpoint.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Prefill tokens P of the pd-sep mode (at most 65536).
    #[arg(long, default_value_t = 512)]
    pub prefill: usize,
    /// Decoded tokens N (at most 65536).
    #[arg(long, default_value_t = 1024)]
    pub decode: usize,
    /// Calibration tokens (at least the latent width, at most 65536).
    #[arg(long, default_value_t = 4096)]
    pub calib_tokens: usize,
    /// Evaluate every stride-th decode step (at most --decode).
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Group counts (comma list, each dividing 8).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub groups: Vec<usize>,
    /// Cache formats evaluated beside f64 for MLA and TPLA (comma list of bf16, fp8; "f64"
    /// alone for none): FP8 is e4m3 with per-token, per-128-column scales, as the kernels store it.
    #[arg(long, value_delimiter = ',', default_value = "bf16,fp8", value_parser = parse_kv_cache)]
    pub kv_caches: Vec<KvCache>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JSON output (written atomically; its directory must exist).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// PNG plot of error vs decoded tokens (written atomically; its directory must exist).
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// A progress bar on stderr, one per phase; indicatif draws nothing when stderr is not a terminal.
struct Bar(Mutex<Option<ProgressBar>>);

impl Bar {
    fn new() -> Self {
        Bar(Mutex::new(None))
    }

    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(pb) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f(pb);
        }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, len: u64) {
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg:<24} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb);
    }

    fn inc(&self, n: u64) {
        self.with(|pb| pb.inc(n));
    }

    fn finish(&self) {
        self.with(|pb| pb.finish_and_clear());
    }
}

/// Runs `tpla convert`.
pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    let opts = ConvertOptions {
        preset: a.preset.preset(),
        shape: None,
        checkpoint: a.checkpoint,
        layers: a.layers,
        transform: a.transform.get(),
        groups: a.groups,
        devices: a.devices,
        calib: a.calib,
        seed: a.seed,
        mu: a.mu.get(),
        dtype: match a.dtype {
            DtypeArg::Bf16 => OutDtype::Bf16,
            DtypeArg::F32 => OutDtype::F32,
            DtypeArg::F64 => OutDtype::F64,
        },
        out_dir: a.out.clone(),
        force: a.force,
    };
    let manifest = convert_with(&opts, &Bar::new())?;
    let path = a.out.join("manifest.json");
    let manifest_bytes = std::fs::metadata(&path)
        .map_err(|e| CliError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?
        .len();
    let rank_bytes: u64 = manifest.ranks.iter().map(|r| r.bytes).sum();
    println!(
        "wrote {} rank files ({rank_bytes} bytes) and manifest.json ({manifest_bytes} bytes) to {}",
        manifest.ranks.len(),
        a.out.display(),
    );
    Ok(())
}

fn parse_kv_cache(s: &str) -> Result<KvCache, String> {
    KvCache::parse(s)
        .ok_or_else(|| format!("unknown cache format `{s}` (expected f64, bf16 or fp8)"))
}

/// Runs `tpla accuracy`.
pub fn accuracy(a: AccuracyArgs) -> Result<(), CliError> {
    if a.json.is_some() && a.json == a.png {
        return Err(CliError::Usage(
            "--json and --png name the same file".to_string(),
        ));
    }
    // Checked (and reserved) before the work, written atomically after it.
    let json = a.json.as_deref().map(OutputFile::prepare).transpose()?;
    let png = a.png.as_deref().map(OutputFile::prepare).transpose()?;
    let opts = AccuracyOptions {
        preset: a.preset.preset(),
        checkpoint: a.checkpoint,
        layer: a.layer,
        seed: a.seed,
        prefill_tokens: a.prefill,
        decode_tokens: a.decode,
        calib_tokens: a.calib_tokens,
        stride: a.stride,
        groups: a.groups,
        kv_caches: a.kv_caches,
        ..AccuracyOptions::default()
    };
    let report = run_accuracy_with(&opts, &Bar::new())?;
    println!("{}", report.table());
    if let Some(out) = json {
        let p = out.path().to_path_buf();
        report.write_json_to(out)?;
        println!("wrote {}", p.display());
    }
    if let Some(out) = png {
        let p = out.path().to_path_buf();
        report.write_png_to(out, MuConvention::One)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
