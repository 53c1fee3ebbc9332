//! The benchmark's device caches: pseudo-random bf16 pools (and FP8 rows), equal or
//! variable lengths.

use super::*;

/// Pseudo-random bf16 in [-1, 1) without a slow RNG (the pool can be gigabytes).
pub(super) fn pattern(i: usize, salt: u64) -> f32 {
    let x = (i as u64 ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Sequence lengths of the variable-length case: uniform in `1..=max`, fixed by `i`.
pub(super) fn variable_lengths(batch: usize, max: usize) -> Vec<usize> {
    (0..batch)
        .map(|i| 1 + ((i as u64 ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize % max)
        .collect()
}

/// A device cache with pages shuffled between sequences (else each sequence's pages in order,
/// one after another); `lens` tokens per sequence (each at most `context`), `page_size` tokens
/// per page.
pub(super) fn device_cache(
    exec: &CudaExecutor,
    context: usize,
    d: usize,
    page_size: usize,
    lens: &[usize],
    shuffled: bool,
) -> Result<CudaPagedCache<bf16>, RuntimeError> {
    let batch = lens.len();
    let mut c = HostPagedCache::<bf16>::new(batch, context, page_size, d)?;
    if shuffled {
        // Shuffle whole pages between sequences so the block table matters.
        let mut table = c.block_table().to_vec();
        let n = table.len();
        for i in 0..n {
            table.swap(i, (i * 7919 + 13) % n);
        }
        c.set_block_table(table)?;
    }
    for (i, x) in c.data_mut().iter_mut().enumerate() {
        *x = bf16::from_f32(pattern(i, 7));
    }
    c.set_seq_lens(lens)?;
    exec.upload_paged(&c)
}

/// [`device_cache`] holding FP8 rows of `lat + 64` columns (a bf16 carrier pool, see
/// `tpla_kernels::fp8`): 1024 distinct quantised pattern rows repeated over the pool.
pub(super) fn device_cache_fp8(
    exec: &CudaExecutor,
    context: usize,
    lat: usize,
    page_size: usize,
    lens: &[usize],
) -> Result<CudaPagedCache<bf16>, RuntimeError> {
    let carrier = fp8_carrier_row(lat, 64);
    let mut c = HostPagedCache::<bf16>::new(lens.len(), context, page_size, carrier)?;
    let mut table = c.block_table().to_vec();
    let n = table.len();
    for i in 0..n {
        table.swap(i, (i * 7919 + 13) % n);
    }
    c.set_block_table(table)?;
    let rows: Vec<Vec<bf16>> = (0..1024)
        .map(|r| {
            let v: Vec<f32> = (0..lat + 64)
                .map(|j| pattern(r * (lat + 64) + j, 7))
                .collect();
            let b = tpla_codegen::kv_format::quantise_row(&v, lat);
            b.chunks(2)
                .map(|p| bf16::from_bits(u16::from_le_bytes([p[0], p[1]])))
                .collect()
        })
        .collect();
    for (i, row) in c.data_mut().chunks_mut(carrier).enumerate() {
        row.copy_from_slice(&rows[i % rows.len()]);
    }
    c.set_seq_lens(lens)?;
    exec.upload_paged(&c)
}
