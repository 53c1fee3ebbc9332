//! The CPU backend: the engine's memory is host memory, seen through safe host views.

use tpla::engine::EnginePlan;
use tpla::runtime::half::bf16;
use tpla::runtime::view::{KvPool, TensorView, TensorViewMut};
use tpla::runtime::CpuExecutor;

use crate::{capacities, Backend, Res, BATCH, HEADS, LAT, PAGE, PAGES, PPS, ROW, SCALE};

/// The Cranelift backend over a host pool.
pub struct Cpu {
    exec: CpuExecutor,
    plan: EnginePlan<CpuExecutor>,
    pool: Vec<bf16>,
    out: Vec<f32>,
    lse: Vec<f32>,
    /// The last decode's inputs (for `time_decode`).
    table: Vec<i32>,
    lens: Vec<i32>,
    q: Vec<bf16>,
}

impl Cpu {
    /// A plan on a CPU executor (all cores) and an empty pool.
    pub fn new() -> Res<Cpu> {
        let exec = CpuExecutor::new(0)?;
        let plan = EnginePlan::new(&exec, capacities(), SCALE, 0)?;
        Ok(Cpu {
            exec,
            plan,
            pool: vec![bf16::ZERO; PAGES * PAGE * ROW],
            out: vec![f32::NAN; BATCH * HEADS * LAT],
            lse: vec![f32::NAN; BATCH * HEADS],
            table: Vec::new(),
            lens: Vec::new(),
            q: Vec::new(),
        })
    }
}

impl Backend for Cpu {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn splits(&self) -> usize {
        self.plan.splits()
    }

    fn append(&mut self, slots: &[i32], rows: &[bf16]) -> Res<()> {
        self.plan.append(
            &self.exec,
            &mut KvPool::new(&mut self.pool, PAGE, ROW)?,
            &TensorView::new(slots, &[slots.len()])?,
            &TensorView::new(rows, &[slots.len(), ROW])?,
        )?;
        Ok(())
    }

    fn decode(&mut self, table: &[i32], lens: &[i32], q: &[bf16]) -> Res<(Vec<f32>, Vec<f32>)> {
        self.table = table.to_vec();
        self.lens = lens.to_vec();
        self.q = q.to_vec();
        self.out.fill(f32::NAN);
        self.lse.fill(f32::NAN);
        self.plan.decode(
            &self.exec,
            &KvPool::new(&mut self.pool, PAGE, ROW)?,
            &TensorView::new(table, &[BATCH, PPS])?,
            &TensorView::new(lens, &[BATCH])?,
            &TensorView::new(q, &[BATCH, HEADS, ROW])?,
            (
                &mut TensorViewMut::new(&mut self.out, &[BATCH, HEADS, LAT])?,
                &mut TensorViewMut::new(&mut self.lse, &[BATCH, HEADS])?,
            ),
        )?;
        Ok((self.out.clone(), self.lse.clone()))
    }

    fn time_decode(&mut self, calls: usize) -> Res<f64> {
        // The CPU backend runs the decode inside the call: this is its compute time.
        let (table, lens, q) = (self.table.clone(), self.lens.clone(), self.q.clone());
        let t0 = std::time::Instant::now();
        for _ in 0..calls {
            self.decode(&table, &lens, &q)?;
        }
        Ok(t0.elapsed().as_secs_f64() / calls as f64)
    }
}
