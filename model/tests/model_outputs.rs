//! What `convert` and `accuracy` leave on disk (issue 16 items 3-6, 10): the output directory is
//! written whole (no stale rank files), the manifest's byte counts are the real file sizes,
//! `--calib` only where the help says, sizes bounded before any allocation, report files written
//! atomically, and progress reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tpla_model::accuracy::{run_accuracy_with, AccuracyOptions};
use tpla_model::config::Preset;
use tpla_model::convert::{convert, convert_with, ConvertManifest, ConvertOptions};
use tpla_model::error::ModelError;
use tpla_model::limits::{available_memory, check_accuracy, MAX_DEVICES, MAX_GROUPS, MAX_TOKENS};
use tpla_model::reparam::{MuConvention, Transform};
use tpla_model::tensors::OutDtype;
use tpla_model::Progress;

/// A fresh, empty directory of this test process.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpla-outputs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn small(out: PathBuf, groups: usize, devices: usize) -> ConvertOptions {
    ConvertOptions {
        preset: Preset::DeepseekV2Lite,
        shape: Some((64, 4)),
        checkpoint: None,
        layers: None,
        transform: Transform::Hadamard,
        groups,
        devices,
        calib: None,
        seed: 3,
        mu: MuConvention::One,
        dtype: OutDtype::F32,
        out_dir: out,
        force: false,
    }
}

#[test]
fn rerun_with_fewer_devices_leaves_no_stale_rank_files() {
    let base = tmp("stale");
    let out = base.join("shards");
    convert(&small(out.clone(), 2, 4)).unwrap();
    let four = names(&out);
    assert_eq!(four.len(), 5, "{four:?}");
    // Without --force a non-empty directory is refused, and left as it was.
    let e = convert(&small(out.clone(), 2, 2)).unwrap_err();
    assert!(
        matches!(&e, ModelError::OutputPath { detail, .. } if detail.contains("--force")),
        "{e}"
    );
    assert_eq!(names(&out), four);
    // With --force it is replaced whole: only the two new ranks and the manifest remain.
    let opts = ConvertOptions {
        force: true,
        ..small(out.clone(), 2, 2)
    };
    convert(&opts).unwrap();
    assert_eq!(
        names(&out),
        ["manifest.json", "rank0.safetensors", "rank1.safetensors"]
    );
    let m: ConvertManifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.devices, 2);
    // No staging or trash directory is left beside it.
    assert_eq!(names(&base), ["shards"]);
}

#[test]
fn force_never_replaces_a_directory_holding_an_input() {
    let out = tmp("inputs");
    let ck = out.join("model.safetensors");
    std::fs::write(&ck, b"weights").unwrap();
    let opts = ConvertOptions {
        checkpoint: Some(ck.clone()),
        force: true,
        ..small(out.clone(), 2, 2)
    };
    let e = convert(&opts).unwrap_err();
    assert!(
        matches!(&e, ModelError::OutputPath { detail, .. } if detail.contains("--checkpoint")),
        "{e}"
    );
    assert_eq!(std::fs::read(&ck).unwrap(), b"weights");
}

#[test]
fn manifest_byte_counts_are_the_file_sizes() {
    let out = tmp("bytes").join("o");
    for dtype in [OutDtype::Bf16, OutDtype::F64] {
        let opts = ConvertOptions {
            dtype,
            force: true,
            ..small(out.clone(), 2, 4)
        };
        let man = convert(&opts).unwrap();
        let on_disk: ConvertManifest =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        for (r, rm) in man.ranks.iter().zip(&on_disk.ranks) {
            let len = std::fs::metadata(out.join(&r.file)).unwrap().len();
            assert!(len > 0);
            assert_eq!((r.bytes, rm.bytes), (len, len), "{}", r.file);
        }
    }
}

#[test]
fn calib_is_read_only_by_pca_and_required_for_a_checkpoint() {
    let base = tmp("calib");
    let with_calib = ConvertOptions {
        calib: Some(base.join("calib.safetensors")),
        ..small(base.join("o"), 2, 2)
    };
    let e = convert(&with_calib).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::InvalidValue {
                name: "--calib",
                ..
            }
        ),
        "{e}"
    );
    let ck_no_calib = ConvertOptions {
        transform: Transform::Pca,
        checkpoint: Some(base.join("model.safetensors")),
        ..small(base.join("o"), 2, 2)
    };
    let e = convert(&ck_no_calib).unwrap_err();
    assert!(matches!(e, ModelError::MissingCalibration), "{e}");
    assert!(e.to_string().contains("--calib"));
    // Without a checkpoint PCA calibrates on the synthetic stream, as the help says.
    let synthetic = ConvertOptions {
        transform: Transform::Pca,
        ..small(base.join("o"), 2, 2)
    };
    let man = convert(&synthetic).unwrap();
    assert_eq!(man.calib, None);
    assert!(!base.join("o").join("calib.safetensors").exists());
}

