//! The argument ABI of compiled CPU kernels.
//!
//! Arguments are passed as an array of `u64` slots, parameters in declaration order:
//!
//! | parameter | slots |
//! |---|---|
//! | `Tensor` of rank r | `[data ptr, dim0, .., dim(r-1)]` |
//! | `Paged` | `[data ptr, block_table ptr, seq_lens ptr, page_size, pages_per_seq, num_pages, batch]`, then `chunk ptr` (i32 `[batch]`) when the parameter is `chunked` |
//! | `Scalar` F32 | `[f32 bits in the low 32 bits]` |
//! | `Scalar` I32 | `[value as i64 bits]` |
//!
//! Tensors are dense row-major. A paged cache's data is `[num_pages, page_size, row]` row-major;
//! token `t` of sequence `b` lives in page `block_table[b * pages_per_seq + t / page_size]` at row
//! `t % page_size`. The block table (`[batch, pages_per_seq]`) and `seq_lens` (`[batch]`) are i32.
//!
//! The compiled function is
//! `extern "C" fn(args: *const u64, dims: *const i64, pid0: i64, pid1: i64, pid2: i64, scratch: *mut u8)`
//! where `dims` holds the runtime dimension values in [`Kernel::dims`] order.

use crate::ir::{DType, Kernel, Param, ParamKind};

/// Slot index of the data pointer of a paged parameter (relative to its first slot).
pub const PAGED_DATA: usize = 0;
/// Slot of the block-table pointer.
pub const PAGED_BLOCK_TABLE: usize = 1;
/// Slot of the sequence-lengths pointer.
pub const PAGED_SEQ_LENS: usize = 2;
/// Slot of the page size.
pub const PAGED_PAGE_SIZE: usize = 3;
/// Slot of the block-table entries per sequence.
pub const PAGED_PAGES_PER_SEQ: usize = 4;
/// Slot of the number of pages.
pub const PAGED_NUM_PAGES: usize = 5;
/// Slot of the batch size.
pub const PAGED_BATCH: usize = 6;
/// Slot of the split-table pointer (`chunk [batch]`, i32), present only when the parameter is
/// `chunked`.
pub const PAGED_CHUNKS: usize = 7;

/// Number of `u64` slots `param` takes.
pub fn slots_for(param: &Param) -> usize {
    match &param.kind {
        ParamKind::Tensor { dims, .. } => 1 + dims.len(),
        ParamKind::Paged { chunked, .. } => 7 + usize::from(*chunked),
        ParamKind::Scalar { .. } => 1,
    }
}

/// Index of the first slot of every parameter of `kernel`.
pub fn arg_offsets(kernel: &Kernel) -> Vec<usize> {
    let mut at = 0;
    kernel
        .params
        .iter()
        .map(|p| {
            let o = at;
            at += slots_for(p);
            o
        })
        .collect()
}

/// Total number of slots `kernel` takes.
pub fn total_slots(kernel: &Kernel) -> usize {
    kernel.params.iter().map(slots_for).sum()
}

/// Appends the slots of a tensor argument.
pub fn push_tensor<T>(args: &mut Vec<u64>, data: *const T, shape: &[usize]) {
    args.push(data as usize as u64);
    args.extend(shape.iter().map(|&d| d as u64));
}

/// Appends the slots of a paged argument.
#[allow(clippy::too_many_arguments)]
pub fn push_paged<T>(
    args: &mut Vec<u64>,
    data: *const T,
    block_table: *const i32,
    seq_lens: *const i32,
    page_size: usize,
    pages_per_seq: usize,
    num_pages: usize,
    batch: usize,
) {
    args.extend_from_slice(&[
        data as usize as u64,
        block_table as usize as u64,
        seq_lens as usize as u64,
        page_size as u64,
        pages_per_seq as u64,
        num_pages as u64,
        batch as u64,
    ]);
}

/// Appends an f32 scalar argument.
pub fn push_f32(args: &mut Vec<u64>, v: f32) {
    args.push(v.to_bits() as u64);
}

/// Appends an i32 scalar argument.
pub fn push_i32(args: &mut Vec<u64>, v: i32) {
    args.push(v as i64 as u64);
}

/// Bytes of one element of a tensor or paged cache of `dtype` in memory.
pub fn elem_bytes(dtype: DType) -> usize {
    dtype.size_bytes()
}
