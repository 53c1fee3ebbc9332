//! Helpers shared by the `tpla` binary's end-to-end tests (`tests/cli*.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::bf16;
use rand::{Rng, SeedableRng};
use safetensors::{tensor::TensorView, Dtype};

/// The binary under test: `TPLA_BIN` when set (a GPU host runs a copied test binary next to a
/// copied `tpla`), else the one cargo built.
pub fn bin() -> String {
    std::env::var("TPLA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tpla").to_string())
}

/// `tpla args` with its tune database in `dir`.
pub fn tpla_with_tune_dir(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TPLA_TUNE_DIR", dir)
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .expect("the binary runs")
}

pub fn tpla(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TPLA_REQUIRE_GPU", "0")
        .output()
        .expect("the binary runs")
}

/// Runs `tpla args`, asserts success, returns stdout.
pub fn tpla_ok(args: &[&str]) -> String {
    let o = tpla(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{args:?}: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpla-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a `tpla run` input file; `edit` may change any tensor before writing.
pub fn write_inputs(
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

pub fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn expect_error(args: &[&str], needle: &str) {
    let o = tpla(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: {err}");
    assert!(
        err.contains(needle),
        "args {args:?}: expected `{needle}` in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

pub fn run_with(
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

/// The JSON files `tpla bench` wrote into `dir`.
pub fn bench_reports(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}
