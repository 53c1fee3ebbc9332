//! `tpla decode --form mla-tp|tpla|dcp|all|auto --tp k --layers N [--max-batch]`: a stack of
//! whole attention layers (`tpla::layer`) under tensor parallelism in each form, side by side.
//!
//! On a GPU the `k` ranks run one after another on GPU 0 (a device-side sum stands in for the
//! collective), so each rank's time is what that rank's GPU would spend; on the CPU they are `k`
//! in-process ranks. Compute is measured; the collectives are modelled (NVLink bandwidth and
//! latency, `tpla::layer::cost`), and the table says so.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use tpla::layer::cost::{layer_cost, Hardware};
use tpla::layer::reference::reference_steps;
use tpla::layer::{prepare, DeviceSum, Form, GemmPath, KvNorm, LayerShape, RankTimes, TpLayer};
use tpla_model::synthetic::{synthetic_hidden, synthetic_layer};
use tpla_model::{MlaConfig, MlaLayer, Preset};
use tpla_runtime::{AllReduce, CpuExecutor, Executor, HostAllReduce, HostTensor, RuntimeError};

use super::decode_args::DecodeArgs;
use super::error::CliError;

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
    /// The one the cost model predicts fastest here (within `--max-rel-err`).
    Auto,
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
    let tpla = Form::Tpla {
        groups: a.g,
        norm: KvNorm::Sliced,
    };
    let all = [Form::MlaTp, tpla, Form::Dcp];
    for f in all {
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
    let forms: Vec<Form> = match choice {
        FormArg::MlaTp => vec![Form::MlaTp],
        FormArg::Dcp => vec![Form::Dcp],
        FormArg::Tpla => vec![tpla],
        FormArg::All => all.to_vec(),
        FormArg::Auto => vec![auto(&a, &cfg, &all, budget, &allowed)?],
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
            HostAllReduce { ranks: l.tp },
            "host sum",
            tpla_err,
        )
    };
    let open_gpu = || -> Result<Vec<tpla_runtime::cuda::CudaExecutor>, RuntimeError> {
        check_memory(&a, &cfg, false).map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
        let first = super::backend::open_cuda()?;
        let mut v = vec![first];
        for _ in 1..l.tp {
            v.push(tpla_runtime::cuda::CudaExecutor::new(0)?);
        }
        Ok(v)
    };
    match a.backend {
        super::BackendArg::Cpu => use_cpu(None),
        super::BackendArg::Cuda => run(
            &a,
            &cfg,
            &forms,
            &open_gpu,
            DeviceSum { ranks: l.tp },
            "device-side sum on GPU 0",
            tpla_err,
        ),
        super::BackendArg::Auto => match super::backend::open_cuda() {
            Ok(_) => run(
                &a,
                &cfg,
                &forms,
                &open_gpu,
                DeviceSum { ranks: l.tp },
                "device-side sum on GPU 0",
                tpla_err,
            ),
            Err(e) => use_cpu(Some(e.to_string())),
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

fn max_batch(dir: &std::path::Path) -> Result<(), CliError> {
    use tpla::layer::maxbatch::{sweep, tpla_speedup, Budget, PAPER};
    let hw = Hardware::h200();
    let rows = sweep(&hw);
    println!("largest batch per form (modelled: H200 rooflines, 141 GB, fp8 weights, bf16 cache)");
    println!(
        "{:<12} {:<15} {:>3} {:>6} {:<10} {:>9} {:>9} {:>12}",
        "model", "budget", "tp", "ctx", "form", "weights", "max batch", "tokens/s"
    );
    for r in rows
        .iter()
        .filter(|r| r.context == 32768 || r.context == 4096)
    {
        println!(
            "{:<12} {:<15} {:>3} {:>5}K {:<10} {:>7.1}GB {:>9} {:>12.0}",
            r.model,
            format!("{:?}", r.budget),
            r.tp,
            r.context / 1024,
            r.form,
            r.weights_gb,
            r.max_batch,
            r.tokens_per_s
        );
    }
    for (model, paper) in PAPER {
        for tp in [2, 4, 8] {
            let s = tpla_speedup(&rows, model, Budget::AttentionOnly, tp, 32768);
            println!(
                "{model} TP{tp} 32K attention-only: TPLA g=2 / MLA-TP tokens/s {} (paper, TP2 H800: {paper}x)",
                s.map_or("n/a".into(), |s| format!("{s:.2}x"))
            );
        }
    }
    let (j, p) = tpla::layer::report::write_max_batch(dir, &rows, &hw)?;
    println!("wrote {} and {}", j.display(), p.display());
    Ok(())
}

/// TPLA's worst relative output error against exact MLA on a small synthetic layer (f64).
fn tpla_error(g: usize) -> Result<f64, CliError> {
    let layer = prepare(&synthetic_layer(
        &MlaConfig::small(Preset::DeepseekV3, 256, 8, Some(128)),
        7,
    )?)?;
    let xs = vec![(0..16)
        .map(|t| synthetic_hidden(256, 16, 7, 100).row(t).to_vec())
        .collect::<Vec<_>>()];
    let t = reference_steps(
        &layer,
        Form::Tpla {
            groups: g,
            norm: KvNorm::Sliced,
        },
        None,
        &xs,
    );
    let m = reference_steps(&layer, Form::MlaTp, None, &xs);
    Ok(t.iter()
        .zip(&m)
        .map(|(a, b)| tpla_model::linalg::rel_err(&a[0], &b[0]))
        .fold(0.0, f64::max))
}

fn auto(
    a: &DecodeArgs,
    cfg: &MlaConfig,
    all: &[Form],
    err: f64,
    allowed: &dyn Fn(&Form) -> bool,
) -> Result<Form, CliError> {
    use tpla::layer::auto::{pick, predict};
    use tpla_runtime::tune::{default_dir, TuneDb};
    let hw = Hardware::h200();
    let len = a.context + a.steps;
    let db = device_identity(a).map(|id| {
        let (db, warnings) = TuneDb::open(&default_dir(), &id, &[&tpla_kernels::latent_decode]);
        for w in warnings {
            eprintln!("tpla: {w}");
        }
        println!("auto: tune database {} ({id})", db.path().display());
        db
    });
    let mut preds = Vec::new();
    for f in all {
        let p = predict(cfg, *f, a.layer.tp, a.batch, len, &hw, db.as_ref())?;
        println!(
            "auto: {:<8} predicted {:>9.3} ms per layer per device (attention {}){}",
            f.name(),
            p.total_s() * 1e3,
            p.source,
            if allowed(f) {
                ""
            } else {
                " (excluded: error over --max-rel-err)"
            }
        );
        preds.push(p);
    }
    let (form, why) = pick(&preds, allowed)
        .ok_or_else(|| CliError::Usage("auto: every form is excluded".into()))?;
    println!(
        "auto: picked {} ({why}; projections and collective modelled with H200 rooflines){}",
        form.name(),
        if a.layer.max_rel_err.is_some() {
            format!("; TPLA error {err:.2e}")
        } else {
            String::new()
        }
    );
    Ok(form)
}

/// The identity of the device the run will use (its tune database's key), if one opens.
fn device_identity(a: &DecodeArgs) -> Option<String> {
    let cpu = || {
        let threads = (if a.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            a.threads
        } / a.layer.tp.max(1))
        .max(1);
        CpuExecutor::new(threads).ok().map(|e| e.device_identity())
    };
    match a.backend {
        super::BackendArg::Cpu => cpu(),
        _ => match super::backend::open_cuda() {
            Ok(e) => Some(e.device_identity()),
            Err(_) => cpu(),
        },
    }
}

type Make<'a, X> = &'a dyn Fn() -> Result<Vec<X>, RuntimeError>;

fn build<X: Executor + 'static, C: AllReduce<X> + Copy>(
    make: Make<'_, X>,
    coll: C,
    layer: &MlaLayer,
    form: Form,
    shape: &LayerShape,
    n: usize,
) -> Result<Vec<TpLayer<X, C>>, CliError> {
    (0..n)
        .map(|_| {
            Ok(TpLayer::new(
                make()?,
                coll,
                layer,
                form,
                shape.clone(),
                None,
            )?)
        })
        .collect()
}

