//! `MlaDecode` and `TplaDecode`: FlashInfer-shaped wrappers over [`EnginePlan`].
//!
//! Both hold one [`EnginePlan`] per latent group (one for MLA, `g` for TPLA, each sized for rows
//! of `lat / g + rope`). `plan` stores the engine's `seq_lens` and `block_table` tensors; `run`
//! reads every tensor's address and shape again (so a tensor resized in between is caught, not
//! read through a stale address) and launches decode on torch's current stream: no allocation
//! unless `out`/`lse` are left to it, no copy, no host sync.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla::kernels::ops::shard_width;
use tpla::runtime::cuda::CudaExecutor;
use tpla::runtime::CpuExecutor;

use crate::backend::{cpu, cuda_device, py_err, CudaDevice};
use crate::shards::{append_shards, decode_shards, schedule_shards};
use crate::tensor::{
    expect_device, expect_disjoint, expect_rank, expect_shape, tensor, torch, Dev, Dt, Tensor,
};

enum Plans {
    Cpu(Vec<EnginePlan<CpuExecutor>>),
    Cuda(Arc<CudaDevice>, Vec<EnginePlan<CudaExecutor>>),
}

impl Drop for Plans {
    fn drop(&mut self) {
        // The workspace is freed on the legacy stream; work queued on torch's streams may still
        // read it.
        if let Plans::Cuda(d, _) = self {
            d.synchronize_all();
        }
    }
}

/// What `MlaDecode` and `TplaDecode` share. `lead` is `None` for MLA (tensors without a group
/// axis) and `Some(g)` for TPLA (a leading axis of `g` shards).
pub struct Core {
    lead: Option<usize>,
    full_lat: usize,
    caps: Capacities,
    dev: Dev,
    plans: Plans,
    /// The planned `seq_lens` and `block_table`: the torch objects (kept alive) and what was read
    /// from them once, at `plan` (addresses, shapes), so `run` re-reads neither: new contents
    /// written into the same tensors are what the next `run` sees.
    planned: Option<(Py<PyAny>, Py<PyAny>, Tensor, Tensor)>,
    /// `plan(.., fixed_lengths=True)`: the split schedule was computed at `plan`, and every
    /// `run` until the next `plan` decodes through it.
    scheduled: bool,
}

/// The tensors of one call, checked.
pub(crate) struct Args {
    pub(crate) q: Tensor,
    pub(crate) cache: Tensor,
    pub(crate) out: Tensor,
    pub(crate) lse: Tensor,
    pub(crate) lens: Tensor,
    pub(crate) table: Tensor,
    pub(crate) pages: usize,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        groups: Option<usize>,
        caps: Capacities,
        scale: f32,
        splits: usize,
        device: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Core> {
        let full_lat = caps.lat;
        let g = groups.unwrap_or(1);
        let caps = Capacities {
            lat: shard_width(full_lat, g).map_err(py_err)?,
            ..caps
        };
        let dev = crate::backend::parse_device(py, device)?;
        let plans = match dev {
            Dev::Cpu => {
                let x = cpu()?;
                Plans::Cpu(
                    (0..g)
                        .map(|_| EnginePlan::new(x, caps.clone(), scale, splits))
                        .collect::<Result<_, _>>()
                        .map_err(py_err)?,
                )
            }
            Dev::Cuda(i) => {
                let d = cuda_device(i)?;
                let plans = (0..g)
                    .map(|_| EnginePlan::new(&d.base, caps.clone(), scale, splits))
                    .collect::<Result<_, _>>()
                    .map_err(py_err)?;
                // The workspace was allocated (and the append ones uploaded) on the legacy
                // stream; torch's streams may not be ordered after it.
                d.base
                    .stream()
                    .synchronize()
                    .map_err(|e| PyRuntimeError::new_err(format!("synchronize: {e:?}")))?;
                Plans::Cuda(d, plans)
            }
        };
        Ok(Core {
            lead: groups,
            full_lat,
            caps,
            dev,
            plans,
            planned: None,
            scheduled: false,
        })
    }

