//! `tpla run` as a library ([`tpla::run`]) on random inputs: shapes, dtypes, lengths, page ids
//! (bad ones included), non-finite values and empty sequences. Never a panic; either a clean
//! error or outputs that agree with the f64 reference, with the documented edge cases
//! (empty sequence: out 0, LSE -inf; a non-finite input: that (sequence, head) NaN).

use std::sync::OnceLock;

use half::bf16;
use proptest::prelude::*;
use safetensors::{tensor::TensorView, Dtype};
use tpla::run::{read_inputs, run_decode, RunOutputs};
use tpla_runtime::reference::{latent_attention, rel_error, tpla_shard_attention};
use tpla_runtime::CpuExecutor;

fn exec() -> &'static CpuExecutor {
    static EXEC: OnceLock<CpuExecutor> = OnceLock::new();
    EXEC.get_or_init(|| CpuExecutor::new(2).expect("a CPU executor"))
}

/// One random case: the tensors (possibly damaged) and the options.
#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    heads: usize,
    lat: usize,
    rope: usize,
    page_size: usize,
    pages_per_seq: usize,
    num_pages: usize,
    /// Page ids (may be out of range).
    table: Vec<i32>,
    /// Lengths (may be negative or past the table).
    lens: Vec<i32>,
    q: Vec<f32>,
    pool: Vec<f32>,
    q_bf16: bool,
    groups: usize,
    splits: usize,
    /// 0: none; 1: drop `block_table`; 2: cache as F16; 3: q of rank 2; 4: rope past the row.
    damage: u8,
}

fn finite_or_not() -> impl Strategy<Value = f32> {
    prop_oneof![
        30 => -1.0f32..1.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=4,
        prop_oneof![Just(32usize), Just(64)],
        prop_oneof![Just(16usize), Just(64)],
        1usize..=12,
        1usize..=3,
        prop_oneof![Just(1usize), Just(2), Just(3), Just(4)],
        1usize..=5,
        any::<bool>(),
        prop_oneof![6 => Just(0u8), 1 => 1u8..=4],
    )
        .prop_flat_map(
            |(batch, heads, lat, rope, page_size, pps, groups, splits, q_bf16, damage)| {
                let d = lat + rope;
                let pages = batch * pps;
                let cap = (pps * page_size) as i32;
                (
                    // Page pool: sometimes one page short, so some ids are out of range.
                    prop_oneof![8 => Just(pages), 1 => Just(pages.saturating_sub(1))],
                    proptest::collection::vec(
                        prop_oneof![60 => 0..pages as i32, 1 => Just(-1i32), 1 => Just(pages as i32)],
                        pages,
                    ),
                    proptest::collection::vec(
                        prop_oneof![16 => 0..=cap, 2 => Just(0), 1 => Just(cap + 1), 1 => Just(-3)],
                        batch,
                    ),
                    proptest::collection::vec(finite_or_not(), batch * heads * d),
                    proptest::collection::vec(
                        prop_oneof![200 => -1.0f32..1.0, 1 => Just(f32::NAN)],
                        pages * page_size * d,
                    ),
                )
                    .prop_map(move |(num_pages, table, lens, q, pool)| Case {
                        batch,
                        heads,
                        lat,
                        rope,
                        page_size,
                        pages_per_seq: pps,
                        num_pages,
                        table,
                        lens,
                        q,
                        pool,
                        q_bf16,
                        groups,
                        splits,
                        damage,
                    })
            },
        )
}

