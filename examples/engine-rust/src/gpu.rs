//! The GPU backend: the engine allocates its pool, block table, lengths, queries, outputs and
//! staging for appends in device memory once (through `tpla::runtime::cudarc`, the version tpla
//! is built on), hands tpla `unsafe` `from_device` views of them, and runs tpla on its own stream.

use std::sync::Arc;

use tpla::engine::EnginePlan;
use tpla::runtime::cuda::{CudaExecutor, KernelCache};
use tpla::runtime::cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use tpla::runtime::half::bf16;
use tpla::runtime::view::{Device, KvPool, TensorView, TensorViewMut};

use crate::{
    capacities, Backend, Res, BATCH, HEADS, LAT, MAX_APPEND, PAGE, PAGES, PPS, ROW, SCALE,
};

/// The device address of `s` (for a view).
fn addr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The engine's device memory and the views tpla reads it through. The views hold raw
/// addresses of the buffers next to them; neither is handed out, and both drop together.
pub struct Gpu {
    stream: Arc<CudaStream>,
    exec: CudaExecutor,
    plan: EnginePlan<CudaExecutor>,
    pool_v: KvPool<'static, bf16, Device>,
    table_v: TensorView<'static, i32, Device>,
    lens_v: TensorView<'static, i32, Device>,
    q_v: TensorView<'static, bf16, Device>,
    out_v: TensorViewMut<'static, f32, Device>,
    lse_v: TensorViewMut<'static, f32, Device>,
    /// Owned only to keep `pool_v`'s memory alive.
    _pool: CudaSlice<u16>,
    table: CudaSlice<i32>,
    lens: CudaSlice<i32>,
    q: CudaSlice<u16>,
    out: CudaSlice<f32>,
    lse: CudaSlice<f32>,
    slots: CudaSlice<i32>,
    rows: CudaSlice<u16>,
}

impl Gpu {
    /// The engine's stream on device `ordinal`, tpla's executor on it, and the buffers.
    pub fn new(ordinal: usize) -> Res<Gpu> {
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.new_stream()?;
        let exec =
            CudaExecutor::with_stream(stream.clone(), Arc::new(KernelCache::with_default_dir()))?;
        let plan = EnginePlan::new(&exec, capacities(), SCALE, 0)?;
        let pool = stream.alloc_zeros::<u16>(PAGES * PAGE * ROW)?;
        let table = stream.alloc_zeros::<i32>(BATCH * PPS)?;
        let lens = stream.alloc_zeros::<i32>(BATCH)?;
        let q = stream.alloc_zeros::<u16>(BATCH * HEADS * ROW)?;
        let out = stream.alloc_zeros::<f32>(BATCH * HEADS * LAT)?;
        let lse = stream.alloc_zeros::<f32>(BATCH * HEADS)?;
        let slots = stream.alloc_zeros::<i32>(MAX_APPEND)?;
        let rows = stream.alloc_zeros::<u16>(MAX_APPEND * ROW)?;
        // SAFETY: each address is a live allocation on `exec`'s context (the stream's) of exactly
        // the size its view states, owned by the `Gpu` that also owns the views, so the memory
        // outlives them. Only tpla's kernels and this struct's copies on the same stream touch
        // it, in stream order; `decode` synchronises before reading results. The table and
        // lengths written before each decode hold page ids below PAGES for every page the
        // lengths reach (the engine's bookkeeping), and `out`/`lse` overlap no other view.
        let views = unsafe {
            (
                KvPool::from_device(addr(&pool, &stream), PAGES, PAGE, ROW)?,
                TensorView::from_device(addr(&table, &stream), &[BATCH, PPS])?,
                TensorView::from_device(addr(&lens, &stream), &[BATCH])?,
                TensorView::from_device(addr(&q, &stream), &[BATCH, HEADS, ROW])?,
                TensorViewMut::from_device(addr(&out, &stream), &[BATCH, HEADS, LAT])?,
                TensorViewMut::from_device(addr(&lse, &stream), &[BATCH, HEADS])?,
            )
        };
        let (pool_v, table_v, lens_v, q_v, out_v, lse_v) = views;
        Ok(Gpu {
            stream,
            exec,
            plan,
            pool_v,
            table_v,
            lens_v,
            q_v,
            out_v,
            lse_v,
            _pool: pool,
            table,
            lens,
            q,
            out,
            lse,
            slots,
            rows,
        })
    }
}

