//! End-to-end tests of the `tpla` binary: the tune database, atomic outputs, the bench output
//! directory and the commit recorded in bench JSON (issue 16).

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------------
// Issue 16 ("Nothing lost, nothing silent"): the tune database, atomic outputs, the bench output
// directory and the commit recorded in bench JSON.
// ---------------------------------------------------------------------------------------------

/// The tune file of the CPU executor with `threads` threads in `dir`, as `tpla decode` reads it.
fn cpu_tune_file(dir: &Path, threads: usize) -> (PathBuf, String) {
    let device = format!("cpu {} {threads} threads", std::env::consts::ARCH);
    (dir.join(tpla_runtime::tune::file_name(&device)), device)
}

/// The shape buckets `tpla decode --preset deepseek-v2-lite --batch 1 --context 126 --steps 2`
/// looks up: MLA (latent 512) and the TPLA shard (256, g = 2).
fn v2_lite_decode_buckets() -> [String; 2] {
    use tpla_model::config::Preset;
    let heads = Preset::DeepseekV2Lite.config().heads;
    [512, 256].map(|lat| tpla_runtime::tune::decode_bucket(1, heads, lat, 64, 128))
}

/// Writes a tune file of the current format for the one-thread CPU device: `(bucket, config)` entries.
fn write_tune_file(dir: &Path, entries: &[(String, tpla_codegen::Config)]) -> PathBuf {
    let (path, device) = cpu_tune_file(dir, 1);
    let entries: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(bucket, cfg)| {
            let cfg: serde_json::Map<String, serde_json::Value> =
                cfg.iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            (
                format!("latent_decode/{bucket}"),
                serde_json::json!({"config": cfg, "time_us": 1.0, "date": "2026-11-20"}),
            )
        })
        .collect();
    let format = tpla_runtime::tune::TUNE_FORMAT;
    let file = serde_json::json!({"format": format, "device": device, "entries": entries});
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

const V2_LITE_DECODE: [&str; 14] = [
    "decode",
    "--backend",
    "cpu",
    "--threads",
    "1",
    "--batch",
    "1",
    "--context",
    "126",
    "--steps",
    "2",
    "--preset",
    "deepseek-v2-lite",
    "--page-size=16",
];

fn default_decode_config() -> tpla_codegen::Config {
    use tpla_codegen::KernelDef;
    tpla_kernels::latent_decode.default_config(&[]).unwrap()
}

/// A tune file from before `WG_SPLIT` existed: decode runs on defaults, the file is reported
/// once and moved aside.
#[test]
fn decode_reports_a_stale_tune_file_once_and_runs_on_defaults() {
    let dir = tmp("tune-stale");
    let mut old = tpla_codegen::Config::new();
    for (k, v) in default_decode_config()
        .iter()
        .filter(|(k, _)| *k != "WG_SPLIT")
    {
        old.set(k, v);
    }
    let [mla, shard] = v2_lite_decode_buckets();
    let path = write_tune_file(&dir, &[(mla, old.clone()), (shard, old)]);
    let o = tpla_with_tune_dir(&dir, &V2_LITE_DECODE);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "a stale tune file never stops a decode: {err}"
    );
    assert!(
        err.contains("stale") && err.contains("WG_SPLIT") && err.contains("moved aside"),
        "{err}"
    );
    assert!(out.contains("kernel configs: defaults"), "{out}");
    assert!(!path.exists());
    let o = tpla_with_tune_dir(&dir, &V2_LITE_DECODE);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("tune file"),
        "reported once: {err}"
    );
}

/// An entry outside the schedule space (BLOCK_H = 48) is dropped with a warning; the valid entry
/// next to it is still used.
#[test]
fn decode_drops_an_invalid_tune_entry_and_keeps_the_valid_one() {
    let dir = tmp("tune-invalid");
    let [mla, shard] = v2_lite_decode_buckets();
    let bad = default_decode_config().with("BLOCK_H", 48);
    write_tune_file(
        &dir,
        &[(mla, default_decode_config()), (shard.clone(), bad)],
    );
    let o = tpla_with_tune_dir(&dir, &V2_LITE_DECODE);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("dropped") && err.contains(&shard) && err.contains("BLOCK_H=48"),
        "{err}"
    );
    assert!(
        out.contains("kernel configs: tuned"),
        "the valid entry is used: {out}"
    );
    let o = tpla_with_tune_dir(&dir, &V2_LITE_DECODE);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("dropped"),
        "reported once"
    );
}

