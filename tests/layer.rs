//! The whole attention layer under tensor parallelism (`tpla::layer`) against its f64
//! references: MLA-TP and DCP against exact absorbed MLA, TPLA (g = tp and g < tp, sliced and
//! exact kv norm) against the TPLA reference, at TP 2, 4 and 8 with in-process CPU ranks; and the
//! same checks on one GPU with the ranks in sequence and a device-side sum. The collectives
//! (`collectives`), the step's shape and tuning (`steps`) and the element-wise kernels
//! (`glue_kernels`) have modules of their own.

#[path = "layer_collectives/mod.rs"]
mod collectives;
#[path = "layer_glue/mod.rs"]
mod glue_kernels;
#[path = "procs/mod.rs"]
mod procs;
#[path = "layer_steps/mod.rs"]
mod steps;

use tpla::layer::reference::{reference_steps, run_against_reference};
use tpla::layer::{
    prepare, DeviceSum, Form, GemmPath, KvNorm, LayerShape, Payload, PhaseTiming, ReduceAt, TpLayer,
};
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
fn worst_error<X: Executor + 'static, C: AllReduce<X>>(
    execs: Vec<X>,
    coll: C,
    form: Form,
    corr: Option<Corrections>,
) -> f64 {
    run_steps(execs, coll, form, corr, GemmPath::Auto, Payload::F32).0
}

/// As [`worst_error`] with the projections on `gemm`; also returns every step's output.
fn run_steps<X: Executor + 'static, C: AllReduce<X>>(
    execs: Vec<X>,
    coll: C,
    form: Form,
    corr: Option<Corrections>,
    gemm: GemmPath,
    payload: Payload,
) -> (f64, Vec<Vec<f32>>) {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs = hidden_tokens(d, STEPS);
    let shape = LayerShape {
        gemm,
        payload,
        ..layer_shape(BATCH, STEPS + 3, 2, 1)
    };
    let mut tp = TpLayer::new(execs, coll, &layer, form, shape, corr.clone()).unwrap();
    let run = run_against_reference(&mut tp, &layer, corr.as_ref(), &xs).unwrap();
    for (t, (times, y)) in run.times.iter().zip(&run.outputs).enumerate() {
        assert_eq!(times.len(), tp.execs().len());
        for (r, rt) in times.iter().enumerate() {
            let zero = std::time::Duration::ZERO;
            assert!(
                rt.attention > zero && rt.projections > zero && rt.glue > zero,
                "{} step {t} rank {r}: every phase runs work and is timed: {rt:?}",
                form.name()
            );
        }
        assert!(
            y.iter().all(|v| v.is_finite()),
            "{} step {t}: non-finite output",
            form.name()
        );
    }
    assert_eq!(tp.len(), STEPS);
    (run.worst, run.outputs)
}

/// `BATCH` sequences of `tokens` synthetic hidden states of width `d` (`xs[b][t]`).
fn hidden_tokens(d: usize, tokens: usize) -> Vec<Vec<Vec<f64>>> {
    (0..BATCH)
        .map(|b| {
            let m = synthetic_hidden(d, tokens, 7, 100 + b as u64);
            (0..tokens).map(|t| m.row(t).to_vec()).collect()
        })
        .collect()
}

/// A layer shape of `batch` sequences, `max_tokens` tokens (pages of 4), `splits` KV splits
/// (0: chosen per call) and `query_len` new tokens per step; outputs poisoned, the gemm picked
/// per executor, event timing, an f32 payload.
fn layer_shape(batch: usize, max_tokens: usize, splits: usize, query_len: usize) -> LayerShape {
    LayerShape {
        batch,
        max_tokens,
        page_size: 4,
        splits,
        poison: true,
        gemm: GemmPath::Auto,
        timing: PhaseTiming::Events,
        payload: Payload::F32,
        query_len,
    }
}

