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
