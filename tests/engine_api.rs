//! Plays a serving engine on the CPU backend: the engine owns the page pool, the block table
//! (pages handed out shuffled, freed and reused), the lengths and the slot mapping; tpla appends
//! through slots and decodes over views of that memory with LSE; the merge of two halves of a
//! context equals the decode of the whole. Everything is checked against the f64 reference, and
//! outputs are NaN-poisoned before each run.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tpla::engine::{merge, Capacities, EnginePlan, KvDtype};
use tpla_kernels::ops::Balanced;
use tpla_runtime::half::bf16;
use tpla_runtime::reference::latent_attention;
use tpla_runtime::view::{slot_of, Host, KvPool, TensorView, TensorViewMut};
use tpla_runtime::{CpuExecutor, RuntimeError};

const HEADS: usize = 4;
const LAT: usize = 64;
const ROPE: usize = 64;
const ROW: usize = LAT + ROPE;
const PAGE: usize = 16;
const PPS: usize = 6;
const BATCH: usize = 4;
const PAGES: usize = 18;
const SCALE: f32 = 0.125;
/// Lengths below this mark an empty sequence's LSE (decode writes about −6.9e29).
const EMPTY_LSE: f32 = -1e29;

fn caps() -> Capacities {
    Capacities {
        max_batch: BATCH,
        heads: HEADS,
        lat: LAT,
        rope: ROPE,
        page_size: PAGE,
        max_pages_per_seq: PPS,
        max_append: 48,
        kv_dtype: KvDtype::Bf16,
    }
}

/// The engine's own state: pool, free pages, block table, lengths, and (for the reference) the
/// rows each sequence holds.
struct Engine {
    pool: Vec<bf16>,
    free: Vec<i32>,
    table: Vec<i32>,
    lens: Vec<i32>,
    rows: Vec<Vec<bf16>>,
    rng: rand::rngs::StdRng,
}

impl Engine {
    fn new(seed: u64) -> Engine {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Stale finite garbage everywhere: only rows the lengths reach may count.
        let pool = (0..PAGES * PAGE * ROW)
            .map(|_| bf16::from_f32(rng.gen_range(50.0..100.0)))
            .collect();
        let mut free: Vec<i32> = (0..PAGES as i32).collect();
        free.shuffle(&mut rng);
        Engine {
            pool,
            free,
            // Unused entries point nowhere valid: the lengths never reach them.
            table: vec![-1; BATCH * PPS],
            lens: vec![0; BATCH],
            rows: vec![Vec::new(); BATCH],
            rng,
        }
    }

    fn random_rows(&mut self, n: usize) -> Vec<bf16> {
        (0..n * ROW)
            .map(|_| bf16::from_f32(self.rng.gen_range(-1.0..1.0)))
            .collect()
    }

    /// Slots for `n` new tokens of sequence `b`, taking pages from the free list as needed.
    fn reserve(&mut self, b: usize, n: usize) -> Vec<i32> {
        let start = self.lens[b] as usize + self.pending(b);
        (start..start + n)
            .map(|t| {
                if t.is_multiple_of(PAGE) {
                    self.table[b * PPS + t / PAGE] = self.free.pop().expect("a free page");
                }
                slot_of(&self.table[b * PPS..(b + 1) * PPS], PAGE, t).unwrap()
            })
            .collect()
    }

    fn pending(&self, b: usize) -> usize {
        self.rows[b].len() / ROW - self.lens[b] as usize
    }

    /// One append call for several sequences, each with its own count; then the lengths move.
    fn append(
        &mut self,
        plan: &EnginePlan<CpuExecutor>,
        exec: &CpuExecutor,
        counts: &[(usize, usize)],
    ) {
        let mut slots = Vec::new();
        let mut rows = Vec::new();
        for &(b, n) in counts {
            slots.extend(self.reserve(b, n));
            let r = self.random_rows(n);
            self.rows[b].extend_from_slice(&r);
            rows.extend(r);
        }
        let n = slots.len();
        let mut pool = KvPool::new(&mut self.pool, PAGE, ROW).unwrap();
        let sv = TensorView::new(&slots, &[n]).unwrap();
        let rv = TensorView::new(&rows, &[n, ROW]).unwrap();
        plan.append(exec, &mut pool, &sv, &rv).unwrap();
        for &(b, n) in counts {
            self.lens[b] += n as i32;
        }
    }

