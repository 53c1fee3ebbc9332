//! From C pointers and sizes to tpla views: null, alignment, size and overlap checks, then the
//! host (slice) or device (address) constructors of [`tpla::runtime::view`].

use std::mem::{align_of, size_of};

use tpla::runtime::half::bf16;
use tpla::runtime::view::{Device, Host, KvPool, MemorySpace, TensorView, TensorViewMut};
use tpla::runtime::{Element, RuntimeError};

use crate::status::Error;

/// One C buffer argument, checked: non-null, aligned, `len` elements whose byte size fits.
#[derive(Clone, Copy, Debug)]
pub struct Buf<T> {
    pub ptr: *mut T,
    pub len: usize,
    name: &'static str,
    writable: bool,
}

/// The product of `dims`, or an invalid-argument error naming `what`.
pub fn count(what: &str, dims: &[usize]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("{what}: the size {dims:?} overflows")))
}

/// A buffer argument at `ptr` of `dims.product()` elements, checked (non-null, aligned, its byte
/// size fits); `writable` when tpla writes it.
pub fn buffer<T>(
    name: &'static str,
    ptr: *mut T,
    dims: &[usize],
    writable: bool,
) -> Result<Buf<T>, Error> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("`{name}` is a null pointer")));
    }
    if !(ptr as usize).is_multiple_of(align_of::<T>()) {
        return Err(Error::invalid(format!(
            "`{name}` ({ptr:p}) is not aligned to {} bytes",
            align_of::<T>()
        )));
    }
    let len = count(name, dims)?;
    let end = len
        .checked_mul(size_of::<T>())
        .filter(|&b| b <= isize::MAX as usize)
        .and_then(|b| (ptr as usize).checked_add(b));
    if end.is_none() {
        return Err(Error::invalid(format!(
            "`{name}` of {dims:?} elements overflows the address space"
        )));
    }
    Ok(Buf {
        ptr,
        len,
        name,
        writable,
    })
}

/// A buffer tpla only reads: `dims.product()` elements at `ptr`.
pub fn input<T>(name: &'static str, ptr: *const T, dims: &[usize]) -> Result<Buf<T>, Error> {
    buffer(name, ptr.cast_mut(), dims, false)
}

/// A buffer tpla writes: `dims.product()` elements at `ptr`.
pub fn output<T>(name: &'static str, ptr: *mut T, dims: &[usize]) -> Result<Buf<T>, Error> {
    buffer(name, ptr, dims, true)
}

impl<T> Buf<T> {
    fn range(&self) -> (usize, usize, &'static str, bool) {
        let start = self.ptr as usize;
        (
            start,
            start + self.len * size_of::<T>(),
            self.name,
            self.writable,
        )
    }
    /// This buffer's byte range, for [`no_overlap`].
    pub fn region(&self) -> Region {
        let (start, end, name, writable) = self.range();
        Region {
            start,
            end,
            name,
            writable,
        }
    }
}

/// A byte range of one argument.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    start: usize,
    end: usize,
    name: &'static str,
    writable: bool,
}

/// Fails when a buffer tpla writes overlaps any other argument (host or device addresses alike:
/// a device's buffers share one virtual address space).
pub fn no_overlap(regions: &[Region]) -> Result<(), Error> {
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            let empty = a.start == a.end || b.start == b.end;
            if (a.writable || b.writable) && !empty && a.start < b.end && b.start < a.end {
                return Err(Error::invalid(format!(
                    "`{}` and `{}` overlap, and tpla writes one of them",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

/// Turning checked buffers into views of one memory space.
pub trait RawSpace: MemorySpace + Sized {
    /// A read-only view of `buf` as `shape` (whose product is `buf.len`).
    ///
    /// # Safety
    /// `buf` points to `buf.len` initialised elements of this space that nothing writes while
    /// the view lives (and, on a device, until the work queued with it has finished).
    unsafe fn view<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Self>, RuntimeError>;
    /// A writable view of `buf` as `shape`.
    ///
    /// # Safety
    /// `buf` points to `buf.len` writable elements of this space that nothing else reads or
    /// writes while the view lives (on a device, until the work queued with it has finished).
    unsafe fn view_mut<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Self>, RuntimeError>;
    /// The page pool in `buf` (`num_pages · page_size · row` elements).
    ///
    /// # Safety
    /// As [`RawSpace::view_mut`].
    unsafe fn pool<'a>(
        buf: Buf<bf16>,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Self>, RuntimeError>;
}

impl RawSpace for Host {
    unsafe fn view<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Host>, RuntimeError> {
        // SAFETY: `buf` is non-null, aligned and its byte size fits isize (checked when made);
        // the caller promises `len` initialised elements nothing writes meanwhile.
        let s = unsafe { std::slice::from_raw_parts(buf.ptr.cast_const(), buf.len) };
        TensorView::new(s, shape)
    }
    unsafe fn view_mut<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Host>, RuntimeError> {
        // SAFETY: as in `view`, and the caller promises exclusive access (overlaps with the
        // call's other arguments were rejected by `no_overlap`).
        let s = unsafe { std::slice::from_raw_parts_mut(buf.ptr, buf.len) };
        TensorViewMut::new(s, shape)
    }
    unsafe fn pool<'a>(
        buf: Buf<bf16>,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Host>, RuntimeError> {
        // SAFETY: as in `view_mut`.
        let s = unsafe { std::slice::from_raw_parts_mut(buf.ptr, buf.len) };
        KvPool::new(s, page_size, row)
    }
}

impl RawSpace for Device {
    unsafe fn view<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorView<'a, T, Device>, RuntimeError> {
        // SAFETY: the caller's contract is `from_device`'s: a live, aligned device allocation of
        // `shape.product()` elements nothing writes until the queued work has finished.
        unsafe { TensorView::from_device(buf.ptr as u64, shape) }
    }
    unsafe fn view_mut<'a, T: Element>(
        buf: Buf<T>,
        shape: &[usize],
    ) -> Result<TensorViewMut<'a, T, Device>, RuntimeError> {
        // SAFETY: as in `view`, plus exclusive access, which is `TensorViewMut::from_device`'s.
        unsafe { TensorViewMut::from_device(buf.ptr as u64, shape) }
    }
    unsafe fn pool<'a>(
        buf: Buf<bf16>,
        page_size: usize,
        row: usize,
    ) -> Result<KvPool<'a, bf16, Device>, RuntimeError> {
        let num_pages = buf.len / (page_size * row).max(1);
        // SAFETY: `KvPool::from_device`'s contract is the caller's (a live pool of `buf.len`
        // elements that only tpla's appends write while they run).
        unsafe { KvPool::from_device(buf.ptr as u64, num_pages, page_size, row) }
    }
}
