//! End-to-end tests of the `tpla` binary: bounded sizes, early output-path checks, non-finite
//! inputs and honest timings (issue 16).

use std::process::Command;

mod common;
use common::*;

const HUGE: &str = "18446744073709551615";

#[test]
fn absurd_sizes_are_clear_errors_naming_the_flag() {
    for (flag, needle) in [
        (
            "--splits",
            "--splits 18446744073709551615 is past the limit of 1024",
        ),
        (
            "--context",
            "--context 18446744073709551615 is past the limit",
        ),
        ("--batch", "--batch 18446744073709551615 is past the limit"),
        ("--steps", "--steps 18446744073709551615 is past the limit"),
        (
            "--page-size",
            "--page-size 18446744073709551615 is past the limit",
        ),
        (
            "--threads",
            "--threads 18446744073709551615 is past the limit",
        ),
    ] {
        expect_error(&["decode", "--backend", "cpu", flag, HUGE], needle);
        expect_error(
            &["decode", "--backend", "cpu", "--devices", "2", flag, HUGE],
            needle,
        );
    }
    for flag in ["--batch", "--context"] {
        expect_error(&["tune", "--backend", "cpu", flag, HUGE], flag);
        expect_error(&["bench", "--backend", "cpu", flag, HUGE], flag);
    }
    expect_error(&["bench", "--backend", "cpu", "--heads", HUGE], "--heads");
}

/// Sizes inside the fixed limits whose caches cannot fit this host: refused before any
/// allocation, naming the flags (before the fix: an abort in the allocator).
#[test]
fn decode_needing_more_memory_than_the_host_has_is_refused() {
    let args = [
        "decode",
        "--backend",
        "cpu",
        "--batch",
        "100000",
        "--context",
        "100000000",
    ];
    expect_error(&args, "need about");
    expect_error(&args, "--batch 100000, --context 100000000");
    let mut tp = args.to_vec();
    tp.extend(["--devices", "2"]);
    expect_error(&tp, "of host memory");
    // A small run against a small stated budget: the same check, deterministic.
    let o = Command::new(bin())
        .args([
            "decode",
            "--backend",
            "cpu",
            "--batch",
            "64",
            "--context",
            "100000",
        ])
        .env("TPLA_HOST_MEMORY", "100000000")
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("TPLA_HOST_MEMORY") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn run_rejects_absurd_splits_before_reading() {
    let dir = tmp("run-splits");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_inputs(&inp, |_| {});
    let (i, o) = (inp.to_str().unwrap(), out.to_str().unwrap());
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            o,
            "--backend",
            "cpu",
            "--splits",
            HUGE,
        ],
        "--splits 18446744073709551615 is past the limit of 1024",
    );
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            o,
            "--backend",
            "cpu",
            "--splits",
            "0",
        ],
        "--splits 0 is below the minimum of 1",
    );
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            o,
            "--backend",
            "cpu",
            "--rope",
            HUGE,
        ],
        "--rope",
    );
    assert!(!out.exists());
}

/// The output path is checked before the inputs are even read (here they do not exist).
#[test]
fn run_checks_the_output_path_before_the_work() {
    let dir = tmp("run-outpath");
    let missing_in = dir.join("no-such-input.safetensors");
    let i = missing_in.to_str().unwrap();
    let no_dir = dir.join("no-such-dir").join("out.safetensors");
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            no_dir.to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        "does not exist",
    );
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            dir.to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        "is a directory",
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the probe leaves nothing behind"
    );
}

