//! Graph-safe decode on a GPU: an engine-owned pool, block table, lengths, queries and outputs
//! in device memory; `EnginePlan::decode` is captured once into a CUDA graph on the engine's
//! stream and replayed with new lengths, block tables and queries written into the same buffers,
//! each replay checked against the f64 reference. Skips without a GPU (fails under
//! `TPLA_REQUIRE_GPU=1`).

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla_kernels::ops::Balanced;
use tpla_runtime::cuda::device::executor_or_skip;
use tpla_runtime::cuda::{CudaExecutor, KernelCache};
use tpla_runtime::cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr};
use tpla_runtime::half::bf16;
use tpla_runtime::reference::{latent_attention, rel_error};
use tpla_runtime::view::{KvPool, TensorView, TensorViewMut};
use tpla_runtime::RuntimeError;

const HEADS: usize = 16;
const LAT: usize = 128;
const ROPE: usize = 64;
const ROW: usize = LAT + ROPE;
const PAGE: usize = 16;
const PPS: usize = 12;
const BATCH: usize = 3;
const PAGES: usize = 40;
const SCALE: f32 = 0.09;

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn run(splits: usize) {
    run_plan(
        splits as u64,
        |exec, caps| EnginePlan::new(exec, caps, SCALE, splits),
        None,
    );
}

