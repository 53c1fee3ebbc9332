//! The plan behind a `tpla_plan_t*`: an executor (CPU, or CUDA on the caller's stream) and an
//! [`EnginePlan`] on it, with decode, append and combine over checked C buffers.

use tpla::engine::{merge, Capacities, EnginePlan};
use tpla::runtime::cuda::device::driver_err;
use tpla::runtime::cuda::CudaExecutor;
use tpla::runtime::half::bf16;
use tpla::runtime::view::ViewExecutor;
use tpla::runtime::CpuExecutor;

use crate::raw::{buffer, count, input, no_overlap, output, RawSpace};
use crate::status::Error;

/// An executor and the engine plan made on it.
pub struct Engine<X: ViewExecutor> {
    exec: X,
    plan: EnginePlan<X>,
}

/// The backend a plan runs on.
// One per plan, boxed behind the C handle: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// The Cranelift CPU JIT over host memory.
    Cpu(Engine<CpuExecutor>),
    /// CUDA over device memory, on the caller's stream.
    Cuda(Engine<CudaExecutor>),
}

/// The arguments of `tpla_decode`.
pub struct DecodeArgs {
    pub pool: *mut bf16,
    pub num_pages: usize,
    pub block_table: *const i32,
    pub pages_per_seq: usize,
    pub seq_lens: *const i32,
    pub q: *const bf16,
    pub out: *mut f32,
    pub lse: *mut f32,
    pub batch: usize,
}

/// The arguments of `tpla_append`.
pub struct AppendArgs {
    pub pool: *mut bf16,
    pub num_pages: usize,
    pub slots: *const i32,
    pub rows: *const bf16,
    pub n: usize,
}

/// The arguments of `tpla_combine`.
pub struct CombineArgs {
    pub outs: *const f32,
    pub lses: *const f32,
    pub n: usize,
    pub batch: usize,
    pub heads: usize,
    pub lat: usize,
    pub out: *mut f32,
    pub lse: *mut f32,
}

fn positive(what: &str, v: usize) -> Result<(), Error> {
    if v == 0 {
        return Err(Error::invalid(format!("{what} must be at least 1")));
    }
    Ok(())
}

