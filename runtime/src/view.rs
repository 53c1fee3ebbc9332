//! Views of caller-owned memory: what a serving engine hands tpla (its KV page pool, block table,
//! sequence lengths, slot mapping, queries, outputs) with no copy and no host mirror.
//!
//! A view is tied to a [`MemorySpace`]: [`Host`] views borrow host slices and are made by safe
//! constructors (everything is checked, the tables included, before each launch); [`Device`]
//! views wrap raw device addresses and are made by `unsafe` constructors whose `# Safety`
//! sections state what the caller promises. An executor names the space it reads through
//! [`ViewExecutor`], so a host slice can never reach a GPU kernel, nor a device address the CPU.

use std::marker::PhantomData;

use crate::exec::{ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
use crate::tensor::Element;
use crate::RuntimeError;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Host {}
    impl Sealed for super::Device {}
}

/// Where a view's memory lives ([`Host`] or [`Device`]).
pub trait MemorySpace: sealed::Sealed + 'static {
    /// True for host memory: views carry their slices, so tables can be checked on the host.
    const HOST: bool;
    /// The space launch arguments are tagged with.
    const SPACE: ArgSpace;
}

/// Host memory (the CPU executor).
#[derive(Clone, Copy, Debug)]
pub struct Host;
/// Device memory of a CUDA context (the CUDA executor).
#[derive(Clone, Copy, Debug)]
pub struct Device;

impl MemorySpace for Host {
    const HOST: bool = true;
    const SPACE: ArgSpace = ArgSpace::Host;
}
impl MemorySpace for Device {
    const HOST: bool = false;
    const SPACE: ArgSpace = ArgSpace::Device;
}

/// An executor that runs kernels over views of memory in [`ViewExecutor::Space`].
pub trait ViewExecutor: Executor {
    /// The memory its kernels read and write.
    type Space: MemorySpace;
}

impl ViewExecutor for crate::CpuExecutor {
    type Space = Host;
}

#[cfg(feature = "cuda")]
impl ViewExecutor for crate::cuda::CudaExecutor {
    type Space = Device;
}

const MAX_RANK: usize = 4;

fn dims_of(shape: &[usize]) -> Result<([usize; MAX_RANK], usize, usize), RuntimeError> {
    if shape.is_empty() || shape.len() > MAX_RANK {
        return Err(RuntimeError::InvalidInput(format!(
            "a view has rank 1 to {MAX_RANK}, got shape {shape:?}"
        )));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| RuntimeError::InvalidInput(format!("shape {shape:?} overflows")))?;
    let mut dims = [0; MAX_RANK];
    dims[..shape.len()].copy_from_slice(shape);
    Ok((dims, shape.len(), n))
}

fn too_short(what: &str, have: usize, need: usize) -> RuntimeError {
    RuntimeError::InvalidInput(format!(
        "{what}: a buffer of {have} elements for a view of {need}"
    ))
}

/// A read-only dense row-major view (`shape` of rank 1 to 4).
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a, T, M> {
    ptr: u64,
    dims: [usize; MAX_RANK],
    rank: usize,
    host: Option<&'a [T]>,
    _space: PhantomData<M>,
}

/// A writable dense row-major view (`shape` of rank 1 to 4).
#[derive(Debug)]
pub struct TensorViewMut<'a, T, M> {
    ptr: u64,
    dims: [usize; MAX_RANK],
    rank: usize,
    _borrow: PhantomData<(&'a mut [T], M)>,
}

impl<'a, T: Element> TensorView<'a, T, Host> {
    /// A view of the first `shape.product()` elements of `data`.
    pub fn new(data: &'a [T], shape: &[usize]) -> Result<Self, RuntimeError> {
        let (dims, rank, n) = dims_of(shape)?;
        if data.len() < n {
            return Err(too_short("host view", data.len(), n));
        }
        Ok(TensorView {
            ptr: data.as_ptr() as u64,
            dims,
            rank,
            host: Some(&data[..n]),
            _space: PhantomData,
        })
    }
}

