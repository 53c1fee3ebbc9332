//! The layer stack of each form: building it on the ranks, applying the tune database, the
//! timed decode steps with their modelled collectives, and the check against the f64 reference.

use rand::{Rng, SeedableRng};
use tpla::layer::cost::{layer_cost_tokens, Hardware};
use tpla::layer::reference::run_against_reference;
use tpla::layer::{prepare, Form, GemmPath, LayerShape, Payload, PhaseTiming, RankTimes, TpLayer};
use tpla_model::synthetic::{synthetic_hidden, synthetic_layer};
use tpla_model::{MlaConfig, MlaLayer, Preset};
use tpla_runtime::{AllReduce, Executor, HostTensor, RuntimeError};

use crate::cli::decode_args::DecodeArgs;
use crate::cli::error::CliError;

pub(super) type Make<'a, X> = &'a dyn Fn() -> Result<Vec<X>, RuntimeError>;

/// The collective of a set of rank executors (an NCCL group is bound to their streams).
pub(super) type Coll<'a, X, C> = &'a dyn Fn(&[X]) -> Result<C, RuntimeError>;

/// A layer on fresh rank executors with their collective.
fn layer_on<X: Executor + 'static, C: AllReduce<X>>(
    make: Make<'_, X>,
    coll: Coll<'_, X, C>,
    layer: &MlaLayer,
    form: Form,
    shape: LayerShape,
) -> Result<TpLayer<X, C>, CliError> {
    let execs = make()?;
    let c = coll(&execs)?;
    Ok(TpLayer::new(execs, c, layer, form, shape, None)?)
}

pub(super) fn build<X: Executor + 'static, C: AllReduce<X>>(
    make: Make<'_, X>,
    coll: Coll<'_, X, C>,
    layer: &MlaLayer,
    form: Form,
    shape: &LayerShape,
    n: usize,
) -> Result<Vec<TpLayer<X, C>>, CliError> {
    (0..n)
        .map(|_| layer_on(make, coll, layer, form, shape.clone()))
        .collect()
}

