//! Torch tensors as tpla reads them: address, shape, dtype and device, each checked, with a
//! Python exception naming the argument when one is wrong.
//!
//! Only attribute reads and cheap method calls (`dtype`, `is_cuda`, `get_device()`,
//! `is_contiguous()`, `shape`, `data_ptr()`) are made, so a check costs well under a microsecond
//! per tensor; nothing synchronises with the device.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{intern, Py, PyAny};

/// Element types tpla's tensors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    /// `torch.bfloat16`
    Bf16,
    /// `torch.float32`
    F32,
    /// `torch.int32`
    I32,
    /// `torch.uint8` (the bytes of an FP8 cache)
    U8,
}

impl Dt {
    fn name(self) -> &'static str {
        match self {
            Dt::Bf16 => "torch.bfloat16",
            Dt::F32 => "torch.float32",
            Dt::I32 => "torch.int32",
            Dt::U8 => "torch.uint8",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dt::U8 => 1,
            Dt::Bf16 => 2,
            Dt::F32 | Dt::I32 => 4,
        }
    }
}

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev {
    /// Host memory (the Cranelift backend).
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dev::Cpu => write!(f, "cpu"),
            Dev::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A checked torch tensor: dense row-major, of the dtype asked for.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Address of element 0.
    pub ptr: u64,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dt: Dt,
    /// Device.
    pub dev: Dev,
}

impl Tensor {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes spanned.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dt.size()
    }
}

/// torch objects looked up once.
pub struct Torch {
    bf16: Py<PyAny>,
    f32: Py<PyAny>,
    i32: Py<PyAny>,
    u8: Py<PyAny>,
    /// `torch.empty`
    pub empty: Py<PyAny>,
    /// `torch.ones`
    pub ones: Py<PyAny>,
    /// `torch.stack`
    pub stack: Py<PyAny>,
    /// `torch._C._cuda_getCurrentRawStream` where torch has it.
    raw_stream: Option<Py<PyAny>>,
    cuda: Py<PyAny>,
}

static TORCH: PyOnceLock<Torch> = PyOnceLock::new();

/// The torch module's objects (imports torch on first use).
pub fn torch(py: Python<'_>) -> PyResult<&Torch> {
    TORCH.get_or_try_init(py, || {
        let t = py.import("torch")?;
        let raw_stream = t
            .getattr("_C")
            .and_then(|c| c.getattr("_cuda_getCurrentRawStream"))
            .ok()
            .map(|f| f.unbind());
        Ok::<_, PyErr>(Torch {
            bf16: t.getattr("bfloat16")?.unbind(),
            f32: t.getattr("float32")?.unbind(),
            i32: t.getattr("int32")?.unbind(),
            u8: t.getattr("uint8")?.unbind(),
            empty: t.getattr("empty")?.unbind(),
            ones: t.getattr("ones")?.unbind(),
            stack: t.getattr("stack")?.unbind(),
            raw_stream,
            cuda: t.getattr("cuda")?.unbind(),
        })
    })
}

impl Torch {
    fn dtype(&self, dt: Dt) -> &Py<PyAny> {
        match dt {
            Dt::Bf16 => &self.bf16,
            Dt::F32 => &self.f32,
            Dt::I32 => &self.i32,
            Dt::U8 => &self.u8,
        }
    }

    /// torch's current stream of CUDA device `ordinal`, as a raw `CUstream`.
    pub fn current_stream(&self, py: Python<'_>, ordinal: usize) -> PyResult<u64> {
        match &self.raw_stream {
            Some(f) => f.bind(py).call1((ordinal,))?.extract(),
            None => self
                .cuda
                .bind(py)
                .call_method1(intern!(py, "current_stream"), (ordinal,))?
                .getattr(intern!(py, "cuda_stream"))?
                .extract(),
        }
    }

    /// `torch.cuda.current_device()`.
    pub fn current_device(&self, py: Python<'_>) -> PyResult<usize> {
        self.cuda
            .bind(py)
            .call_method0(intern!(py, "current_device"))?
            .extract()
    }

    /// A new uninitialised tensor of `shape` and `dt` on `dev`.
    pub fn new_tensor<'py>(
        &self,
        py: Python<'py>,
        shape: &[usize],
        dt: Dt,
        dev: Dev,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.make(py, &self.empty, shape, dt, dev)
    }

    /// `torch.ones(shape, dtype, device)`, or with `fun` another such factory.
    pub fn make<'py>(
        &self,
        py: Python<'py>,
        fun: &Py<PyAny>,
        shape: &[usize],
        dt: Dt,
        dev: Dev,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kw = PyDict::new(py);
        kw.set_item(intern!(py, "dtype"), self.dtype(dt).bind(py))?;
        kw.set_item(intern!(py, "device"), dev.to_string())?;
        fun.bind(py).call((shape.to_vec(),), Some(&kw))
    }
}