impl<T: Element> TensorView<'_, T, Device> {
    /// A view of device memory at `ptr`.
    ///
    /// # Safety
    /// While the view (or any copy of it) lives and until the work queued with it on the
    /// executor's stream has finished: `ptr` is a live device allocation of the context of the
    /// executor it is used with, aligned for `T`, holding at least `shape.product()` elements,
    /// and no kernel or copy writes them. For a view used as a block table, lengths or slot
    /// mapping, its contents meet the contract of the call it is passed to (e.g. page ids in
    /// range, slots distinct) whenever that call's kernels run.
    pub unsafe fn from_device(ptr: u64, shape: &[usize]) -> Result<Self, RuntimeError> {
        let (dims, rank, _) = dims_of(shape)?;
        Ok(TensorView {
            ptr,
            dims,
            rank,
            host: None,
            _space: PhantomData,
        })
    }
}

impl<'a, T: Element, M: MemorySpace> TensorView<'a, T, M> {
    /// A view at `ptr` in space `M`, with the host slice when there is one (for code generic over
    /// the space; prefer [`TensorView::new`] and [`TensorView::from_device`]).
    ///
    /// # Safety
    /// In host space `host` must be `Some` and `ptr` its address; in device space the contract
    /// of [`TensorView::from_device`] holds.
    pub unsafe fn from_raw(
        ptr: u64,
        shape: &[usize],
        host: Option<&'a [T]>,
    ) -> Result<Self, RuntimeError> {
        let (dims, rank, n) = dims_of(shape)?;
        if M::HOST {
            match host {
                Some(h) if h.as_ptr() as u64 == ptr && h.len() >= n => {}
                _ => {
                    return Err(RuntimeError::InvalidInput(
                        "a host view needs its slice".into(),
                    ))
                }
            }
        }
        Ok(TensorView {
            ptr,
            dims,
            rank,
            host: host.map(|h| &h[..n.min(h.len())]),
            _space: PhantomData,
        })
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
    /// The address of element 0 (host or device).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The elements, for a host view.
    pub fn host(&self) -> Option<&'a [T]> {
        self.host
    }
    /// The launch argument.
    pub fn arg(&self) -> KernelArg<'_> {
        // SAFETY: a host view borrows `shape.product()` elements for 'a (shared: nobody writes
        // them); a device view was made under `from_device`'s contract, which is this one.
        KernelArg::Tensor(unsafe {
            TensorArg::new(self.ptr, T::DTYPE, self.shape(), false, M::SPACE)
        })
    }
}

impl<'a, T: Element> TensorViewMut<'a, T, Host> {
    /// A writable view of the first `shape.product()` elements of `data`.
    pub fn new(data: &'a mut [T], shape: &[usize]) -> Result<Self, RuntimeError> {
        let (dims, rank, n) = dims_of(shape)?;
        if data.len() < n {
            return Err(too_short("host view", data.len(), n));
        }
        Ok(TensorViewMut {
            ptr: data.as_mut_ptr() as u64,
            dims,
            rank,
            _borrow: PhantomData,
        })
    }
}

impl<T: Element> TensorViewMut<'_, T, Device> {
    /// A writable view of device memory at `ptr`.
    ///
    /// # Safety
    /// As [`TensorView::from_device`], and in addition: while the view lives, nothing else
    /// reads or writes those elements during the work tpla queues with it (no other view passed
    /// to the same call overlaps them), and any f32/bf16/i32 bit pattern may be written there.
    pub unsafe fn from_device(ptr: u64, shape: &[usize]) -> Result<Self, RuntimeError> {
        let (dims, rank, _) = dims_of(shape)?;
        Ok(TensorViewMut {
            ptr,
            dims,
            rank,
            _borrow: PhantomData,
        })
    }
}

impl<T: Element, M: MemorySpace> TensorViewMut<'_, T, M> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.rank]
    }
    /// The address of element 0 (host or device).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The writable launch argument.
    pub fn arg_mut(&mut self) -> KernelArg<'_> {
        // SAFETY: a host view holds the exclusive borrow of its elements for 'a, and `&mut self`
        // makes this argument its only use; a device view was made under `from_device`'s
        // contract, which is this one.
        KernelArg::Tensor(unsafe {
            TensorArg::new(self.ptr, T::DTYPE, self.shape(), true, M::SPACE)
        })
    }
}