/// Applies this device's tune database (`tpla tune`) to every layer of the stack; returns what
/// was used, one line per distinct rank shape.
fn apply_tune_db<X: Executor + 'static, C: AllReduce<X>>(
    stack: &mut [TpLayer<X, C>],
) -> Vec<String> {
    use tpla_runtime::tune::{default_dir, TuneDb};
    let Some(id) = stack
        .first()
        .and_then(|l| l.execs().first())
        .map(|e| e.device_identity())
    else {
        return Vec::new();
    };
    let (db, warnings) = TuneDb::open(&default_dir(), &id, &[&tpla_kernels::latent_decode]);
    for w in warnings {
        eprintln!("tpla: {w}");
    }
    let mut used = Vec::new();
    for l in stack.iter_mut() {
        for (_, bucket, cfg, us) in l.apply_tuned(&db) {
            let line = format!(
                "{bucket}: {cfg} ({us:.0} µs when tuned, {})",
                db.path().display()
            );
            if !used.contains(&line) {
                used.push(line);
            }
        }
    }
    used
}

#[allow(clippy::too_many_arguments)]
fn run<X: Executor + 'static, C: AllReduce<X> + Copy>(
    a: &DecodeArgs,
    cfg: &MlaConfig,
    forms: &[Form],
    make: Make<'_, X>,
    coll: C,
    coll_name: &str,
    tpla_err: f64,
) -> Result<(), CliError> {
    let l = &a.layer;
    let backend = make()?
        .first()
        .map(|e| e.backend_name())
        .unwrap_or_default();
    println!(
        "tpla decode --form: {} (H={}, D={}), {} layers, tp {}, batch {}, context {}, backend {backend} ({coll_name} for the collective)",
        cfg.name, cfg.heads, cfg.hidden, l.layers, l.tp, a.batch, a.context
    );
    let t0 = std::time::Instant::now();
    let layer = match &l.weights {
        Some(path) => {
            let (raw, from) = tpla::layer::weights::load_layer(path, cfg, l.weights_layer)?;
            println!(
                "weights: layer {} of {}{} (one set shared by the {} layers) in {:.1} s",
                from.layer,
                from.path,
                from.transform
                    .map(|t| format!(", tpla convert --transform {t}"))
                    .unwrap_or_default(),
                l.layers,
                t0.elapsed().as_secs_f64()
            );
            prepare(&raw)?
        }
        None => {
            let layer = prepare(&synthetic_layer(cfg, a.seed)?)?;
            println!(
                "synthetic weights (seed {}, one set shared by the {} layers) in {:.1} s",
                a.seed,
                l.layers,
                t0.elapsed().as_secs_f64()
            );
            layer
        }
    };
    let shape = LayerShape {
        batch: a.batch,
        max_tokens: a.context + a.steps + 1,
        page_size: a.page_size,
        splits: a.splits,
        poison: false,
        gemm: l.gemm.into(),
    };
    let hw = Hardware::h200();
    let mut rows = Vec::new();
    let mut gemm_name = String::new();
    for &form in forms {
        let mut stack = build(make, coll, &layer, form, &shape, l.layers)?;
        if let Some(s) = stack.first() {
            gemm_name = s.gemm();
            println!("{}: projections through {gemm_name}", form.name());
        }
        let tuned = apply_tune_db(&mut stack);
        println!(
            "{}: decode kernel configs {}",
            form.name(),
            if tuned.is_empty() {
                "defaults (no tune database entry for these shapes; `tpla tune` writes them)"
                    .to_string()
            } else {
                tuned.join("; ")
            }
        );
        for (i, s) in stack.iter_mut().enumerate() {
            s.fill_random(a.context, a.seed ^ i as u64)?;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
        let mut per_step: Vec<(f64, RankTimes)> = Vec::new();
        let norm = super::decode_prenorm::Prenorm::new(&stack, cfg.hidden)?;
        for step in 0..=a.steps {
            let xv: Vec<f32> = (0..a.batch * cfg.hidden)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect();
            let x = HostTensor::from_vec(&[a.batch, cfg.hidden], xv)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let mut ranks = vec![RankTimes::default(); l.tp];
            // The stack's input goes up once per rank (host); layer to layer the hidden states
            // stay on the executors (each rank's all-reduced output, normalised there).
            let mut xs = Vec::with_capacity(l.tp);
            for (exec, t) in stack[0].execs().iter().zip(&mut ranks) {
                let s = std::time::Instant::now();
                xs.push(exec.upload(&x)?);
                t.host += s.elapsed();
            }
            for (i, s) in stack.iter_mut().enumerate() {
                let (ys, times) = s.step_device(xs)?;
                for (acc, t) in ranks.iter_mut().zip(times) {
                    *acc += t;
                }
                xs = norm.apply(s.execs(), i, ys)?;
            }
            if step > 0 {
                // Step 0 compiles the kernels: untimed.
                let worst = ranks
                    .iter()
                    .copied()
                    .max_by_key(|r| r.total())
                    .unwrap_or_default();
                per_step.push((worst.total().as_secs_f64(), worst));
            }
        }
        per_step.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, med) = per_step[per_step.len() / 2];
        let len = a.context + a.steps;
        let model = layer_cost(cfg, form, l.tp, a.batch, len, 2.0, &hw);
        let n = l.layers as f64;
        rows.push((form, med, model.coll_s * n, model.device_s() * n));
    }
    println!();
    println!("per-device compute measured; collective modelled (NVLink {:.0} GB/s bus, {:.0} µs latency)", hw.bus_bytes_per_s / 1e9, hw.latency_s * 1e6);
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10} {:>14} {:>10}",
        "form",
        "attn ms",
        "proj ms",
        "glue ms",
        "host ms",
        "coll ms (m)",
        "step ms",
        "tokens/s",
        "spec a+p+g ms",
        "meas/spec"
    );
    let mut times = Vec::new();
    for (form, t, coll, model) in &rows {
        let dev = t.device().as_secs_f64();
        let step = t.total().as_secs_f64() + coll;
        times.push((form.name(), dev + coll));
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>10.1} {:>14.3} {:>10.2}",
            form.name(),
            t.attention.as_secs_f64() * 1e3,
            t.projections.as_secs_f64() * 1e3,
            t.glue.as_secs_f64() * 1e3,
            t.host.as_secs_f64() * 1e3,
            coll * 1e3,
            step * 1e3,
            a.batch as f64 / step,
            model * 1e3,
            dev / model
        );
    }
    println!("(median of {} steps of the {}-layer stack; the slowest rank each step; 'glue' is the element-wise kernels on the device (norms, RoPE, query and cache-row assembly, append, DCP merge), 'host' the upload of each layer's input; 'spec a+p+g' is the cost model's attention + projections + glue with the H200 datasheet figures, 'meas/spec' measured attn + proj + glue over it; the model check below uses this run's rooflines)", a.steps, l.layers);
    if let Some(rest) = tpla::layer::cost::ModelRest::for_preset(&cfg.name) {
        for (form, t, coll, _) in &rows {
            let per_layer = (t.device().as_secs_f64() + coll) / l.layers as f64;
            let step = per_layer * cfg.layers as f64 + rest.step_s(cfg, l.tp, a.batch, 2.0, &hw);
            println!(
                "{}: whole model at batch {} ≈ {:.1} tokens/s ({} layers at the measured per-layer time + modelled collective; MoE/FFN/LM-head weight reads modelled, bf16)",
                form.name(), a.batch, a.batch as f64 / step, cfg.layers
            );
        }
    }
    if let Some((base, bt)) = times.iter().find(|(n, _)| n == "mla-tp") {
        for (n, t) in times.iter().filter(|(n, _)| n != base) {
            println!(
                "{n} vs mla-tp (attention + projections + glue + modelled collective): {:.2}x",
                bt / t
            );
        }
    }
    let timed: Vec<super::decode_check::Timed> = rows
        .iter()
        .map(|(form, t, _, _)| super::decode_check::Timed {
            form: *form,
            times: *t,
        })
        .collect();
    let execs = make()?;
    let exec = execs
        .first()
        .ok_or_else(|| CliError::Usage("no ranks".into()))?;
    super::decode_check::model_check(
        a,
        cfg,
        exec,
        l.gemm.into(),
        &gemm_name,
        &timed,
        l.results_dir.as_deref(),
    )?;
    drop(execs);
    for &form in forms {
        let e = check(make, coll, form)?;
        println!("reference check {} (small synthetic layer, tp {}, same ranks and collective): rel err {e:.2e} {}", form.name(), l.tp, if e <= 1e-2 { "(ok)" } else { "(TOO LARGE)" });
        if e.is_nan() || e > 1e-2 {
            return Err(CliError::Usage(format!(
                "{} disagrees with its f64 reference: rel err {e:.3e}",
                form.name()
            )));
        }
    }
    if forms.iter().any(|f| !f.exact()) {
        println!("TPLA vs exact MLA on that layer (f64, no transform): rel err {tpla_err:.2e}");
    }
    Ok(())
}

