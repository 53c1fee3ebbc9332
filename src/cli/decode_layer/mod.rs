//! `tpla decode --form mla-tp|tpla|dcp|all|auto --tp k --layers N [--max-batch]`: a stack of
//! whole attention layers (`tpla::layer`) under tensor parallelism in each form, side by side.
//!
//! On a GPU the `k` ranks run one after another on GPU 0 (a device-side sum stands in for the
//! collective), so each rank's time is what that rank's GPU would spend; on the CPU they are `k`
//! in-process ranks. Compute is measured; the collectives are modelled (NVLink bandwidth and
//! latency, `tpla::layer::cost`), and the table says so.
//!
//! This module holds the arguments and the entry point; `stack` builds, times and checks the
//! stacks, `auto` picks the form for `--form auto`, `max_batch` runs the `--max-batch` sweep.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tpla::layer::{DeviceSum, Form, GemmPath, KvNorm, Payload, ReduceAt};
use tpla_model::MlaConfig;
use tpla_runtime::{CpuExecutor, HostAllReduce, RuntimeError};

use super::decode_args::DecodeArgs;
use super::error::CliError;

mod auto;
mod max_batch;
mod stack;

use auto::{auto, tpla_error};
use max_batch::max_batch;
use stack::run;

/// Which forms `--form` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormArg {
    /// Heads split, whole cache per rank.
    MlaTp,
    /// TPLA with g = `--g` latent groups (g < tp splits heads inside each group).
    Tpla,
    /// Decode context parallelism (tokens interleaved over the ranks).
    Dcp,
    /// All three side by side.
    All,
    /// The one the cost model predicts fastest here (within `--max-rel-err`), TPLA at either
    /// reduce point.
    Auto,
}

/// Where `--tpla-reduce` reduces TPLA's partial outputs (see [`ReduceAt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReduceArg {
    /// After `W_O`: one all-reduce of `[batch, D]`; every rank applies `W_O` to all its heads.
    Wo,
    /// After `W_UV`: a reduce-scatter of the values by heads, `W_O` on `1/g` of the heads, then
    /// the all-reduce.
    Wuv,
    /// Both variants side by side (`--form tpla|all|auto`).
    Both,
}

impl ReduceArg {
    fn points(self) -> &'static [ReduceAt] {
        match self {
            ReduceArg::Wo => &[ReduceAt::Wo],
            ReduceArg::Wuv => &[ReduceAt::Wuv],
            ReduceArg::Both => &[ReduceAt::Wo, ReduceAt::Wuv],
        }
    }
}

/// The element type of the layer's output collectives (`--payload`, see [`Payload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PayloadArg {
    /// f32, the projections' precision.
    F32,
    /// bf16: half the bytes on the link.
    Bf16,
}

impl From<PayloadArg> for Payload {
    fn from(p: PayloadArg) -> Payload {
        match p {
            PayloadArg::F32 => Payload::F32,
            PayloadArg::Bf16 => Payload::Bf16,
        }
    }
}

/// Which gemm `--gemm` asks for (see [`GemmPath`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GemmArg {
    /// cuBLAS on a CUDA executor when libcublas loads, else the DSL kernel.
    Auto,
    /// The DSL kernel `head_proj` everywhere.
    Dsl,
    /// cuBLAS, or an error.
    Cublas,
}

impl From<GemmArg> for GemmPath {
    fn from(g: GemmArg) -> GemmPath {
        match g {
            GemmArg::Auto => GemmPath::Auto,
            GemmArg::Dsl => GemmPath::Dsl,
            GemmArg::Cublas => GemmPath::Cublas,
        }
    }
}