/// An engine's KV page pool, `[num_pages, page_size, row]` (FlashMLA / vLLM layout: token `t`
/// of a sequence lives in page `block_table[t / page_size]` at offset `t % page_size`, i.e. at
/// slot `page · page_size + t % page_size`).
#[derive(Debug)]
pub struct KvPool<'a, T, M> {
    ptr: u64,
    num_pages: usize,
    page_size: usize,
    row: usize,
    _borrow: PhantomData<(&'a mut [T], M)>,
}

fn pool_dims(len: usize, page_size: usize, row: usize) -> Result<usize, RuntimeError> {
    let page = page_size
        .checked_mul(row)
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            RuntimeError::InvalidInput(format!(
                "page size {page_size} and row width {row} must be positive"
            ))
        })?;
    if len == 0 || !len.is_multiple_of(page) {
        return Err(RuntimeError::InvalidInput(format!(
            "page pool of {len} values is not a positive whole number of [{page_size}, {row}] pages"
        )));
    }
    let pages = len / page;
    if pages
        .checked_mul(page_size)
        .is_none_or(|s| s > i32::MAX as usize)
    {
        return Err(RuntimeError::InvalidInput(format!(
            "{pages} pages of {page_size} tokens do not fit i32 slot ids"
        )));
    }
    Ok(pages)
}

impl<'a, T: Element> KvPool<'a, T, Host> {
    /// The pool in `data` (`num_pages · page_size · row` values).
    pub fn new(data: &'a mut [T], page_size: usize, row: usize) -> Result<Self, RuntimeError> {
        let num_pages = pool_dims(data.len(), page_size, row)?;
        Ok(KvPool {
            ptr: data.as_mut_ptr() as u64,
            num_pages,
            page_size,
            row,
            _borrow: PhantomData,
        })
    }
}

impl<T: Element> KvPool<'_, T, Device> {
    /// The pool at device address `ptr`.
    ///
    /// # Safety
    /// While the view lives and until the work tpla queued with it has finished: `ptr` is a live
    /// device allocation of the executor's context, aligned for `T`, of at least
    /// `num_pages · page_size · row` elements; tpla's appends are the only writes to the rows
    /// they target while they run, and nothing writes the pool while a decode reads it.
    pub unsafe fn from_device(
        ptr: u64,
        num_pages: usize,
        page_size: usize,
        row: usize,
    ) -> Result<Self, RuntimeError> {
        let len = num_pages
            .checked_mul(page_size)
            .and_then(|x| x.checked_mul(row))
            .ok_or_else(|| RuntimeError::InvalidInput("pool size overflows".into()))?;
        pool_dims(len, page_size, row)?;
        Ok(KvPool {
            ptr,
            num_pages,
            page_size,
            row,
            _borrow: PhantomData,
        })
    }
}

