//! Multi-token decode through the engine API on the CPU backend: q `[batch, s_q, heads, lat +
//! rope]` over engine-owned memory (shuffled pages, uneven lengths, an empty sequence and ones
//! shorter than s_q), one split and three, against the f64 causal reference; rank-3 q keeps
//! working; a query length the plan was not sized for is a typed error that writes nothing.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention_causal, rel_error};
use tpla_runtime::view::{KvPool, TensorView, TensorViewMut};
use tpla_runtime::CpuExecutor;

const HEADS: usize = 8;
const LAT: usize = 64;
const ROPE: usize = 64;
const ROW: usize = LAT + ROPE;
const PAGE: usize = 16;
const PPS: usize = 5;
const LENS: [i32; 5] = [0, 1, 3, 37, 70];
const SCALE: f32 = 0.125;

fn caps() -> Capacities {
    Capacities {
        max_batch: LENS.len(),
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: 8,
        kv_dtype: KvDtype::Bf16,
    }
}

/// The engine's memory: a pool with shuffled pages, block table and lengths.
struct Mem {
    pool: Vec<bf16>,
    table: Vec<i32>,
    rows: Vec<Vec<bf16>>,
    rng: rand::rngs::StdRng,
}

fn mem(seed: u64) -> Mem {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let b = LENS.len();
    let mut pages: Vec<i32> = (0..(b * PPS) as i32).collect();
    pages.shuffle(&mut rng);
    // Finite garbage where no length reaches.
    let mut pool: Vec<bf16> = (0..b * PPS * PAGE * ROW)
        .map(|_| bf16::from_f32(rng.gen_range(50.0..100.0)))
        .collect();
    let mut rows = Vec::new();
    for (s, &len) in LENS.iter().enumerate() {
        let r: Vec<bf16> = (0..len as usize * ROW)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        for t in 0..len as usize {
            let page = pages[s * PPS + t / PAGE] as usize;
            let at = (page * PAGE + t % PAGE) * ROW;
            pool[at..at + ROW].copy_from_slice(&r[t * ROW..(t + 1) * ROW]);
        }
        rows.push(r);
    }
    Mem {
        pool,
        table: pages,
        rows,
        rng,
    }
}