/// The whole-layer options of `tpla decode`.
#[derive(Args, Debug, Clone)]
pub struct LayerArgs {
    /// Run whole attention layers in this parallel form (absent: attention only, as before).
    #[arg(long, value_enum)]
    pub form: Option<FormArg>,
    /// Tensor-parallel ranks of the layer forms.
    #[arg(long, default_value_t = 2)]
    pub tp: usize,
    /// Layers in the timed stack (the rest of the model is modelled).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Print (and write under `--results-dir`) each form's largest batch and modelled tokens/s
    /// for DeepSeek-V3 and Kimi-K2 at TP 2/4/8, contexts 4K-32K.
    #[arg(long)]
    pub max_batch: bool,
    /// Where `--max-batch` writes max_batch.json and max_batch.png (default bench/results), and
    /// where `--form` writes its model check as JSON (only when given).
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// Exclude TPLA when its output error against exact MLA exceeds this (relative).
    #[arg(long)]
    pub max_rel_err: Option<f64>,
    /// Which gemm runs the layers' dense projections (auto: cuBLAS on a GPU, the DSL kernel on
    /// the CPU or where libcublas is missing).
    #[arg(long, value_enum, default_value_t = GemmArg::Auto)]
    pub gemm: GemmArg,
    /// Load the layer's weights from DeepSeek-named safetensors: `tpla convert --devices 1`
    /// output (a directory with manifest.json) or a checkpoint (file or directory); shapes are
    /// checked against the preset. Absent: seeded synthetic weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Which layer of `--weights` to load (default: the first converted layer, else 0); one
    /// set is shared by the timed stack.
    #[arg(long)]
    pub weights_layer: Option<usize>,
    /// Small synthetic shapes (hidden 256, 8 heads, q_lora 128) instead of the preset's.
    #[arg(long)]
    pub small: bool,
    /// Where TPLA reduces the latent groups' partial outputs: after `W_O` (the paper's form),
    /// after `W_UV` (reduce-scatter by heads first, so each rank reads `1/g` of `W_O`), or both
    /// side by side.
    #[arg(long, value_enum, default_value_t = ReduceArg::Wo)]
    pub tpla_reduce: ReduceArg,
    /// The element type of the output collectives (the all-reduce of `[batch, D]`, and the
    /// values' reduce-scatter of `--tpla-reduce wuv`): f32, or bf16 (half the bytes; each part
    /// and the sum rounded to bf16).
    #[arg(long, value_enum, default_value_t = PayloadArg::F32)]
    pub payload: PayloadArg,
    /// New tokens per sequence per step, 1-4 (MTP / speculative verify: token j sees the cache
    /// up to its own position); tokens/s counts all of them. Not with DCP.
    #[arg(long, default_value_t = 1)]
    pub query_len: usize,
    /// Time each phase of a layer step on the host clock with the device synchronised after it
    /// (launch latency included; how the layer was timed before), instead of device events
    /// around each phase with one synchronisation per step.
    #[arg(long)]
    pub sync_phases: bool,
}

