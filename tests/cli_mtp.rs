//! `tpla run` with multi-token queries: q `[batch, s_q, heads, lat + rope]` gives out
//! `[batch, s_q, heads, lat]` and lse `[batch, s_q, heads]` (and the TPLA pair), causal among the
//! new tokens, against the f64 reference; tokens that see nothing give zeros and `-inf`; an
//! unsupported s_q is a typed error.

use half::bf16;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;

mod common;
use common::*;

const H: usize = 3;
const LAT: usize = 64;
const D: usize = 128;
const PS: usize = 16;
const PAGES: usize = 4;
const SCALE: f64 = 0.1352f32 as f64;

/// The named tensors of a `tpla run` input file (name, dtype, shape, bytes).
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Rank-4 q of `sq` tokens and lengths [50, 2] (the second shorter than s_q = 3 or 4).
fn mtp_inputs(sq: usize) -> impl FnOnce(&mut Tensors) -> Vec<f32> {
    move |t| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(sq as u64);
        let q: Vec<f32> = (0..2 * sq * H * D)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        t[0] = (
            "q".into(),
            Dtype::F32,
            vec![2, sq, H, D],
            q.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
        t[3].3 = [50i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        q
    }
}

fn shape(path: &std::path::Path, name: &str) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().shape().to_vec()
}

#[test]
fn run_with_rank4_q_matches_the_causal_reference() {
    for sq in [2usize, 4] {
        let dir = tmp(&format!("run-mtp-{sq}"));
        let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
        let mut q = Vec::new();
        let (_, pool, table, _) = write_inputs(&inp, |t| q = mtp_inputs(sq)(t));
        let o = tpla(&[
            "run",
            "--inputs",
            inp.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--groups",
            "2",
            "--splits",
            "2",
            "--backend",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(shape(&out, "out"), [2, sq, H, LAT]);
        assert_eq!(shape(&out, "lse"), [2, sq, H]);
        assert_eq!(shape(&out, "out_tpla"), [2, sq, H, LAT]);
        assert_eq!(shape(&out, "lse_tpla"), [2, 2, sq, H]);
        let (got, lse) = (read_f32(&out, "out"), read_f32(&out, "lse"));
        let (got_t, lse_t) = (read_f32(&out, "out_tpla"), read_f32(&out, "lse_tpla"));
        let n = sq * H;
        for (b, len) in [50usize, 2].into_iter().enumerate() {
            let mut rows = Vec::new();
            for t in 0..len {
                let page = table[b * PAGES + t / PS] as usize;
                let off = (page * PS + t % PS) * D;
                rows.extend(pool[off..off + D].iter().map(|x| x.to_f32() as f64));
            }
            let qb: Vec<f64> = q[b * n * D..(b + 1) * n * D]
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32() as f64)
                .collect();
            let want =
                tpla_runtime::reference::latent_attention_causal(&qb, &rows, sq, H, LAT, 64, SCALE);
            let shards: Vec<_> = (0..2)
                .map(|i| {
                    tpla_runtime::reference::tpla_shard_attention_causal(
                        &qb, &rows, sq, H, LAT, 64, SCALE, 2, i,
                    )
                })
                .collect();
            for r in 0..n {
                let what = format!("s_q {sq} seq {b} row {r}");
                let g: Vec<f64> = got[(b * n + r) * LAT..(b * n + r + 1) * LAT]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let l = lse[b * n + r] as f64;
                if want.lse[r] == f64::NEG_INFINITY {
                    assert!(g.iter().all(|&x| x == 0.0), "{what}: sees nothing");
                    assert_eq!(l, f64::NEG_INFINITY, "{what}");
                    assert!(
                        (0..2).all(|i| lse_t[(i * 2 + b) * n + r] == f32::NEG_INFINITY),
                        "{what}"
                    );
                    continue;
                }
                let e = tpla_runtime::reference::rel_error(&g, &want.out[r * LAT..(r + 1) * LAT]);
                assert!(e < 1e-5, "{what}: {e}");
                assert!(
                    (l - want.lse[r]).abs() < 1e-4,
                    "{what}: lse {l} vs {}",
                    want.lse[r]
                );
                for (i, s) in shards.iter().enumerate() {
                    let w = LAT / 2;
                    let at = (b * n + r) * LAT + i * w;
                    let gt: Vec<f64> = got_t[at..at + w].iter().map(|&x| x as f64).collect();
                    let e = tpla_runtime::reference::rel_error(&gt, &s.out[r * w..(r + 1) * w]);
                    assert!(e < 1e-5, "{what} shard {i}: {e}");
                    let lt = lse_t[(i * 2 + b) * n + r] as f64;
                    assert!((lt - s.lse[r]).abs() < 1e-4, "{what} shard {i}: lse {lt}");
                }
            }
        }
    }
}

#[test]
fn run_with_more_than_four_query_tokens_is_a_typed_error() {
    run_with(
        "run-mtp-5",
        |t| {
            let q = mtp_inputs(5)(t);
            assert_eq!(q.len(), 2 * 5 * H * D);
        },
        "s_q (1 to 4)",
    );
}
