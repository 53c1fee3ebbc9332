//! Unit tests of the tune database (`tune.rs`).

use super::*;
use tpla_codegen::ir::Kernel;
use tpla_codegen::IrError;

/// A kernel with the schedule space of `latent_decode` (its tune parameters and candidates).
struct Fake;

impl KernelDef for Fake {
    fn name(&self) -> &'static str {
        "latent_decode"
    }
    fn tune_params(&self) -> &'static [TuneParam] {
        &[
            TuneParam {
                name: "BLOCK_H",
                candidates: &[16, 32, 64],
            },
            TuneParam {
                name: "WG_SPLIT",
                candidates: &[128, 32],
            },
        ]
    }
    fn shape_constants(&self) -> &'static [&'static str] {
        &["LAT", "ROPE"]
    }
    fn build(&self, _: &Config) -> Result<Kernel, IrError> {
        Err(IrError::MissingConfig(
            "a test kernel is never built".into(),
        ))
    }
}

const K: &[&dyn KernelDef] = &[&Fake];
const DEV: &str = "cuda NVIDIA H200 sm_90 132 SMs driver 13000";

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn good(bh: i64) -> Config {
    Config::new().with("BLOCK_H", bh).with("WG_SPLIT", 128)
}

fn files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file of this format with entries `(bucket, config)`.
fn write_file(d: &Path, entries: &[(&str, &[(&str, i64)])]) {
    write_file_of_format(d, TUNE_FORMAT, entries)
}

/// A file of `format` with entries `(bucket, config)`.
fn write_file_of_format(d: &Path, format: u32, entries: &[(&str, &[(&str, i64)])]) {
    let entries: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(bucket, cfg)| {
            let cfg: serde_json::Map<String, serde_json::Value> = cfg
                .iter()
                .map(|(k, v)| (k.to_string(), (*v).into()))
                .collect();
            (
                format!("latent_decode/{bucket}"),
                serde_json::json!({"config": cfg, "time_us": 10.0, "date": "2026-11-20"}),
            )
        })
        .collect();
    let f = serde_json::json!({"format": format, "device": DEV, "entries": entries});
    std::fs::create_dir_all(d).unwrap();
    std::fs::write(d.join(file_name(DEV)), f.to_string()).unwrap();
}

#[test]
fn round_trip_per_device() {
    let d = dir();
    let (mut db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty() && db.is_empty());
    let cfg = good(64).with("LAT", 512);
    db.put(
        "latent_decode",
        "H64-lat512+64-B32-L32768",
        &cfg,
        1234.5,
        "2026-11-26",
    );
    assert!(db.save().unwrap().is_empty());
    let (db2, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty(), "{warn:?}");
    assert_eq!(
        db2.get("latent_decode", "H64-lat512+64-B32-L32768"),
        Some(cfg)
    );
    let (other, _) = TuneDb::open(d.path(), "cpu x86_64 2 threads", K);
    assert!(other.is_empty(), "another device has its own file");
    assert!(
        !files(d.path()).iter().any(|f| f.ends_with(".tmp")),
        "atomic save leaves no temporary file: {:?}",
        files(d.path())
    );
}

#[test]
fn corrupt_file_is_reported_moved_aside_and_rebuilt() {
    let d = dir();
    std::fs::write(d.path().join(file_name(DEV)), "{ this is not json").unwrap();
    let (mut db, warn) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(warn.len(), 1, "{warn:?}");
    assert!(warn[0].to_string().contains("unusable"), "{}", warn[0]);
    assert!(db.is_empty());
    assert!(d
        .path()
        .join(format!("{}.corrupt", file_name(DEV)))
        .exists());
    db.put("latent_decode", "b", &good(16), 1.0, "2026-11-26");
    db.save().unwrap();
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty() && db.len() == 1, "rebuilt: {warn:?}");
}

#[test]
fn a_file_of_random_bytes_is_reported_and_moved_aside() {
    let d = dir();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    std::fs::write(d.path().join(file_name(DEV)), &noise).unwrap();
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(db.is_empty());
    assert!(
        matches!(warn.as_slice(), [TuneWarning::Unusable { .. }]),
        "{warn:?}"
    );
    let moved = d.path().join(format!("{}.corrupt", file_name(DEV)));
    assert_eq!(std::fs::read(moved).unwrap(), noise, "kept for inspection");
    assert!(!d.path().join(file_name(DEV)).exists());
}

#[test]
fn file_for_another_device_is_not_trusted() {
    let d = dir();
    let (mut db, _) = TuneDb::open(d.path(), "gpu A", K);
    db.put("latent_decode", "b", &good(16), 1.0, "d");
    db.save().unwrap();
    std::fs::rename(
        d.path().join(file_name("gpu A")),
        d.path().join(file_name("gpu B")),
    )
    .unwrap();
    let (db, warn) = TuneDb::open(d.path(), "gpu B", K);
    assert!(warn.len() == 1 && db.is_empty(), "{warn:?}");
}