impl Backend for Gpu {
    fn name(&self) -> String {
        let info = self.exec.info();
        format!("cuda:0 ({})", info.name)
    }

    fn splits(&self) -> usize {
        self.plan.splits()
    }

    fn append(&mut self, slots: &[i32], rows: &[bf16]) -> Res<()> {
        let n = slots.len();
        if n > MAX_APPEND {
            return Err(format!("{n} rows in one append, at most {MAX_APPEND}").into());
        }
        // An engine computes the slot mapping and the new rows on the device; here they are
        // staged from the host into the engine's fixed buffers, on the same stream.
        self.stream
            .memcpy_htod(slots, &mut self.slots.slice_mut(..n))?;
        self.stream
            .memcpy_htod(&bits(rows), &mut self.rows.slice_mut(..n * ROW))?;
        // SAFETY: prefixes of the engine's `slots` (MAX_APPEND i32) and `rows` (MAX_APPEND · ROW
        // bf16) buffers, live while `self` is; the slots were computed from the engine's block
        // table, so they are in the pool and distinct; the copies above precede the append on
        // the stream, and nothing else writes these buffers.
        let (slots_v, rows_v) = unsafe {
            (
                TensorView::<i32, Device>::from_device(addr(&self.slots, &self.stream), &[n])?,
                TensorView::<bf16, Device>::from_device(addr(&self.rows, &self.stream), &[n, ROW])?,
            )
        };
        self.plan
            .append(&self.exec, &mut self.pool_v, &slots_v, &rows_v)?;
        Ok(())
    }

    fn decode(&mut self, table: &[i32], lens: &[i32], q: &[bf16]) -> Res<(Vec<f32>, Vec<f32>)> {
        // The step's metadata, written into the same buffers every step (as a CUDA-graph
        // replay would see them).
        self.stream.memcpy_htod(table, &mut self.table)?;
        self.stream.memcpy_htod(lens, &mut self.lens)?;
        self.stream.memcpy_htod(&bits(q), &mut self.q)?;
        // Poison the outputs, so a value tpla did not write cannot pass the check.
        self.stream
            .memcpy_htod(&vec![f32::NAN; BATCH * HEADS * LAT], &mut self.out)?;
        self.stream
            .memcpy_htod(&vec![f32::NAN; BATCH * HEADS], &mut self.lse)?;
        self.decode_launches()?;
        let out = self.stream.clone_dtoh(&self.out)?;
        let lse = self.stream.clone_dtoh(&self.lse)?;
        self.stream.synchronize()?;
        Ok((out, lse))
    }

    fn time_decode(&mut self, calls: usize) -> Res<f64> {
        // Warm, then time the calls in rounds of at most 100 (a few hundred launches queued),
        // waiting for the device between rounds, outside the timed part.
        for _ in 0..10 {
            self.decode_launches()?;
        }
        self.stream.synchronize()?;
        let mut host = std::time::Duration::ZERO;
        let mut left = calls;
        while left > 0 {
            let n = left.min(100);
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                self.decode_launches()?;
            }
            host += t0.elapsed();
            self.stream.synchronize()?;
            left -= n;
        }
        Ok(host.as_secs_f64() / calls as f64)
    }
}

impl Gpu {
    /// One `EnginePlan::decode` over the engine's buffers: kernel launches on the stream only.
    fn decode_launches(&mut self) -> Res<()> {
        self.plan.decode(
            &self.exec,
            &self.pool_v,
            &self.table_v,
            &self.lens_v,
            &self.q_v,
            (&mut self.out_v, &mut self.lse_v),
        )?;
        Ok(())
    }
}
