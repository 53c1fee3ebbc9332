//! The FP8 latent cache through the engine API on the CPU backend (issue 11 point 2): a plan
//! with `kv_dtype: Fp8` appends rows at the engine's slots, quantising them into a pool of FP8
//! rows (bit for bit `kv_format::quantise_row`), and decodes over it (one split, three, the
//! balanced schedule; one and two query tokens) against the f64 reference over the dequantised
//! rows. Unused pages hold NaN. A latent width FP8 cannot hold, or a pool of bf16 rows, is a
//! typed error that writes nothing.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tpla::codegen::kv_format::{dequantise_row, quantise_row};
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention_causal, rel_error};
use tpla_runtime::view::{KvPool, TensorView, TensorViewMut};
use tpla_runtime::CpuExecutor;

const HEADS: usize = 8;
const LAT: usize = 256;
const ROPE: usize = 64;
const ROW: usize = LAT + ROPE;
const PAGE: usize = 16;
const PPS: usize = 5;
const LENS: [i32; 4] = [0, 1, 37, 70];
const SCALE: f32 = 0.07;
/// bf16 carrier elements of one FP8 row (256 e4m3 + 2 scales + pad + 64 bf16 = 400 bytes).
const CARRIER: usize = 200;

fn caps(kv_dtype: KvDtype) -> Capacities {
    Capacities {
        max_batch: LENS.len(),
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: 32,
        kv_dtype,
    }
}

/// The engine's memory after appending every sequence's rows through the plan.
struct Mem {
    pool: Vec<bf16>,
    table: Vec<i32>,
    /// The values appended, per sequence (`len · ROW`, bf16-exact).
    rows: Vec<Vec<f32>>,
    /// The values the kernels read back, per sequence (dequantised).
    read_back: Vec<Vec<f64>>,
}