/// Applies this device's tune database (`tpla tune`) to every layer of the stack; returns what
/// was used, one line per distinct rank shape.
pub(super) fn apply_tune_db<X: Executor + 'static, C: AllReduce<X>>(
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
pub(super) fn run<X: Executor + 'static, C: AllReduce<X>>(
    a: &DecodeArgs,
    cfg: &MlaConfig,
    forms: &[Form],
    make: Make<'_, X>,
    coll: Coll<'_, X, C>,
    coll_name: &str,
    tpla_err: f64,
) -> Result<(), CliError> {
    let l = &a.layer;
    let backend = make()?
        .first()
        .map(|e| e.backend_name())
        .unwrap_or_default();
    println!(
        "tpla decode --form: {} (H={}, D={}), {} layers, tp {}, batch {}, context {}, backend {backend} ({coll_name} for the collective, {} payload)",
        cfg.name, cfg.heads, cfg.hidden, l.layers, l.tp, a.batch, a.context, Payload::from(l.payload).name()
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
        max_tokens: a.context + (a.steps + 1) * l.query_len,
        page_size: a.page_size,
        splits: a.splits,
        poison: false,
        gemm: l.gemm.into(),
        timing: if l.sync_phases {
            PhaseTiming::Synchronised
        } else {
            PhaseTiming::Events
        },
        payload: l.payload.into(),
        query_len: l.query_len,
    };
    let hw = Hardware::h200();
    let mut rows = Vec::new();
    let mut gemm_name = String::new();
    let mut timing = "";
    let mut measured = false;
    for &form in forms {
        let mut stack = build(make, coll, &layer, form, &shape, l.layers)?;
        if let Some(s) = stack.first() {
            gemm_name = s.gemm();
            timing = s.timing();
            measured = s.collective_measured();
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
        let mut per_step: Vec<(f64, RankTimes, f64, f64)> = Vec::new();
        let norm = crate::cli::decode_prenorm::Prenorm::new(&stack, cfg.hidden)?;
        for step in 0..=a.steps {
            let xv: Vec<f32> = (0..a.batch * l.query_len * cfg.hidden)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect();
            let x = HostTensor::from_vec(&[a.batch * l.query_len, cfg.hidden], xv)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let mut ranks = vec![RankTimes::default(); l.tp];
            // The stack's input goes up once per rank (host); layer to layer the hidden states
            // stay on the executors (each rank's all-reduced output, normalised there).
            let mut xs = Vec::with_capacity(l.tp);
            let wall = std::time::Instant::now();
            for (exec, t) in stack[0].execs().iter().zip(&mut ranks) {
                let s = std::time::Instant::now();
                xs.push(exec.upload(&x)?);
                t.host += s.elapsed();
            }
            // The whole stack is queued before any time is read: the host runs ahead of the
            // device as in an engine's decode step (the step's last layer is waited for below).
            let mut pending = Vec::with_capacity(stack.len());
            for i in 0..stack.len() {
                let (ys, p) = stack[i].step_queued(xs)?;
                pending.push(p);
                let next = stack.get(i + 1).map(|n| n.execs());
                xs = norm.apply(stack[i].execs(), i, ys, next)?;
            }
            // Everything is queued: on a GPU the host may return long before the device ends.
            let queued = wall.elapsed().as_secs_f64();
            for p in pending {
                for (acc, t) in ranks.iter_mut().zip(p.finish()?) {
                    *acc += t;
                }
            }
            for s in &stack {
                for exec in s.execs() {
                    exec.synchronize()?;
                }
            }
            // The whole stack on the host clock: every rank's work one after another on this
            // device, launches included.
            let wall = wall.elapsed().as_secs_f64();
            if step > 0 {
                // Step 0 compiles the kernels: untimed.
                let worst = ranks
                    .iter()
                    .copied()
                    .max_by_key(|r| r.total())
                    .unwrap_or_default();
                per_step.push((worst.total().as_secs_f64(), worst, wall, queued));
            }
        }
        per_step.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, med, _, _) = per_step[per_step.len() / 2];
        let mid = |pick: fn(&(f64, RankTimes, f64, f64)) -> f64| {
            let mut v: Vec<f64> = per_step.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (wall, queue) = (mid(|p| p.2), mid(|p| p.3));
        let len = a.context + a.steps;
        let model = layer_cost_tokens(
            cfg,
            form,
            l.tp,
            a.batch,
            l.query_len,
            len,
            2.0,
            shape.payload.bytes(),
            &hw,
        );
        let n = l.layers as f64;
        // A measured collective is in `med` (its `collective` field); a stand-in's is modelled.
        let coll_s = if measured {
            med.collective.as_secs_f64()
        } else {
            model.coll_s * n
        };
        rows.push(Row {
            form,
            times: med,
            coll_s,
            model_coll_s: model.coll_s * n,
            spec_s: model.device_s() * n,
            wall_s: wall,
            queue_s: queue,
        });
    }
    println!();
    if measured {
        println!("per-device compute and collective measured (one GPU per rank, {coll_name}); 'coll model' is the cost model's NVLink figure ({:.0} GB/s bus, {:.0} µs latency) for comparison", hw.bus_bytes_per_s / 1e9, hw.latency_s * 1e6);
    } else {
        println!("per-device compute measured; collective modelled (NVLink {:.0} GB/s bus, {:.0} µs latency)", hw.bus_bytes_per_s / 1e9, hw.latency_s * 1e6);
    }
    println!("phase timing: {timing}");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10} {:>14} {:>10} {:>20}",
        "form",
        "attn ms",
        "proj ms",
        "glue ms",
        "host ms",
        if measured { "coll ms" } else { "coll ms (m)" },
        "step ms",
        "tokens/s",
        "spec a+p+g ms",
        "meas/spec",
        "wall ms (all ranks)"
    );
    let mut times = Vec::new();
    for r in &rows {
        let (form, t, coll, model, wall) = (&r.form, &r.times, &r.coll_s, &r.spec_s, &r.wall_s);
        let dev = t.device().as_secs_f64();
        // `total` holds a measured collective already.
        let step = t.total().as_secs_f64() + if measured { 0.0 } else { *coll };
        times.push((form.name(), dev + coll));
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>10.1} {:>14.3} {:>10.2} {:>20.3}",
            form.name(),
            t.attention.as_secs_f64() * 1e3,
            t.projections.as_secs_f64() * 1e3,
            t.glue.as_secs_f64() * 1e3,
            t.host.as_secs_f64() * 1e3,
            coll * 1e3,
            step * 1e3,
            (a.batch * l.query_len) as f64 / step,
            model * 1e3,
            dev / model,
            wall * 1e3
        );
    }
    let wall_means = if measured {
        "the host clock over the whole stack with the ranks running in parallel on their GPUs, launches included"
    } else {
        "the host clock over the whole stack with every rank's work one after another on this device, launches included"
    };
    println!("(median of {} steps of the {}-layer stack; the slowest rank each step; 'glue' is the element-wise kernels on the device (norms, RoPE, query and cache-row assembly, append, DCP merge), 'host' the upload of each layer's input; 'spec a+p+g' is the cost model's attention + projections + glue with the H200 datasheet figures, 'meas/spec' measured attn + proj + glue over it; 'wall ms (all ranks)' {wall_means}; the model check below uses this run's rooflines)", a.steps, l.layers);
    // Who sets the pace of the stack: where the host's queueing takes nearly the whole wall,
    // the device waited for launches (its idle time lands inside the phases above).
    let queueing: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {:.3} of {:.3} ms",
                r.form.name(),
                r.queue_s * 1e3,
                r.wall_s * 1e3
            )
        })
        .collect();
    println!("host queueing of the whole stack (all ranks), of its wall: {} (close to the wall: the host set the pace; on the CPU, whose launches run as they are queued, always so)", queueing.join(", "));
    if measured {
        for r in &rows {
            println!(
                "{}: collective measured {:.3} ms, modelled {:.3} ms per {}-layer step (measured / modelled {:.2})",
                r.form.name(),
                r.coll_s * 1e3,
                r.model_coll_s * 1e3,
                l.layers,
                r.coll_s / r.model_coll_s
            );
        }
    }
    let coll_word = if measured { "measured" } else { "modelled" };
    if let Some(rest) = tpla::layer::cost::ModelRest::for_preset(&cfg.name) {
        for r in &rows {
            let (form, t, coll) = (&r.form, &r.times, &r.coll_s);
            let per_layer = (t.device().as_secs_f64() + coll) / l.layers as f64;
            let step = per_layer * cfg.layers as f64
                + rest.step_s(cfg, l.tp, a.batch * l.query_len, 2.0, &hw);
            println!(
                "{}: whole model at batch {} ≈ {:.1} tokens/s ({} layers at the measured per-layer time + {coll_word} collective; MoE/FFN/LM-head weight reads modelled, bf16)",
                form.name(), a.batch, (a.batch * l.query_len) as f64 / step, cfg.layers
            );
        }
    }
    if let Some((base, bt)) = times.iter().find(|(n, _)| n == "mla-tp") {
        for (n, t) in times.iter().filter(|(n, _)| n != base) {
            println!(
                "{n} vs mla-tp (attention + projections + glue + {coll_word} collective): {:.2}x",
                bt / t
            );
        }
    }
    let timed: Vec<crate::cli::decode_check::Timed> = rows
        .iter()
        .map(|r| crate::cli::decode_check::Timed {
            form: r.form,
            times: r.times,
        })
        .collect();
    let execs = make()?;
    let exec = execs
        .first()
        .ok_or_else(|| CliError::Usage("no ranks".into()))?;
    crate::cli::decode_check::model_check(
        a,
        cfg,
        exec,
        l.gemm.into(),
        &gemm_name,
        &timed,
        timing,
        l.results_dir.as_deref(),
    )?;
    drop(execs);
    for &form in forms {
        let e = check(make, coll, form, shape.payload, shape.query_len)?;
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

/// The form on a small synthetic layer against its f64 reference: the worst relative error,
/// with `sq` new tokens per sequence per step (each token's output against the reference's
/// one-token decode at its position: the causal mask among the new tokens makes them equal).
pub(super) fn check<X: Executor + 'static, C: AllReduce<X>>(
    make: Make<'_, X>,
    coll: Coll<'_, X, C>,
    form: Form,
    payload: Payload,
    sq: usize,
) -> Result<f64, CliError> {
    let cfg = MlaConfig::small(Preset::DeepseekV3, 256, 8, Some(128));
    let layer = prepare(&synthetic_layer(&cfg, 11)?)?;
    // 12 tokens: whole steps for every query length 1-4.
    let (b, tokens) = (2usize, 12usize);
    let xs: Vec<Vec<Vec<f64>>> = (0..b)
        .map(|i| {
            (0..tokens)
                .map(|t| {
                    synthetic_hidden(256, tokens, 11, 50 + i as u64)
                        .row(t)
                        .to_vec()
                })
                .collect()
        })
        .collect();
    let shape = LayerShape {
        batch: b,
        max_tokens: tokens,
        page_size: 4,
        splits: 2,
        poison: true,
        gemm: GemmPath::Auto,
        timing: PhaseTiming::Events,
        payload,
        query_len: sq,
    };
    let mut tl = layer_on(make, coll, &layer, form, shape)?;
    Ok(run_against_reference(&mut tl, &layer, None, &xs)?.worst)
}

/// One form's line of the table.
struct Row {
    form: Form,
    /// The median step's times of the slowest rank (its measured collective included).
    times: RankTimes,
    /// The collective per step: measured where it crosses devices, else modelled.
    coll_s: f64,
    /// The cost model's collective per step.
    model_coll_s: f64,
    /// The cost model's attention + projections + glue per step (datasheet figures).
    spec_s: f64,
    /// The host clock over the whole stack.
    wall_s: f64,
    /// The host clock until the whole stack was queued (before any wait for the device).
    queue_s: f64,
}
