//! Device buffers: dense tensors ([`CudaTensor`]) and the paged latent cache
//! ([`CudaPagedCache`]) in device memory, and their byte views.

use std::marker::PhantomData;

use cudarc::driver::CudaSlice;

use crate::tensor::Element;
use crate::RuntimeError;

/// A dense row-major tensor in device memory.
#[derive(Debug)]
pub struct CudaTensor<T> {
    pub(super) buf: CudaSlice<u8>,
    pub(super) ptr: u64,
    pub(super) shape: Vec<usize>,
    pub(super) _t: PhantomData<T>,
}

impl CudaTensor<f32> {
    /// The buffer as a typed f32 view for cudarc APIs that take typed device slices (NCCL).
    pub(crate) fn f32_view_mut(&mut self) -> Option<cudarc::driver::CudaViewMut<'_, f32>> {
        let n = self.len();
        // SAFETY: the buffer was allocated for `n` f32 elements (`alloc`/`upload` size it as
        // `len * size_of::<T>()` bytes, at least 16) and holds f32 data; a `u8` -> `f32` view of
        // that many elements stays inside it, and device allocations are 256-byte aligned.
        unsafe { self.buf.transmute_mut::<f32>(n) }
    }
}

impl CudaTensor<half::bf16> {
    /// The buffer as a typed bf16 view for cudarc APIs that take typed device slices (NCCL).
    pub(crate) fn bf16_view_mut(&mut self) -> Option<cudarc::driver::CudaViewMut<'_, half::bf16>> {
        let n = self.len();
        // SAFETY: the buffer was allocated for `n` bf16 elements (`alloc`/`upload` size it as
        // `len * size_of::<T>()` bytes, at least 16) and holds bf16 data; a `u8` -> `bf16` view
        // of that many elements stays inside it, and device allocations are 256-byte aligned.
        unsafe { self.buf.transmute_mut::<half::bf16>(n) }
    }
}

impl<T: Element> CudaTensor<T> {
    /// Gives the tensor another shape with the same number of elements (no data moves); on a
    /// count mismatch it is an error and the tensor is unchanged.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<(), RuntimeError> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "cannot reshape a tensor of shape {:?} ({} elements) to {shape:?} ({n})",
                self.shape,
                self.len()
            )));
        }
        self.shape = shape.to_vec();
        Ok(())
    }
    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Device address of element 0.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// The underlying cudarc buffer (bytes), for engines that pass it to other libraries.
    pub fn buffer(&self) -> &CudaSlice<u8> {
        &self.buf
    }
}

/// The paged latent cache in device memory, with host copies of the block table and lengths
/// (so every launch is validated against them).
#[derive(Debug)]
pub struct CudaPagedCache<T> {
    pub(super) data: CudaSlice<u8>,
    pub(super) data_ptr: u64,
    pub(super) block_table: CudaSlice<u8>,
    pub(super) block_table_ptr: u64,
    pub(super) seq_lens: CudaSlice<u8>,
    pub(super) seq_lens_ptr: u64,
    pub(super) host_block_table: Vec<i32>,
    pub(super) host_seq_lens: Vec<i32>,
    /// Page-locked staging buffers for [`crate::Executor::set_seq_lens`], used in turn: a copy
    /// from pageable memory may make the host wait for the stream (the driver stages it),
    /// which would stop the host queueing ahead of the device at every append.
    pub(super) lens_stage: LensStage,
    pub(super) num_pages: usize,
    pub(super) page_size: usize,
    pub(super) row: usize,
    pub(super) pages_per_seq: usize,
    pub(super) _t: PhantomData<T>,
}

impl<T: Element> CudaPagedCache<T> {
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.host_seq_lens.len()
    }
    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Elements per token row.
    pub fn row(&self) -> usize {
        self.row
    }
    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    /// Block-table entries per sequence.
    pub fn pages_per_seq(&self) -> usize {
        self.pages_per_seq
    }
    /// Tokens each sequence can hold.
    pub fn capacity(&self) -> usize {
        self.pages_per_seq * self.page_size
    }
    /// Host copy of the block table.
    pub fn block_table(&self) -> &[i32] {
        &self.host_block_table
    }
    /// Host copy of the sequence lengths.
    pub fn seq_lens(&self) -> &[i32] {
        &self.host_seq_lens
    }
    /// Device address of the page pool.
    pub fn data_ptr(&self) -> u64 {
        self.data_ptr
    }
}

pub(super) fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: `Element` is implemented only for f32, half::bf16 and i32: plain data without
    // padding or invalid bit patterns, so viewing them as bytes is sound.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub(super) fn from_bytes<T: Element>(b: &[u8]) -> Vec<T> {
    let n = b.len() / std::mem::size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: as in `as_bytes`; every byte pattern is a valid value of these types, and `v` has
    // room for exactly `n * size_of::<T>()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            b.as_ptr(),
            v.as_mut_ptr() as *mut u8,
            n * std::mem::size_of::<T>(),
        )
    };
    v
}

/// [`CudaPagedCache::lens_stage`]: a ring of page-locked buffers of the lengths, allocated on
/// first use. Writing a buffer waits for its previous copy only (its event), so the host runs
/// ahead as long as fewer than [`LensStage::DEPTH`] copies of this cache are in flight.
#[derive(Default)]
pub(crate) struct LensStage {
    ring: Vec<cudarc::driver::PinnedHostSlice<u8>>,
    next: usize,
}

impl LensStage {
    /// Buffers in the ring.
    pub(crate) const DEPTH: usize = 4;

    /// The next buffer of `bytes` bytes on `ctx`, holding `data` (after its previous copy).
    pub(crate) fn stage(
        &mut self,
        ctx: &std::sync::Arc<cudarc::driver::CudaContext>,
        data: &[u8],
    ) -> Result<&cudarc::driver::PinnedHostSlice<u8>, cudarc::driver::DriverError> {
        if self.ring.len() < Self::DEPTH {
            // SAFETY: the allocation is filled below before any copy reads it.
            let buf = unsafe { ctx.alloc_pinned::<u8>(data.len())? };
            self.ring.push(buf);
            self.next = self.ring.len() - 1;
        } else {
            self.next = (self.next + 1) % Self::DEPTH;
        }
        let buf = &mut self.ring[self.next];
        // Exactly the copy's size: a copy takes the whole staged slice.
        if buf.len() != data.len() {
            // SAFETY: as above.
            *buf = unsafe { ctx.alloc_pinned::<u8>(data.len())? };
        }
        buf.as_mut_slice()?[..data.len()].copy_from_slice(data);
        Ok(&self.ring[self.next])
    }
}

impl std::fmt::Debug for LensStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LensStage({} buffers)", self.ring.len())
    }
}