    /// Frees sequence `b`: its pages go back to the free list (shuffled), its length to 0.
    fn free_seq(&mut self, b: usize) {
        let used = (self.lens[b] as usize).div_ceil(PAGE);
        for j in 0..used {
            self.free.push(self.table[b * PPS + j]);
            self.table[b * PPS + j] = -1;
        }
        self.free.shuffle(&mut self.rng);
        self.lens[b] = 0;
        self.rows[b].clear();
    }
}

fn f64s(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Decodes every sequence of the engine with a random query into NaN-poisoned outputs;
/// returns (out, lse, q).
fn decode_all(
    plan: &mut EnginePlan<CpuExecutor>,
    exec: &CpuExecutor,
    e: &mut Engine,
) -> (Vec<f32>, Vec<f32>, Vec<bf16>) {
    let q: Vec<bf16> = e.random_rows(BATCH * HEADS);
    let (out, lse) = decode_q(plan, exec, e, &q, false).unwrap();
    (out, lse, q)
}

/// Checks every sequence against the f64 reference; an empty one gives zeros and a very
/// negative LSE.
fn check(e: &Engine, out: &[f32], lse: &[f32], q: &[bf16], what: &str) {
    for b in 0..BATCH {
        let o = &out[b * HEADS * LAT..(b + 1) * HEADS * LAT];
        let l = &lse[b * HEADS..(b + 1) * HEADS];
        assert!(
            o.iter().chain(l).all(|x| !x.is_nan()),
            "{what}: seq {b} left NaN"
        );
        if e.lens[b] == 0 {
            assert!(o.iter().all(|&x| x == 0.0), "{what}: empty seq {b} out");
            assert!(
                l.iter().all(|&x| x < EMPTY_LSE),
                "{what}: empty seq {b} lse {l:?}"
            );
            continue;
        }
        let qb = f64s(&q[b * HEADS * ROW..(b + 1) * HEADS * ROW]);
        let r = latent_attention(&qb, &f64s(&e.rows[b]), HEADS, LAT, ROPE, SCALE as f64);
        let got: Vec<f64> = o.iter().map(|&x| x as f64).collect();
        let err = tpla_runtime::reference::rel_error(&got, &r.out);
        assert!(
            err < 1e-4,
            "{what}: seq {b} (len {}) rel error {err}",
            e.lens[b]
        );
        for (h, (&g, &w)) in l.iter().zip(&r.lse).enumerate() {
            assert!(
                (g as f64 - w).abs() < 1e-3,
                "{what}: seq {b} head {h} lse {g} vs {w}"
            );
        }
    }
}

fn play(splits: usize) {
    let exec = CpuExecutor::new(0).unwrap();
    let plan = EnginePlan::new(&exec, caps(), SCALE, splits).unwrap();
    if splits != 0 {
        assert_eq!(plan.splits(), splits);
    }
    play_plan(&exec, plan, splits as u64 + 11);
}

fn play_plan(exec: &CpuExecutor, mut plan: EnginePlan<CpuExecutor>, seed: u64) {
    let mut e = Engine::new(seed);
    // Prefill, one sequence per call, lengths straddling page boundaries; seq 3 stays empty.
    for (b, n) in [(0, 37), (1, 5), (2, 48)] {
        e.append(&plan, exec, &[(b, n)]);
    }
    let (o, l, q) = decode_all(&mut plan, exec, &mut e);
    check(&e, &o, &l, &q, "after prefill");

    // Continuous batching: one append call, a different count per sequence (seq 2 speculates).
    for step in 0..3 {
        e.append(&plan, exec, &[(0, 1), (1, 1), (2, 3), (3, 2)]);
        let (o, l, q) = decode_all(&mut plan, exec, &mut e);
        check(&e, &o, &l, &q, &format!("step {step}"));
    }

    // Free seq 1 and refill its slot with a new sequence on recycled (stale) pages.
    e.free_seq(1);
    let (o, l, q) = decode_all(&mut plan, exec, &mut e);
    check(&e, &o, &l, &q, "after free");
    e.free_seq(0);
    e.append(&plan, exec, &[(1, 40), (0, 3)]);
    let (o, l, q) = decode_all(&mut plan, exec, &mut e);
    check(&e, &o, &l, &q, "slot reused");
}

#[test]
fn engine_owned_memory_with_one_split() {
    play(1);
}

#[test]
fn engine_owned_memory_with_three_splits() {
    play(3);
}

#[test]
fn engine_owned_memory_with_splits_from_capacities() {
    play(0);
}

#[test]
fn engine_owned_memory_with_the_balanced_schedule() {
    // Pieces on blocks of 16 tokens for 16 work units on a grid of 4 splits: the lengths of the
    // play (0 to about 50 tokens, changing every step) get 1 to 4 pieces each, recomputed on
    // the device at every decode.
    let exec = CpuExecutor::new(0).unwrap();
    let sched = Balanced {
        max_splits: 4,
        units: 16,
        min_chunk: 16,
    };
    let mut plan = EnginePlan::new_balanced(&exec, caps(), SCALE, Some(sched)).unwrap();
    let mut cfg = plan_decode_config();
    cfg.set("BLOCK_N", 16);
    plan.set_decode_config(&exec, cfg).unwrap();
    assert_eq!((plan.splits(), plan.balanced()), (4, Some(sched)));
    play_plan(&exec, plan, 17);
    // A grid of one split is the unsplit decode.
    let one = Balanced {
        max_splits: 1,
        ..sched
    };
    let plan = EnginePlan::new_balanced(&exec, caps(), SCALE, Some(one)).unwrap();
    assert_eq!((plan.splits(), plan.balanced()), (1, None));
    let bad = Balanced {
        max_splits: 0,
        ..sched
    };
    assert!(EnginePlan::new_balanced(&exec, caps(), SCALE, Some(bad)).is_err());
}

/// The decode kernel's default tune values for [`caps`].
fn plan_decode_config() -> tpla_codegen::Config {
    tpla_kernels::ops::DecodeParams::new(BATCH, HEADS, LAT, ROPE, 1, SCALE).decode
}

/// Decode over two page-aligned halves of a context, merged, equals the decode of the whole.
#[test]
fn merge_of_two_halves_is_the_whole() {
    let exec = CpuExecutor::new(0).unwrap();
    let mut plan = EnginePlan::new(&exec, caps(), SCALE, 2).unwrap();
    let mut e = Engine::new(5);
    e.append(&plan, &exec, &[(0, 45)]);
    e.append(&plan, &exec, &[(1, 7)]);
    let (whole, whole_lse, q) = decode_all(&mut plan, &exec, &mut e);
    check(&e, &whole, &whole_lse, &q, "whole");

    // Halves of sequence 0 as a batch of two: pages [0, 2) (32 tokens) and [2, 3) (13 tokens).
    let first = 2;
    let mut table = vec![-1; 2 * PPS];
    table[..first].copy_from_slice(&e.table[..first]);
    table[PPS..PPS + 1].copy_from_slice(&e.table[first..first + 1]);
    let lens = [(first * PAGE) as i32, 45 - (first * PAGE) as i32];
    let q0 = &q[..HEADS * ROW];
    let q2: Vec<bf16> = q0.iter().chain(q0).copied().collect();
    let mut parts = vec![f32::NAN; 2 * HEADS * LAT];
    let mut part_lse = vec![f32::NAN; 2 * HEADS];
    {
        let pool = KvPool::new(&mut e.pool, PAGE, ROW).unwrap();
        let bt = TensorView::new(&table, &[2, PPS]).unwrap();
        let lv = TensorView::new(&lens, &[2]).unwrap();
        let qv = TensorView::new(&q2, &[2, HEADS, ROW]).unwrap();
        let mut ov = TensorViewMut::new(&mut parts, &[2, HEADS, LAT]).unwrap();
        let mut sv = TensorViewMut::new(&mut part_lse, &[2, HEADS]).unwrap();
        plan.decode(&exec, &pool, &bt, &lv, &qv, (&mut ov, &mut sv))
            .unwrap();
    }
    // The batch of two is the stack of two states of one sequence: [2, 1, heads, lat].
    let mut out = vec![f32::NAN; HEADS * LAT];
    let mut lse = vec![f32::NAN; HEADS];
    let pv = TensorView::<f32, Host>::new(&parts, &[2, 1, HEADS, LAT]).unwrap();
    let plv = TensorView::<f32, Host>::new(&part_lse, &[2, 1, HEADS]).unwrap();
    let mut ov = TensorViewMut::new(&mut out, &[1, HEADS, LAT]).unwrap();
    let mut lv = TensorViewMut::new(&mut lse, &[1, HEADS]).unwrap();
    merge(&exec, &pv, &plv, (&mut ov, &mut lv)).unwrap();
    let w = &whole[..HEADS * LAT];
    let diff = w
        .iter()
        .zip(&out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "merged halves differ from the whole by {diff}");
    for (a, b) in whole_lse[..HEADS].iter().zip(&lse) {
        assert!((a - b).abs() < 1e-4, "lse {a} vs {b}");
    }
    // The halves themselves differ from the whole: the merge did real work.
    let half_diff = w
        .iter()
        .zip(&parts)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(half_diff > 1e-3, "{half_diff}");
}

/// Bad slot mappings and block tables are typed errors, and nothing is written.
#[test]
fn bad_engine_input_is_refused_without_writing() {
    let exec = CpuExecutor::new(0).unwrap();
    let mut plan = EnginePlan::new(&exec, caps(), SCALE, 2).unwrap();
    let mut e = Engine::new(9);
    e.append(&plan, &exec, &[(0, 20)]);
    let before = e.pool.clone();
    let rows = e.random_rows(2);
    let slots_cases: [&[i32]; 3] = [&[0, (PAGES * PAGE) as i32], &[3, 3], &[-1, 2]];
    for slots in slots_cases {
        let mut pool = KvPool::new(&mut e.pool, PAGE, ROW).unwrap();
        let sv = TensorView::new(slots, &[2]).unwrap();
        let rv = TensorView::new(&rows, &[2, ROW]).unwrap();
        let err = plan.append(&exec, &mut pool, &sv, &rv).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidInput(_)),
            "{slots:?}: {err}"
        );
    }
    // Too many rows for the plan, and rows of the wrong width.
    let big = e.random_rows(49);
    let slots: Vec<i32> = (0..49).collect();
    let mut pool = KvPool::new(&mut e.pool, PAGE, ROW).unwrap();
    let sv = TensorView::new(&slots, &[49]).unwrap();
    let rv = TensorView::new(&big, &[49, ROW]).unwrap();
    assert!(plan.append(&exec, &mut pool, &sv, &rv).is_err());
    let sv = TensorView::new(&slots[..2], &[2]).unwrap();
    let rv = TensorView::new(&big, &[2, ROW - 1]).unwrap();
    assert!(plan.append(&exec, &mut pool, &sv, &rv).is_err());
    assert!(e.pool == before, "a refused append wrote the pool");

    // A block table entry the lengths reach that lies outside the pool; a length past the table.
    let q = e.random_rows(HEADS);
    let mut out = vec![f32::NAN; HEADS * LAT];
    let mut lse = vec![f32::NAN; HEADS];
    for (table, len) in [
        ([PAGES as i32; PPS], 3),
        ([0; PPS], (PPS * PAGE + 1) as i32),
    ] {
        let pool = KvPool::new(&mut e.pool, PAGE, ROW).unwrap();
        let bt = TensorView::new(&table, &[1, PPS]).unwrap();
        let lens = [len];
        let lv = TensorView::new(&lens, &[1]).unwrap();
        let qv = TensorView::new(&q, &[1, HEADS, ROW]).unwrap();
        let mut ov = TensorViewMut::new(&mut out, &[1, HEADS, LAT]).unwrap();
        let mut sv = TensorViewMut::new(&mut lse, &[1, HEADS]).unwrap();
        assert!(plan
            .decode(&exec, &pool, &bt, &lv, &qv, (&mut ov, &mut sv))
            .is_err());
    }
    assert!(
        out.iter().all(|x| x.is_nan()),
        "a refused decode wrote its output"
    );
    // Views that do not fit their buffers.
    assert!(TensorView::<f32, Host>::new(&out, &[HEADS, LAT + 1]).is_err());
    assert!(KvPool::new(&mut e.pool[1..], PAGE, ROW).is_err());
}

