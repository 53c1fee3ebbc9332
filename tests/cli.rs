//! End-to-end tests of the `tpla` binary: the main job, `run` against the f64 reference, and the
//! typed errors (clear message, exit status 2, no panic) for bad input.

use half::bf16;
use safetensors::Dtype;

mod common;
use common::*;

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
    assert!(out.contains("host gemm: "), "{out}");
    assert!(out.contains("cuda"), "{out}");
    assert!(out.contains("nccl  "), "{out}");
}

#[test]
fn tune_then_decode_uses_the_tuned_config_and_survives_a_corrupt_file() {
    let dir = tmp("tune");
    let run = |args: &[&str]| tpla_with_tune_dir(&dir, args);
    // A one-sequence CPU tune of DeepSeek-V2-Lite at `context` tokens, `extra` args after.
    let tune = |context: &str, extra: &[&str]| {
        let mut args = vec![
            "tune",
            "--backend",
            "cpu",
            "--batch",
            "1",
            "--context",
            context,
        ];
        args.extend(["--reps", "1", "--preset", "deepseek-v2-lite"]);
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let o = tune("128", &["--var-len"]);
    // Format 2: each winner is stored with the split policy it was fastest with (both timed).
    let tuned = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a tune file");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tuned).unwrap()).unwrap();
    assert_eq!(file["format"], tpla_runtime::tune::TUNE_FORMAT, "{file}");
    for (key, e) in file["entries"].as_object().unwrap() {
        let p = e["split_policy"].as_str().unwrap_or_default();
        assert!(p == "uniform" || p == "balanced", "{key}: {e}");
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(" balanced"),
        "the balanced policy was timed: {stdout}"
    );
    // At 2048 tokens up to 4 splits are allowed (512 tokens each): the winner is also timed at
    // other uniform counts, and a count stored with it is a uniform one within that bound.
    let o = tune("2048", &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let counts: std::collections::BTreeSet<&str> = stdout
        .split_whitespace()
        .filter(|w| w.starts_with("splits="))
        .collect();
    assert!(counts.len() >= 3, "several split counts timed: {stdout}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tuned).unwrap()).unwrap();
    for (key, e) in file["entries"].as_object().unwrap() {
        if let Some(n) = e.get("splits") {
            assert_eq!(e["split_policy"], "uniform", "{key}: {e}");
            assert!((1..=4).contains(&n.as_u64().unwrap()), "{key}: {e}");
        }
    }
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
        o.status.success() && out.contains("kernel configs: tuned") && out.contains(" splits from"),
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

/// `tpla tune --heads N` tunes the shape one rank of a head-split form decodes (its bucket names
/// N heads, not the preset's), and a head count past the limit is refused naming the flag.
#[test]
fn tune_for_a_rank_head_count() {
    let dir = tmp("tune-heads");
    let o = tpla_with_tune_dir(
        &dir,
        &[
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
            "64",
            "--reps",
            "1",
            "--preset",
            "deepseek-v2-lite",
            "--heads",
            "8",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a tune file");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("latent_decode/H8-lat512+64-B1-L64"), "{text}");
    let o = tpla_with_tune_dir(&dir, &["tune", "--backend", "cpu", "--heads", "100000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--heads"), "{err}");
}
