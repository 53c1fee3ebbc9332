//! The `tpla` command line: `info`, `decode`, `run`, `bench`, `tune`, `convert`, `accuracy`.

pub mod backend;
pub mod bench;
pub mod bench_balanced;
pub mod bench_cuda;
pub mod clock;
pub mod decode;
pub mod decode_args;
pub mod decode_check;
pub mod decode_layer;
pub mod decode_prenorm;
pub mod decode_tp;
pub mod error;
pub mod info;
pub mod limits;
pub mod model;
mod precompile;
pub mod run;
pub mod sample;
pub mod tune;

use clap::{Parser, Subcommand, ValueEnum};

/// Which executor runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// A CUDA GPU when the driver and libnvrtc load, else the CPU JIT.
    Auto,
    /// The Cranelift CPU JIT.
    Cpu,
    /// A CUDA GPU (an error when none is usable).
    Cuda,
}

/// Model presets (shapes and softmax scale of the attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// DeepSeek-V3: 128 heads.
    DeepseekV3,
    /// Kimi-K2: 64 heads.
    KimiK2,
    /// DeepSeek-V2-Lite: 16 heads.
    DeepseekV2Lite,
}

impl PresetArg {
    /// The runtime preset.
    pub fn preset(self) -> tpla_model::config::Preset {
        use tpla_model::config::Preset;
        match self {
            PresetArg::DeepseekV3 => Preset::DeepseekV3,
            PresetArg::KimiK2 => Preset::KimiK2,
            PresetArg::DeepseekV2Lite => Preset::DeepseekV2Lite,
        }
    }
}

/// tpla: tensor-parallel latent attention for long-context MLA decoding.
#[derive(Parser, Debug)]
#[command(name = "tpla", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the backends found, and why each missing one is missing.
    Info,
    /// Decode attention of an MLA model, exact MLA and TPLA side by side (the main job).
    Decode(decode_args::DecodeArgs),
    /// Decode attention on tensors read from a safetensors file; writes the outputs to another.
    Run(run::RunArgs),
    /// Benchmarks (CPU: the JIT kernel against plain Rust; GPU: kernels against a roofline).
    Bench(bench::BenchArgs),
    /// Time every tune candidate of the decode kernel here and store the fastest.
    Tune(tune::TuneArgs),
    /// Reparameterise and shard checkpoint weights for TPLA.
    Convert(model::ConvertArgs),
    /// Measure TPLA's fidelity against exact MLA on a layer.
    Accuracy(model::AccuracyArgs),
}
