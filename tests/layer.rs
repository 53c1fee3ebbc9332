//! The whole attention layer under tensor parallelism (`tpla::layer`) against its f64
//! references: MLA-TP and DCP against exact absorbed MLA, TPLA (g = tp and g < tp, sliced and
//! exact kv norm) against the TPLA reference, at TP 2, 4 and 8 with in-process CPU ranks; and the
//! same checks on one GPU with the ranks in sequence and a device-side sum.

use tpla::layer::reference::reference_steps;
use tpla::layer::{prepare, DeviceSum, Form, KvNorm, LayerShape, TpLayer};
use tpla_model::linalg::rel_err;
use tpla_model::synthetic::{synthetic_hidden, synthetic_layer};
use tpla_model::{Corrections, MlaConfig, MuConvention, Preset};
use tpla_runtime::{AllReduce, CpuExecutor, Executor, HostAllReduce, HostTensor};

const BATCH: usize = 2;
const STEPS: usize = 8;

fn small() -> MlaConfig {
    MlaConfig::small(Preset::DeepseekV3, 256, 8, Some(128))
}

/// Runs `STEPS` decode steps of `form` on `execs` and returns the worst relative error of any
/// step's output against the reference (after checking every output is finite).
fn worst_error<X: Executor, C: AllReduce<X>>(
    execs: Vec<X>,
    coll: C,
    form: Form,
    corr: Option<Corrections>,
) -> f64 {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs: Vec<Vec<Vec<f64>>> = (0..BATCH)
        .map(|b| {
            let m = synthetic_hidden(d, STEPS, 7, 100 + b as u64);
            (0..STEPS).map(|t| m.row(t).to_vec()).collect()
        })
        .collect();
    let want = reference_steps(&layer, form, corr.as_ref(), &xs);
    let shape = LayerShape {
        batch: BATCH,
        max_tokens: STEPS + 3,
        page_size: 4,
        splits: 2,
        poison: true,
    };
    let mut tp = TpLayer::new(execs, coll, &layer, form, shape, corr).unwrap();
    let mut worst = 0.0f64;
    for (t, want_t) in want.iter().enumerate() {
        let x: Vec<f32> = xs
            .iter()
            .flat_map(|s| s[t].iter().map(|&v| v as f32))
            .collect();
        let (y, times) = tp
            .step(&HostTensor::from_vec(&[BATCH, d], x).unwrap())
            .unwrap();
        assert_eq!(times.len(), tp.execs().len());
        assert!(
            y.data().iter().all(|v| v.is_finite()),
            "{} step {t}: non-finite output",
            form.name()
        );
        for (b, w) in want_t.iter().enumerate() {
            let got: Vec<f64> = y.data()[b * d..(b + 1) * d]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            worst = worst.max(rel_err(&got, w));
        }
    }
    assert_eq!(tp.len(), STEPS);
    worst
}

fn cpu(tp: usize) -> Vec<CpuExecutor> {
    (0..tp).map(|_| CpuExecutor::new(1).unwrap()).collect()
}

fn corr2() -> Corrections {
    Corrections::from_energy(vec![0.6, 0.4], MuConvention::InverseEnergy)
}

fn forms(tp: usize) -> Vec<(Form, Option<Corrections>)> {
    let mut f = vec![
        (Form::MlaTp, None),
        (Form::Dcp, None),
        (
            Form::Tpla {
                groups: tp,
                norm: KvNorm::Sliced,
            },
            None,
        ),
        (
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Sliced,
            },
            Some(corr2()),
        ),
    ];
    if tp == 2 {
        f.push((
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Exact,
            },
            None,
        ));
    }
    f
}

fn check_cpu(tp: usize) {
    for (form, corr) in forms(tp) {
        let e = worst_error(cpu(tp), HostAllReduce { ranks: tp }, form, corr);
        eprintln!("tp {tp} {}: worst rel err {e:.2e}", form.name());
        assert!(
            e <= 1e-2,
            "tp {tp} {}: relative error {e:.3e} > 1e-2",
            form.name()
        );
    }
}

#[test]
fn every_form_matches_its_reference_at_tp2() {
    check_cpu(2);
}

#[test]
fn every_form_matches_its_reference_at_tp4() {
    check_cpu(4);
}

#[test]
fn every_form_matches_its_reference_at_tp8() {
    check_cpu(8);
}

