use super::*;
use crate::layer::cost::layer_cost;
use tpla_model::Preset;
use tpla_runtime::CpuExecutor;

fn cfg() -> MlaConfig {
    Preset::DeepseekV3.config()
}

fn hw() -> Hardware {
    Rooflines {
        mem_bytes_per_s: 3.0e12,
        flops: 5.0e14,
        copy: "test".into(),
        matmul: "test".into(),
        kernel_s: 5e-6,
        kernel: "test".into(),
    }
    .hardware(&Hardware::h200())
}

fn predicted(form: Form) -> f64 {
    let m = layer_cost(&cfg(), form, 2, 64, 32768, 2.0, &hw());
    m.device_s() * 4.0
}

fn check_at(form: Form, factor: f64) -> FormCheck {
    FormCheck::new(
        &cfg(),
        form,
        2,
        64,
        1,
        32768,
        4,
        &hw(),
        predicted(form) * factor,
        None,
        1e-3,
        None,
    )
    .unwrap()
}

#[test]
fn measured_rooflines_replace_bandwidth_matmul_rate_and_kernel_floor_only() {
    let (h, base) = (hw(), Hardware::h200());
    assert_eq!(
        (h.mem_bytes_per_s, h.flops, h.kernel_s),
        (3.0e12, 5.0e14, 5e-6)
    );
    assert_eq!(
        (h.bus_bytes_per_s, h.latency_s, h.memory_bytes),
        (base.bus_bytes_per_s, base.latency_s, base.memory_bytes)
    );
}

#[test]
fn the_ratio_is_measured_over_predicted_and_the_tolerance_is_fifteen_percent() {
    let tpla = Form::Tpla {
        groups: 2,
        norm: super::super::KvNorm::Sliced,
        reduce: super::super::ReduceAt::Wo,
    };
    for form in [Form::MlaTp, tpla, Form::Dcp] {
        for (factor, ok) in [
            (1.0, true),
            (1.14, true),
            (0.86, true),
            (1.16, false),
            (0.84, false),
        ] {
            let c = check_at(form, factor);
            assert!(
                (c.ratio - factor).abs() < 1e-9,
                "{} {factor}: {}",
                c.form,
                c.ratio
            );
            assert_eq!(c.within_tolerance, ok, "{} {factor}", c.form);
            assert!((c.predicted_s - predicted(form)).abs() <= 1e-12 * c.predicted_s);
            assert!(c.collective_modelled_s > 0.0);
        }
    }
    // The forms' predictions differ (the check is per form, not one shared figure).
    assert_ne!(predicted(Form::MlaTp), predicted(tpla));
}

#[test]
fn times_that_cannot_be_compared_are_errors() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = FormCheck::new(
            &cfg(),
            Form::MlaTp,
            2,
            64,
            1,
            32768,
            4,
            &hw(),
            bad,
            None,
            0.0,
            None,
        );
        assert!(r.is_err(), "{bad}");
    }
}

/// With the rank's decode bucket in the tune database, the calibrated prediction is the
/// measured kernel time plus the modelled projections and glue; without it there is none.
#[test]
fn the_tune_database_calibrates_the_checks_attention() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::tune::{decode_bucket, TuneDb};
    let dir = scratch("calibrate");
    let name = tpla_kernels::latent_decode.name();
    let (mut db, _) = TuneDb::open(&dir, "test-device", &[&tpla_kernels::latent_decode]);
    let measured = predicted(Form::MlaTp) * 1.1;
    let check = |db: &TuneDb| {
        FormCheck::new(
            &cfg(),
            Form::MlaTp,
            2,
            64,
            1,
            32768,
            4,
            &hw(),
            measured,
            None,
            1e-3,
            Some(db),
        )
        .unwrap()
    };
    assert_eq!(
        check(&db).tuned_attention,
        None,
        "an empty database calibrates nothing"
    );
    // MLA-TP at TP 2: 64 of DeepSeek-V3's 128 heads per rank, the whole latent.
    let bucket = decode_bucket(64, 64, 512, 64, 32768);
    let kcfg = tpla_kernels::ops::DecodeParams::new(64, 64, 512, 64, 1, 0.1).decode_config();
    db.put(name, &bucket, &kcfg, 2000.0, "2026-12-04");
    let c = check(&db);
    let t = c.tuned_attention.clone().expect("calibrated");
    let m = layer_cost(&cfg(), Form::MlaTp, 2, 64, 32768, 2.0, &hw());
    let want = (2000e-6 + m.proj_s + m.glue_s) * 4.0;
    assert!((t.predicted_s - want).abs() < 1e-12, "{t:?} vs {want}");
    assert!((t.ratio - c.measured_s / want).abs() < 1e-12);
    assert_eq!(t.within_tolerance, (t.ratio - 1.0).abs() <= TOLERANCE);
    assert!(t.source.contains("tune database"), "{}", t.source);
    let _ = std::fs::remove_dir_all(&dir);
}

fn sample() -> ModelCheck {
    ModelCheck {
        label: LABEL,
        device: "NVIDIA H200".into(),
        driver: Some(13000),
        date: "2026-12-03".into(),
        commit: "abc123-dirty".into(),
        preset: "deepseek-v3".into(),
        batch: 64,
        context: 32768,
        query_len: 1,
        tp: 2,
        layers: 4,
        gemm: "cuBLAS".into(),
        timing: "events".into(),
        rooflines: Rooflines {
            mem_bytes_per_s: 3.0e12,
            flops: 5.0e14,
            copy: "c".into(),
            matmul: "m".into(),
            kernel_s: 5e-6,
            kernel: "k".into(),
        },
        collective: CollectiveModel::of(&Hardware::h200()),
        tolerance: TOLERANCE,
        forms: vec![check_at(Form::MlaTp, 1.1), check_at(Form::Dcp, 1.3)],
    }
}

fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("tpla-check-{tag}-{}-{nanos}", std::process::id()))
}

#[test]
fn the_json_holds_every_figure_and_is_written_atomically() {
    let dir = scratch("ok").join("nested");
    let c = sample();
    assert!(!c.all_within(), "dcp at 1.3 is outside");
    let p = write_check(&dir, &c).unwrap();
    assert_eq!(
        p.file_name().unwrap().to_str().unwrap(),
        "layer-check-deepseek-v3-tp2-b64-c32768-2026-12-03-abc123-dirty.json"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(v["label"], LABEL);
    assert_eq!(v["device"], "NVIDIA H200");
    assert_eq!(v["driver"], 13000);
    assert_eq!(v["commit"], "abc123-dirty");
    assert_eq!(
        (
            v["batch"].as_u64(),
            v["context"].as_u64(),
            v["tp"].as_u64(),
            v["layers"].as_u64()
        ),
        (Some(64), Some(32768), Some(2), Some(4))
    );
    assert_eq!(
        v["collective"]["bus_bytes_per_s"],
        Hardware::h200().bus_bytes_per_s
    );
    assert_eq!(v["forms"][0]["form"], "mla-tp");
    assert!((v["forms"][0]["ratio"].as_f64().unwrap() - 1.1).abs() < 1e-9);
    assert_eq!(v["forms"][1]["within_tolerance"], false);
    // Rewriting replaces the file; nothing but the report is left in the directory.
    let mut c2 = sample();
    c2.device = "other".into();
    write_check(&dir, &c2).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(v["device"], "other");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_failed_write_is_an_error_and_leaves_nothing_behind() {
    // The report's name is taken by a directory: an error, the directory untouched, no stray
    // temporary file.
    let dir = scratch("clash");
    let c = sample();
    std::fs::create_dir_all(dir.join(c.file_name()).join("keep")).unwrap();
    assert!(write_check(&dir, &c).is_err());
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(c.file_name())]);
    assert!(dir.join(c.file_name()).join("keep").is_dir());
    // The directory is a file: an error.
    let file = scratch("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(write_check(&file, &c).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn file_names_are_sanitised() {
    let mut c = sample();
    c.preset = "../evil/x".into();
    c.commit = "a b".into();
    let n = c.file_name();
    assert!(!n.contains('/') && !n.contains(' '), "{n}");
}

#[test]
fn cpu_rooflines_are_positive_and_finite() {
    let exec = CpuExecutor::new(1).unwrap();
    let r = measure_rooflines(&exec, GemmPath::Auto, false, 1).unwrap();
    assert!(
        r.mem_bytes_per_s.is_finite() && r.mem_bytes_per_s > 1e7,
        "{r:?}"
    );
    assert!(r.flops.is_finite() && r.flops > 1e6, "{r:?}");
    assert!(r.matmul.contains("DSL head_proj"), "{}", r.matmul);
    // A tiny kernel costs something, and far less than a second.
    assert!(r.kernel_s > 0.0 && r.kernel_s < 1e-1, "{r:?}");
    assert_eq!(r.hardware(&Hardware::h200()).kernel_s, r.kernel_s);
}

/// The per-phase check splits the same prediction: its phases add up to the form's predicted
/// time, and each ratio is that phase's measured over predicted (here projections measured at
/// twice the model, the rest at it).
#[test]
fn the_phases_split_the_prediction_and_name_the_phase_that_misses() {
    let m = layer_cost(&cfg(), Form::Dcp, 2, 64, 32768, 2.0, &hw());
    let n = 4.0;
    let measured = [m.attn_s * n, 2.0 * m.proj_s * n, m.glue_s * n];
    let f = FormCheck::new(
        &cfg(),
        Form::Dcp,
        2,
        64,
        1,
        32768,
        4,
        &hw(),
        measured.iter().sum(),
        Some(measured),
        1e-3,
        None,
    )
    .unwrap();
    let names: Vec<&str> = f.phases.iter().map(|p| p.phase).collect();
    assert_eq!(names, ["attention", "projections", "glue"]);
    let sum: f64 = f.phases.iter().map(|p| p.predicted_s).sum();
    assert!(
        (sum - f.predicted_s).abs() <= 1e-12 * f.predicted_s,
        "{sum} vs {}",
        f.predicted_s
    );
    let ratios: Vec<f64> = f.phases.iter().map(|p| p.ratio).collect();
    for (r, want) in ratios.iter().zip([1.0, 2.0, 1.0]) {
        assert!((r - want).abs() < 1e-9, "{ratios:?}");
    }
}

/// Several new tokens per sequence: the check uses the multi-token model (the projections and
/// glue at twice the rows cost more; the cache is read once either way) and its JSON file name
/// says `-sq2`, so it does not replace the one-token check of the same shape.
#[test]
fn a_multi_token_check_uses_the_multi_token_model_and_its_own_file() {
    let one = check_at(Form::MlaTp, 1.0);
    let two = FormCheck::new(
        &cfg(),
        Form::MlaTp,
        2,
        64,
        2,
        32768,
        4,
        &hw(),
        one.measured_s,
        None,
        1e-3,
        None,
    )
    .unwrap();
    assert!(two.predicted_s > one.predicted_s, "{two:?} {one:?}");
    let mut c = sample();
    c.query_len = 2;
    assert_eq!(
        c.file_name(),
        "layer-check-deepseek-v3-tp2-b64-c32768-sq2-2026-12-03-abc123-dirty.json"
    );
}
