//! End-to-end tests of the `tpla` binary: the main job, `run` against the f64 reference, and the
//! typed errors (clear message, exit status 2, no panic) for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::bf16;
use rand::{Rng, SeedableRng};
use safetensors::{tensor::TensorView, Dtype};

/// The binary under test: `TPLA_BIN` when set (a GPU host runs a copied test binary next to a
/// copied `tpla`), else the one cargo built.
fn bin() -> String {
    std::env::var("TPLA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tpla").to_string())
}

/// `tpla args` with its tune database in `dir`.
fn tpla_with_tune_dir(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TPLA_TUNE_DIR", dir)
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .expect("the binary runs")
}

fn tpla(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .expect("the binary runs")
}

/// Runs `tpla args`, asserts success, returns stdout.
fn tpla_ok(args: &[&str]) -> String {
    let o = tpla(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpla-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a `tpla run` input file; `edit` may change any tensor before writing.
fn write_inputs(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> (Vec<f32>, Vec<bf16>, Vec<i32>, Vec<i32>) {
    let (b, h, lat, rope, ps, pages) = (2usize, 3usize, 64usize, 64usize, 16usize, 4usize);
    let d = lat + rope;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let q: Vec<f32> = (0..b * h * d)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let pool: Vec<bf16> = (0..b * pages * ps * d)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
        .collect();
    let table: Vec<i32> = (0..(b * pages) as i32).rev().collect();
    let lens = vec![50i32, 9];
    let mut t: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "q".into(),
            Dtype::F32,
            vec![b, h, d],
            q.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            "cache".into(),
            Dtype::BF16,
            vec![b * pages, ps, d],
            pool.iter()
                .flat_map(|x| x.to_bits().to_le_bytes())
                .collect(),
        ),
        (
            "block_table".into(),
            Dtype::I32,
            vec![b, pages],
            table.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            "seq_lens".into(),
            Dtype::I32,
            vec![b],
            lens.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            "scale".into(),
            Dtype::F32,
            vec![],
            0.1352f32.to_le_bytes().to_vec(),
        ),
    ];
    edit(&mut t);
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .map(|(n, dt, s, data)| (n.clone(), TensorView::new(*dt, s.clone(), data).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
    (q, pool, table, lens)
}

fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn run_matches_the_f64_reference_for_mla_and_tpla() {
    check_run("cpu", 1e-5);
}

/// `tpla run --backend cuda` on a GPU host (bf16 tensor cores: bf16 tolerance). Skips with a
/// message without a GPU; fails instead when TPLA_REQUIRE_GPU=1.
#[test]
fn run_on_cuda_matches_the_f64_reference() {
    let o = tpla(&["info"]);
    let info = String::from_utf8_lossy(&o.stdout);
    if !info.contains("cuda  available") {
        assert!(
            std::env::var("TPLA_REQUIRE_GPU").as_deref() != Ok("1"),
            "TPLA_REQUIRE_GPU=1 but: {info}"
        );
        eprintln!(
            "SKIP run_on_cuda_matches_the_f64_reference: no usable GPU ({})",
            info.lines().last().unwrap_or("")
        );
        return;
    }
    check_run("cuda", 1e-2);
}

fn check_run(backend: &str, tol: f64) {
    let dir = tmp(&format!("run-ok-{backend}"));
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let (q, pool, table, lens) = write_inputs(&inp, |_| {});
    let o = tpla(&[
        "run",
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--groups",
        "2",
        "--backend",
        backend,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("on {backend}")),
        "says which backend ran"
    );
    let (h, lat, d, ps, pages) = (3, 64, 128, 16, 4);
    let got = read_f32(&out, "out");
    let got_tpla = read_f32(&out, "out_tpla");
    for b in 0..2 {
        let mut rows = Vec::new();
        for t in 0..lens[b] as usize {
            let page = table[b * pages + t / ps] as usize;
            let off = (page * ps + t % ps) * d;
            rows.extend(pool[off..off + d].iter().map(|x| x.to_f32() as f64));
        }
        let qb: Vec<f64> = q[b * h * d..(b + 1) * h * d]
            .iter()
            .map(|&x| bf16::from_f32(x).to_f32() as f64)
            .collect();
        let r = tpla_runtime::reference::latent_attention(&qb, &rows, h, lat, 64, 0.1352f32 as f64);
        let g: Vec<f64> = got[b * h * lat..(b + 1) * h * lat]
            .iter()
            .map(|&x| x as f64)
            .collect();
        assert!(tpla_runtime::reference::rel_error(&g, &r.out) < tol);
        let rt =
            tpla_runtime::reference::tpla_attention(&qb, &rows, h, lat, 64, 0.1352f32 as f64, 2);
        let gt: Vec<f64> = got_tpla[b * h * lat..(b + 1) * h * lat]
            .iter()
            .map(|&x| x as f64)
            .collect();
        assert!(tpla_runtime::reference::rel_error(&gt, &rt) < tol);
    }
}

fn expect_error(args: &[&str], needle: &str) {
    let o = tpla(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: {err}");
    assert!(
        err.contains(needle),
        "args {args:?}: expected `{needle}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn run_with(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
    needle: &str,
) {
    let dir = tmp(name);
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_inputs(&inp, edit);
    expect_error(
        &[
            "run",
            "--inputs",
            inp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        needle,
    );
    assert!(!out.exists(), "no output on error");
}

#[test]
fn run_missing_tensor() {
    run_with(
        "missing",
        |t| t.retain(|x| x.0 != "block_table"),
        "no tensor named `block_table`",
    );
}

#[test]
fn run_misshaped_tensor() {
    run_with(
        "shape",
        |t| t[3].2 = vec![2, 1],
        "tensor `seq_lens` has shape [2, 1]",
    );
    run_with(
        "shape-q",
        |t| t[0].2 = vec![2, 3 * 128],
        "tensor `q` has shape",
    );
}

#[test]
fn run_wrong_dtype() {
    run_with(
        "dtype",
        |t| {
            let c = &mut t[1];
            c.1 = Dtype::F16;
        },
        "tensor `cache` has dtype F16, expected BF16",
    );
}

#[test]
fn run_length_beyond_block_table() {
    run_with(
        "len",
        |t| t[3].3 = [65i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect(),
        "past the cache capacity of 64 tokens",
    );
}

#[test]
fn run_zero_heads() {
    run_with(
        "heads",
        |t| {
            t[0].2 = vec![2, 0, 128];
            t[0].3 = vec![];
        },
        "heads must be at least 1",
    );
}

#[test]
fn run_page_size_zero() {
    run_with(
        "ps0",
        |t| {
            t[1].2 = vec![8, 0, 128];
            t[1].3 = vec![];
        },
        "tensor `cache` has shape [8, 0, 128]",
    );
}

#[test]
fn decode_rejects_g_not_dividing_512() {
    expect_error(
        &["decode", "--g", "3", "--backend", "cpu"],
        "g = 3 must divide the latent width 512",
    );
}

#[test]
fn decode_rejects_page_size_zero() {
    expect_error(
        &[
            "decode",
            "--page-size",
            "0",
            "--backend",
            "cpu",
            "--context",
            "64",
            "--steps",
            "1",
        ],
        "page size must be positive",
    );
}

// ---- Issue 16 (task C2): bounded sizes, early output-path checks, non-finite inputs, honest
// timings. Kept together here; other blocks go at the end of the file.

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

// ---- end of the issue 16 (task C2) block.

#[test]
fn decode_main_job_runs_and_checks_itself() {
    let out = tpla_ok(&[
        "decode",
        "--backend",
        "cpu",
        "--batch",
        "2",
        "--context",
        "300",
        "--steps",
        "3",
        "--preset",
        "deepseek-v2-lite",
    ]);
    assert!(out.contains("per-device speedup TPLA vs MLA"), "{out}");
    assert!(out.contains("(ok)"), "{out}");
}

#[test]
fn info_lists_backends() {
    let o = tpla(&["info"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(out.contains("cpu   available"), "{out}");
    assert!(out.contains("cuda"), "{out}");
}

#[test]
fn tune_then_decode_uses_the_tuned_config_and_survives_a_corrupt_file() {
    let dir = tmp("tune");
    let run = |args: &[&str]| tpla_with_tune_dir(&dir, args);
    let o = run(&[
        "tune",
        "--backend",
        "cpu",
        "--batch",
        "1",
        "--context",
        "128",
        "--reps",
        "1",
        "--preset",
        "deepseek-v2-lite",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let decode = [
        "decode",
        "--backend",
        "cpu",
        "--batch",
        "1",
        "--context",
        "126",
        "--steps",
        "2",
        "--preset",
        "deepseek-v2-lite",
    ];
    let o = run(&decode);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("kernel configs: tuned"),
        "{out}"
    );
    for f in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(f.unwrap().path(), "{ not json").unwrap();
    }
    let o = run(&decode);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "a corrupt tune file never stops a decode: {err}"
    );
    assert!(
        err.contains("unusable") && out.contains("kernel configs: defaults"),
        "{err}\n{out}"
    );
}

/// Whether `tpla info` reports a usable GPU (skip message printed when not; a failure instead
/// when TPLA_REQUIRE_GPU=1).
fn gpu_or_skip(test: &str) -> bool {
    let o = tpla(&["info"]);
    let info = String::from_utf8_lossy(&o.stdout);
    if info.contains("cuda  available") {
        return true;
    }
    assert!(
        std::env::var("TPLA_REQUIRE_GPU").as_deref() != Ok("1"),
        "TPLA_REQUIRE_GPU=1 but: {info}"
    );
    eprintln!("SKIP {test}: no usable GPU");
    false
}

/// The JSON files `tpla bench` wrote into `dir`.
fn bench_reports(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bench_on_the_cpu_writes_a_report() {
    let dir = tmp("bench-cpu");
    tpla_ok(&[
        "bench",
        "--backend",
        "cpu",
        "--batch",
        "1",
        "--heads",
        "4",
        "--context",
        "96",
        "--lat",
        "64",
        "--reps",
        "2",
        "--threads",
        "1",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    let r = bench_reports(&dir);
    assert_eq!(r.len(), 1, "one report in {}", dir.display());
    assert!(r[0]["jit_ms"].as_f64().is_some_and(|t| t > 0.0), "{}", r[0]);
    assert!(r[0]["read_roofline_gbps"].as_f64().is_some_and(|g| g > 0.0));
}

#[test]
fn bench_rejects_zero_gpu_heads_or_a_missing_gpu() {
    if gpu_or_skip("bench_rejects_zero_gpu_heads_or_a_missing_gpu") {
        expect_error(
            &["bench", "--backend", "cuda", "--gpu-heads", "0"],
            "--gpu-heads",
        );
    } else {
        expect_error(&["bench", "--backend", "cuda"], "cuda");
    }
}

/// `tpla bench --backend cuda` on a GPU host, one small slice of the matrix: a JSON report with
/// the device, a roofline, compile times and a timed case.
#[test]
fn bench_on_cuda_writes_a_report() {
    if !gpu_or_skip("bench_on_cuda_writes_a_report") {
        return;
    }
    let dir = tmp("bench-cuda");
    tpla_ok(&[
        "bench",
        "--backend",
        "cuda",
        "--quick",
        "--variant",
        "tpla-shard",
        "--gpu-heads",
        "64",
        "--config",
        "BLOCK_H=64,STAGES=2",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    let r = bench_reports(&dir);
    assert_eq!(r.len(), 1);
    let text = r[0].to_string();
    for key in ["read_gbps", "copy_gbps", "cases", "device", "driver"] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
    let cases = r[0]["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 1);
    assert!(cases[0]["fraction_of_read_roofline"]
        .as_f64()
        .is_some_and(|f| f > 0.0));
}

#[test]
fn decode_over_two_cpu_ranks_checks_itself() {
    let out = tpla_ok(&[
        "decode",
        "--devices",
        "2",
        "--backend",
        "cpu",
        "--preset",
        "deepseek-v2-lite",
        "--batch",
        "2",
        "--context",
        "200",
        "--steps",
        "3",
        "--page-size",
        "16",
    ]);
    assert!(out.contains("TPLA g=2 (+ all-reduce)"), "{out}");
    assert!(
        out.contains("vs f64 reference (sequence 0)") && out.contains("(ok)"),
        "{out}"
    );
}

#[test]
fn decode_devices_must_divide_latent_and_heads() {
    expect_error(
        &["decode", "--devices", "3", "--backend", "cpu"],
        "divide the latent",
    );
    expect_error(
        &["decode", "--devices", "0", "--backend", "cpu"],
        "--devices",
    );
    expect_error(
        &[
            "decode",
            "--devices",
            "32",
            "--backend",
            "cpu",
            "--preset",
            "deepseek-v2-lite",
        ],
        "divide the 16 heads",
    );
}

/// On a GPU host with fewer GPUs than ranks, `--backend cuda` names the missing device.
#[test]
fn decode_on_more_gpus_than_present_is_a_typed_error() {
    if !gpu_or_skip("decode_on_more_gpus_than_present_is_a_typed_error") {
        return;
    }
    expect_error(
        &[
            "decode",
            "--devices",
            "64",
            "--backend",
            "cuda",
            "--preset",
            "deepseek-v3",
        ],
        "rank",
    );
}

/// `tpla decode --devices k` reads the tune database of each rank's device, like `tpla decode`.
#[test]
fn decode_over_ranks_uses_the_tuned_config_of_each_rank() {
    let dir = tmp("tune-tp");
    let run = |args: &[&str]| tpla_with_tune_dir(&dir, args);
    // One thread: the identity of each of two CPU ranks sharing two threads.
    let o = run(&[
        "tune",
        "--backend",
        "cpu",
        "--threads",
        "1",
        "--batch",
        "2",
        "--context",
        "128",
        "--reps",
        "1",
        "--preset",
        "deepseek-v2-lite",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        "decode",
        "--devices",
        "2",
        "--backend",
        "cpu",
        "--threads",
        "2",
        "--batch",
        "2",
        "--context",
        "126",
        "--steps",
        "2",
        "--page-size",
        "16",
        "--preset",
        "deepseek-v2-lite",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("kernel configs: tuned") && out.contains("(ok)"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

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

/// Writes a format-1 tune file for the one-thread CPU device: `(bucket, config)` entries.
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
    let file = serde_json::json!({"format": 1, "device": device, "entries": entries});
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