    /// Columns of a row the caller appends (and of a query): `lat + rope`.
    fn row(&self) -> usize {
        self.caps.lat + self.caps.rope
    }

    /// bf16 elements of a pool row as the plans see it (`row()` for bf16, the FP8 row's bytes
    /// / 2 for FP8).
    fn pool_row(&self) -> usize {
        self.caps.pool_row().unwrap_or(self.row())
    }

    /// `[g]` for TPLA, `[]` for MLA: the leading shape of every per-shard tensor.
    fn lead_shape(&self) -> Vec<usize> {
        self.lead.into_iter().collect()
    }

    fn tables(
        &self,
        lens: &Bound<'_, PyAny>,
        table: &Bound<'_, PyAny>,
    ) -> PyResult<(Tensor, Tensor)> {
        let l = tensor(lens, "seq_lens", Dt::I32)?;
        let t = tensor(table, "block_table", Dt::I32)?;
        expect_rank("seq_lens", &l, 1, "[batch]")?;
        expect_rank("block_table", &t, 2, "[batch, pages_per_seq]")?;
        expect_device(self.dev, &[("seq_lens", &l), ("block_table", &t)])?;
        let (b, c) = (l.shape[0], &self.caps);
        if b == 0 || b > c.max_batch {
            return Err(PyValueError::new_err(format!(
                "seq_lens holds {b} sequences; the plan takes 1 to max_batch = {}",
                c.max_batch
            )));
        }
        if t.shape[0] != b {
            return Err(PyValueError::new_err(format!(
                "block_table has {} rows for {b} sequences",
                t.shape[0]
            )));
        }
        if t.shape[1] > c.max_pages_per_seq {
            return Err(PyValueError::new_err(format!(
                "block_table has {} pages per sequence; the plan allows max_pages_per_seq = {}",
                t.shape[1], c.max_pages_per_seq
            )));
        }
        Ok((l, t))
    }

    fn plan(
        &mut self,
        py: Python<'_>,
        seq_lens: &Bound<'_, PyAny>,
        block_table: &Bound<'_, PyAny>,
        fixed_lengths: bool,
    ) -> PyResult<()> {
        let (l, t) = self.tables(seq_lens, block_table)?;
        // A failed schedule leaves no plan behind (the next `run` asks for one).
        self.planned = None;
        self.scheduled = false;
        if fixed_lengths {
            match &mut self.plans {
                Plans::Cpu(plans) => schedule_shards(cpu()?, plans, &l),
                Plans::Cuda(d, plans) => {
                    let x = d.current(py, torch(py)?)?;
                    schedule_shards(&*x, plans, &l)
                }
            }
            .map_err(py_err)?;
        }
        self.planned = Some((
            seq_lens.clone().unbind(),
            block_table.clone().unbind(),
            l,
            t,
        ));
        self.scheduled = fixed_lengths;
        Ok(())
    }

    /// The pool, checked: bf16 `[.., num_pages, page_size, lat + rope]`, or for FP8 uint8
    /// `[.., num_pages, page_size, row_bytes]` (16-byte aligned), seen as bf16 carrier rows.
    fn cache(&self, cache: &Bound<'_, PyAny>) -> PyResult<(Tensor, usize)> {
        let fp8 = self.caps.kv_dtype == KvDtype::Fp8;
        let mut c = tensor(cache, "cache", if fp8 { Dt::U8 } else { Dt::Bf16 })?;
        let lead = self.lead_shape();
        let (ps, row) = (
            self.caps.page_size,
            if fp8 { 2 * self.pool_row() } else { self.row() },
        );
        let what = match self.lead {
            Some(g) => format!("[{g}, num_pages, {ps}, {row}]"),
            None => format!("[num_pages, {ps}, {row}]"),
        };
        expect_rank("cache", &c, lead.len() + 3, &what)?;
        let r = lead.len();
        if c.shape[..r] != lead[..]
            || c.shape[r + 1] != ps
            || c.shape[r + 2] != row
            || c.shape[r] == 0
        {
            return Err(PyValueError::new_err(format!(
                "cache has shape {:?}, expected {what} with num_pages >= 1",
                c.shape
            )));
        }
        expect_device(self.dev, &[("cache", &c)])?;
        let pages = c.shape[r];
        if fp8 {
            if c.ptr % 16 != 0 {
                return Err(PyValueError::new_err(
                    "an FP8 cache must start 16-byte aligned (a whole torch allocation is)",
                ));
            }
            // The bytes as the bf16 carrier rows the kernels take.
            c.shape[r + 2] = self.pool_row();
            c.dt = Dt::Bf16;
        }
        Ok((c, pages))
    }

