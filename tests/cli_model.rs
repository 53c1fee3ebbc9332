//! `tpla convert` and `tpla accuracy` end to end (issue 16 items 3-6, 10): the printed byte
//! counts are the files' sizes, a non-empty --out is refused without --force, --calib and the
//! sizes are checked before the work, output paths are checked before the work, and no progress
//! bar reaches a stderr that is not a terminal.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary under test: `TPLA_BIN` when set, else the one cargo built.
fn bin() -> String {
    std::env::var("TPLA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tpla").to_string())
}

fn tpla(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .expect("the binary runs")
}

/// A fresh, empty directory of this test process.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpla-cli-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts a failure with exit status 2 whose stderr contains every one of `want`, and nothing
/// on stdout (the work was not done); returns stderr.
fn fails_before_work(o: &Output, want: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    for w in want {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

/// The numbers in parentheses "(N bytes)" of a line.
fn byte_counts(line: &str) -> Vec<u64> {
    line.split('(')
        .skip(1)
        .filter_map(|s| s.split(" bytes)").next()?.parse().ok())
        .collect()
}

#[test]
fn convert_prints_real_sizes_and_refuses_a_non_empty_out() {
    let dir = tmp("convert");
    let out = dir.join("o");
    let o_str = out.to_str().unwrap();
    let args = [
        "convert",
        "--transform",
        "none",
        "--devices",
        "2",
        "--out",
        o_str,
    ];
    let o = tpla(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No progress bar (nor anything else) on a stderr that is a pipe.
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let size = |f: &str| std::fs::metadata(out.join(f)).unwrap().len();
    let ranks = size("rank0.safetensors") + size("rank1.safetensors");
    assert_eq!(
        byte_counts(&stdout),
        [ranks, size("manifest.json")],
        "{stdout}"
    );

    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let e = tpla(&args);
    fails_before_work(&e, &["not empty", "--force"]);
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
    // --out naming a file is refused before the work.
    let file = dir.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let mut a = args.to_vec();
    a[6] = file.to_str().unwrap();
    fails_before_work(&tpla(&a), &["not a directory"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[test]
fn convert_calib_flag_does_what_its_help_says() {
    let dir = tmp("calib");
    let out = dir.join("o");
    let calib = dir.join("calib.safetensors");
    let (o, c) = (out.to_str().unwrap(), calib.to_str().unwrap());
    let e = tpla(&[
        "convert",
        "--transform",
        "hadamard",
        "--calib",
        c,
        "--out",
        o,
    ]);
    fails_before_work(&e, &["--calib", "pca"]);
    let ck = dir.join("model.safetensors");
    let ck = ck.to_str().unwrap();
    let e = tpla(&[
        "convert",
        "--transform",
        "pca",
        "--checkpoint",
        ck,
        "--out",
        o,
    ]);
    fails_before_work(&e, &["--calib", "--checkpoint"]);
    let help = tpla(&["convert", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Refused with other transforms"), "{help}");
    assert!(!out.exists());
}

#[test]
fn convert_sizes_are_bounded_with_the_flag_named() {
    let dir = tmp("bounds");
    let out = dir.join("o");
    let o = out.to_str().unwrap();
    let e = tpla(&["convert", "--groups", "512", "--devices", "512", "--out", o]);
    fails_before_work(&e, &["--groups 512", "limit 64"]);
    let e = tpla(&["convert", "--groups", "2", "--devices", "1024", "--out", o]);
    fails_before_work(&e, &["--devices 1024", "limit 64"]);
    assert!(!out.exists());
}

#[test]
fn accuracy_checks_sizes_and_output_paths_before_the_work() {
    let dir = tmp("accuracy");
    let small = [
        "accuracy",
        "--prefill",
        "4",
        "--decode",
        "4",
        "--stride",
        "2",
    ];
    let run = |extra: &[&str]| {
        let mut a = small.to_vec();
        a.extend_from_slice(extra);
        tpla(&a)
    };
    let d = dir.to_str().unwrap();
    fails_before_work(&run(&["--json", d]), &["is a directory"]);
    let missing = dir.join("no-such-dir").join("a.png");
    fails_before_work(
        &run(&["--png", missing.to_str().unwrap()]),
        &["does not exist"],
    );
    let json = dir.join("a.json");
    std::fs::write(&json, b"previous").unwrap();
    let j = json.to_str().unwrap();
    fails_before_work(&run(&["--json", j, "--png", j]), &["same file"]);
    let e = tpla(&["accuracy", "--decode", "1000000", "--json", j]);
    fails_before_work(&e, &["--decode 1000000", "limit 65536"]);
    let e = tpla(&[
        "accuracy",
        "--prefill",
        "4",
        "--decode",
        "4",
        "--stride",
        "9",
        "--json",
        j,
    ]);
    fails_before_work(&e, &["--stride"]);
    // The previous output is untouched and no temporary file is left.
    assert_eq!(std::fs::read(&json).unwrap(), b"previous");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1);
}