impl<X: ViewExecutor> Engine<X>
where
    X::Space: RawSpace,
{
    /// A plan for `caps` on `exec`.
    pub fn new(exec: X, caps: Capacities, scale: f32, splits: usize) -> Result<Self, Error> {
        if !scale.is_finite() || scale <= 0.0 {
            return Err(Error::invalid(format!(
                "scale must be finite and positive, got {scale}"
            )));
        }
        let plan = EnginePlan::new(&exec, caps, scale, splits)?;
        Ok(Engine { exec, plan })
    }

    /// KV splits every decode uses.
    pub fn splits(&self) -> usize {
        self.plan.splits()
    }

    /// The executor.
    pub fn exec(&self) -> &X {
        &self.exec
    }

    /// `tpla_decode`.
    ///
    /// # Safety
    /// The pointer contract of `tpla_decode` (each buffer holds the elements its sizes name, in
    /// this backend's memory, and is neither freed nor written by anyone else meanwhile).
    pub unsafe fn decode(&mut self, a: &DecodeArgs, reuse: bool) -> Result<(), Error> {
        let c = self.plan.capacities().clone();
        let (b, h, lat, row) = (a.batch, c.heads, c.lat, c.lat + c.rope);
        let prow = c.pool_row()?;
        if b == 0 || b > c.max_batch {
            return Err(Error::invalid(format!(
                "batch {b} outside 1..={} (the plan's max_batch)",
                c.max_batch
            )));
        }
        if a.pages_per_seq == 0 || a.pages_per_seq > c.max_pages_per_seq {
            return Err(Error::invalid(format!(
                "pages_per_seq {} outside 1..={} (the plan's max_pages_per_seq)",
                a.pages_per_seq, c.max_pages_per_seq
            )));
        }
        positive("num_pages", a.num_pages)?;
        let pool = buffer("pool", a.pool, &[a.num_pages, c.page_size, prow], false)?;
        let table = input("block_table", a.block_table, &[b, a.pages_per_seq])?;
        let lens = input("seq_lens", a.seq_lens, &[b])?;
        let q = input("q", a.q, &[b, h, row])?;
        let out = output("out", a.out, &[b, h, lat])?;
        let lse = output("lse", a.lse, &[b, h])?;
        no_overlap(&[
            pool.region(),
            table.region(),
            lens.region(),
            q.region(),
            out.region(),
            lse.region(),
        ])?;
        // SAFETY: every buffer was checked (non-null, aligned, sized, outputs overlapping
        // nothing); the caller's contract covers the rest (live memory of this space, no other
        // writer while the call and its queued work run).
        unsafe {
            let pool = X::Space::pool(pool, c.page_size, prow)?;
            let table = X::Space::view(table, &[b, a.pages_per_seq])?;
            let lens = X::Space::view(lens, &[b])?;
            let q = X::Space::view(q, &[b, h, row])?;
            let mut out = X::Space::view_mut(out, &[b, h, lat])?;
            let mut lse = X::Space::view_mut(lse, &[b, h])?;
            if reuse {
                self.plan.decode_scheduled(
                    &self.exec,
                    &pool,
                    &table,
                    &lens,
                    &q,
                    (&mut out, &mut lse),
                )?;
            } else {
                self.plan
                    .decode(&self.exec, &pool, &table, &lens, &q, (&mut out, &mut lse))?;
            }
        }
        Ok(())
    }

    /// `tpla_schedule`.
    ///
    /// # Safety
    /// The pointer contract of `tpla_schedule` (`seq_lens` holds `batch` int32 in this
    /// backend's memory, written by no one else meanwhile).
    pub unsafe fn schedule(&mut self, seq_lens: *const i32, batch: usize) -> Result<(), Error> {
        let max = self.plan.capacities().max_batch;
        if batch == 0 || batch > max {
            return Err(Error::invalid(format!(
                "batch {batch} outside 1..={max} (the plan's max_batch)"
            )));
        }
        let lens = input("seq_lens", seq_lens, &[batch])?;
        // SAFETY: the buffer was checked (non-null, aligned, sized); the caller's contract
        // covers the rest (live memory of this space, no other writer meanwhile).
        unsafe {
            let lens = X::Space::view(lens, &[batch])?;
            self.plan.schedule(&self.exec, &lens, 1)?;
        }
        Ok(())
    }

    /// `tpla_append`.
    ///
    /// # Safety
    /// The pointer contract of `tpla_append`.
    pub unsafe fn append(&self, a: &AppendArgs) -> Result<(), Error> {
        let c = self.plan.capacities();
        let (row, prow) = (c.lat + c.rope, c.pool_row()?);
        if a.n > c.max_append {
            return Err(Error::invalid(format!(
                "{} rows in one append, the plan's max_append is {}",
                a.n, c.max_append
            )));
        }
        positive("num_pages", a.num_pages)?;
        if a.n == 0 {
            return Ok(());
        }
        let pool = buffer("pool", a.pool, &[a.num_pages, c.page_size, prow], true)?;
        let slots = input("slots", a.slots, &[a.n])?;
        let rows = input("rows", a.rows, &[a.n, row])?;
        no_overlap(&[pool.region(), slots.region(), rows.region()])?;
        // SAFETY: as in `decode`: checked buffers, the caller's contract for the rest.
        unsafe {
            let mut pool = X::Space::pool(pool, c.page_size, prow)?;
            let slots = X::Space::view(slots, &[a.n])?;
            let rows = X::Space::view(rows, &[a.n, row])?;
            self.plan.append(&self.exec, &mut pool, &slots, &rows)?;
        }
        Ok(())
    }

    /// `tpla_combine`.
    ///
    /// # Safety
    /// The pointer contract of `tpla_combine`.
    pub unsafe fn combine(&self, a: &CombineArgs) -> Result<(), Error> {
        for (what, v) in [
            ("n", a.n),
            ("batch", a.batch),
            ("heads", a.heads),
            ("lat", a.lat),
        ] {
            positive(what, v)?;
        }
        let (n, b, h, l) = (a.n, a.batch, a.heads, a.lat);
        count("combine", &[n, b, h, l])?;
        let outs = input("outs", a.outs, &[n, b, h, l])?;
        let lses = input("lses", a.lses, &[n, b, h])?;
        let out = output("out", a.out, &[b, h, l])?;
        let lse = output("lse", a.lse, &[b, h])?;
        no_overlap(&[outs.region(), lses.region(), out.region(), lse.region()])?;
        // SAFETY: as in `decode`.
        unsafe {
            let outs = X::Space::view(outs, &[n, b, h, l])?;
            let lses = X::Space::view(lses, &[n, b, h])?;
            let mut out = X::Space::view_mut(out, &[b, h, l])?;
            let mut lse = X::Space::view_mut(lse, &[b, h])?;
            merge(&self.exec, &outs, &lses, (&mut out, &mut lse))?;
        }
        Ok(())
    }
}