/// Captures the decode of the plan `make` builds and replays it (see the module docs). With
/// `layers = Some(n)` the captured step is one `schedule` and `n` `decode_scheduled` calls (an
/// engine's layers over one set of lengths; the last writes the checked outputs).
fn run_plan(
    seed: u64,
    make: impl FnOnce(&CudaExecutor, Capacities) -> Result<EnginePlan<CudaExecutor>, RuntimeError>,
    layers: Option<usize>,
) {
    let Some(base) = executor_or_skip("engine graph capture") else {
        return;
    };
    // The engine's own stream; tpla issues its work there.
    let stream = base.context().new_stream().unwrap();
    let exec = CudaExecutor::with_stream(stream.clone(), Arc::new(KernelCache::new(None)))
        .unwrap_or_else(|e| panic!("executor on the engine stream: {e}"));
    let caps = Capacities {
        max_batch: BATCH,
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: 8,
        kv_dtype: KvDtype::Bf16,
    };
    let mut plan = make(&exec, caps).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 3);
    let mut random = |n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    };
    let pool_host = random(PAGES * PAGE * ROW);
    let pool = stream.clone_htod(&bits(&pool_host)).unwrap();
    let mut table = stream.clone_htod(&vec![0i32; BATCH * PPS]).unwrap();
    let mut lens = stream.clone_htod(&vec![0i32; BATCH]).unwrap();
    let mut q = stream.clone_htod(&vec![0u16; BATCH * HEADS * ROW]).unwrap();
    let mut out = stream.alloc_zeros::<f32>(BATCH * HEADS * LAT).unwrap();
    let mut lse = stream.alloc_zeros::<f32>(BATCH * HEADS).unwrap();

    // SAFETY: every address is a live allocation on `exec`'s context of the stated size; the
    // buffers outlive the views and the graph's replays (all synchronised before they drop);
    // the host writes below happen on the same stream between replays, never during one; the
    // tables written always hold page ids below PAGES for every page the lengths reach.
    let (pool_v, table_v, lens_v, q_v, mut out_v, mut lse_v) = unsafe {
        (
            KvPool::from_device(ptr(&pool, &stream), PAGES, PAGE, ROW).unwrap(),
            TensorView::<i32, _>::from_device(ptr(&table, &stream), &[BATCH, PPS]).unwrap(),
            TensorView::<i32, _>::from_device(ptr(&lens, &stream), &[BATCH]).unwrap(),
            TensorView::<bf16, _>::from_device(ptr(&q, &stream), &[BATCH, HEADS, ROW]).unwrap(),
            TensorViewMut::<f32, _>::from_device(ptr(&out, &stream), &[BATCH, HEADS, LAT]).unwrap(),
            TensorViewMut::<f32, _>::from_device(ptr(&lse, &stream), &[BATCH, HEADS]).unwrap(),
        )
    };

    // A new step's metadata: shuffled pages, variable lengths (one sequence empty in round 1).
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut step = |round: usize| -> (Vec<i32>, Vec<i32>, Vec<bf16>) {
        let mut pages: Vec<i32> = (0..PAGES as i32).collect();
        pages.shuffle(&mut rng);
        let t: Vec<i32> = pages[..BATCH * PPS].to_vec();
        let l: Vec<i32> = (0..BATCH)
            .map(|b| {
                if round == 1 && b == 1 {
                    0
                } else {
                    rng.gen_range(1..=(PPS * PAGE) as i32)
                }
            })
            .collect();
        let qh: Vec<bf16> = (0..BATCH * HEADS * ROW)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect();
        (t, l, qh)
    };
    let write = |t: &[i32],
                 l: &[i32],
                 qh: &[bf16],
                 table: &mut CudaSlice<i32>,
                 lens: &mut CudaSlice<i32>,
                 q: &mut CudaSlice<u16>| {
        stream.memcpy_htod(t, table).unwrap();
        stream.memcpy_htod(l, lens).unwrap();
        stream.memcpy_htod(&bits(qh), q).unwrap();
    };

    // Warm-up outside the capture: kernels are compiled and loaded on first use.
    let (t, l, qh) = step(0);
    write(&t, &l, &qh, &mut table, &mut lens, &mut q);
    let mut decode_step = |plan: &mut EnginePlan<CudaExecutor>| -> Result<(), RuntimeError> {
        let Some(n) = layers else {
            return plan.decode(
                &exec,
                &pool_v,
                &table_v,
                &lens_v,
                &q_v,
                (&mut out_v, &mut lse_v),
            );
        };
        plan.schedule(&exec, &lens_v, 1)?;
        for _ in 0..n {
            plan.decode_scheduled(
                &exec,
                &pool_v,
                &table_v,
                &lens_v,
                &q_v,
                (&mut out_v, &mut lse_v),
            )?;
        }
        Ok(())
    };
    decode_step(&mut plan).unwrap();
    stream.synchronize().unwrap();

    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let captured = decode_step(&mut plan);
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    captured.unwrap();

    for round in 1..4 {
        let (t, l, qh) = step(round);
        write(&t, &l, &qh, &mut table, &mut lens, &mut q);
        // Poison the graph's output buffers (same stream, before the replay).
        stream
            .memcpy_htod(&vec![f32::NAN; BATCH * HEADS * LAT], &mut out)
            .unwrap();
        stream
            .memcpy_htod(&vec![f32::NAN; BATCH * HEADS], &mut lse)
            .unwrap();
        graph.launch().unwrap();
        let o = stream.clone_dtoh(&out).unwrap();
        let s = stream.clone_dtoh(&lse).unwrap();
        for b in 0..BATCH {
            let ob = &o[b * HEADS * LAT..(b + 1) * HEADS * LAT];
            let sb = &s[b * HEADS..(b + 1) * HEADS];
            assert!(
                ob.iter().chain(sb).all(|x| !x.is_nan()),
                "round {round} seq {b}: NaN left"
            );
            let len = l[b] as usize;
            if len == 0 {
                assert!(ob.iter().all(|&x| x == 0.0) && sb.iter().all(|&x| x < -1e29));
                continue;
            }
            let mut rows = Vec::with_capacity(len * ROW);
            for tok in 0..len {
                let page = t[b * PPS + tok / PAGE] as usize;
                let at = (page * PAGE + tok % PAGE) * ROW;
                rows.extend(pool_host[at..at + ROW].iter().map(|x| x.to_f64()));
            }
            let qb: Vec<f64> = qh[b * HEADS * ROW..(b + 1) * HEADS * ROW]
                .iter()
                .map(|x| x.to_f64())
                .collect();
            let r = latent_attention(&qb, &rows, HEADS, LAT, ROPE, SCALE as f64);
            let got: Vec<f64> = ob.iter().map(|&x| x as f64).collect();
            let e = rel_error(&got, &r.out);
            // bf16 tensor cores take P in bf16 (FlashMLA's contract).
            assert!(e < 5e-3, "round {round} seq {b} len {len}: rel error {e}");
            for (g, w) in sb.iter().zip(&r.lse) {
                assert!(
                    (*g as f64 - w).abs() < 5e-3,
                    "round {round} seq {b}: lse {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn graph_replay_with_three_splits() {
    run(3);
}

/// The balanced schedule runs on the device inside the graph: every replay's new lengths get
/// new pieces (up to 3 of 64 tokens here) with no host work.
#[test]
fn graph_replay_with_the_balanced_schedule() {
    let sched = Balanced {
        max_splits: 6,
        units: 12,
        min_chunk: 64,
    };
    run_plan(
        7,
        |exec, caps| {
            let plan = EnginePlan::new_balanced(exec, caps, SCALE, Some(sched))?;
            assert_eq!(plan.balanced(), Some(sched));
            Ok(plan)
        },
        None,
    );
}

/// An engine's step in one graph: the balanced schedule once (`schedule`), then three layers'
/// decodes through its tables (`decode_scheduled`); every replay's new lengths get new pieces.
#[test]
fn graph_replay_of_one_schedule_and_three_layer_decodes() {
    let sched = Balanced {
        max_splits: 6,
        units: 12,
        min_chunk: 64,
    };
    run_plan(
        8,
        |exec, caps| EnginePlan::new_balanced(exec, caps, SCALE, Some(sched)),
        Some(3),
    );
}

#[test]
fn graph_replay_with_one_split() {
    run(1);
}

#[test]
fn graph_replay_with_splits_from_capacities() {
    run(0);
}