#[test]
fn tpla_differs_from_exact_mla_so_the_check_can_fail() {
    // The TPLA reference is not MLA's: with g = 2 the device output must be far closer to the
    // TPLA reference than MLA's is, or the TPLA check above proves nothing.
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let xs: Vec<Vec<Vec<f64>>> = vec![(0..STEPS)
        .map(|t| synthetic_hidden(256, STEPS, 7, 100).row(t).to_vec())
        .collect()];
    let form = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
    };
    let a = reference_steps(&layer, form, Some(&corr2()), &xs);
    let b = reference_steps(&layer, Form::MlaTp, None, &xs);
    let gap = rel_err(&a[STEPS - 1][0], &b[STEPS - 1][0]);
    assert!(
        gap > 3e-2,
        "TPLA and MLA references differ by only {gap:.2e}"
    );
}

#[test]
fn device_sum_on_cpu_ranks_equals_the_host_all_reduce() {
    let e = worst_error(cpu(2), DeviceSum { ranks: 2 }, Form::MlaTp, None);
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn bad_forms_are_typed_errors() {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let shape = LayerShape {
        batch: 1,
        max_tokens: 4,
        page_size: 4,
        splits: 1,
        poison: false,
    };
    for (tp, form) in [
        (3, Form::MlaTp),
        (
            4,
            Form::Tpla {
                groups: 3,
                norm: KvNorm::Sliced,
            },
        ),
    ] {
        assert!(TpLayer::new(
            cpu(tp),
            HostAllReduce { ranks: tp },
            &layer,
            form,
            shape.clone(),
            None
        )
        .is_err());
    }
    let mut l = TpLayer::new(
        cpu(2),
        HostAllReduce { ranks: 2 },
        &layer,
        Form::Dcp,
        shape,
        None,
    )
    .unwrap();
    assert!(
        l.step(&HostTensor::zeros(&[1, 7])).is_err(),
        "wrong hidden size"
    );
    assert!(l.fill_random(5, 0).is_err(), "past the cache");
    assert_eq!(l.len(), 0, "unchanged after errors");
}

/// One GPU, the ranks one after another, a device-side sum for the collective.
#[test]
fn gpu_ranks_in_sequence_match_the_references() {
    use tpla_runtime::cuda::CudaExecutor;
    let open = |tp: usize| -> Result<Vec<CudaExecutor>, String> {
        (0..tp)
            .map(|_| CudaExecutor::new(0).map_err(|e| e.to_string()))
            .collect()
    };
    if let Err(why) = open(1).and_then(|_| {
        tpla_runtime::cuda::nvrtc::nvrtc()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }) {
        assert!(
            std::env::var("TPLA_REQUIRE_GPU").as_deref() != Ok("1"),
            "TPLA_REQUIRE_GPU=1 but no GPU: {why}"
        );
        eprintln!("SKIPPED gpu_ranks_in_sequence_match_the_references: no GPU ({why})");
        return;
    }
    for tp in [2, 4, 8] {
        for (form, corr) in forms(tp) {
            let e = worst_error(open(tp).unwrap(), DeviceSum { ranks: tp }, form, corr);
            eprintln!("gpu tp {tp} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "gpu tp {tp} {}: {e:.3e}", form.name());
        }
    }
}

/// The layer's CUDA kernels at its shapes compile with NVRTC for sm_90a (no GPU needed; skips
/// without libnvrtc unless `TPLA_REQUIRE_NVRTC=1`): `add_rows` (every tune candidate) and
/// `head_proj` at the DeepSeek-V3 projection shapes.
#[test]
fn layer_kernels_compile_with_nvrtc() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::cuda::nvrtc::{compile, default_options, nvrtc};
    use tpla_runtime::cuda::Target;
    if let Err(e) = nvrtc() {
        assert!(
            std::env::var("TPLA_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "TPLA_REQUIRE_NVRTC=1: {e}"
        );
        eprintln!("SKIP layer_kernels_compile_with_nvrtc: NVRTC unavailable ({e})");
        return;
    }
    let opts = default_options(&Target::sm90().arch_name());
    let mut cfgs = tpla_kernels::add_rows
        .tune_space(&[("COLS", 7168)])
        .unwrap();
    cfgs.truncate(3);
    let mut n = 0;
    let mut build = |def: &dyn KernelDef, cfg: &tpla_codegen::Config| {
        let k = def.build(cfg).unwrap();
        let src = tpla_codegen::cuda::emit(&k, Target::sm90()).unwrap();
        compile(&src.name, &src.code, &opts)
            .unwrap_or_else(|e| panic!("{} [{cfg}]: {e}", def.name()));
        n += 1;
    };
    for cfg in &cfgs {
        build(&tpla_kernels::add_rows, cfg);
    }
    for (lat, dv) in [(7168, 2112), (1536, 12288), (128, 512), (16384, 7168)] {
        let cfg = tpla_kernels::head_proj
            .default_config(&[("LAT", lat), ("DV", dv)])
            .unwrap();
        build(&tpla_kernels::head_proj, &cfg);
    }
    assert_eq!(n, cfgs.len() + 4);
}
