//! `--form auto`: TPLA's accuracy on a small synthetic layer and the per-form time prediction
//! (rooflines, or this device's tune database) that picks the form.

use tpla::layer::cost::Hardware;
use tpla::layer::reference::reference_steps;
use tpla::layer::{prepare, Form, KvNorm, ReduceAt};
use tpla_model::synthetic::{synthetic_hidden, synthetic_layer};
use tpla_model::{MlaConfig, Preset};
use tpla_runtime::{CpuExecutor, Executor};

use crate::cli::decode_args::DecodeArgs;
use crate::cli::error::CliError;

/// TPLA's worst relative output error against exact MLA on a small synthetic layer (f64).
pub(super) fn tpla_error(g: usize) -> Result<f64, CliError> {
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
            reduce: ReduceAt::Wo,
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

pub(super) fn auto(
    a: &DecodeArgs,
    cfg: &MlaConfig,
    all: &[Form],
    err: f64,
    allowed: &dyn Fn(&Form) -> bool,
) -> Result<Form, CliError> {
    use tpla::layer::auto::{pick, predict_tokens};
    use tpla_runtime::tune::{default_dir, TuneDb};
    let hw = Hardware::h200();
    let len = a.context + a.steps * a.layer.query_len.max(1);
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
        let p = predict_tokens(
            cfg,
            *f,
            a.layer.tp,
            a.batch,
            a.layer.query_len,
            len,
            &hw,
            db.as_ref(),
        )?;
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
pub(super) fn device_identity(a: &DecodeArgs) -> Option<String> {
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
        crate::cli::BackendArg::Cpu => cpu(),
        _ => match crate::cli::backend::open_cuda() {
            Ok(e) => Some(e.device_identity()),
            Err(_) => cpu(),
        },
    }
}