/// Runs the layer forms (and/or the largest-batch sweep).
pub fn decode_layer(a: DecodeArgs) -> Result<(), CliError> {
    let l = &a.layer;
    if l.layers == 0 || l.layers > 64 {
        return Err(CliError::Usage(format!(
            "--layers {} must be in 1..=64",
            l.layers
        )));
    }
    if l.tp == 0 || l.tp > 16 {
        return Err(CliError::Usage(format!("--tp {} must be in 1..=16", l.tp)));
    }
    if let Some(e) = l.max_rel_err {
        if !(e.is_finite() && e > 0.0) {
            return Err(CliError::Usage(format!(
                "--max-rel-err {e} must be a positive number"
            )));
        }
    }
    if !(1..=tpla_kernels::ops::MAX_QUERY_LEN).contains(&l.query_len) {
        return Err(CliError::Usage(format!(
            "--query-len {} must be in 1..={}",
            l.query_len,
            tpla_kernels::ops::MAX_QUERY_LEN
        )));
    }
    if l.weights_layer.is_some() && l.weights.is_none() {
        return Err(CliError::Usage("--weights-layer needs --weights".into()));
    }
    if l.max_batch {
        let dir = l
            .results_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("bench/results"));
        max_batch(&dir)?;
    }
    let Some(choice) = l.form else { return Ok(()) };
    let cfg = if l.small {
        MlaConfig::small(a.preset.preset(), 256, 8, Some(128))
    } else {
        a.preset.preset().config()
    };
    if cfg.q_lora_rank.is_none() {
        return Err(CliError::Usage(format!(
            "{}: the layer forms need a q_lora model (deepseek-v3, kimi-k2)",
            cfg.name
        )));
    }
    let tplas: Vec<Form> = l
        .tpla_reduce
        .points()
        .iter()
        .map(|&reduce| Form::Tpla {
            groups: a.g,
            norm: KvNorm::Sliced,
            reduce,
        })
        .collect();
    let all: Vec<Form> = std::iter::once(Form::MlaTp)
        .chain(tplas.iter().copied())
        .chain([Form::Dcp])
        .collect();
    for &f in &all {
        tpla::layer::roles(f, l.tp, cfg.heads, cfg.kv_lora_rank)?;
    }
    // TPLA's error on the small check layer (f64 references, no transform), printed beside the
    // reference checks; `--max-rel-err` uses the accuracy harness's figure instead.
    let tpla_err = tpla_error(a.g)?;
    // The budget's figure: the accuracy harness's TPLA error for this g and the weights'
    // latent transform (none for synthetic weights).
    let budget = match l.max_rel_err {
        Some(_) => {
            let transform = match &l.weights {
                Some(p) => tpla::layer::weights::load_transform(p)?,
                None => tpla_model::Transform::None,
            };
            let b = tpla::layer::budget::tpla_error(a.preset.preset(), a.g, transform, 0)?;
            println!(
                "--max-rel-err: TPLA g={} error {:.2e} from the accuracy harness (synthetic {} layer at hidden 256, 8 heads; sliced norm + local softmax, μ = 1, worst cache mode; latent transform {:?}, as the weights run)",
                a.g, b.rel_err, cfg.name, b.transform
            );
            b.rel_err
        }
        None => tpla_err,
    };
    let allowed = |f: &Form| f.exact() || l.max_rel_err.is_none_or(|m| budget <= m);
    // DCP's ranks hold interleaved tokens: the decode kernel's mask for several query tokens
    // does not fit them, so `all` and `auto` leave it out (asked for alone, it is an error).
    let all: Vec<Form> = if l.query_len > 1 && choice != FormArg::Dcp {
        println!(
            "--query-len {}: DCP left out (its ranks hold interleaved tokens)",
            l.query_len
        );
        all.into_iter().filter(|f| *f != Form::Dcp).collect()
    } else {
        all
    };
    let forms: Vec<Form> = match choice {
        FormArg::MlaTp => vec![Form::MlaTp],
        FormArg::Dcp => vec![Form::Dcp],
        FormArg::Tpla => tplas,
        FormArg::All => all.clone(),
        FormArg::Auto => {
            // Every form the run could take, TPLA at both reduce points whatever
            // `--tpla-reduce` says: the cost model picks.
            let mut cands = all.clone();
            for reduce in [ReduceAt::Wo, ReduceAt::Wuv] {
                let f = Form::Tpla {
                    groups: a.g,
                    norm: KvNorm::Sliced,
                    reduce,
                };
                if !cands.contains(&f)
                    && tpla::layer::roles(f, l.tp, cfg.heads, cfg.kv_lora_rank).is_ok()
                {
                    cands.push(f);
                }
            }
            vec![auto(&a, &cfg, &cands, budget, &allowed)?]
        }
    };
    if let Some(f) = forms.iter().find(|f| !allowed(f)) {
        return Err(CliError::Usage(format!(
            "{} exceeds --max-rel-err {}: the accuracy harness puts its error at {budget:.2e}",
            f.name(),
            l.max_rel_err.unwrap_or(0.0)
        )));
    }
    let use_cpu = |why: Option<String>| -> Result<(), CliError> {
        check_memory(&a, &cfg, true)?;
        if let Some(why) = why {
            eprintln!(
                "tpla: no GPU backend ({why}); running the {} ranks on the CPU JIT",
                l.tp
            );
        }
        let threads = (if a.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            a.threads
        } / l.tp)
            .max(1);
        let make = || {
            (0..l.tp)
                .map(|_| CpuExecutor::new(threads))
                .collect::<Result<Vec<_>, _>>()
        };
        run(
            &a,
            &cfg,
            &forms,
            &make,
            &|_: &[CpuExecutor]| Ok(HostAllReduce { ranks: l.tp }),
            "host sum",
            tpla_err,
        )
    };
    // `--devices tp`: rank r on GPU r, NCCL between them, the collective measured. Otherwise
    // every rank on GPU 0, one after another, a device-side sum standing in for the collective.
    let spread = a.devices > 1;
    if spread && a.devices != l.tp {
        return Err(CliError::Usage(format!(
            "--devices {} with --form: one GPU per rank needs --devices = --tp ({})",
            a.devices, l.tp
        )));
    }
    if spread && a.backend == super::BackendArg::Cpu {
        return Err(CliError::Usage(
            "--devices > 1 with --form runs one GPU per rank: it needs the CUDA backend".into(),
        ));
    }
    let open_gpu = || -> Result<Vec<tpla_runtime::cuda::CudaExecutor>, RuntimeError> {
        check_memory(&a, &cfg, false).map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
        let first = super::backend::open_cuda()?;
        let mut v = Vec::with_capacity(l.tp);
        for r in 1..l.tp {
            v.push(if spread {
                tpla_runtime::cuda::CudaExecutor::new(r)?
            } else {
                // Ranks that share the one GPU share its stream too: their work runs one
                // after another in the order it is queued, as it would on a GPU of its own
                // each, with no cross-stream waits between them (each costs the device
                // several µs of idle time that no rank pays on its own GPU).
                tpla_runtime::cuda::CudaExecutor::with_stream(
                    first.stream().clone(),
                    first.kernel_cache().clone(),
                )?
            });
        }
        v.insert(0, first);
        Ok(v)
    };
    let on_gpu = || -> Result<(), CliError> {
        if spread {
            use tpla_runtime::cuda::nccl::NcclGroup;
            run(
                &a,
                &cfg,
                &forms,
                &open_gpu,
                &|e: &[tpla_runtime::cuda::CudaExecutor]| NcclGroup::new(e),
                "NCCL across GPUs 0..tp",
                tpla_err,
            )
        } else {
            run(
                &a,
                &cfg,
                &forms,
                &open_gpu,
                &|_: &[tpla_runtime::cuda::CudaExecutor]| Ok(DeviceSum { ranks: l.tp }),
                "device-side sum on GPU 0",
                tpla_err,
            )
        }
    };
    match a.backend {
        super::BackendArg::Cpu => use_cpu(None),
        super::BackendArg::Cuda => on_gpu(),
        super::BackendArg::Auto => match super::backend::open_cuda() {
            Ok(_) => on_gpu(),
            Err(e) if !spread => use_cpu(Some(e.to_string())),
            Err(e) => Err(e.into()),
        },
    }
}

/// Fails when the host lacks the memory of the run: the f64 synthetic weights (three copies
/// while they are prepared), one host cache while a rank's cache is built, and on the CPU every
/// rank's caches of the stack (MLA-TP's whole cache per rank is the largest form).
fn check_memory(a: &DecodeArgs, cfg: &MlaConfig, on_cpu: bool) -> Result<(), CliError> {
    let mut p = super::limits::MemoryPlan::default();
    let params = tpla::layer::cost::block_params(cfg, Form::MlaTp, 1) as usize;
    p.add(&[3, params], 8);
    let tokens = (a.context + a.steps + 1).div_ceil(a.page_size.max(1)) * a.page_size.max(1);
    let row = cfg.kv_lora_rank + cfg.qk_rope;
    p.add(&[a.batch, tokens, row], 2);
    if on_cpu {
        p.add(&[a.layer.layers, a.layer.tp, a.batch, tokens, row], 2);
    }
    p.check_host(&format!(
        "--batch {}, --context {}, --layers {} and --tp {}",
        a.batch, a.context, a.layer.layers, a.layer.tp
    ))
}