#[test]
fn sizes_are_bounded_before_anything_is_allocated() {
    let base = tmp("bounds");
    let out = base.join("o");
    let too_large = |opts: ConvertOptions| match convert(&opts) {
        Err(ModelError::TooLarge { flag, limit, .. }) => (flag, limit),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        too_large(small(out.clone(), 512, 512)),
        ("--groups", MAX_GROUPS)
    );
    assert_eq!(
        too_large(small(out.clone(), 2, 128)),
        ("--devices", MAX_DEVICES)
    );
    let e = convert(&ConvertOptions {
        layers: Some(vec![0, 27]),
        ..small(out.clone(), 2, 2)
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::InvalidValue {
                name: "--layers",
                ..
            }
        ),
        "{e}"
    );
    // Every layer of DeepSeek-V3 for 64 devices: about a terabyte of shards.
    if available_memory().is_some_and(|m| m < 1 << 40) {
        let all = ConvertOptions {
            shape: None,
            preset: Preset::DeepseekV3,
            layers: Some((0..61).collect()),
            ..small(out.clone(), 8, 64)
        };
        let e = convert(&all).unwrap_err();
        assert!(matches!(e, ModelError::OutOfMemory { .. }), "{e}");
        assert!(e.to_string().contains("--layers"), "{e}");
    }
    assert!(!out.exists(), "a refused run writes nothing");
    assert_eq!(names(&base), Vec::<String>::new());
}

fn small_accuracy() -> AccuracyOptions {
    AccuracyOptions {
        preset: Preset::DeepseekV3,
        shape: Some((64, 2)),
        prefill_tokens: 4,
        decode_tokens: 6,
        calib_tokens: 520,
        stride: 2,
        transforms: vec![Transform::Hadamard],
        groups: vec![2],
        mu: vec![MuConvention::One],
        ..AccuracyOptions::default()
    }
}

#[test]
fn accuracy_sizes_are_checked() {
    let opts = small_accuracy();
    let cfg = tpla_model::accuracy::harness_config(&opts);
    check_accuracy(&opts, &cfg).unwrap();
    let flag = |o: AccuracyOptions| match check_accuracy(&o, &cfg) {
        Err(ModelError::TooLarge { flag, .. }) => flag,
        Err(ModelError::InvalidValue { name, .. }) => name,
        other => panic!("{other:?}"),
    };
    let big = MAX_TOKENS + 1;
    let o = small_accuracy();
    assert_eq!(
        flag(AccuracyOptions {
            decode_tokens: big,
            ..o.clone()
        }),
        "--decode"
    );
    assert_eq!(
        flag(AccuracyOptions {
            prefill_tokens: big,
            ..o.clone()
        }),
        "--prefill"
    );
    assert_eq!(
        flag(AccuracyOptions {
            calib_tokens: big,
            ..o.clone()
        }),
        "--calib-tokens"
    );
    // A stride past the decoded tokens evaluates nothing: it used to report zero error.
    assert_eq!(
        flag(AccuracyOptions {
            stride: 11,
            ..o.clone()
        }),
        "--stride"
    );
}

#[derive(Default)]
struct Counter {
    phases: Mutex<Vec<(String, u64)>>,
    done: AtomicU64,
}

impl Progress for Counter {
    fn start(&self, what: &str, len: u64) {
        self.phases.lock().unwrap().push((what.to_string(), len));
    }
    fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

#[test]
fn progress_counts_the_work_and_reports_write_atomically() {
    let base = tmp("progress");
    let c = Counter::default();
    convert_with(&small(base.join("o"), 2, 4), &c).unwrap();
    let phases = c.phases.lock().unwrap().clone();
    assert_eq!(phases.iter().map(|p| p.1).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(c.done.load(Ordering::Relaxed), 7);

    let c = Counter::default();
    let rep = run_accuracy_with(&small_accuracy(), &c).unwrap();
    // Steps n with (n + 1) % 2 == 0 among the 10 tokens.
    assert_eq!(c.phases.lock().unwrap()[0].1, 5);
    assert_eq!(c.done.load(Ordering::Relaxed), 5);

    // The report files replace the previous ones and leave no temporary file.
    let (json, png) = (base.join("a.json"), base.join("a.png"));
    std::fs::write(&json, b"old").unwrap();
    rep.write_json(&json).unwrap();
    rep.write_png(&png, MuConvention::One).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(back["rows"].is_array());
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    assert_eq!(names(&base), ["a.json", "a.png", "o"]);
    // A report aimed at a directory fails without touching anything.
    assert!(rep.write_json(&base.join("o")).is_err());
    assert_eq!(names(&base), ["a.json", "a.png", "o"]);
}
