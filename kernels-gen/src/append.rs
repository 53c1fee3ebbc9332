//! Paged cache append: writes new token rows (from decode or from prefill) into the page pool.

use tpla_macros::kernel;

/// Writes `rows[b, j, :]` at token position `seq_lens[b] − new_tokens + j` of sequence `b`: the
/// caller has already grown the sequence lengths by `new_tokens` (append-then-attend, as in
/// FlashInfer). Rows that would land outside `[0, seq_lens[b])` are skipped.
#[kernel(grid = (batch, cdiv(new_tokens, BLOCK_T)), constants(ROW))]
pub fn append_rows<#[tune(16, 1, 64)] const BLOCK_T: usize>(
    rows: Tensor<bf16, dims![batch, new_tokens, ROW]>,
    cache: PagedMut<bf16, dims![ROW]>,
) {
    let b = program_id(0);
    let j0 = program_id(1) * BLOCK_T;
    let t = load(rows.tile([b, j0..j0 + BLOCK_T, ..]));
    let first = cache.len(b) - new_tokens + j0;
    store(cache.rows(b, first), t);
}