/// `form` of `layer` over `tp` CPU ranks summed by the host all-reduce.
fn cpu_layer(
    tp: usize,
    layer: &tpla_model::MlaLayer,
    form: Form,
    shape: LayerShape,
) -> Result<TpLayer<CpuExecutor, HostAllReduce>, tpla_runtime::RuntimeError> {
    TpLayer::new(
        cpu(tp),
        HostAllReduce { ranks: tp },
        layer,
        form,
        shape,
        None,
    )
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
                reduce: ReduceAt::Wo,
            },
            None,
        ),
        (
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wo,
            },
            Some(corr2()),
        ),
    ];
    // Reduced after `W_UV`: g = tp (every rank all heads, one slot) and g = 2 (at tp > 2 the
    // heads split inside each group: slots placed, then summed).
    for (groups, corr) in [(tp, None), (2, Some(corr2()))] {
        if groups == 2 && tp == 2 && corr.is_none() {
            continue;
        }
        f.push((
            Form::Tpla {
                groups,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wuv,
            },
            corr,
        ));
    }
    if tp == 2 {
        f.push((
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Exact,
                reduce: ReduceAt::Wo,
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
        reduce: ReduceAt::Wo,
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
    // TPLA reduced after `W_UV` with heads split inside the groups: the slots go through the
    // device sum too.
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    let e = worst_error(cpu(4), DeviceSum { ranks: 4 }, wuv, Some(corr2()));
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn bad_forms_are_typed_errors() {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let shape = LayerShape {
        poison: false,
        ..layer_shape(1, 4, 1, 1)
    };
    for (tp, form) in [
        (3, Form::MlaTp),
        (
            4,
            Form::Tpla {
                groups: 3,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wo,
            },
        ),
    ] {
        assert!(cpu_layer(tp, &layer, form, shape.clone()).is_err());
    }
    let mut l = cpu_layer(2, &layer, Form::Dcp, shape).unwrap();
    assert!(
        l.step(&HostTensor::zeros(&[1, 7])).is_err(),
        "wrong hidden size"
    );
    assert!(l.fill_random(5, 0).is_err(), "past the cache");
    let d = layer.cfg.hidden;
    let up = |e: &CpuExecutor, shape: &[usize]| e.upload(&HostTensor::full(shape, 0.5)).unwrap();
    let one = vec![up(&l.execs()[0], &[1, d])];
    assert!(l.step_device(one).is_err(), "one input for two ranks");
    let bad: Vec<_> = l.execs().iter().map(|e| up(e, &[1, d + 1])).collect();
    assert!(
        l.step_device(bad).is_err(),
        "wrong hidden size on the device"
    );
    assert_eq!(l.len(), 0, "unchanged after errors");
    let good: Vec<_> = l.execs().iter().map(|e| up(e, &[1, d])).collect();
    let (ys, times) = l.step_device(good).unwrap();
    assert_eq!((ys.len(), times.len(), l.len()), (2, 2, 1));
    let (a, b) = (
        l.execs()[0].download(&ys[0]).unwrap(),
        l.execs()[1].download(&ys[1]).unwrap(),
    );
    assert_eq!(a.shape(), [1, d]);
    assert!(a.data().iter().all(|v| v.is_finite()));
    assert_eq!(
        a.data(),
        b.data(),
        "every rank holds the all-reduced output"
    );
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
    // Two and four new tokens per sequence (MTP): MLA-TP and TPLA.
    for sq in [2, 4] {
        for (form, corr) in [(Form::MlaTp, None), (Form::tpla(2), Some(corr2()))] {
            let e = steps::worst_error_multi_token(
                open(2).unwrap(),
                DeviceSum { ranks: 2 },
                form,
                corr,
                sq,
                12,
            );
            eprintln!("gpu tp 2 sq {sq} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "gpu tp 2 sq {sq} {}: {e:.3e}", form.name());
        }
    }
}

/// The layer's CUDA kernels at its shapes compile with NVRTC for sm_90a (no GPU needed; skips
/// without libnvrtc unless `TPLA_REQUIRE_NVRTC=1`): `add_rows` (every tune candidate),
/// `head_proj` and `cast_bf16` (cuBLAS' input) at the DeepSeek-V3 projection shapes.
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
    for cols in [7168, 1536, 128, 16384] {
        let cfg = tpla_kernels::cast_bf16
            .default_config(&[("COLS", cols)])
            .unwrap();
        build(&tpla_kernels::cast_bf16, &cfg);
    }
    assert_eq!(n, cfgs.len() + 8);
}

/// On the CPU the layer's projections run on the DSL kernel; asking for cuBLAS there is a typed
/// error, not a panic.
#[test]
fn cpu_projections_use_the_dsl_kernel_and_refuse_cublas() {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let mut shape = LayerShape {
        poison: false,
        ..layer_shape(1, 4, 1, 1)
    };
    let l = cpu_layer(2, &layer, Form::MlaTp, shape.clone()).unwrap();
    assert!(l.gemm().starts_with("DSL head_proj"), "{}", l.gemm());
    shape.gemm = GemmPath::Cublas;
    let e = cpu_layer(2, &layer, Form::MlaTp, shape)
        .err()
        .expect("cuBLAS on CPU ranks must be refused");
    assert!(
        matches!(e, tpla_runtime::RuntimeError::BackendUnavailable { .. }),
        "{e:?}"
    );
}

/// `cast_bf16` (the activations cast for cuBLAS) rounds exactly as `bf16::from_f32`, checked on
/// the CPU JIT with a ragged shape (partial tiles).
#[test]
fn cast_bf16_rounds_like_half() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::half::bf16;
    let exec = CpuExecutor::new(1).unwrap();
    let (r, m, c) = (5, 3, 200);
    let x: Vec<f32> = (0..r * m * c)
        .map(|i| ((i * 7919) % 1000) as f32 * 1.2345e-3 - 0.6)
        .collect();
    let xt = exec
        .upload(&HostTensor::from_vec(&[r, m, c], x.clone()).unwrap())
        .unwrap();
    let mut out = exec
        .upload(&HostTensor::full(&[r, m, c], bf16::from_f32(f32::NAN)))
        .unwrap();
    let cfg = tpla_kernels::cast_bf16
        .default_config(&[("COLS", c as i64)])
        .unwrap();
    tpla_kernels::cast_bf16::launch(&exec, &cfg, &xt, &mut out).unwrap();
    let got = exec.download(&out).unwrap();
    for (i, (g, v)) in got.data().iter().zip(&x).enumerate() {
        assert_eq!(g.to_bits(), bf16::from_f32(*v).to_bits(), "element {i}");
    }
}

/// Whether this host can run the cuBLAS tests; prints why not (and fails under
/// `TPLA_REQUIRE_CUBLAS=1`).
fn cublas_ready(test: &str) -> Option<tpla_runtime::cuda::CudaExecutor> {
    let r = tpla_runtime::cuda::CudaExecutor::new(0).and_then(|e| {
        tpla_runtime::cuda::blas::Cublas::new(&e)?;
        Ok(e)
    });
    match r {
        Ok(e) => Some(e),
        Err(why) => {
            assert!(
                std::env::var("TPLA_REQUIRE_CUBLAS").as_deref() != Ok("1"),
                "TPLA_REQUIRE_CUBLAS=1 but no cuBLAS: {why}"
            );
            eprintln!("SKIPPED {test}: no GPU or no libcublas ({why})");
            None
        }
    }
}

/// cuBLAS' per-head gemm (several heads: the strided-batched call; one head: GemmEx) against an
/// f64 host product of the same bf16 inputs.
#[test]
fn gpu_cublas_head_gemm_matches_the_host_product() {
    use tpla_runtime::half::bf16;
    use tpla_runtime::KernelArg;
    let Some(exec) = cublas_ready("gpu_cublas_head_gemm_matches_the_host_product") else {
        return;
    };
    let blas = tpla_runtime::cuda::blas::Cublas::new(&exec).unwrap();
    for (b, h, k, n) in [(5, 3, 72, 40), (33, 1, 256, 130)] {
        let f = |i: usize, s: usize| bf16::from_f32(((i * s) % 97) as f32 / 97.0 - 0.5);
        let x: Vec<bf16> = (0..b * h * k).map(|i| f(i, 31)).collect();
        let w: Vec<bf16> = (0..h * k * n).map(|i| f(i, 17)).collect();
        let xd = exec
            .upload(&HostTensor::from_vec(&[b, h, k], x.clone()).unwrap())
            .unwrap();
        let wd = exec
            .upload(&HostTensor::from_vec(&[h, k, n], w.clone()).unwrap())
            .unwrap();
        let mut yd = exec
            .upload(&HostTensor::full(&[b, h, n], f32::NAN))
            .unwrap();
        let args = (
            tpla_runtime::cuda::CudaExecutor::tensor_arg(&xd),
            tpla_runtime::cuda::CudaExecutor::tensor_arg(&wd),
            tpla_runtime::cuda::CudaExecutor::tensor_arg_mut(&mut yd),
        );
        let (KernelArg::Tensor(xa), KernelArg::Tensor(wa), KernelArg::Tensor(ya)) = args else {
            panic!("dense tensors");
        };
        blas.head_gemm(xa, wa, ya).unwrap();
        let y = exec.download(&yd).unwrap();
        for bi in 0..b {
            for hi in 0..h {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| {
                            f64::from(x[(bi * h + hi) * k + p].to_f32())
                                * f64::from(w[(hi * k + p) * n + j].to_f32())
                        })
                        .sum();
                    let got = f64::from(y.data()[(bi * h + hi) * n + j]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "[{b},{h},{k},{n}] ({bi},{hi},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The whole layer with its projections on cuBLAS and on the DSL kernel, on one GPU: both match
/// the references, and each other (same bf16 inputs, f32 accumulation: only summation order
/// differs).
#[test]
fn gpu_cublas_layer_matches_the_dsl_layer() {
    use tpla_runtime::cuda::CudaExecutor;
    if cublas_ready("gpu_cublas_layer_matches_the_dsl_layer").is_none() {
        return;
    }
    let open = |tp: usize| -> Vec<CudaExecutor> {
        (0..tp).map(|_| CudaExecutor::new(0).unwrap()).collect()
    };
    for (form, corr) in forms(2) {
        let (ec, yc) = run_steps(
            open(2),
            DeviceSum { ranks: 2 },
            form,
            corr.clone(),
            GemmPath::Cublas,
            Payload::F32,
        );
        let (ed, yd) = run_steps(
            open(2),
            DeviceSum { ranks: 2 },
            form,
            corr,
            GemmPath::Dsl,
            Payload::F32,
        );
        let gap = yc
            .iter()
            .zip(&yd)
            .map(|(a, b)| {
                let a: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
                let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
                rel_err(&a, &b)
            })
            .fold(0.0f64, f64::max);
        eprintln!(
            "gpu tp 2 {}: cuBLAS {ec:.2e}, DSL {ed:.2e}, cuBLAS vs DSL {gap:.2e}",
            form.name()
        );
        assert!(
            ec <= 1e-2 && ed <= 1e-2,
            "{}: {ec:.3e} / {ed:.3e}",
            form.name()
        );
        assert!(gap <= 5e-3, "{}: cuBLAS vs DSL {gap:.3e}", form.name());
    }
}