/// A device-space argument never reaches the CPU executor (nor a host one a GPU): the launch is
/// refused before anything runs.
#[test]
fn arguments_of_the_other_memory_space_are_refused() {
    use tpla_codegen::KernelDef;
    use tpla_runtime::exec::{check_space, ArgSpace};
    use tpla_runtime::view::Device;
    use tpla_runtime::Executor;
    let exec = CpuExecutor::new(0).unwrap();
    // SAFETY: the address is never dereferenced: the space check refuses it first (this test is
    // about that check).
    let dev = unsafe { TensorView::<f32, Device>::from_device(0x1000, &[1, 1, 1, LAT]) }.unwrap();
    let dev_lse = unsafe { TensorView::<f32, Device>::from_device(0x2000, &[1, 1, 1]) }.unwrap();
    assert!(check_space(&[dev.arg()], ArgSpace::Host).is_err());
    assert!(check_space(&[dev.arg()], ArgSpace::Device).is_ok());
    let mut out = vec![f32::NAN; LAT];
    let mut lse = vec![f32::NAN; 1];
    let mut ov = TensorViewMut::new(&mut out, &[1, 1, LAT]).unwrap();
    let mut lv = TensorViewMut::new(&mut lse, &[1, 1]).unwrap();
    let k = tpla_kernels::combine_splits;
    let cfg = k.default_config(&[("LAT", LAT as i64)]).unwrap();
    let args = [dev.arg(), dev_lse.arg(), ov.arg_mut(), lv.arg_mut()];
    let err = exec.launch(&k, &cfg, &args).unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidInput(_)), "{err}");
    assert!(out.iter().all(|x| x.is_nan()));
}