/// Random bytes where the tune file should be: reported and moved aside, as the README says.
#[test]
fn decode_moves_aside_a_tune_file_of_random_bytes() {
    let dir = tmp("tune-noise");
    let (path, _) = cpu_tune_file(&dir, 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let noise: Vec<u8> = (0..2048).map(|_| rng.gen()).collect();
    std::fs::write(&path, &noise).unwrap();
    let o = tpla_with_tune_dir(&dir, &V2_LITE_DECODE);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("unusable") && err.contains("moved aside"),
        "{err}"
    );
    assert!(!path.exists());
    let moved = path.with_extension("json.corrupt");
    assert_eq!(std::fs::read(moved).unwrap(), noise);
}

/// Two `tpla tune` runs of different shapes at once: the file holds both shapes afterwards.
#[test]
fn concurrent_tunes_keep_each_others_entries() {
    let dir = tmp("tune-concurrent");
    let tune = |context: &str| {
        Command::new(bin())
            .args([
                "tune",
                "--backend",
                "cpu",
                "--threads",
                "1",
                "--g",
                "1",
                "--batch",
                "1",
                "--context",
                context,
                "--reps",
                "1",
                "--preset",
                "deepseek-v2-lite",
            ])
            .env("TPLA_TUNE_DIR", &dir)
            .env("TPLA_REQUIRE_GPU", "0")
            .spawn()
            .expect("the binary runs")
    };
    let runs = [tune("64"), tune("256")];
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    let (path, _) = cpu_tune_file(&dir, 1);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let keys: Vec<&String> = file["entries"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "both shapes: {keys:?}");
}

/// A `tpla run` whose output write fails part-way (here the file size limit, as a full disk
/// would) leaves the previous output byte for byte as it was.
#[test]
fn a_failed_run_output_write_keeps_the_previous_output() {
    let dir = tmp("run-atomic");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_inputs(&inp, |_| {});
    let previous: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&out, &previous).unwrap();
    // `ulimit -f 1`: writes past 512 (or 1024) bytes fail; the output is several KiB.
    let o = Command::new("sh")
        .args(["-c", "ulimit -f 1 && exec \"$@\"", "sh", &bin()])
        .args([
            "run",
            "--inputs",
            inp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the write must have failed");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        previous,
        "previous output intact"
    );
    // Without the limit it is replaced.
    tpla_ok(&[
        "run",
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(std::fs::read(&out).unwrap().len() > 1024);
}

/// `tpla bench` writes into the user's data directory by default and says where; the JSON names
/// the commit this binary was built from, also when it runs inside another git repository.
#[test]
fn bench_writes_to_the_data_dir_with_the_build_commit() {
    let dir = tmp("bench-commit");
    let (repo, data) = (dir.join("other-repo"), dir.join("data"));
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
    };
    let other_head = git(&["init", "-q"])
        .and_then(|_| git(&["commit", "-q", "--allow-empty", "-m", "other"]))
        .and_then(|_| git(&["rev-parse", "--short", "HEAD"]))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let o = Command::new(bin())
        .args([
            "bench",
            "--backend",
            "cpu",
            "--batch",
            "1",
            "--heads",
            "2",
            "--context",
            "64",
            "--lat",
            "64",
            "--reps",
            "1",
            "--threads",
            "1",
        ])
        .current_dir(&repo)
        .env("XDG_DATA_HOME", &data)
        .env("TPLA_GIT_COMMIT", "from-the-environment")
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let results = data.join("tpla").join("bench");
    assert!(
        out.contains(&format!("wrote {}", results.display())),
        "{out}"
    );
    let r = bench_reports(&results);
    assert_eq!(r.len(), 1, "{}", results.display());
    let commit = r[0]["git_commit"].as_str().unwrap();
    assert_eq!(commit, env!("TPLA_BUILD_COMMIT"));
    assert_ne!(Some(commit.to_string()), other_head);
    assert!(!std::fs::read_dir(&repo)
        .unwrap()
        .any(|e| e.unwrap().file_name() == "bench"));
}