fn le<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// The safetensors bytes of a case.
fn file(c: &Case) -> Vec<u8> {
    let d = c.lat + c.rope;
    let pool = &c.pool[..c.num_pages * c.page_size * d];
    let mut t: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        if c.q_bf16 {
            let q = le(&c.q, |x| bf16::from_f32(x).to_bits().to_le_bytes().to_vec());
            ("q", Dtype::BF16, vec![c.batch, c.heads, d], q)
        } else {
            let q = le(&c.q, |x| x.to_le_bytes().to_vec());
            ("q", Dtype::F32, vec![c.batch, c.heads, d], q)
        },
        (
            "cache",
            Dtype::BF16,
            vec![c.num_pages, c.page_size, d],
            le(pool, |x| bf16::from_f32(x).to_bits().to_le_bytes().to_vec()),
        ),
        (
            "block_table",
            Dtype::I32,
            vec![c.batch, c.pages_per_seq],
            le(&c.table, |x| x.to_le_bytes().to_vec()),
        ),
        (
            "seq_lens",
            Dtype::I32,
            vec![c.batch],
            le(&c.lens, |x| x.to_le_bytes().to_vec()),
        ),
        ("scale", Dtype::F32, vec![], 0.125f32.to_le_bytes().to_vec()),
    ];
    match c.damage {
        1 => t.retain(|x| x.0 != "block_table"),
        2 => {
            t[1].1 = Dtype::F16;
        }
        3 => t[0].2 = vec![c.batch, c.heads * d],
        _ => {}
    }
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .map(|(n, dt, s, data)| {
            (
                n.to_string(),
                TensorView::new(*dt, s.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &None).unwrap()
}

/// Whether the case is valid input, by the documented rules (not by calling tpla).
fn valid(c: &Case) -> bool {
    let cap = (c.pages_per_seq * c.page_size) as i32;
    c.damage == 0
        && c.table
            .iter()
            .all(|&p| p >= 0 && (p as usize) < c.num_pages)
        && c.lat.is_multiple_of(c.groups)
        && c.lens.iter().all(|&l| (0..=cap).contains(&l))
}

/// Checks a successful run against the f64 reference and the documented edge cases.
fn check(c: &Case, r: &RunOutputs) -> Result<(), TestCaseError> {
    let (b, h, lat, rope) = (c.batch, c.heads, c.lat, c.rope);
    let d = lat + rope;
    let w = lat / c.groups;
    let round = |x: f32| bf16::from_f32(x).to_f32() as f64;
    let fin = |v: &[f64]| v.iter().all(|x| x.is_finite());
    let mut poisoned = 0;
    for s in 0..b {
        let len = c.lens[s] as usize;
        let mut rows = Vec::with_capacity(len * d);
        for t in 0..len {
            let page = c.table[s * c.pages_per_seq + t / c.page_size] as usize;
            let off = (page * c.page_size + t % c.page_size) * d;
            rows.extend(c.pool[off..off + d].iter().map(|&x| round(x)));
        }
        let q: Vec<f64> = c.q[s * h * d..(s + 1) * h * d]
            .iter()
            .map(|&x| round(x))
            .collect();
        let want = latent_attention(&q, &rows, h, lat, rope, 0.125);
        let shards: Vec<_> = (0..c.groups)
            .map(|i| tpla_shard_attention(&q, &rows, h, lat, rope, 0.125, c.groups, i))
            .collect();
        // Columns of group i: its latent slice and the RoPE part.
        let cols =
            |i: usize, row: &[f64]| -> bool { fin(&row[i * w..(i + 1) * w]) && fin(&row[lat..d]) };
        for hh in 0..h {
            let bh = s * h + hh;
            let out = &r.out[bh * lat..(bh + 1) * lat];
            let qh = &q[hh * d..(hh + 1) * d];
            if len == 0 {
                prop_assert!(out.iter().all(|&x| x == 0.0), "empty sequence: out 0");
                prop_assert_eq!(r.lse[bh], f32::NEG_INFINITY);
            } else if !fin(qh) || !fin(&rows) {
                poisoned += 1;
                prop_assert!(out.iter().all(|x| x.is_nan()) && r.lse[bh].is_nan());
            } else {
                let got: Vec<f64> = out.iter().map(|&x| x as f64).collect();
                let e = rel_error(&got, &want.out[hh * lat..(hh + 1) * lat]);
                prop_assert!(e < 1e-4, "out rel err {e}");
                let l = (r.lse[bh] as f64 - want.lse[hh]).abs();
                prop_assert!(l < 1e-4 * want.lse[hh].abs().max(1.0), "lse off by {l}");
            }
            let Some((ot, lt)) = &r.tpla else {
                prop_assert_eq!(c.groups, 1);
                continue;
            };
            for (i, sh) in shards.iter().enumerate() {
                let got = &ot[bh * lat + i * w..bh * lat + (i + 1) * w];
                let lse = lt[(i * b + s) * h + hh];
                let bad = !cols(i, qh) || rows.chunks(d).any(|row| !cols(i, row));
                if len == 0 {
                    prop_assert!(got.iter().all(|&x| x == 0.0));
                    prop_assert_eq!(lse, f32::NEG_INFINITY);
                } else if bad {
                    prop_assert!(got.iter().all(|x| x.is_nan()) && lse.is_nan());
                } else {
                    let g: Vec<f64> = got.iter().map(|&x| x as f64).collect();
                    let e = rel_error(&g, &sh.out[hh * w..(hh + 1) * w]);
                    prop_assert!(e < 1e-4, "shard {i} rel err {e}");
                    let l = (lse as f64 - sh.lse[hh]).abs();
                    prop_assert!(l < 1e-4 * sh.lse[hh].abs().max(1.0), "shard lse off {l}");
                }
            }
        }
    }
    prop_assert_eq!(r.non_finite, poisoned);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn run_never_panics_and_agrees_with_the_reference(c in case()) {
        let rope = if c.damage == 4 { c.lat + c.rope } else { c.rope };
        let result = read_inputs(&file(&c), rope)
            .and_then(|inputs| run_decode(exec(), &inputs, c.groups, c.splits));
        match result {
            Ok(r) => {
                prop_assert!(valid(&c), "accepted a bad case: {c:?}");
                check(&c, &r)?;
            }
            Err(e) => {
                prop_assert!(!valid(&c), "refused a good case: {e}");
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

/// A known-good case (the shapes the CLI test uses) runs: the property above is not vacuous.
#[test]
fn a_plain_case_runs_and_agrees() {
    let (batch, heads, lat, rope, ps, pps) = (2, 3, 64, 64, 16, 4);
    let d = lat + rope;
    let c = Case {
        batch,
        heads,
        lat,
        rope,
        page_size: ps,
        pages_per_seq: pps,
        num_pages: batch * pps,
        table: (0..(batch * pps) as i32).rev().collect(),
        lens: vec![50, 0],
        q: (0..batch * heads * d)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
            .collect(),
        pool: (0..batch * pps * ps * d)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect(),
        q_bf16: false,
        groups: 2,
        splits: 3,
        damage: 0,
    };
    let inputs = read_inputs(&file(&c), rope).unwrap();
    let r = run_decode(exec(), &inputs, 2, 3).unwrap();
    check(&c, &r).unwrap();
}

/// A NaN in a cache row past a sequence's length is never read: the output stays finite.
#[test]
fn nan_past_the_length_is_ignored() {
    let (lat, rope, ps) = (64, 64, 16);
    let d = lat + rope;
    let mut pool: Vec<f32> = (0..2 * ps * d)
        .map(|i| ((i % 9) as f32 - 4.0) / 4.0)
        .collect();
    pool[(ps + 3) * d + 1] = f32::NAN; // token 19 of a 10-token sequence
    let c = Case {
        batch: 1,
        heads: 2,
        lat,
        rope,
        page_size: ps,
        pages_per_seq: 2,
        num_pages: 2,
        table: vec![0, 1],
        lens: vec![10],
        q: (0..2 * d).map(|i| ((i % 5) as f32 - 2.0) / 2.0).collect(),
        pool,
        q_bf16: true,
        groups: 1,
        splits: 2,
        damage: 0,
    };
    let r = run_decode(exec(), &read_inputs(&file(&c), rope).unwrap(), 1, 2).unwrap();
    assert_eq!(r.non_finite, 0);
    check(&c, &r).unwrap();
}

/// `run_decode_as` with the FP8 cache: every shard's rows are quantised before the kernels, so
/// MLA and TPLA (g = 2, shards of 128) agree with the f64 reference over the rows dequantised by
/// the format (a full row's 128-column scale groups are the shards' own), and differ from the
/// bf16 run by the cache's rounding. A shard width FP8 cannot hold is a typed error.
#[test]
fn fp8_cache_runs_agree_with_the_reference_over_dequantised_rows() {
    use tpla::codegen::kv_format::{dequantise_row, quantise_row};
    use tpla::engine::KvDtype;
    use tpla::run::run_decode_as;
    let (batch, heads, lat, rope, ps, pps) = (2, 3, 256, 64, 16, 4);
    let d = lat + rope;
    let pool: Vec<f32> = (0..batch * pps * ps * d)
        .map(|i| bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 17.0).to_f32())
        .collect();
    let c = Case {
        batch,
        heads,
        lat,
        rope,
        page_size: ps,
        pages_per_seq: pps,
        num_pages: batch * pps,
        table: vec![7, 2, 5, 0, 1, 6, 3, 4],
        lens: vec![50, 17],
        q: (0..batch * heads * d)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
            .collect(),
        pool,
        q_bf16: true,
        groups: 2,
        splits: 3,
        damage: 0,
    };
    let inputs = read_inputs(&file(&c), rope).unwrap();
    let fp8 = run_decode_as(exec(), &inputs, 2, 3, KvDtype::Fp8).unwrap();
    let plain = run_decode(exec(), &inputs, 2, 3).unwrap();
    let dequantised = Case {
        pool: c
            .pool
            .chunks(d)
            .flat_map(|r| dequantise_row(&quantise_row(r, lat), lat, d))
            .collect(),
        ..c.clone()
    };
    check(&dequantised, &fp8).unwrap();
    let diff = fp8
        .out
        .iter()
        .zip(&plain.out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-4 && diff < 0.2, "FP8 vs bf16 cache: {diff}");
    let e = run_decode_as(exec(), &inputs, 4, 3, KvDtype::Fp8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 128"), "{e}");
}