/// Reads and checks `obj` (argument `name`) as a dense row-major torch tensor of `dt`.
pub fn tensor(obj: &Bound<'_, PyAny>, name: &str, dt: Dt) -> PyResult<Tensor> {
    let py = obj.py();
    let t = torch(py)?;
    let dtype = obj.getattr(intern!(py, "dtype")).map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a torch.Tensor, got {}",
            type_name(obj)
        ))
    })?;
    if !dtype.is(t.dtype(dt).bind(py)) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be {}, got {dtype}",
            dt.name()
        )));
    }
    let dev = if obj.getattr(intern!(py, "is_cuda"))?.is_truthy()? {
        let i: i64 = obj.call_method0(intern!(py, "get_device"))?.extract()?;
        Dev::Cuda(
            usize::try_from(i)
                .map_err(|_| PyValueError::new_err(format!("{name} reports CUDA device {i}")))?,
        )
    } else if obj.getattr(intern!(py, "is_cpu"))?.is_truthy()? {
        Dev::Cpu
    } else {
        let d = obj.getattr(intern!(py, "device"))?;
        return Err(PyValueError::new_err(format!(
            "{name} is on device {d}; tpla runs on cpu and cuda tensors"
        )));
    };
    let shape: Vec<usize> = obj.getattr(intern!(py, "shape"))?.extract()?;
    if !obj
        .call_method0(intern!(py, "is_contiguous"))?
        .is_truthy()?
    {
        return Err(PyValueError::new_err(format!(
            "{name} of shape {shape:?} is not contiguous (tpla reads dense row-major tensors; \
             pass {name}.contiguous())"
        )));
    }
    let ptr: u64 = obj.call_method0(intern!(py, "data_ptr"))?.extract()?;
    let tensor = Tensor {
        ptr,
        shape,
        dt,
        dev,
    };
    // torch allocations are 256-byte aligned; a view starting mid-row may not be, and the
    // kernels move rows in 16-byte vectors on a GPU.
    let align = if dev == Dev::Cpu { dt.size() } else { 16 } as u64;
    if tensor.numel() > 0 && (ptr == 0 || !ptr.is_multiple_of(align)) {
        return Err(PyValueError::new_err(format!(
            "{name} has data at {ptr:#x}, which is not {align}-byte aligned storage \
             (pass a tensor that starts its own allocation, or .clone() it)"
        )));
    }
    Ok(tensor)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".into())
}

/// `name` must have exactly `want` as its shape.
pub fn expect_shape(name: &str, t: &Tensor, want: &[usize]) -> PyResult<()> {
    if t.shape != want {
        return Err(PyValueError::new_err(format!(
            "{name} has shape {:?}, expected {want:?}",
            t.shape
        )));
    }
    Ok(())
}

/// `name` must be of rank `rank`.
pub fn expect_rank(name: &str, t: &Tensor, rank: usize, what: &str) -> PyResult<()> {
    if t.shape.len() != rank {
        return Err(PyValueError::new_err(format!(
            "{name} must be {what}, got shape {:?}",
            t.shape
        )));
    }
    Ok(())
}

/// Every tensor must be on `dev`.
pub fn expect_device(dev: Dev, ts: &[(&str, &Tensor)]) -> PyResult<()> {
    for (name, t) in ts {
        if t.dev != dev {
            return Err(PyValueError::new_err(format!(
                "{name} is on {}, but this call runs on {dev}",
                t.dev
            )));
        }
    }
    Ok(())
}

/// No tensor of `written` may share memory with any other tensor of `all` (tpla writes those
/// while reading the others).
pub fn expect_disjoint(written: &[(&str, &Tensor)], all: &[(&str, &Tensor)]) -> PyResult<()> {
    for (wn, w) in written {
        for (an, a) in all {
            if std::ptr::eq(*w, *a) || w.nbytes() == 0 || a.nbytes() == 0 {
                continue;
            }
            let (w0, a0) = (w.ptr as u128, a.ptr as u128);
            if w0 < a0 + a.nbytes() as u128 && a0 < w0 + w.nbytes() as u128 {
                return Err(PyValueError::new_err(format!(
                    "{wn} shares memory with {an}; tpla writes {wn}, so it must be a separate tensor"
                )));
            }
        }
    }
    Ok(())
}

/// `obj.ndim`, or `None` for an object without one (it is then rejected by [`tensor`]).
pub fn ndim(obj: &Bound<'_, PyAny>) -> Option<usize> {
    obj.getattr(intern!(obj.py(), "ndim")).ok()?.extract().ok()
}