    /// An output tensor: the caller's (checked) or a new one.
    fn output<'py>(
        &self,
        py: Python<'py>,
        given: Option<Bound<'py, PyAny>>,
        name: &str,
        shape: &[usize],
    ) -> PyResult<(Bound<'py, PyAny>, Tensor)> {
        let obj = match given {
            Some(o) => o,
            None => torch(py)?.new_tensor(py, shape, Dt::F32, self.dev)?,
        };
        let t = tensor(&obj, name, Dt::F32)?;
        expect_shape(name, &t, shape)?;
        Ok((obj, t))
    }

    fn run<'py>(
        &mut self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        cache: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyAny>>,
        lse: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let Some((_, _, lens, table)) = &self.planned else {
            return Err(PyRuntimeError::new_err(
                "call plan(seq_lens, block_table) before run",
            ));
        };
        let (lens, table) = (lens.clone(), table.clone());
        let b = lens.shape[0];
        let (h, w, row) = (self.caps.heads, self.caps.lat, self.row());
        let lead = self.lead_shape();
        let with_lead = |s: &[usize]| [&lead[..], s].concat();
        let q = match self.lead {
            Some(g) if crate::tensor::ndim(q) == Some(3) => {
                // A full-width query: split it into the shards' queries (a torch copy).
                shard_latent(py, q, g, self.caps.rope)?
            }
            _ => q.clone(),
        };
        let qt = tensor(&q, "q", Dt::Bf16)?;
        expect_shape("q", &qt, &with_lead(&[b, h, row]))?;
        let (ct, pages) = self.cache(cache)?;
        let (out, ot) = self.output(py, out, "out", &with_lead(&[b, h, w]))?;
        let (lse, lt) = self.output(py, lse, "lse", &with_lead(&[b, h]))?;
        expect_device(self.dev, &[("q", &qt), ("out", &ot), ("lse", &lt)])?;
        let all = [
            ("q", &qt),
            ("cache", &ct),
            ("out", &ot),
            ("lse", &lt),
            ("seq_lens", &lens),
            ("block_table", &table),
        ];
        expect_disjoint(&[all[1], all[2], all[3]], &all)?;
        let args = Args {
            q: qt,
            cache: ct,
            out: ot,
            lse: lt,
            lens,
            table,
            pages,
        };
        let (caps, scheduled) = (&self.caps, self.scheduled);
        match &mut self.plans {
            Plans::Cpu(plans) => decode_shards(cpu()?, plans, caps, &args, scheduled),
            Plans::Cuda(d, plans) => {
                let x = d.current(py, torch(py)?)?;
                decode_shards(&*x, plans, caps, &args, scheduled)
            }
        }
        .map_err(py_err)?;
        PyTuple::new(py, [out, lse])
    }

    fn append(
        &mut self,
        py: Python<'_>,
        cache: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let rows = match self.lead {
            Some(g) if crate::tensor::ndim(rows) == Some(2) => {
                shard_latent(py, rows, g, self.caps.rope)?
            }
            _ => rows.clone(),
        };
        let (ct, pages) = self.cache(cache)?;
        let rt = tensor(&rows, "rows", Dt::Bf16)?;
        let st = tensor(slots, "slots", Dt::I32)?;
        expect_rank("slots", &st, 1, "[n]")?;
        let n = st.shape[0];
        let lead = self.lead_shape();
        expect_shape("rows", &rt, &[&lead[..], &[n, self.row()]].concat())?;
        expect_device(self.dev, &[("rows", &rt), ("slots", &st)])?;
        let all = [("cache", &ct), ("rows", &rt), ("slots", &st)];
        expect_disjoint(&all[..1], &all)?;
        let caps = &self.caps;
        match &mut self.plans {
            Plans::Cpu(plans) => append_shards(cpu()?, plans, caps, pages, &ct, &rt, &st),
            Plans::Cuda(d, plans) => {
                let x = d.current(py, torch(py)?)?;
                append_shards(&*x, plans, caps, pages, &ct, &rt, &st)
            }
        }
        .map_err(py_err)
    }

    fn splits(&self) -> usize {
        match &self.plans {
            Plans::Cpu(p) => p[0].splits(),
            Plans::Cuda(_, p) => p[0].splits(),
        }
    }
}