fn bytes(v: &[bf16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}

fn fill(plan: &EnginePlan<CpuExecutor>, exec: &CpuExecutor, seed: u64) -> Mem {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let b = LENS.len();
    let mut table: Vec<i32> = (0..(b * PPS) as i32).collect();
    table.shuffle(&mut rng);
    // NaN everywhere no length reaches: e4m3 0xff / 0x7f are NaN, and so is the scale.
    let mut pool = vec![bf16::from_bits(0x7fff); b * PPS * PAGE * CARRIER];
    let mut rows = Vec::new();
    let mut slots_all = Vec::new();
    for (s, &len) in LENS.iter().enumerate() {
        // Columns of uneven magnitude, so the 128-column scales differ.
        let r: Vec<f32> = (0..len as usize * ROW)
            .map(|i| {
                let amp = if (i % ROW) < 128 { 3.0 } else { 0.25 };
                bf16::from_f32(rng.gen_range(-amp..amp)).to_f32()
            })
            .collect();
        for t in 0..len as usize {
            slots_all.push((
                table[s * PPS + t / PAGE] * PAGE as i32 + (t % PAGE) as i32,
                s,
                t,
            ));
        }
        rows.push(r);
    }
    // Appended in shuffled chunks of up to 32 rows, as an engine's steps would.
    slots_all.shuffle(&mut rng);
    for chunk in slots_all.chunks(32) {
        let slots: Vec<i32> = chunk.iter().map(|c| c.0).collect();
        let vals: Vec<bf16> = chunk
            .iter()
            .flat_map(|&(_, s, t)| {
                rows[s][t * ROW..(t + 1) * ROW]
                    .iter()
                    .map(|&x| bf16::from_f32(x))
            })
            .collect();
        let mut kv = KvPool::new(&mut pool, PAGE, CARRIER).unwrap();
        let sv = TensorView::new(&slots, &[slots.len()]).unwrap();
        let rv = TensorView::new(&vals, &[slots.len(), ROW]).unwrap();
        plan.append(exec, &mut kv, &sv, &rv).unwrap();
    }
    // Every written row is the format's bytes, bit for bit.
    let mut read_back = Vec::new();
    for (s, &len) in LENS.iter().enumerate() {
        let mut back = Vec::new();
        for t in 0..len as usize {
            let slot = (table[s * PPS + t / PAGE] as usize) * PAGE + t % PAGE;
            let got = bytes(&pool[slot * CARRIER..(slot + 1) * CARRIER]);
            let want = quantise_row(&rows[s][t * ROW..(t + 1) * ROW], LAT);
            assert_eq!(
                got, want,
                "seq {s} token {t}: stored bytes differ from the format"
            );
            back.extend(dequantise_row(&got, LAT, ROW).into_iter().map(f64::from));
        }
        read_back.push(back);
    }
    Mem {
        pool,
        table,
        rows,
        read_back,
    }
}

fn decode_and_check(
    plan: &mut EnginePlan<CpuExecutor>,
    exec: &CpuExecutor,
    m: &mut Mem,
    sq: usize,
    what: &str,
) {
    let b = LENS.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(sq as u64 + 100);
    let q: Vec<bf16> = (0..b * sq * HEADS * ROW)
        .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
        .collect();
    let mut out = vec![f32::NAN; b * sq * HEADS * LAT];
    let mut lse = vec![f32::NAN; b * sq * HEADS];
    {
        let pool = KvPool::new(&mut m.pool, PAGE, CARRIER).unwrap();
        let bt = TensorView::new(&m.table, &[b, PPS]).unwrap();
        let lens = TensorView::new(&LENS, &[b]).unwrap();
        let qv = TensorView::new(&q, &[b, sq, HEADS, ROW]).unwrap();
        let mut ov = TensorViewMut::new(&mut out, &[b, sq, HEADS, LAT]).unwrap();
        let mut lv = TensorViewMut::new(&mut lse, &[b, sq, HEADS]).unwrap();
        plan.decode(exec, &pool, &bt, &lens, &qv, (&mut ov, &mut lv))
            .unwrap();
    }
    let (n, nl, nq) = (sq * HEADS * LAT, sq * HEADS, sq * HEADS * ROW);
    let mut worst_vs_exact = 0.0f64;
    for (s, &len) in LENS.iter().enumerate() {
        let qs: Vec<f64> = q[s * nq..(s + 1) * nq].iter().map(|x| x.to_f64()).collect();
        let scale = SCALE as f64;
        let want = latent_attention_causal(&qs, &m.read_back[s], sq, HEADS, LAT, ROPE, scale);
        let exact_rows: Vec<f64> = m.rows[s].iter().map(|&x| x as f64).collect();
        let exact = latent_attention_causal(&qs, &exact_rows, sq, HEADS, LAT, ROPE, scale);
        for r in 0..sq * HEADS {
            let o: Vec<f64> = out[s * n + r * LAT..s * n + (r + 1) * LAT]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let l = lse[s * nl + r];
            let at = format!("{what}: seq {s} (len {len}) row {r}");
            if want.lse[r] == f64::NEG_INFINITY {
                assert!(
                    o.iter().all(|&x| x == 0.0) && l < -1e29,
                    "{at}: sees nothing"
                );
                continue;
            }
            let e = rel_error(&o, &want.out[r * LAT..(r + 1) * LAT]);
            assert!(
                e < 1e-4,
                "{at}: rel error {e} against the dequantised reference"
            );
            assert!((l as f64 - want.lse[r]).abs() < 1e-3, "{at}: lse {l}");
            worst_vs_exact = worst_vs_exact.max(rel_error(&o, &exact.out[r * LAT..(r + 1) * LAT]));
        }
    }
    // The cache's own rounding shows against the unquantised rows, and stays an FP8 error.
    assert!(
        worst_vs_exact > 1e-4 && worst_vs_exact < 0.1,
        "{what}: worst rel error against the bf16 rows {worst_vs_exact}"
    );
}

fn play(splits: usize) {
    let exec = CpuExecutor::new(0).unwrap();
    let mut plan = EnginePlan::new(&exec, caps(KvDtype::Fp8), SCALE, splits).unwrap();
    assert_eq!(plan.capacities().pool_row().unwrap(), CARRIER);
    let mut m = fill(&plan, &exec, splits as u64 + 7);
    decode_and_check(&mut plan, &exec, &mut m, 1, &format!("splits {splits}"));
    plan.reserve_query_len(&exec, 2).unwrap();
    decode_and_check(
        &mut plan,
        &exec,
        &mut m,
        2,
        &format!("splits {splits} s_q 2"),
    );
    assert!(m.rows.iter().map(Vec::len).sum::<usize>() > 0);
}

#[test]
fn fp8_pool_with_one_split() {
    play(1);
}

#[test]
fn fp8_pool_with_three_splits() {
    play(3);
}

#[test]
fn fp8_pool_with_the_balanced_schedule() {
    play(0);
}

#[test]
fn a_width_fp8_cannot_hold_is_refused() {
    let exec = CpuExecutor::new(0).unwrap();
    let c = Capacities {
        lat: 192,
        ..caps(KvDtype::Fp8)
    };
    let e = EnginePlan::new(&exec, c, SCALE, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("multiple of 128"), "{e}");
}

#[test]
fn a_pool_of_bf16_rows_is_refused_by_an_fp8_plan_and_nothing_is_written() {
    let exec = CpuExecutor::new(0).unwrap();
    let plan = EnginePlan::new(&exec, caps(KvDtype::Fp8), SCALE, 1).unwrap();
    let mut pool = vec![bf16::from_bits(0x7fff); 4 * PAGE * ROW];
    let before = pool.clone();
    let slots = [3i32];
    let vals = vec![bf16::ONE; ROW];
    let e = {
        let mut kv = KvPool::new(&mut pool, PAGE, ROW).unwrap();
        let sv = TensorView::new(&slots, &[1]).unwrap();
        let rv = TensorView::new(&vals, &[1, ROW]).unwrap();
        plan.append(&exec, &mut kv, &sv, &rv)
            .unwrap_err()
            .to_string()
    };
    assert!(e.contains("fp8") && e.contains(&CARRIER.to_string()), "{e}");
    assert_eq!(bytes(&pool), bytes(&before));
}