#[test]
fn bad_capacities_are_refused() {
    let exec = CpuExecutor::new(0).unwrap();
    for (f, splits) in [
        (
            Box::new(|c: &mut Capacities| c.max_batch = 0) as Box<dyn Fn(&mut Capacities)>,
            2,
        ),
        (Box::new(|c: &mut Capacities| c.heads = 0), 2),
        (Box::new(|c: &mut Capacities| c.page_size = 0), 2),
        (Box::new(|c: &mut Capacities| c.max_append = 0), 2),
        (
            Box::new(|c: &mut Capacities| c.max_batch = usize::MAX / 2),
            2,
        ),
        (Box::new(|_: &mut Capacities| {}), 1 << 20),
    ] {
        let mut c = caps();
        f(&mut c);
        let e = EnginePlan::new(&exec, c.clone(), SCALE, splits).err();
        assert!(
            matches!(e, Some(RuntimeError::InvalidInput(_))),
            "{c:?}: {e:?}"
        );
    }
    assert!(EnginePlan::new(&exec, caps(), f32::NAN, 2).is_err());
}

/// Decodes every sequence with `q` through `schedule`d tables (`reuse`) or a plain decode, into
/// NaN-poisoned outputs; returns (out, lse) or the error.
fn decode_q(
    plan: &mut EnginePlan<CpuExecutor>,
    exec: &CpuExecutor,
    e: &mut Engine,
    q: &[bf16],
    reuse: bool,
) -> Result<(Vec<f32>, Vec<f32>), RuntimeError> {
    let mut out = vec![f32::NAN; BATCH * HEADS * LAT];
    let mut lse = vec![f32::NAN; BATCH * HEADS];
    let r = {
        let pool = KvPool::new(&mut e.pool, PAGE, ROW).unwrap();
        let bt = TensorView::new(&e.table, &[BATCH, PPS]).unwrap();
        let lens = TensorView::new(&e.lens, &[BATCH]).unwrap();
        let qv = TensorView::new(q, &[BATCH, HEADS, ROW]).unwrap();
        let mut ov = TensorViewMut::new(&mut out, &[BATCH, HEADS, LAT]).unwrap();
        let mut lv = TensorViewMut::new(&mut lse, &[BATCH, HEADS]).unwrap();
        if reuse {
            plan.decode_scheduled(exec, &pool, &bt, &lens, &qv, (&mut ov, &mut lv))
        } else {
            plan.decode(exec, &pool, &bt, &lens, &qv, (&mut ov, &mut lv))
        }
    };
    if r.is_err() {
        assert!(
            out.iter().chain(&lse).all(|x| x.is_nan()),
            "a refused decode wrote nothing"
        );
    }
    r.map(|()| (out, lse))
}