#[test]
fn a_stale_file_is_reported_once_and_moved_aside() {
    // Written before WG_SPLIT existed.
    let d = dir();
    write_file(
        d.path(),
        &[
            ("H16-lat512+64-B4-L4096", &[("BLOCK_H", 16)]),
            ("H16-lat256+64-B4-L4096", &[("BLOCK_H", 32)]),
        ],
    );
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(db.is_empty());
    let [TuneWarning::Unusable { why, .. }] = warn.as_slice() else {
        panic!("{warn:?}");
    };
    assert!(why.contains("stale") && why.contains("WG_SPLIT"), "{why}");
    assert!(d
        .path()
        .join(format!("{}.corrupt", file_name(DEV)))
        .exists());
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(db.is_empty() && warn.is_empty(), "reported once: {warn:?}");
}

#[test]
fn a_file_of_format_1_is_moved_aside_once() {
    // What tpla wrote before the schedule knobs and split policies were searched: every entry
    // would still fit, but the format says the search space was smaller.
    let d = dir();
    write_file_of_format(
        d.path(),
        1,
        &[(
            "H16-lat512+64-B4-L4096",
            &[("BLOCK_H", 16), ("WG_SPLIT", 128)],
        )],
    );
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(db.is_empty());
    let [TuneWarning::Unusable { why, moved_to, .. }] = warn.as_slice() else {
        panic!("{warn:?}");
    };
    assert!(
        why.contains("format 1") && why.contains(&format!("reads {TUNE_FORMAT}")),
        "{why}"
    );
    assert!(Path::new(moved_to).exists(), "{moved_to}");
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(db.is_empty() && warn.is_empty(), "reported once: {warn:?}");
}

#[test]
fn searched_schedule_knobs_and_the_split_policy_round_trip() {
    let d = dir();
    let (mut db, _) = TuneDb::open(d.path(), DEV, K);
    let cfg = good(64).with("PRODUCER", 1);
    db.put_with_policy(
        "latent_decode",
        "b",
        &cfg,
        Some(SplitPolicy::Balanced),
        9.0,
        "d",
    );
    db.put("latent_decode", "u", &good(32), 8.0, "d");
    db.save().unwrap();
    let text = std::fs::read_to_string(db.path()).unwrap();
    assert!(text.contains("\"split_policy\": \"balanced\""), "{text}");
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty(), "{warn:?}");
    assert_eq!(db.get("latent_decode", "b"), Some(cfg));
    assert_eq!(
        db.split_policy("latent_decode", "b"),
        Some(SplitPolicy::Balanced)
    );
    assert_eq!(db.split_policy("latent_decode", "u"), None);
}

#[test]
fn a_searched_knob_outside_its_values_is_dropped() {
    let d = dir();
    write_file(
        d.path(),
        &[
            ("ok", &[("BLOCK_H", 64), ("WG_SPLIT", 32), ("PRODUCER", 1)]),
            ("bad", &[("BLOCK_H", 64), ("WG_SPLIT", 32), ("PRODUCER", 2)]),
        ],
    );
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(db.len(), 1);
    let text: Vec<String> = warn.iter().map(|w| w.to_string()).collect();
    assert!(
        text.len() == 1 && text[0].contains("PRODUCER=2") && text[0].contains("searched values"),
        "{text:?}"
    );
}

#[test]
fn a_tuned_split_count_round_trips_and_a_bad_one_is_dropped() {
    let d = dir();
    let (mut db, _) = TuneDb::open(d.path(), DEV, K);
    db.put_with_uniform_splits("latent_decode", "s", &good(64), 8, 7.0, "d");
    db.put_with_policy(
        "latent_decode",
        "b",
        &good(32),
        Some(SplitPolicy::Balanced),
        9.0,
        "d",
    );
    db.save().unwrap();
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty(), "{warn:?}");
    assert_eq!(db.uniform_splits("latent_decode", "s"), Some(8));
    assert_eq!(
        db.split_policy("latent_decode", "s"),
        Some(SplitPolicy::Uniform)
    );
    assert_eq!(db.uniform_splits("latent_decode", "b"), None);
    let e = db.entry("latent_decode", "s").unwrap();
    assert_eq!(e.split_description(), ", uniform splits (8)");
    assert_eq!(
        db.entry("latent_decode", "b").unwrap().split_description(),
        ", balanced splits"
    );

    // Hand-edited counts: zero, past the cap, or with the balanced policy are dropped.
    let entry = |policy: &str, splits: i64| {
        serde_json::json!({"config": {"BLOCK_H": 64, "WG_SPLIT": 32}, "time_us": 1.0,
            "date": "d", "split_policy": policy, "splits": splits})
    };
    let f = serde_json::json!({"format": TUNE_FORMAT, "device": DEV, "entries": {
        "latent_decode/ok": entry("uniform", 4),
        "latent_decode/zero": entry("uniform", 0),
        "latent_decode/huge": entry("uniform", 65),
        "latent_decode/bal": entry("balanced", 4),
    }});
    std::fs::write(d.path().join(file_name(DEV)), f.to_string()).unwrap();
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(db.len(), 1);
    assert_eq!(db.uniform_splits("latent_decode", "ok"), Some(4));
    let text: Vec<String> = warn.iter().map(|w| w.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text
        .iter()
        .any(|w| w.contains("zero") && w.contains("splits=0")));
    assert!(text
        .iter()
        .any(|w| w.contains("huge") && w.contains("splits=65")));
    assert!(text
        .iter()
        .any(|w| w.contains("bal") && w.contains("balanced split policy")));
}

