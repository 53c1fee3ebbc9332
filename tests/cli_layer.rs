//! `tpla decode --form ... --tp ... --layers ... [--max-batch] [--max-rel-err]`: the whole-layer
//! forms end to end on CPU ranks with small shapes.

mod common;

use common::{tmp, tpla, tpla_ok};

const SMALL: [&str; 12] = [
    "--small",
    "--layers",
    "1",
    "--batch",
    "2",
    "--context",
    "16",
    "--steps",
    "2",
    "--backend",
    "cpu",
    "--threads",
];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["decode"];
    v.extend_from_slice(extra);
    v.extend_from_slice(&SMALL);
    v.push("2");
    v
}

#[test]
fn all_forms_side_by_side_with_reference_checks() {
    let out = tpla_ok(&args(&["--form", "all", "--tp", "2"]));
    assert!(
        out.contains("per-device compute measured; collective modelled"),
        "{out}"
    );
    for form in ["mla-tp", "tpla-g2", "dcp"] {
        assert!(
            out.lines().any(|l| l.starts_with(form)),
            "no row for {form}: {out}"
        );
        assert!(out.contains(&format!("reference check {form} ")), "{out}");
    }
    assert_eq!(out.matches("(ok)").count(), 3, "{out}");
    // The host's queueing time of the stack, per form, is positive and within its wall.
    let queueing = out
        .lines()
        .find_map(|l| l.strip_prefix("host queueing of the whole stack (all ranks), of its wall: "))
        .unwrap_or_else(|| panic!("no queueing line: {out}"));
    for form in ["mla-tp", "tpla-g2", "dcp"] {
        let rest = queueing
            .split(", ")
            .find_map(|part| part.strip_prefix(&format!("{form} ")))
            .unwrap_or_else(|| panic!("no queueing figure for {form}: {queueing}"));
        let nums: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(
            nums.len() >= 2 && nums[0] > 0.0 && nums[0] <= nums[1],
            "{form}: {rest}"
        );
    }
}

/// TPLA reduced after `W_O` and after `W_UV` side by side, each checked against the reference.
#[test]
fn tpla_reduced_both_ways_side_by_side() {
    let out = tpla_ok(&args(&[
        "--form",
        "tpla",
        "--tp",
        "2",
        "--tpla-reduce",
        "both",
    ]));
    for form in ["tpla-g2 ", "tpla-g2-wuv "] {
        assert!(
            out.lines().any(|l| l.starts_with(form)),
            "no row for {form}: {out}"
        );
        assert!(out.contains(&format!("reference check {form}")), "{out}");
    }
    assert_eq!(out.matches("(ok)").count(), 2, "{out}");
}

/// `--query-len 2` (MTP): MLA-TP and TPLA run two new tokens per sequence per step, each checked
/// against the reference.
#[test]
fn two_query_tokens_per_step_run_and_check() {
    let out = tpla_ok(&args(&[
        "--form",
        "tpla",
        "--tp",
        "2",
        "--query-len",
        "2",
        "--tpla-reduce",
        "both",
    ]));
    assert_eq!(out.matches("(ok)").count(), 2, "{out}");
    let out = tpla_ok(&args(&[
        "--form",
        "mla-tp",
        "--tp",
        "2",
        "--query-len",
        "2",
    ]));
    assert_eq!(out.matches("(ok)").count(), 1, "{out}");
}

/// `--payload bf16`: the output collectives carry bf16; every form's reference check passes on
/// that path.
#[test]
fn a_bf16_payload_runs_every_form_and_checks_it() {
    let out = tpla_ok(&args(&["--form", "all", "--tp", "2", "--payload", "bf16"]));
    assert!(out.contains("bf16 payload"), "{out}");
    assert_eq!(out.matches("(ok)").count(), 3, "{out}");
}

