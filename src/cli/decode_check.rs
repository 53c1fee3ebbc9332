//! The model check of `tpla decode --form`: after the forms are timed, the rooflines are measured
//! on the same executor ([`tpla::layer::check::measure_rooflines`]), the cost model predicts each
//! form from them, and the table prints measured, predicted and the ratio (15 % target). With
//! `--results-dir` the same figures are written as JSON.

use std::any::Any;
use std::path::Path;

use tpla::layer::check::{
    measure_rooflines, write_check, CollectiveModel, FormCheck, ModelCheck, LABEL, TOLERANCE,
};
use tpla::layer::cost::Hardware;
use tpla::layer::{Form, GemmPath, RankTimes};
use tpla_model::MlaConfig;
use tpla_runtime::Executor;

use super::decode_args::DecodeArgs;
use super::error::CliError;

/// One timed form: the slowest rank's median step of the stack.
pub(crate) struct Timed {
    pub form: Form,
    pub times: RankTimes,
}

fn device_of<X: Executor + 'static>(exec: &X) -> (String, Option<i32>, bool) {
    if let Some(c) = (exec as &dyn Any).downcast_ref::<tpla_runtime::cuda::CudaExecutor>() {
        let i = c.info();
        return (i.name.clone(), Some(i.driver_version), true);
    }
    (exec.backend_name(), None, false)
}

/// Measures the rooflines on `exec`, prints the check table and writes the JSON under
/// `results_dir` when given. Returns the check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn model_check<X: Executor + 'static>(
    a: &DecodeArgs,
    cfg: &MlaConfig,
    exec: &X,
    gemm: GemmPath,
    gemm_name: &str,
    timed: &[Timed],
    timing: &str,
    results_dir: Option<&Path>,
) -> Result<ModelCheck, CliError> {
    let l = &a.layer;
    let (device, driver, gpu) = device_of(exec);
    let roof = measure_rooflines(exec, gemm, gpu, 5)?;
    let base = Hardware::h200();
    let hw = roof.hardware(&base);
    let len = a.context + a.steps * a.layer.query_len.max(1);
    let (db, _) = tpla_runtime::tune::TuneDb::open(
        &tpla_runtime::tune::default_dir(),
        &exec.device_identity(),
        &[&tpla_kernels::latent_decode],
    );
    let forms = timed
        .iter()
        .map(|t| {
            let tm = &t.times;
            let phases = [tm.attention, tm.projections, tm.glue].map(|d| d.as_secs_f64());
            FormCheck::new(
                cfg,
                t.form,
                l.tp,
                a.batch,
                l.query_len,
                len,
                l.layers,
                &hw,
                tm.device().as_secs_f64(),
                Some(phases),
                tm.host.as_secs_f64(),
                Some(&db),
            )
            .map(|mut f| {
                // A stand-in's collective is not timed (zero); NCCL's always takes time.
                let c = tm.collective.as_secs_f64();
                f.collective_measured_s = (c > 0.0).then_some(c);
                f
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let check = ModelCheck {
        label: LABEL,
        device,
        driver,
        date: super::bench::today(),
        commit: super::bench::BUILD_COMMIT.to_string(),
        preset: cfg.name.clone(),
        batch: a.batch,
        context: a.context,
        query_len: l.query_len,
        tp: l.tp,
        layers: l.layers,
        gemm: gemm_name.to_string(),
        timing: timing.to_string(),
        rooflines: roof,
        collective: CollectiveModel::of(&base),
        tolerance: TOLERANCE,
        forms,
    };
    println!();
    println!(
        "model check ({LABEL}; NVLink modelled at {:.0} GB/s bus per direction, {:.0} µs per collective)",
        base.bus_bytes_per_s / 1e9,
        base.latency_s * 1e6
    );
    println!(
        "same-run rooflines on {}: {:.1} GB/s ({}), {:.2} TFLOP/s ({}), {:.1} us per small kernel ({}; each phase pays it per kernel it launches)",
        check.device,
        check.rooflines.mem_bytes_per_s / 1e9,
        check.rooflines.copy,
        check.rooflines.flops / 1e12,
        check.rooflines.matmul,
        check.rooflines.kernel_s * 1e6,
        check.rooflines.kernel
    );
    println!("phase timing: {}", check.timing);
    println!(
        "{:<12} {:>16} {:>16} {:>10} {:>10} {:>12}",
        "form", "meas a+p+g ms", "predicted ms", "meas/pred", "host ms", "coll ms (m)"
    );
    let verdict = |ok: bool| {
        if ok {
            "(within 15 %)"
        } else {
            "(OUTSIDE 15 %)"
        }
    };
    for f in &check.forms {
        println!(
            "{:<12} {:>16.3} {:>16.3} {:>10.2} {:>10.3} {:>12.3} {}{}",
            f.form,
            f.measured_s * 1e3,
            f.predicted_s * 1e3,
            f.ratio,
            f.host_s * 1e3,
            f.collective_modelled_s * 1e3,
            verdict(f.within_tolerance),
            f.collective_measured_s
                .map(|c| format!(
                    "; collective measured {:.3} ms ({:.2}x the model)",
                    c * 1e3,
                    c / f.collective_modelled_s
                ))
                .unwrap_or_default()
        );
    }
    println!(
        "per phase, measured / predicted from the rooflines (which part of the model misses):"
    );
    for f in &check.forms {
        let parts: Vec<String> = f
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} {:.3} / {:.3} ms ({:.2})",
                    p.phase,
                    p.measured_s * 1e3,
                    p.predicted_s * 1e3,
                    p.ratio
                )
            })
            .collect();
        println!("{:<12} {}", f.form, parts.join(", "));
    }
    println!("the same model with each rank's attention from this device's tune database (projections and glue from the rooflines):");
    for f in &check.forms {
        match &f.tuned_attention {
            Some(t) => println!(
                "{:<12} {:>16.3} {:>16.3} {:>10.2} {} attention: {}",
                f.form,
                f.measured_s * 1e3,
                t.predicted_s * 1e3,
                t.ratio,
                verdict(t.within_tolerance),
                t.source
            ),
            None => println!(
                "{:<12} (the tune database lacks a rank's decode bucket: `tpla tune` writes it)",
                f.form
            ),
        }
    }
    if let Some(dir) = results_dir {
        let p = write_check(dir, &check)?;
        println!("model check written to {}", p.display());
    }
    Ok(check)
}