fn parse_kv_dtype(s: &str) -> PyResult<KvDtype> {
    KvDtype::parse(s).ok_or_else(|| {
        PyValueError::new_err(format!("kv_dtype must be \"bf16\" or \"fp8\", got {s:?}"))
    })
}

static SHARD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `tpla.shard_latent(x, groups, rope)`: the shards' `[g, ..., lat/g + rope]` rows of full-width
/// `x` (a torch copy, capturable in a graph).
pub fn shard_latent<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    groups: usize,
    rope: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let f = SHARD.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("tpla._shard")?.getattr("shard_latent")?.unbind())
    })?;
    f.bind(py).call1((x, groups, rope))
}

macro_rules! shared_methods {
    ($ty:ident, { $($own:tt)* }) => {
        #[pymethods]
        impl $ty {
            $($own)*

            /// Stores the engine's `seq_lens` (`[batch]` int32) and `block_table` (`[batch,
            /// pages_per_seq]` int32) tensors for the next `run` calls. Their contents may change
            /// between runs (e.g. between CUDA graph replays); no host sync.
            ///
            /// `fixed_lengths=True` is the once-per-step form (FlashMLA's metadata, FlashInfer's
            /// `plan`): the lengths in `seq_lens` are final, the balanced split schedule is
            /// computed here, on torch's current stream, and every `run` until the next `plan`
            /// (the layers of one decode step) decodes through it instead of computing it
            /// again. New lengths then need a new `plan` (a `run` cannot see them change: it
            /// would decode the old pieces). Without balanced splits it changes nothing.
            #[pyo3(signature = (seq_lens, block_table, fixed_lengths=false))]
            fn plan(&mut self, py: Python<'_>, seq_lens: &Bound<'_, PyAny>, block_table: &Bound<'_, PyAny>, fixed_lengths: bool) -> PyResult<()> {
                self.0.plan(py, seq_lens, block_table, fixed_lengths)
            }

            /// Writes token `rows` into the `cache` at `slots` (`[n]` int32, distinct, each
            /// `page * page_size + offset`), on torch's current stream.
            fn append(&mut self, py: Python<'_>, cache: &Bound<'_, PyAny>, rows: &Bound<'_, PyAny>, slots: &Bound<'_, PyAny>) -> PyResult<()> {
                self.0.append(py, cache, rows, slots)
            }

            /// Decode attention of one query per sequence over the planned tables; returns
            /// `(out, lse)` (float32; lse is the natural-log log-sum-exp, about -6.9e29 for an
            /// empty sequence, whose output is 0). `out`/`lse` given are written in place.
            #[pyo3(signature = (q, cache, out=None, lse=None))]
            fn run<'py>(
                &mut self,
                py: Python<'py>,
                q: &Bound<'py, PyAny>,
                cache: &Bound<'py, PyAny>,
                out: Option<Bound<'py, PyAny>>,
                lse: Option<Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyTuple>> {
                self.0.run(py, q, cache, out, lse)
            }

            /// KV splits every run uses (fixed by the capacities).
            #[getter]
            fn splits(&self) -> usize {
                self.0.splits()
            }
            /// The device, `cpu` or `cuda:N`.
            #[getter]
            fn device(&self) -> String {
                self.0.dev.to_string()
            }
            /// Latent width of the cache rows of one shard (`lat / groups`).
            #[getter]
            fn shard_width(&self) -> usize {
                self.0.caps.lat
            }
            /// The full latent width.
            #[getter]
            fn lat(&self) -> usize {
                self.0.full_lat
            }
            /// RoPE width.
            #[getter]
            fn rope(&self) -> usize {
                self.0.caps.rope
            }
            /// Query heads.
            #[getter]
            fn heads(&self) -> usize {
                self.0.caps.heads
            }
            /// Tokens per page.
            #[getter]
            fn page_size(&self) -> usize {
                self.0.caps.page_size
            }
            /// How the cache stores a row: `"bf16"`, or `"fp8"` (e4m3 latent with one float32
            /// scale per 128 columns and a bf16 RoPE key; appends quantise).
            #[getter]
            fn kv_dtype(&self) -> &'static str {
                self.0.caps.kv_dtype.name()
            }
            /// Bytes of one cache row of one shard: `2 * (lat + rope)` for bf16; for FP8 the
            /// last dimension of the uint8 cache (656 for MLA's 512 + 64).
            #[getter]
            fn row_bytes(&self) -> usize {
                2 * self.0.pool_row()
            }
        }
    };
}

