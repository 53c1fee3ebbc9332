//! The whole attention layer under tensor parallelism (`tpla::layer`) against its f64
//! references: MLA-TP and DCP against exact absorbed MLA, TPLA (g = tp and g < tp, sliced and
//! exact kv norm) against the TPLA reference, at TP 2, 4 and 8 with in-process CPU ranks; and the
//! same checks on one GPU with the ranks in sequence and a device-side sum.

#[path = "layer_glue/mod.rs"]
mod glue_kernels;

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

/// Reducing after `W_UV` or after `W_O` is the same sum in another order: the two outputs agree
/// far more closely than either is to the reference's tolerance, at every step; and the `W_UV`
/// form's ranks hold `1/g` of the `W_O` heads.
#[test]
fn reducing_after_wuv_equals_reducing_after_wo() {
    for tp in [2, 4] {
        let form = |reduce| Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce,
        };
        let run = |reduce| {
            run_steps(
                cpu(tp),
                HostAllReduce { ranks: tp },
                form(reduce),
                Some(corr2()),
                GemmPath::Auto,
                Payload::F32,
            )
        };
        let ((ea, a), (eb, b)) = (run(ReduceAt::Wo), run(ReduceAt::Wuv));
        for (t, (x, y)) in a.iter().zip(&b).enumerate() {
            let (x, y): (Vec<f64>, Vec<f64>) = (
                x.iter().map(|&v| f64::from(v)).collect(),
                y.iter().map(|&v| f64::from(v)).collect(),
            );
            let gap = rel_err(&y, &x);
            assert!(gap < 5e-3, "tp {tp} step {t}: W_UV vs W_O {gap:.2e}");
        }
        eprintln!("tp {tp} g 2: error after W_O {ea:.2e}, after W_UV {eb:.2e}");
        let roles = tpla::layer::roles(form(ReduceAt::Wuv), tp, 8, 512).unwrap();
        for r in &roles {
            assert_eq!(r.uv_heads, r.attn_heads);
            assert_eq!(r.out_heads.len() * 2, r.uv_heads.len(), "{r:?}");
            assert!(r.reduces_values());
        }
    }
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
            let e = worst_error_multi_token(
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

/// One GPU per rank with NCCL between them (in one process), the collective timed: every form
/// at TP 2 (and TP 4 / 8 where the host has the GPUs) against its reference. Skips visibly
/// without two GPUs and NCCL; fails instead under `TPLA_REQUIRE_GPUS=2` (or more).
#[test]
fn gpus_with_nccl_match_the_references() {
    use tpla_runtime::cuda::nccl::NcclGroup;
    use tpla_runtime::cuda::CudaExecutor;
    let required: usize = std::env::var("TPLA_REQUIRE_GPUS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let open = |tp: usize| -> Result<(Vec<CudaExecutor>, NcclGroup), String> {
        let execs = (0..tp)
            .map(|r| CudaExecutor::new(r).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let group = NcclGroup::new(&execs).map_err(|e| e.to_string())?;
        Ok((execs, group))
    };
    let mut ran = 0;
    for tp in [2, 4, 8] {
        if let Err(why) = open(tp) {
            assert!(
                required < tp,
                "TPLA_REQUIRE_GPUS={required} but {tp} GPUs with NCCL are not usable: {why}"
            );
            eprintln!("SKIPPED gpus_with_nccl_match_the_references at tp {tp}: {why}");
            break;
        }
        for (form, corr) in forms(tp) {
            let (execs, group) = open(tp).unwrap();
            assert!(AllReduce::<CudaExecutor>::crosses_devices(&group));
            let e = worst_error(execs, group, form, corr);
            eprintln!("nccl tp {tp} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "nccl tp {tp} {}: {e:.3e}", form.name());
        }
        ran = tp;
    }
    eprintln!("gpus_with_nccl_match_the_references: ran up to tp {ran}");
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
    let l = TpLayer::new(
        cpu(2),
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        shape.clone(),
        None,
    )
    .unwrap();
    assert!(l.gemm().starts_with("DSL head_proj"), "{}", l.gemm());
    shape.gemm = GemmPath::Cublas;
    let e = TpLayer::new(
        cpu(2),
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        shape,
        None,
    )
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

/// A host sum that says it crosses devices and takes a known time per call.
struct SlowLink {
    inner: HostAllReduce,
    pause: std::time::Duration,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AllReduce<CpuExecutor> for SlowLink {
    fn ranks(&self) -> usize {
        self.inner.ranks
    }
    fn all_reduce_sum(
        &self,
        execs: &[CpuExecutor],
        parts: &mut [HostTensor<f32>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.pause);
        self.inner.all_reduce_sum(execs, parts)
    }
    fn crosses_devices(&self) -> bool {
        true
    }
}

/// A collective that crosses devices is timed as every rank's collective phase (each call, in
/// `RankTimes::total`); a stand-in is not timed (its time is modelled).
#[test]
fn collectives_that_cross_devices_are_timed_and_stand_ins_are_not() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let shape = layer_shape(1, 4, 1, 1);
    let x = HostTensor::full(&[1, d], 0.25f32);
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wuv,
    };
    // MLA-TP: one all-reduce; TPLA exact norm reduced after W_UV: three; DCP: three.
    for (form, calls_per_step) in [(Form::MlaTp, 1), (wuv, 3), (Form::Dcp, 3)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let pause = Duration::from_millis(15);
        let link = SlowLink {
            inner: HostAllReduce { ranks: 2 },
            pause,
            calls: calls.clone(),
        };
        let mut l = TpLayer::new(cpu(2), link, &layer, form, shape.clone(), None).unwrap();
        assert!(l.collective_measured());
        let (_, times) = l.step(&x).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            calls_per_step,
            "{}",
            form.name()
        );
        for t in &times {
            assert!(
                t.collective >= pause * calls_per_step as u32,
                "{}: {t:?}",
                form.name()
            );
            assert!(t.total() >= t.device() + t.collective);
        }
    }
    let mut l = TpLayer::new(
        cpu(2),
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        shape,
        None,
    )
    .unwrap();
    assert!(!l.collective_measured());
    let (_, times) = l.step(&x).unwrap();
    assert!(times.iter().all(|t| t.collective == Duration::ZERO));
}

/// A bf16 payload on the output collectives: every form still matches its reference (host sum
/// and device sum, TP 2 and 4, TPLA reduced after `W_O` and after `W_UV`); the outputs differ
/// from the f32 payload's (the rounding happened) by less than the tolerance.
#[test]
fn a_bf16_payload_matches_the_references() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    for tp in [2, 4] {
        for (form, corr) in [
            (Form::MlaTp, None),
            (Form::tpla(2), Some(corr2())),
            (wuv, Some(corr2())),
            (Form::Dcp, None),
        ] {
            let run = |payload, device: bool| {
                if device {
                    run_steps(
                        cpu(tp),
                        DeviceSum { ranks: tp },
                        form,
                        corr.clone(),
                        GemmPath::Auto,
                        payload,
                    )
                } else {
                    run_steps(
                        cpu(tp),
                        HostAllReduce { ranks: tp },
                        form,
                        corr.clone(),
                        GemmPath::Auto,
                        payload,
                    )
                }
            };
            let (e32, y32) = run(Payload::F32, false);
            let (e16, y16) = run(Payload::Bf16, false);
            let (ed, yd) = run(Payload::Bf16, true);
            eprintln!(
                "tp {tp} {}: rel err f32 payload {e32:.2e}, bf16 {e16:.2e} (device sum {ed:.2e})",
                form.name()
            );
            assert!(e16 <= 1e-2 && ed <= 1e-2, "tp {tp} {}", form.name());
            let flat = |y: &Vec<Vec<f32>>| -> Vec<f64> {
                y.iter().flatten().map(|&v| f64::from(v)).collect()
            };
            let gap = rel_err(&flat(&y16), &flat(&y32));
            assert!(
                gap > 0.0 && gap < 1e-2,
                "tp {tp} {}: {gap:.2e}",
                form.name()
            );
            assert_eq!(y16, yd, "host and device bf16 sums agree bit for bit");
        }
    }
}

/// `apply_tuned` gives each rank the tune database's config for its decode bucket and the split
/// policy it was timed with; the step still matches the reference.
#[test]
fn the_tune_database_sets_each_ranks_config_and_split_policy() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::tune::{decode_bucket, SplitPolicy, TuneDb};
    let dir = std::env::temp_dir().join(format!("tpla-layer-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let shape = layer_shape(2, 8, 0, 1);
    let execs = cpu(2);
    let (mut db, _) = TuneDb::open(
        &dir,
        &execs[0].device_identity(),
        &[&tpla_kernels::latent_decode],
    );
    // MLA-TP at tp 2 of the small layer: 4 heads per rank over the whole 512 + 64 cache.
    let bucket = decode_bucket(2, 4, 512, 64, 8);
    let cfg = tpla_kernels::latent_decode
        .default_config(&[("LAT", 512), ("ROPE", 64)])
        .unwrap();
    db.put_with_policy(
        tpla_kernels::latent_decode.name(),
        &bucket,
        &cfg,
        Some(SplitPolicy::Uniform),
        12.5,
        "2026-12-04",
    );
    let mut l = TpLayer::new(
        execs,
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        shape,
        None,
    )
    .unwrap();
    let found = l.apply_tuned(&db);
    assert_eq!(found.len(), 2, "{found:?}");
    for (r, (rank, b, what, us)) in found.iter().enumerate() {
        assert_eq!((*rank, b.as_str(), *us), (r, bucket.as_str(), 12.5));
        assert!(what.ends_with(", uniform splits"), "{what}");
    }
    let (y, _) = l
        .step(&HostTensor::full(&[2, layer.cfg.hidden], 0.3f32))
        .unwrap();
    assert!(y.data().iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tokens / sq` steps of `sq` new tokens per sequence and returns the worst relative error
/// of any token's output against the reference's one-token decode at its position (token `j`
/// of a step sees the cache up to itself, so the two are the same computation).
fn worst_error_multi_token<X: Executor + 'static, C: AllReduce<X>>(
    execs: Vec<X>,
    coll: C,
    form: Form,
    corr: Option<Corrections>,
    sq: usize,
    tokens: usize,
) -> f64 {
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs = hidden_tokens(d, tokens);
    let shape = layer_shape(BATCH, tokens + 1, 0, sq);
    let mut l = TpLayer::new(execs, coll, &layer, form, shape, corr.clone()).unwrap();
    let run = run_against_reference(&mut l, &layer, corr.as_ref(), &xs).unwrap();
    for (k, y) in run.outputs.iter().enumerate() {
        assert_eq!(y.len(), BATCH * sq * d, "step {k}");
        assert!(y.iter().all(|v| v.is_finite()), "step {k}");
    }
    assert_eq!(l.len(), tokens / sq * sq);
    run.worst
}

/// MTP / speculative verify: 2-4 new tokens per sequence per step, MLA-TP and TPLA (both reduce
/// points) at TP 2 and 4, each token against the reference; DCP and 5 tokens are typed errors.
#[test]
fn several_query_tokens_per_step_match_the_reference() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Sliced,
        reduce: ReduceAt::Wuv,
    };
    for (tp, sq) in [(2, 2), (2, 4), (4, 3)] {
        for (form, corr) in [
            (Form::MlaTp, None),
            (Form::tpla(2), Some(corr2())),
            (wuv, Some(corr2())),
        ] {
            let e =
                worst_error_multi_token(cpu(tp), HostAllReduce { ranks: tp }, form, corr, sq, 12);
            eprintln!("tp {tp} sq {sq} {}: worst rel err {e:.2e}", form.name());
            assert!(e <= 1e-2, "tp {tp} sq {sq} {}: {e:.3e}", form.name());
        }
    }
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let shape = |query_len| LayerShape {
        batch: 1,
        max_tokens: 8,
        page_size: 4,
        splits: 0,
        poison: false,
        gemm: GemmPath::Auto,
        timing: PhaseTiming::Events,
        payload: Payload::F32,
        query_len,
    };
    for (form, sq, want) in [
        (Form::Dcp, 2, "DCP with 2 query tokens"),
        (Form::MlaTp, 5, "5 query tokens"),
        (Form::MlaTp, 0, "0 query tokens"),
    ] {
        let e = TpLayer::new(
            cpu(2),
            HostAllReduce { ranks: 2 },
            &layer,
            form,
            shape(sq),
            None,
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains(want), "{e}");
    }
    // A step whose tokens would pass the cache is refused whole.
    let mut l = TpLayer::new(
        cpu(2),
        HostAllReduce { ranks: 2 },
        &layer,
        Form::MlaTp,
        shape(3),
        None,
    )
    .unwrap();
    let x = HostTensor::full(&[3, layer.cfg.hidden], 0.2f32);
    l.step(&x).unwrap();
    l.step(&x).unwrap();
    assert!(l.step(&x).is_err(), "6 + 3 tokens past 8");
    assert_eq!(l.len(), 6);
    assert!(
        l.step(&HostTensor::full(&[1, layer.cfg.hidden], 0.2f32))
            .is_err(),
        "one row for three tokens"
    );
}

/// A group whose ranks live in threads of this process, one rank each: every call passes that
/// rank's one part; the parts are summed in rank order (as the host all-reduce) behind barriers.
struct ThreadSum {
    rank: usize,
    world: usize,
    shared: std::sync::Arc<(std::sync::Mutex<Vec<Vec<f32>>>, std::sync::Barrier)>,
}

impl AllReduce<CpuExecutor> for ThreadSum {
    fn ranks(&self) -> usize {
        1
    }
    fn world(&self) -> usize {
        self.world
    }
    fn first_rank(&self) -> usize {
        self.rank
    }
    fn all_reduce_sum(
        &self,
        _execs: &[CpuExecutor],
        parts: &mut [HostTensor<f32>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        let (slots, barrier) = (&self.shared.0, &self.shared.1);
        slots.lock().unwrap()[self.rank] = parts[0].data().to_vec();
        barrier.wait();
        let sum = {
            let all = slots.lock().unwrap();
            let mut sum = vec![0.0f32; all[0].len()];
            for p in all.iter() {
                for (s, x) in sum.iter_mut().zip(p) {
                    *s += x;
                }
            }
            sum
        };
        // Everyone has read the slots before anyone writes the next call's part.
        barrier.wait();
        parts[0].data_mut().copy_from_slice(&sum);
        Ok(())
    }
    fn all_reduce_sum_bf16(
        &self,
        _execs: &[CpuExecutor],
        _parts: &mut [HostTensor<tpla_runtime::half::bf16>],
    ) -> Result<(), tpla_runtime::RuntimeError> {
        Err(tpla_runtime::RuntimeError::InvalidInput("f32 only".into()))
    }
}

/// One rank per thread, as an engine runs one rank per GPU process: each thread builds only
/// its own rank of the layer (`TpLayer` over a collective with `ranks() == 1`), and the outputs
/// equal those of all ranks driven from one place, bit for bit, for every form (TP 2 and 4;
/// TPLA with heads split inside the groups, reduced after `W_O` and after `W_UV`; DCP).
#[test]
fn one_rank_per_thread_equals_all_ranks_in_one_place() {
    let wuv = Form::Tpla {
        groups: 2,
        norm: KvNorm::Exact,
        reduce: ReduceAt::Wuv,
    };
    let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
    let d = layer.cfg.hidden;
    let xs = hidden_tokens(d, 4);
    for (tp, form) in [
        (2, Form::MlaTp),
        (4, Form::tpla(2)),
        (4, wuv),
        (2, Form::Dcp),
    ] {
        let shape = layer_shape(BATCH, 5, 2, 1);
        let mut whole = TpLayer::new(
            cpu(tp),
            HostAllReduce { ranks: tp },
            &layer,
            form,
            shape.clone(),
            None,
        )
        .unwrap();
        let want = run_against_reference(&mut whole, &layer, None, &xs).unwrap();
        let shared = std::sync::Arc::new((
            std::sync::Mutex::new(vec![Vec::new(); tp]),
            std::sync::Barrier::new(tp),
        ));
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..tp)
                .map(|rank| {
                    let (layer, xs, shape) = (&layer, &xs, shape.clone());
                    let shared = shared.clone();
                    s.spawn(move || {
                        let sum = ThreadSum {
                            rank,
                            world: tp,
                            shared,
                        };
                        let mut mine = TpLayer::new(cpu(1), sum, layer, form, shape, None).unwrap();
                        assert_eq!((mine.world(), mine.roles()[0].rank), (tp, rank));
                        run_against_reference(&mut mine, layer, None, xs).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, run) in got.iter().enumerate() {
            assert_eq!(
                run.outputs,
                want.outputs,
                "{} tp {tp}: rank {rank}'s thread differs",
                form.name()
            );
        }
        assert!(
            want.worst <= 1e-2,
            "{} tp {tp}: {}",
            form.name(),
            want.worst
        );
    }
    // A collective whose ranks do not match the executors is refused.
    let e = TpLayer::new(
        cpu(2),
        ThreadSum {
            rank: 1,
            world: 2,
            shared: std::sync::Arc::new((
                std::sync::Mutex::new(vec![Vec::new(); 2]),
                std::sync::Barrier::new(2),
            )),
        },
        &layer,
        Form::MlaTp,
        layer_shape(1, 4, 1, 1),
        None,
    )
    .err()
    .expect("two executors for one rank");
    assert!(e.to_string().contains("2 executors"), "{e}");
}

/// One process per GPU (as an engine runs): the test re-runs itself as two child processes that
/// join one NCCL group (`NcclRank`, bounded waits), each building only its rank of the layer;
/// each checks every form's outputs against the f64 reference. Skips visibly without two GPUs
/// and NCCL; fails instead under `TPLA_REQUIRE_GPUS=2`.
#[test]
fn layer_ranks_in_two_processes_match_the_reference() {
    use std::process::Command;
    use std::time::{Duration, Instant};
    use tpla_runtime::cuda::nccl::{NcclId, NcclRank};
    use tpla_runtime::cuda::CudaExecutor;
    const NAME: &str = "layer_ranks_in_two_processes_match_the_reference";
    if let Ok(rank) = std::env::var("TPLA_LAYER_CHILD_RANK") {
        let rank: usize = rank.parse().unwrap();
        let layer = prepare(&synthetic_layer(&small(), 7).unwrap()).unwrap();
        let xs = hidden_tokens(layer.cfg.hidden, 4);
        for (i, form) in [Form::MlaTp, Form::tpla(2), Form::Dcp]
            .into_iter()
            .enumerate()
        {
            let id = std::env::var(format!("TPLA_LAYER_NCCL_ID_{i}")).unwrap();
            let exec = CudaExecutor::new(rank).unwrap();
            let comm = NcclRank::with_timeout(
                &exec,
                &NcclId::from_hex(&id).unwrap(),
                rank,
                2,
                Duration::from_secs(60),
            )
            .unwrap();
            comm.agree(
                &exec,
                &format!("{} {:?}", form.name(), layer_shape(BATCH, 5, 2, 1)),
            )
            .unwrap();
            let mut l = TpLayer::new(
                vec![exec],
                comm,
                &layer,
                form,
                layer_shape(BATCH, 5, 2, 1),
                None,
            )
            .unwrap();
            let run = run_against_reference(&mut l, &layer, None, &xs).unwrap();
            println!(
                "process rank {rank} {}: worst rel err {:.2e}",
                form.name(),
                run.worst
            );
            assert!(
                run.worst <= 1e-2,
                "rank {rank} {}: {}",
                form.name(),
                run.worst
            );
            assert!(run
                .times
                .iter()
                .flatten()
                .all(|t| t.collective > Duration::ZERO));
        }
        return;
    }
    let required = std::env::var("TPLA_REQUIRE_GPUS").is_ok_and(|v| v.trim() == "2");
    let ids = CudaExecutor::new(0)
        .and_then(|_| CudaExecutor::new(1))
        .and_then(|_| (0..3).map(|_| NcclId::new()).collect::<Result<Vec<_>, _>>());
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            assert!(
                !required,
                "TPLA_REQUIRE_GPUS=2 but two GPUs with NCCL are not usable: {e}"
            );
            eprintln!("SKIP {NAME}: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|r| {
            let mut c = Command::new(&exe);
            c.args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env("TPLA_LAYER_CHILD_RANK", r.to_string());
            for (i, id) in ids.iter().enumerate() {
                c.env(format!("TPLA_LAYER_NCCL_ID_{i}"), id.to_hex());
            }
            c.spawn().unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ok = [None; 2];
    while ok.iter().any(Option::is_none) {
        for (r, c) in children.iter_mut().enumerate() {
            if ok[r].is_none() {
                if let Some(status) = c.try_wait().unwrap() {
                    ok[r] = Some(status.success());
                }
            }
        }
        if Instant::now() > deadline {
            children.iter_mut().for_each(|c| {
                let _ = c.kill();
            });
            panic!("the rank processes did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ok, [Some(true), Some(true)], "rank processes succeeded");
}