#[test]
fn an_invalid_entry_is_dropped_with_a_warning_and_the_rest_kept() {
    let d = dir();
    write_file(
        d.path(),
        &[
            ("ok", &[("BLOCK_H", 64), ("WG_SPLIT", 32)]),
            ("range", &[("BLOCK_H", 48), ("WG_SPLIT", 32)]),
            (
                "unknown",
                &[("BLOCK_H", 64), ("WG_SPLIT", 32), ("WARPS", 8)],
            ),
            ("shape", &[("BLOCK_H", 64), ("WG_SPLIT", 32), ("LAT", 0)]),
        ],
    );
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(db.len(), 1);
    assert_eq!(
        db.get("latent_decode", "ok"),
        Some(Config::new().with("BLOCK_H", 64).with("WG_SPLIT", 32))
    );
    let text: Vec<String> = warn.iter().map(|w| w.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text
        .iter()
        .any(|w| w.contains("latent_decode/range") && w.contains("48")));
    assert!(text.iter().any(|w| w.contains("unknown parameter WARPS")));
    assert!(text.iter().any(|w| w.contains("LAT=0")));
    // Rewritten without them: the next open is quiet.
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty() && db.len() == 1, "{warn:?}");
}

#[test]
fn entries_of_kernels_not_checked_are_kept_through_a_save() {
    let d = dir();
    let (mut db, _) = TuneDb::open(d.path(), DEV, &[]);
    db.put("other_kernel", "b", &Config::new().with("X", 7), 1.0, "d");
    db.save().unwrap();
    let (mut db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty());
    db.put("latent_decode", "b", &good(32), 1.0, "d");
    db.save().unwrap();
    let (db, _) = TuneDb::open(d.path(), DEV, &[]);
    assert_eq!(
        db.get("other_kernel", "b"),
        Some(Config::new().with("X", 7))
    );
    assert_eq!(db.len(), 2);
}

#[test]
fn saves_of_databases_opened_together_keep_every_entry() {
    // Two tunes of different shapes: both open the (empty) file, then each saves.
    let d = dir();
    let mut dbs: Vec<TuneDb> = (0..4).map(|_| TuneDb::open(d.path(), DEV, K).0).collect();
    for (i, db) in dbs.iter_mut().enumerate() {
        db.put("latent_decode", &format!("B{i}"), &good(16), i as f64, "d");
    }
    for db in &mut dbs {
        db.save().unwrap();
    }
    let (db, _) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(db.len(), 4, "every writer's entry is there");
    // A re-tune of one shape replaces that entry only.
    let mut again = TuneDb::open(d.path(), DEV, K).0;
    again.put("latent_decode", "B1", &good(64), 0.5, "d");
    again.save().unwrap();
    let (db, _) = TuneDb::open(d.path(), DEV, K);
    assert_eq!(db.len(), 4);
    assert_eq!(db.get("latent_decode", "B1"), Some(good(64)));
}

#[test]
fn concurrent_writers_keep_every_entry() {
    let d = dir();
    let n = 8;
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        for i in 0..n {
            let (path, start) = (d.path(), &start);
            s.spawn(move || {
                let (mut db, _) = TuneDb::open(path, DEV, K);
                start.wait();
                for j in 0..5 {
                    db.put("latent_decode", &format!("T{i}-{j}"), &good(32), 1.0, "d");
                    db.save().unwrap();
                }
            });
        }
    });
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty(), "{warn:?}");
    assert_eq!(db.len(), n * 5);
    assert!(
        !files(d.path()).iter().any(|f| f.ends_with(".tmp")),
        "{:?}",
        files(d.path())
    );
}

#[test]
fn a_file_corrupted_before_a_save_is_moved_aside_and_the_save_succeeds() {
    let d = dir();
    let (mut db, _) = TuneDb::open(d.path(), DEV, K);
    std::fs::write(d.path().join(file_name(DEV)), [0xffu8, 0, 1, 2]).unwrap();
    db.put("latent_decode", "b", &good(16), 1.0, "d");
    let warn = db.save().unwrap();
    assert!(
        matches!(warn.as_slice(), [TuneWarning::Unusable { .. }]),
        "{warn:?}"
    );
    let (db, warn) = TuneDb::open(d.path(), DEV, K);
    assert!(warn.is_empty() && db.len() == 1);
}

#[test]
fn buckets_round_up() {
    assert_eq!(
        decode_bucket(100, 64, 256, 64, 30000),
        "H64-lat256+64-B128-L32768"
    );
}