#[test]
fn all_forms_write_the_model_check_json_under_results_dir() {
    let dir = tmp("layer-check");
    let d = dir.to_str().unwrap();
    let out = tpla_ok(&args(&["--form", "all", "--tp", "2", "--results-dir", d]));
    assert!(out.contains("same-run rooflines on cpu"), "{out}");
    assert!(out.contains("meas/pred"), "{out}");
    assert!(out.contains("projections through DSL head_proj"), "{out}");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(
        j["label"],
        "per-device compute measured; collective modelled"
    );
    assert_eq!(
        (j["tp"].as_u64(), j["layers"].as_u64(), j["batch"].as_u64()),
        (Some(2), Some(1), Some(2))
    );
    assert!(j["device"].as_str().unwrap().starts_with("cpu"), "{j}");
    assert!(j["collective"]["bus_bytes_per_s"].as_f64().unwrap() > 0.0);
    let forms = j["forms"].as_array().unwrap();
    assert_eq!(forms.len(), 3);
    for f in forms {
        let (m, p, r) = (
            f["measured_s"].as_f64().unwrap(),
            f["predicted_s"].as_f64().unwrap(),
            f["ratio"].as_f64().unwrap(),
        );
        assert!(m > 0.0 && p > 0.0 && (r - m / p).abs() <= 1e-9 * r, "{f}");
        // Each form's line shows the same ratio.
        assert!(
            out.lines()
                .any(|l| l.starts_with(f["form"].as_str().unwrap())
                    && l.contains(&format!("{r:.2}"))),
            "{out}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A tiny DeepSeek-named checkpoint of the `--small` shapes (heads as given).
fn tiny_checkpoint(name: &str, heads: usize) -> std::path::PathBuf {
    use tpla_model::tensors::{OutDtype, TensorWriter};
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = tpla_model::MlaConfig::small(tpla_model::Preset::DeepseekV3, 256, heads, Some(128));
    let mut w = TensorWriter::default();
    tpla_model::synthetic::synthetic_layer(&cfg, 9)
        .unwrap()
        .store(&mut w, 0);
    w.write(dir.join("model.safetensors"), OutDtype::Bf16, None)
        .unwrap();
    dir
}

#[test]
fn weights_load_from_a_checkpoint_and_wrong_shapes_name_the_tensor() {
    let dir = tiny_checkpoint("layer-weights", 8);
    let d = dir.to_str().unwrap();
    let out = tpla_ok(&args(&["--form", "mla-tp", "--tp", "2", "--weights", d]));
    assert!(out.contains("weights: layer 0 of"), "{out}");
    assert!(!out.contains("synthetic weights"), "{out}");
    let bad = tiny_checkpoint("layer-weights-bad", 4);
    let o = tpla(&args(&[
        "--form",
        "mla-tp",
        "--tp",
        "2",
        "--weights",
        bad.to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("model.layers.0.self_attn."), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = tpla(&args(&["--form", "mla-tp", "--weights-layer", "1"]));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&bad).ok();
}

#[test]
fn cublas_on_cpu_ranks_is_a_clear_error() {
    let o = tpla(&args(&[
        "--form", "mla-tp", "--tp", "2", "--gemm", "cublas",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("cublas"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tpla_below_tp_runs_at_tp4() {
    let out = tpla_ok(&args(&["--form", "tpla", "--tp", "4", "-g", "2"]));
    assert!(
        out.contains("reference check tpla-g2 (small synthetic layer, tp 4"),
        "{out}"
    );
}

#[test]
fn auto_says_why_and_the_error_budget_excludes_tpla() {
    let out = tpla_ok(&args(&[
        "--form",
        "auto",
        "--tp",
        "2",
        "--max-rel-err",
        "1e-3",
    ]));
    assert!(out.contains("auto: picked"), "{out}");
    assert!(out.contains("excluded: error over --max-rel-err"), "{out}");
    assert!(!out.contains("auto: picked tpla"), "{out}");
    let o = tpla(&args(&[
        "--form",
        "tpla",
        "--tp",
        "2",
        "--max-rel-err",
        "1e-3",
    ]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exceeds --max-rel-err"), "{err}");
}

/// `auto` reads this device's tune database: a (slow) tuned MLA-TP time replaces the model's
/// attention for it and moves the pick away from it, and the output says where the figure came
/// from.
#[test]
fn auto_is_calibrated_by_the_tune_database() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::Executor;
    let dir = tmp("layer-auto-tune");
    let id = tpla_runtime::CpuExecutor::new(1).unwrap().device_identity();
    let (mut db, _) = tpla_runtime::tune::TuneDb::open(&dir, &id, &[&tpla_kernels::latent_decode]);
    // --small at tp 2: MLA-TP ranks hold 4 heads and the whole 512 latent; batch 2, 18 tokens.
    let bucket = tpla_runtime::tune::decode_bucket(2, 4, 512, 64, 18);
    let cfg = tpla_kernels::ops::DecodeParams::new(2, 4, 512, 64, 1, 0.1).decode_config();
    db.put(
        tpla_kernels::latent_decode.name(),
        &bucket,
        &cfg,
        5e6,
        "2026-12-03",
    );
    db.save().unwrap();
    let o = common::tpla_with_tune_dir(&dir, &args(&["--form", "auto", "--tp", "2"]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!("attention tune database ({bucket} 5000000 µs")),
        "{out}"
    );
    assert!(out.contains("auto: picked"), "{out}");
    assert!(!out.contains("auto: picked mla-tp"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--max-rel-err` compares the accuracy harness's figure (synthetic weights: no transform),
/// not the small check layer's: a budget just above it admits TPLA, just below excludes it.
#[test]
fn the_error_budget_uses_the_accuracy_harness_figure() {
    let b = tpla::layer::budget::tpla_error(
        tpla_model::Preset::DeepseekV3,
        2,
        tpla_model::Transform::None,
        0,
    )
    .unwrap();
    let above = format!("{}", b.rel_err * 1.01);
    let below = format!("{}", b.rel_err * 0.99);
    let out = tpla_ok(&args(&[
        "--form",
        "tpla",
        "--tp",
        "2",
        "--max-rel-err",
        &above,
    ]));
    assert!(out.contains("from the accuracy harness"), "{out}");
    assert!(out.contains("reference check tpla-g2"), "{out}");
    let o = tpla(&args(&[
        "--form",
        "tpla",
        "--tp",
        "2",
        "--max-rel-err",
        &below,
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("the accuracy harness puts its error at"),
        "{err}"
    );
}

#[test]
fn bad_layer_options_are_clear_errors() {
    for (extra, want) in [
        (
            vec!["--form", "mla-tp", "--tp", "3"],
            "heads cannot be split",
        ),
        (
            vec!["--form", "tpla", "--tp", "4", "-g", "8"],
            "needs g to divide",
        ),
        (vec!["--form", "dcp", "--tp", "0"], "--tp 0"),
        (vec!["--form", "dcp", "--max-rel-err=-1"], "--max-rel-err"),
        (
            vec!["--form", "all", "--tp", "2", "--devices", "4"],
            "--devices = --tp",
        ),
        (
            vec!["--form", "all", "--tp", "2", "--devices", "2"],
            "needs the CUDA backend",
        ),
        (
            vec!["--form", "tpla", "--tp", "2", "--tpla-reduce", "sideways"],
            "--tpla-reduce",
        ),
        (vec!["--form", "all", "--query-len", "5"], "--query-len 5"),
        (
            vec!["--form", "dcp", "--query-len", "2"],
            "DCP with 2 query tokens",
        ),
    ] {
        let o = tpla(&args(&extra));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let o = tpla(&[
        "decode",
        "--form",
        "dcp",
        "--layers",
        "0",
        "--small",
        "--backend",
        "cpu",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--layers 0"));
    // A stack whose caches cannot fit in host memory is refused before anything is allocated.
    let o = tpla(&[
        "decode",
        "--form",
        "mla-tp",
        "--small",
        "--backend",
        "cpu",
        "--batch",
        "100000",
        "--context",
        "1000000",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("of host memory"), "{err}");
}

#[test]
fn max_batch_writes_json_and_png_with_the_paper_beside() {
    let dir = tmp("max-batch");
    let out = tpla_ok(&[
        "decode",
        "--max-batch",
        "--results-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.contains("paper, TP2 H800: 1.79x"), "{out}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("max_batch.json")).unwrap()).unwrap();
    assert!(j["label"].as_str().unwrap().contains("modelled"));
    // 2 models × 2 budgets × 4 contexts × (3 forms at TP2, 4 at TP4 and TP8).
    assert_eq!(j["rows"].as_array().unwrap().len(), 176);
    assert!(j["tpla_vs_mla_at_32k"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["paper_tp2_h800"] == 1.93));
    let png = std::fs::read(dir.join("max_batch.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    std::fs::remove_dir_all(&dir).ok();
}