/// The schedule once per step, decoded through by several layers (`schedule` then
/// `decode_scheduled`): the same outputs as `decode`, bit for bit, for every layer's query; a
/// reuse without a schedule, or after the config's block changed, is refused and writes
/// nothing; on a uniform plan both calls are plain decodes.
#[test]
fn one_schedule_serves_every_layer_of_a_step() {
    let exec = CpuExecutor::new(0).unwrap();
    let sched = Balanced {
        max_splits: 4,
        units: 16,
        min_chunk: 16,
    };
    let mut plan = EnginePlan::new_balanced(&exec, caps(), SCALE, Some(sched)).unwrap();
    let mut cfg = plan_decode_config();
    cfg.set("BLOCK_N", 16);
    plan.set_decode_config(&exec, cfg.clone()).unwrap();
    let mut e = Engine::new(23);
    for (b, n) in [(0, 37), (1, 5), (2, 48), (3, 20)] {
        e.append(&plan, &exec, &[(b, n)]);
    }
    let q0 = e.random_rows(BATCH * HEADS);
    let err = decode_q(&mut plan, &exec, &mut e, &q0, true).unwrap_err();
    assert!(err.to_string().contains("schedule first"), "{err}");
    for step in 0..2 {
        let lens = e.lens.clone();
        let lv = TensorView::new(&lens, &[BATCH]).unwrap();
        plan.schedule(&exec, &lv, 1).unwrap();
        for layer in 0..3 {
            let q = e.random_rows(BATCH * HEADS);
            let (o, l) = decode_q(&mut plan, &exec, &mut e, &q, true).unwrap();
            check(&e, &o, &l, &q, &format!("step {step} layer {layer}"));
            let (o2, l2) = decode_q(&mut plan, &exec, &mut e, &q, false).unwrap();
            assert!(
                o.iter()
                    .zip(&o2)
                    .chain(l.iter().zip(&l2))
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "step {step} layer {layer}: scheduled decode differs from decode"
            );
        }
        // The next step: longer sequences, a new schedule.
        e.append(&plan, &exec, &[(0, 9), (1, 17), (2, 1), (3, 20)]);
    }
    // Bad arguments to the schedule itself.
    let lens = e.lens.clone();
    let lv = TensorView::new(&lens, &[BATCH]).unwrap();
    assert!(plan.schedule(&exec, &lv, 0).is_err());
    assert!(plan.schedule(&exec, &lv, plan.max_query_len() + 1).is_err());
    // A new block size makes the tables stale.
    plan.schedule(&exec, &lv, 1).unwrap();
    cfg.set("BLOCK_N", 32);
    plan.set_decode_config(&exec, cfg).unwrap();
    let q = e.random_rows(BATCH * HEADS);
    let err = decode_q(&mut plan, &exec, &mut e, &q, true).unwrap_err();
    assert!(err.to_string().contains("call schedule again"), "{err}");
    plan.schedule(&exec, &lv, 1).unwrap();
    let (o, l) = decode_q(&mut plan, &exec, &mut e, &q, true).unwrap();
    check(&e, &o, &l, &q, "after a new block size");
    // Uniform splits: nothing to schedule, the same decode either way.
    let mut uniform = EnginePlan::new(&exec, caps(), SCALE, 3).unwrap();
    uniform.schedule(&exec, &lv, 1).unwrap();
    let (o, l) = decode_q(&mut uniform, &exec, &mut e, &q, true).unwrap();
    check(&e, &o, &l, &q, "uniform plan");
}