impl Engine<CudaExecutor> {
    /// Makes the executor's context current on the calling thread (a plan may be used from
    /// another thread than the one that made it, one thread at a time).
    pub fn bind(&self) -> Result<(), Error> {
        self.exec
            .context()
            .bind_to_thread()
            .map_err(|e| Error::from(driver_err("binding the CUDA context", e)))
    }
}

impl Backend {
    /// KV splits every decode uses.
    pub fn splits(&self) -> usize {
        match self {
            Backend::Cpu(e) => e.splits(),
            Backend::Cuda(e) => e.splits(),
        }
    }

    /// `tpla_decode` on this backend.
    ///
    /// # Safety
    /// As [`Engine::decode`].
    pub unsafe fn decode(&mut self, a: &DecodeArgs, reuse: bool) -> Result<(), Error> {
        match self {
            // SAFETY: the caller's contract is `Engine::decode`'s.
            Backend::Cpu(e) => unsafe { e.decode(a, reuse) },
            Backend::Cuda(e) => {
                e.bind()?;
                // SAFETY: as above.
                unsafe { e.decode(a, reuse) }
            }
        }
    }

    /// `tpla_schedule` on this backend.
    ///
    /// # Safety
    /// As [`Engine::schedule`].
    pub unsafe fn schedule(&mut self, seq_lens: *const i32, batch: usize) -> Result<(), Error> {
        match self {
            // SAFETY: the caller's contract is `Engine::schedule`'s.
            Backend::Cpu(e) => unsafe { e.schedule(seq_lens, batch) },
            Backend::Cuda(e) => {
                e.bind()?;
                // SAFETY: as above.
                unsafe { e.schedule(seq_lens, batch) }
            }
        }
    }

    /// `tpla_append` on this backend.
    ///
    /// # Safety
    /// As [`Engine::append`].
    pub unsafe fn append(&self, a: &AppendArgs) -> Result<(), Error> {
        match self {
            // SAFETY: the caller's contract is `Engine::append`'s.
            Backend::Cpu(e) => unsafe { e.append(a) },
            Backend::Cuda(e) => {
                e.bind()?;
                // SAFETY: as above.
                unsafe { e.append(a) }
            }
        }
    }

    /// `tpla_combine` on this backend.
    ///
    /// # Safety
    /// As [`Engine::combine`].
    pub unsafe fn combine(&self, a: &CombineArgs) -> Result<(), Error> {
        match self {
            // SAFETY: the caller's contract is `Engine::combine`'s.
            Backend::Cpu(e) => unsafe { e.combine(a) },
            Backend::Cuda(e) => {
                e.bind()?;
                // SAFETY: as above.
                unsafe { e.combine(a) }
            }
        }
    }
}