impl<T: Element, M: MemorySpace> KvPool<'_, T, M> {
    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Elements per token row.
    pub fn row(&self) -> usize {
        self.row
    }
    /// Token slots in the pool (`num_pages · page_size`).
    pub fn slots(&self) -> usize {
        self.num_pages * self.page_size
    }

    /// The pool read through `block_table` (`[batch, pages_per_seq]` i32) and `seq_lens`
    /// (`[batch]` i32), for a decode. On the host every page the lengths reach is checked at
    /// launch; on a device the tables' `from_device` contracts cover it.
    pub fn paged<'s>(
        &'s self,
        block_table: &'s TensorView<'_, i32, M>,
        seq_lens: &'s TensorView<'_, i32, M>,
    ) -> Result<KernelArg<'s>, RuntimeError> {
        let (bt, lens) = (block_table.shape(), seq_lens.shape());
        if bt.len() != 2 || lens.len() != 1 || bt[0] != lens[0] {
            return Err(RuntimeError::InvalidInput(format!(
                "block table {bt:?} and lengths {lens:?} must be [batch, pages_per_seq] and [batch]"
            )));
        }
        let geometry = PagedGeometry {
            dtype: T::DTYPE,
            num_pages: self.num_pages,
            page_size: self.page_size,
            row: self.row,
            batch: bt[0],
            pages_per_seq: bt[1],
        };
        let host = match (block_table.host(), seq_lens.host()) {
            (Some(b), Some(l)) => Some((b, l)),
            _ => None,
        };
        // SAFETY: the pool is borrowed shared (no tpla append can run through it meanwhile) and
        // sized by its constructor; the tables are views of the sizes the geometry names. In host
        // space they carry their slices, which `check_launch` validates (lengths within the
        // table, page ids in the pool); in device space the views' `from_device` contract
        // promises the same.
        Ok(KernelArg::Paged(unsafe {
            PagedArg::new(
                self.ptr,
                block_table.ptr(),
                seq_lens.ptr(),
                geometry,
                host,
                false,
                M::SPACE,
            )
        }))
    }

    /// The pool seen as `slots.len()` one-token sequences, sequence `i` being slot `slots[i]`
    /// (page size 1, block table = `slots`, every length 1 from `ones`): what an append through
    /// a slot mapping writes. On the host, the slots are checked to be in the pool and distinct.
    pub fn slot_rows<'s>(
        &'s mut self,
        slots: &'s TensorView<'_, i32, M>,
        ones: &'s TensorView<'_, i32, M>,
    ) -> Result<KernelArg<'s>, RuntimeError> {
        let n = match slots.shape() {
            [n] => *n,
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "slot mapping must be [n], got {s:?}"
                )))
            }
        };
        if ones.shape() != [n] {
            return Err(RuntimeError::InvalidInput(format!(
                "length view {:?} for {n} slots",
                ones.shape()
            )));
        }
        if let Some(s) = slots.host() {
            check_slots(s, self.slots())?;
        }
        if let Some(o) = ones.host() {
            if o.iter().any(|&x| x != 1) {
                return Err(RuntimeError::InvalidInput(
                    "slot append lengths must all be 1".into(),
                ));
            }
        }
        let geometry = PagedGeometry {
            dtype: T::DTYPE,
            num_pages: self.slots(),
            page_size: 1,
            row: self.row,
            batch: n,
            pages_per_seq: 1,
        };
        let host = match (slots.host(), ones.host()) {
            (Some(b), Some(l)) => Some((b, l)),
            _ => None,
        };
        // SAFETY: `[num_pages, page_size, row]` and `[num_pages · page_size, 1, row]` are the same
        // memory. The pool is borrowed exclusively. Host slots were checked above (in the pool,
        // distinct, so no two programs write the same row) and every length is 1; device views
        // promise the same through their `from_device` contract.
        Ok(KernelArg::Paged(unsafe {
            PagedArg::new(
                self.ptr,
                slots.ptr(),
                ones.ptr(),
                geometry,
                host,
                true,
                M::SPACE,
            )
        }))
    }
}

/// Checks a slot mapping: every slot in `0..capacity`, no slot twice.
pub fn check_slots(slots: &[i32], capacity: usize) -> Result<(), RuntimeError> {
    let mut seen = std::collections::HashSet::with_capacity(slots.len());
    for (i, &s) in slots.iter().enumerate() {
        if s < 0 || s as usize >= capacity {
            return Err(RuntimeError::InvalidInput(format!(
                "slot_mapping[{i}] = {s}, but the pool has {capacity} slots"
            )));
        }
        if !seen.insert(s) {
            return Err(RuntimeError::InvalidInput(format!(
                "slot {s} appears twice in the slot mapping"
            )));
        }
    }
    Ok(())
}

/// The slot of token `t` of a sequence whose block-table row is `pages` (`page · page_size +
/// t % page_size`), or an error when the row does not reach `t`.
pub fn slot_of(pages: &[i32], page_size: usize, t: usize) -> Result<i32, RuntimeError> {
    let page = pages
        .get(t / page_size.max(1))
        .ok_or(RuntimeError::LengthPastCache {
            len: t + 1,
            capacity: pages.len() * page_size,
        })?;
    if *page < 0 {
        return Err(RuntimeError::InvalidInput(format!(
            "negative page id {page}"
        )));
    }
    i32::try_from(*page as usize * page_size + t % page_size)
        .map_err(|_| RuntimeError::InvalidInput("slot does not fit i32".into()))
}