/// MLA decode over an engine's paged latent cache (`[num_pages, page_size, lat + rope]` bf16).
#[pyclass(module = "tpla")]
pub struct MlaDecode(Core);

shared_methods!(MlaDecode, {
    /// Capacities fixed for the object's life; `device` is `"cpu"` (default), `"cuda"`,
    /// `"cuda:N"` or a `torch.device`. `splits = 0` chooses the KV split count.
    #[new]
    #[pyo3(signature = (max_batch, heads, lat, page_size, max_pages_per_seq, scale, *, rope=64, max_append=4096, splits=0, device=None, kv_dtype="bf16"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        max_batch: usize,
        heads: usize,
        lat: usize,
        page_size: usize,
        max_pages_per_seq: usize,
        scale: f32,
        rope: usize,
        max_append: usize,
        splits: usize,
        device: Option<&Bound<'_, PyAny>>,
        kv_dtype: &str,
    ) -> PyResult<Self> {
        let kv_dtype = parse_kv_dtype(kv_dtype)?;
        let caps = Capacities {
            max_batch,
            heads,
            lat,
            rope,
            page_size,
            max_pages_per_seq,
            max_append,
            kv_dtype,
        };
        Core::new(py, None, caps, scale, splits, device).map(MlaDecode)
    }
});

/// TPLA decode: `groups` latent shards on one device, each what one tensor-parallel rank holds.
/// Cache `[groups, num_pages, page_size, lat / groups + rope]`; `run` returns per-shard
/// `out [groups, batch, heads, lat / groups]` and `lse [groups, batch, heads]`.
#[pyclass(module = "tpla")]
pub struct TplaDecode(Core);

shared_methods!(TplaDecode, {
    /// As `MlaDecode`, with `lat` the full latent width split into `groups` shards.
    #[new]
    #[pyo3(signature = (max_batch, heads, lat, groups, page_size, max_pages_per_seq, scale, *, rope=64, max_append=4096, splits=0, device=None, kv_dtype="bf16"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        max_batch: usize,
        heads: usize,
        lat: usize,
        groups: usize,
        page_size: usize,
        max_pages_per_seq: usize,
        scale: f32,
        rope: usize,
        max_append: usize,
        splits: usize,
        device: Option<&Bound<'_, PyAny>>,
        kv_dtype: &str,
    ) -> PyResult<Self> {
        let kv_dtype = parse_kv_dtype(kv_dtype)?;
        let caps = Capacities {
            max_batch,
            heads,
            lat,
            rope,
            page_size,
            max_pages_per_seq,
            max_append,
            kv_dtype,
        };
        Core::new(py, Some(groups), caps, scale, splits, device).map(TplaDecode)
    }

    /// Latent groups (shards).
    #[getter]
    fn groups(&self) -> usize {
        self.0.lead.unwrap_or(1)
    }
});
