//! The FP8 latent cache through the engine API on a GPU (issue 11 point 2): a plan with
//! `kv_dtype: Fp8` appends bf16 rows at the engine's slots into a device pool of FP8 rows (the
//! bytes must equal `kv_format::quantise_row`, bit for bit, as on the CPU), then decodes over it
//! with one split, three and the balanced schedule, one and two query tokens, at 16 and 64 heads,
//! MLA (512) and a TPLA shard (256), each checked against the f64 reference over the dequantised
//! rows. Unused pages hold NaN bytes. Skips without a GPU (fails under `TPLA_REQUIRE_GPU=1`).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tpla::codegen::kv_format::{dequantise_row, quantise_row};
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla_runtime::cuda::device::executor_or_skip;
use tpla_runtime::cuda::CudaExecutor;
use tpla_runtime::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention_causal, rel_error};
use tpla_runtime::view::{KvPool, TensorView, TensorViewMut};
use tpla_runtime::Executor;

const ROPE: usize = 64;
const PAGE: usize = 64;
const PPS: usize = 8;
const LENS: [i32; 4] = [0, 1, 200, 511];
const SCALE: f32 = 0.07;

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn bytes_of(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One plan: appends every sequence's rows, checks the stored bytes, decodes and checks.
fn play(exec: &CudaExecutor, heads: usize, lat: usize, splits: usize, seed: u64) {
    let what = format!("H{heads} lat {lat} splits {splits}");
    let b = LENS.len();
    let row = lat + ROPE;
    let caps = Capacities {
        max_batch: b,
        heads,
        lat,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: 256,
        kv_dtype: KvDtype::Fp8,
    };
    let prow = caps.pool_row().unwrap();
    let mut plan = EnginePlan::new(exec, caps, SCALE, splits).unwrap();
    // On a Hopper GPU the plan's FP8 default is the producer-fed schedule.
    let cfg = plan.decode_config();
    assert_eq!(
        cfg.try_get("PRODUCER") == Some(1),
        exec.hopper_schedules(),
        "{what}: {cfg}"
    );
    // ... with 16-row blocks (two converting warpgroups) up to 16 heads, 64-row blocks (one)
    // above.
    if exec.hopper_schedules() {
        let (rows, converters) = if heads <= 16 { (16, 2) } else { (64, 1) };
        assert_eq!(cfg.try_get("BLOCK_H"), Some(rows), "{what}: {cfg}");
        assert_eq!(
            cfg.try_get("FP8_PRODUCERS"),
            Some(converters),
            "{what}: {cfg}"
        );
    }
    plan.reserve_query_len(exec, 2).unwrap();
    let stream = exec.stream().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pages = b * PPS;
    let mut table: Vec<i32> = (0..pages as i32).collect();
    table.shuffle(&mut rng);
    let pool = stream
        .clone_htod(&vec![0xffffu16; pages * PAGE * prow])
        .unwrap();
    // Rows of uneven column magnitudes (so the 128-column scales differ), bf16-exact.
    let rows: Vec<Vec<f32>> = LENS
        .iter()
        .map(|&len| {
            (0..len as usize * row)
                .map(|i| {
                    let amp = if (i % row) < 128 { 4.0 } else { 0.5 };
                    bf16::from_f32(rng.gen_range(-amp..amp)).to_f32()
                })
                .collect()
        })
        .collect();
    let mut order: Vec<(usize, usize)> = LENS
        .iter()
        .enumerate()
        .flat_map(|(s, &len)| (0..len as usize).map(move |t| (s, t)))
        .collect();
    order.shuffle(&mut rng);
    let slot = |s: usize, t: usize| table[s * PPS + t / PAGE] as usize * PAGE + t % PAGE;
    for chunk in order.chunks(256) {
        let slots: Vec<i32> = chunk.iter().map(|&(s, t)| slot(s, t) as i32).collect();
        let vals: Vec<u16> = chunk
            .iter()
            .flat_map(|&(s, t)| rows[s][t * row..(t + 1) * row].iter())
            .map(|&x| bf16::from_f32(x).to_bits())
            .collect();
        let (d_slots, d_vals) = (
            stream.clone_htod(&slots).unwrap(),
            stream.clone_htod(&vals).unwrap(),
        );
        // SAFETY: live allocations of this context of the stated sizes, alive past the call
        // (the stream is synchronised before they drop); the slots are distinct and inside the
        // pool.
        unsafe {
            let mut kv = KvPool::from_device(ptr(&pool, &stream), pages, PAGE, prow).unwrap();
            let sv =
                TensorView::<i32, _>::from_device(ptr(&d_slots, &stream), &[slots.len()]).unwrap();
            let rv = TensorView::<bf16, _>::from_device(ptr(&d_vals, &stream), &[slots.len(), row])
                .unwrap();
            plan.append(exec, &mut kv, &sv, &rv).unwrap();
        }
        stream.synchronize().unwrap();
    }
    let stored = stream.clone_dtoh(&pool).unwrap();
    let mut read_back = Vec::new();
    for (s, &len) in LENS.iter().enumerate() {
        let mut back = Vec::new();
        for t in 0..len as usize {
            let at = slot(s, t) * prow;
            let got = bytes_of(&stored[at..at + prow]);
            let want = quantise_row(&rows[s][t * row..(t + 1) * row], lat);
            assert_eq!(got, want, "{what}: seq {s} token {t}: stored bytes differ");
            back.extend(dequantise_row(&got, lat, row).into_iter().map(f64::from));
        }
        read_back.push(back);
    }

    let d_table = stream.clone_htod(&table).unwrap();
    let d_lens = stream.clone_htod(&LENS).unwrap();
    for sq in [1usize, 2] {
        let q: Vec<u16> = (0..b * sq * heads * row)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)).to_bits())
            .collect();
        let d_q = stream.clone_htod(&q).unwrap();
        let d_out = stream
            .clone_htod(&vec![f32::NAN; b * sq * heads * lat])
            .unwrap();
        let d_lse = stream.clone_htod(&vec![f32::NAN; b * sq * heads]).unwrap();
        // SAFETY: as for the append; outputs overlap nothing else.
        unsafe {
            let kv = KvPool::from_device(ptr(&pool, &stream), pages, PAGE, prow).unwrap();
            let bt = TensorView::<i32, _>::from_device(ptr(&d_table, &stream), &[b, PPS]).unwrap();
            let lv = TensorView::<i32, _>::from_device(ptr(&d_lens, &stream), &[b]).unwrap();
            let qv = TensorView::<bf16, _>::from_device(ptr(&d_q, &stream), &[b, sq, heads, row])
                .unwrap();
            let mut ov =
                TensorViewMut::<f32, _>::from_device(ptr(&d_out, &stream), &[b, sq, heads, lat])
                    .unwrap();
            let mut lsev =
                TensorViewMut::<f32, _>::from_device(ptr(&d_lse, &stream), &[b, sq, heads])
                    .unwrap();
            plan.decode(exec, &kv, &bt, &lv, &qv, (&mut ov, &mut lsev))
                .unwrap();
        }
        let out = stream.clone_dtoh(&d_out).unwrap();
        let lse = stream.clone_dtoh(&d_lse).unwrap();
        let (n, nl, nq) = (sq * heads * lat, sq * heads, sq * heads * row);
        for (s, &len) in LENS.iter().enumerate() {
            let qs: Vec<f64> = q[s * nq..(s + 1) * nq]
                .iter()
                .map(|&x| bf16::from_bits(x).to_f64())
                .collect();
            let want =
                latent_attention_causal(&qs, &read_back[s], sq, heads, lat, ROPE, SCALE as f64);
            for r in 0..sq * heads {
                let o: Vec<f64> = out[s * n + r * lat..s * n + (r + 1) * lat]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let l = lse[s * nl + r];
                let at = format!("{what} s_q {sq}: seq {s} (len {len}) row {r}");
                if want.lse[r] == f64::NEG_INFINITY {
                    assert!(
                        o.iter().all(|&x| x == 0.0) && l < -1e29,
                        "{at}: sees nothing"
                    );
                    continue;
                }
                let e = rel_error(&o, &want.out[r * lat..(r + 1) * lat]);
                assert!(
                    e < 1e-2,
                    "{at}: rel error {e} against the dequantised reference"
                );
                assert!((l as f64 - want.lse[r]).abs() < 1e-2, "{at}: lse {l}");
            }
        }
    }
}

#[test]
fn fp8_pool_through_the_engine_on_a_gpu() {
    let Some(exec) = executor_or_skip("engine FP8 cache") else {
        return;
    };
    let mut seed = 0;
    for (heads, lat) in [(16, 512), (64, 512), (64, 256)] {
        for splits in [1, 3, 0] {
            seed += 1;
            play(&exec, heads, lat, splits, seed);
        }
    }
}