/// RMSNorm of each row (the next layer's input norm), so a stack of random layers stays finite.
/// The form on a small synthetic layer against its f64 reference: the worst relative error.
fn check<X: Executor + 'static, C: AllReduce<X> + Copy>(
    make: Make<'_, X>,
    coll: C,
    form: Form,
) -> Result<f64, CliError> {
    let cfg = MlaConfig::small(Preset::DeepseekV3, 256, 8, Some(128));
    let layer = prepare(&synthetic_layer(&cfg, 11)?)?;
    let (b, steps) = (2, 6);
    let xs: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|i| {
            (0..steps)
                .map(|t| synthetic_hidden(256, steps, 11, 50 + i).row(t).to_vec())
                .collect()
        })
        .collect();
    let want = reference_steps(&layer, form, None, &xs);
    let shape = LayerShape {
        batch: b as usize,
        max_tokens: steps,
        page_size: 4,
        splits: 2,
        poison: true,
        gemm: GemmPath::Auto,
    };
    let mut tl = TpLayer::new(make()?, coll, &layer, form, shape, None)?;
    let mut worst = 0.0f64;
    for (t, w) in want.iter().enumerate() {
        let x: Vec<f32> = xs
            .iter()
            .flat_map(|s| s[t].iter().map(|&v| v as f32))
            .collect();
        let (y, _) = tl.step(
            &HostTensor::from_vec(&[b as usize, 256], x)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        )?;
        for (bi, wb) in w.iter().enumerate() {
            let got: Vec<f64> = y.data()[bi * 256..(bi + 1) * 256]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let e = tpla_model::linalg::rel_err(&got, wb);
            worst = if e.is_finite() {
                worst.max(e)
            } else {
                f64::INFINITY
            };
        }
    }
    Ok(worst)
}