fn f64s(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Decodes `sq` tokens per sequence (rank-4 q unless `rank3`) with NaN-poisoned outputs.
fn decode(
    plan: &mut EnginePlan<CpuExecutor>,
    exec: &CpuExecutor,
    m: &mut Mem,
    sq: usize,
    rank3: bool,
) -> (
    Result<(), tpla_runtime::RuntimeError>,
    Vec<f32>,
    Vec<f32>,
    Vec<bf16>,
) {
    let b = LENS.len();
    let q: Vec<bf16> = (0..b * sq * HEADS * ROW)
        .map(|_| bf16::from_f32(m.rng.gen_range(-1.0..1.0)))
        .collect();
    let mut out = vec![f32::NAN; b * sq * HEADS * LAT];
    let mut lse = vec![f32::NAN; b * sq * HEADS];
    let (qs, os, ls) = if rank3 {
        (vec![b, HEADS, ROW], vec![b, HEADS, LAT], vec![b, HEADS])
    } else {
        (
            vec![b, sq, HEADS, ROW],
            vec![b, sq, HEADS, LAT],
            vec![b, sq, HEADS],
        )
    };
    let r = {
        let pool = KvPool::new(&mut m.pool, PAGE, ROW).unwrap();
        let bt = TensorView::new(&m.table, &[b, PPS]).unwrap();
        let lens = TensorView::new(&LENS, &[b]).unwrap();
        let qv = TensorView::new(&q, &qs).unwrap();
        let mut ov = TensorViewMut::new(&mut out, &os).unwrap();
        let mut lv = TensorViewMut::new(&mut lse, &ls).unwrap();
        plan.decode(exec, &pool, &bt, &lens, &qv, (&mut ov, &mut lv))
    };
    (r, out, lse, q)
}

fn check(m: &Mem, sq: usize, out: &[f32], lse: &[f32], q: &[bf16], what: &str) {
    let (n, nl, nq) = (sq * HEADS * LAT, sq * HEADS, sq * HEADS * ROW);
    for (b, &len) in LENS.iter().enumerate() {
        let want = latent_attention_causal(
            &f64s(&q[b * nq..(b + 1) * nq]),
            &f64s(&m.rows[b]),
            sq,
            HEADS,
            LAT,
            ROPE,
            SCALE as f64,
        );
        for r in 0..sq * HEADS {
            let o = &out[b * n + r * LAT..b * n + (r + 1) * LAT];
            let l = lse[b * nl + r];
            let what = format!("{what}: seq {b} (len {len}) row {r}");
            if want.lse[r] == f64::NEG_INFINITY {
                assert!(
                    o.iter().all(|&x| x == 0.0),
                    "{what}: sees nothing, out {o:?}"
                );
                assert!(l < -1e29, "{what}: sees nothing, lse {l}");
            } else {
                let got: Vec<f64> = o.iter().map(|&x| x as f64).collect();
                let e = rel_error(&got, &want.out[r * LAT..(r + 1) * LAT]);
                assert!(e < 1e-4, "{what}: rel error {e}");
                assert!(
                    (l as f64 - want.lse[r]).abs() < 1e-3,
                    "{what}: lse {l} vs {}",
                    want.lse[r]
                );
            }
        }
    }
}

fn play(splits: usize) {
    let exec = CpuExecutor::new(0).unwrap();
    let mut plan = EnginePlan::new(&exec, caps(), SCALE, splits).unwrap();
    assert_eq!(plan.max_query_len(), 1);
    let mut m = mem(splits as u64 + 3);
    // Not reserved yet: rank-4 q with 2 tokens is refused and nothing is written.
    let (r, out, lse, _) = decode(&mut plan, &exec, &mut m, 2, false);
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("query tokens") && e.contains("reserve_query_len"),
        "{e}"
    );
    assert!(out.iter().chain(&lse).all(|x| x.is_nan()));
    plan.reserve_query_len(&exec, 4).unwrap();
    assert_eq!(plan.max_query_len(), 4);
    for sq in [1, 2, 3, 4] {
        let (r, out, lse, q) = decode(&mut plan, &exec, &mut m, sq, false);
        r.unwrap();
        check(&m, sq, &out, &lse, &q, &format!("splits {splits} s_q {sq}"));
    }
    // Rank 3 is one token, as before.
    let (r, out, lse, q) = decode(&mut plan, &exec, &mut m, 1, true);
    r.unwrap();
    check(&m, 1, &out, &lse, &q, &format!("splits {splits} rank 3"));
    let (r, ..) = decode(&mut plan, &exec, &mut m, 5, false);
    assert!(r.unwrap_err().to_string().contains("query tokens"));
    assert!(plan.reserve_query_len(&exec, 5).is_err());
    assert!(plan.reserve_query_len(&exec, 0).is_err());
    assert_eq!(plan.max_query_len(), 4);
}

#[test]
fn multi_token_decode_with_one_split() {
    play(1);
}

#[test]
fn multi_token_decode_with_three_splits() {
    play(3);
}

#[test]
fn rank4_out_of_the_wrong_shape_is_a_typed_error() {
    let exec = CpuExecutor::new(0).unwrap();
    let mut plan = EnginePlan::new(&exec, caps(), SCALE, 2).unwrap();
    plan.reserve_query_len(&exec, 2).unwrap();
    let mut m = mem(9);
    let b = LENS.len();
    let q = vec![bf16::ONE; b * 2 * HEADS * ROW];
    // out as rank 3 with the right element count: refused, not reinterpreted.
    let mut out = vec![f32::NAN; b * 2 * HEADS * LAT];
    let mut lse = vec![f32::NAN; b * 2 * HEADS];
    let pool = KvPool::new(&mut m.pool, PAGE, ROW).unwrap();
    let bt = TensorView::new(&m.table, &[b, PPS]).unwrap();
    let lens = TensorView::new(&LENS, &[b]).unwrap();
    let qv = TensorView::new(&q, &[b, 2, HEADS, ROW]).unwrap();
    let mut ov = TensorViewMut::new(&mut out, &[b, 2 * HEADS, LAT]).unwrap();
    let mut lv = TensorViewMut::new(&mut lse, &[b, 2, HEADS]).unwrap();
    let e = plan
        .decode(&exec, &pool, &bt, &lens, &qv, (&mut ov, &mut lv))
        .unwrap_err();
    assert!(e.to_string().contains("out has shape"), "{e}");
    assert!(out.iter().all(|x| x.is_nan()));
}
