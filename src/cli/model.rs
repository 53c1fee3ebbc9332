//! `tpla convert` and `tpla accuracy`: the model tools of `tpla_model`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tpla_model::tensors::OutDtype;
use tpla_model::{
    convert as convert_model, run_accuracy, AccuracyOptions, ConvertOptions, MuConvention,
    Transform,
};

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
    /// Latent groups g (must divide 512).
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Devices k (a multiple of g; k/g head shards per group).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Calibration latents for PCA (safetensors); generated from the layer when absent.
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
    /// Output directory: rank{r}.safetensors and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
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
    /// Prefill tokens P of the pd-sep mode.
    #[arg(long, default_value_t = 512)]
    pub prefill: usize,
    /// Decoded tokens N.
    #[arg(long, default_value_t = 1024)]
    pub decode: usize,
    /// Calibration tokens (at least the latent width).
    #[arg(long, default_value_t = 4096)]
    pub calib_tokens: usize,
    /// Evaluate every stride-th decode step.
    #[arg(long, default_value_t = 16)]
    pub stride: usize,
    /// Group counts (comma list, each dividing 8).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    pub groups: Vec<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JSON output.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// PNG plot of error vs decoded tokens.
    #[arg(long)]
    pub png: Option<PathBuf>,
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
    };
    let manifest = convert_model(&opts)?;
    let json = serde_json::to_string(&manifest).unwrap_or_default();
    println!(
        "wrote {} rank files and manifest.json to {} ({} bytes of manifest)",
        a.devices,
        a.out.display(),
        json.len()
    );
    Ok(())
}

/// Runs `tpla accuracy`.
pub fn accuracy(a: AccuracyArgs) -> Result<(), CliError> {
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
        ..AccuracyOptions::default()
    };
    let report = run_accuracy(&opts)?;
    println!("{}", report.table());
    if let Some(p) = &a.json {
        report.write_json(p)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.png {
        report.write_png(p, MuConvention::One)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