#[test]
fn run_makes_non_finite_pairs_nan_warns_and_gives_empty_sequences_minus_inf() {
    let dir = tmp("run-nonfinite");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let (h, lat, d) = (3usize, 64usize, 128usize);
    write_inputs(&inp, |t| {
        // q[0, 1, 5] = NaN (f32 input, flat index (0·h + 1)·d + 5); sequence 1 empty.
        let at = (d + 5) * 4;
        t[0].3[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        t[3].3 = [50i32, 0].iter().flat_map(|x| x.to_le_bytes()).collect();
    });
    let o = tpla(&[
        "run",
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--groups",
        "2",
        "--backend",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: non-finite") && err.contains("1 of 6"),
        "{err}"
    );
    let (out_v, lse) = (read_f32(&out, "out"), read_f32(&out, "lse"));
    let (out_t, lse_t) = (read_f32(&out, "out_tpla"), read_f32(&out, "lse_tpla"));
    for hh in 0..h {
        let row = &out_v[hh * lat..(hh + 1) * lat];
        if hh == 1 {
            assert!(
                row.iter().all(|x| x.is_nan()) && lse[hh].is_nan(),
                "{}",
                lse[hh]
            );
            // Column 5 is in latent group 0: shard 0 is NaN, shard 1 is not.
            assert!(out_t[hh * lat..hh * lat + 32].iter().all(|x| x.is_nan()));
            assert!(out_t[hh * lat + 32..(hh + 1) * lat]
                .iter()
                .all(|x| x.is_finite()));
            assert!(lse_t[hh].is_nan() && lse_t[2 * h + hh].is_finite());
        } else {
            assert!(row.iter().all(|x| x.is_finite()) && lse[hh].is_finite());
        }
        // Sequence 1 is empty: out 0, LSE -inf, in MLA and in both shards.
        let e = &out_v[(h + hh) * lat..(h + hh + 1) * lat];
        assert!(e.iter().all(|&x| x == 0.0));
        assert_eq!(lse[h + hh], f32::NEG_INFINITY);
        assert_eq!(lse_t[h + hh], f32::NEG_INFINITY);
        assert_eq!(lse_t[3 * h + hh], f32::NEG_INFINITY);
    }
}

/// `--steps 1` times its one step (the kernels compile in an untimed warm-up): no NaN ms/step,
/// inf tokens/s or NaNx speedup.
#[test]
fn decode_with_one_step_prints_finite_timings() {
    for extra in [&[][..], &["--devices", "2", "--page-size", "16"][..]] {
        let mut args = vec![
            "decode",
            "--backend",
            "cpu",
            "--batch",
            "1",
            "--context",
            "100",
            "--steps",
            "1",
            "--preset",
            "deepseek-v2-lite",
        ];
        args.extend(extra);
        let out = tpla_ok(&args);
        let lower = out.to_lowercase();
        assert!(!lower.contains("nan") && !lower.contains("inf "), "{out}");
        assert!(out.contains("median of 1 steps"), "{out}");
    }
}

/// The TP step's phases are each timed alone: none can be negative.
#[test]
fn decode_over_ranks_prints_no_negative_phase() {
    let out = tpla_ok(&[
        "decode",
        "--devices",
        "2",
        "--backend",
        "cpu",
        "--preset",
        "deepseek-v2-lite",
        "--batch",
        "1",
        "--context",
        "64",
        "--steps",
        "4",
        "--page-size",
        "16",
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("TPLA step parts:"))
        .unwrap_or_else(|| panic!("{out}"));
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 3, "{line}");
    assert!(nums.iter().all(|&x| x >= 0.0), "{line}");
}

/// `tpla run --kv-dtype fp8` on a latent FP8 cannot hold (64 columns: not a whole 128-column
/// scale group) is refused before any work, and no output is written; an unknown dtype is a
/// usage error. `tpla tune --compile-only` without a kernel cache directory says so.
#[test]
fn fp8_run_and_compile_only_tune_refuse_what_they_cannot_do() {
    let dir = tmp("kv-dtype");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_inputs(&inp, |_| {});
    let (i, o) = (inp.to_str().unwrap(), out.to_str().unwrap());
    expect_error(
        &[
            "run",
            "--inputs",
            i,
            "--out",
            o,
            "--backend",
            "cpu",
            "--kv-dtype",
            "fp8",
        ],
        "multiple of 128",
    );
    assert!(!out.exists(), "a refused run wrote its output");
    expect_error(
        &["run", "--inputs", i, "--out", o, "--kv-dtype", "fp16"],
        "unknown cache dtype `fp16`",
    );
    let o = Command::new(bin())
        .args(["tune", "--compile-only"])
        .env("TPLA_KERNEL_CACHE_DIR", "off")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(2) && err.contains("kernel cache directory"),
        "{:?}: {err}",
        o.status
    );
}
