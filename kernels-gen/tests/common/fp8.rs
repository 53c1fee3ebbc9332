//! FP8 latent caches for the kernel tests: a page pool in the `KV_FP8` row format built from a
//! [`Problem`] (same block table and lengths), run through the decode, and the rows it holds.

use super::Problem;
use tpla_codegen::ir::{DType, PagedFormat};
use tpla_codegen::kv_format::{dequantise_row, fp8_row_bytes, quantise_row};
use tpla_kernels::ops::DecodeParams;
use tpla_kernels::{combine_splits, latent_decode};
use tpla_runtime::half::bf16;
use tpla_runtime::{
    ArgSpace, CpuExecutor, Executor, HostTensor, KernelArg, PagedArg, PagedGeometry,
};

/// A host page pool of FP8 rows (16-byte aligned) sharing a [`Problem`]'s tables.
pub struct Fp8Pool {
    /// The pool, `num_pages · page_size` rows of `row_bytes`.
    pub data: Vec<u128>,
    pub lat: usize,
    pub row: usize,
    pub row_bytes: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub pages_per_seq: usize,
    pub block_table: Vec<i32>,
    pub seq_lens: Vec<i32>,
}

impl Fp8Pool {
    /// The problem's bf16-rounded rows quantised with the reference rule; every byte no token
    /// owns is 0xff (NaN as e4m3, f32 and bf16), so reading one poisons the output.
    pub fn from_problem(p: &Problem) -> Fp8Pool {
        let c = &p.cache;
        let (row, lat) = (p.lat + p.rope, p.lat);
        let row_bytes = fp8_row_bytes(lat, row);
        let total = c.num_pages() * c.page_size() * row_bytes;
        let mut pool = Fp8Pool {
            data: vec![u128::MAX; total / 16],
            lat,
            row,
            row_bytes,
            page_size: c.page_size(),
            num_pages: c.num_pages(),
            pages_per_seq: c.pages_per_seq(),
            block_table: c.block_table().to_vec(),
            seq_lens: c.seq_lens().to_vec(),
        };
        for (b, rows) in p.rows.iter().enumerate() {
            for (t, r) in rows.chunks(row).enumerate() {
                let r: Vec<f32> = r.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
                pool.token_mut(b, t).copy_from_slice(&quantise_row(&r, lat));
            }
        }
        pool
    }

    fn offset(&self, b: usize, t: usize) -> usize {
        let page = self.block_table[b * self.pages_per_seq + t / self.page_size] as usize;
        (page * self.page_size + t % self.page_size) * self.row_bytes
    }

    /// The pool as bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u128 has no padding; any byte of it is a valid u8, the length is the same memory.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().cast(), self.data.len() * 16) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and every u8 pattern is a valid u128.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), self.data.len() * 16)
        }
    }

    /// The bytes of token `t` of sequence `b`.
    pub fn token(&self, b: usize, t: usize) -> &[u8] {
        let o = self.offset(b, t);
        &self.bytes()[o..o + self.row_bytes]
    }

    /// The bytes of token `t` of sequence `b`, for writing.
    pub fn token_mut(&mut self, b: usize, t: usize) -> &mut [u8] {
        let (o, n) = (self.offset(b, t), self.row_bytes);
        &mut self.bytes_mut()[o..o + n]
    }

    /// The rows of sequence `b` as the kernel reads them (dequantised), as f64.
    pub fn dequantised(&self, b: usize) -> Vec<f64> {
        (0..self.seq_lens[b] as usize)
            .flat_map(|t| dequantise_row(self.token(b, t), self.lat, self.row))
            .map(|x| x as f64)
            .collect()
    }

    /// The pool as a kernel argument.
    pub fn arg(&mut self, writable: bool) -> KernelArg<'_> {
        let geometry = PagedGeometry {
            dtype: DType::BF16,
            num_pages: self.num_pages,
            page_size: self.page_size,
            row: self.row,
            batch: self.seq_lens.len(),
            pages_per_seq: self.pages_per_seq,
        };
        // SAFETY: the pool holds num_pages · page_size rows of row_bytes (16-byte aligned u128s),
        // borrowed mutably for the argument's life; the tables are passed as host tables, so the
        // launch checks every entry the lengths reach.
        KernelArg::Paged(unsafe {
            PagedArg::new(
                self.data.as_mut_ptr() as u64,
                self.block_table.as_ptr() as u64,
                self.seq_lens.as_ptr() as u64,
                geometry,
                Some((&self.block_table, &self.seq_lens)),
                writable,
                ArgSpace::Host,
            )
            .with_format(PagedFormat::Fp8 { lat: self.lat })
        })
    }
}

/// Decode over the FP8 pool on the CPU JIT (config `params.decode_config()` plus `KV_FP8`),
/// NaN-poisoned outputs, splits combined; returns out `[batch, rows, lat]` and lse.
pub fn decode_fp8(
    ex: &CpuExecutor,
    params: &DecodeParams,
    q: &HostTensor<bf16>,
    pool: &mut Fp8Pool,
) -> (Vec<f32>, Vec<f32>) {
    let (rows, lat) = (params.rows(), params.lat);
    let cfg = params.decode_config().with("KV_FP8", lat as i64);
    let shape = [params.splits, params.batch, rows, lat];
    let mut part = HostTensor::<f32>::full(&shape, f32::NAN);
    let mut part_lse = HostTensor::<f32>::full(&shape[..3], f32::NAN);
    let args = [
        CpuExecutor::tensor_arg(q),
        pool.arg(false),
        CpuExecutor::tensor_arg_mut(&mut part),
        CpuExecutor::tensor_arg_mut(&mut part_lse),
        KernelArg::F32(params.scale),
    ];
    ex.launch(&latent_decode, &cfg, &args).unwrap();
    if params.splits == 1 {
        return (part.data().to_vec(), part_lse.data().to_vec());
    }
    let mut out = HostTensor::<f32>::full(&shape[1..], f32::NAN);
    let mut lse = HostTensor::<f32>::full(&shape[1..3], f32::NAN);
    combine_splits::launch(
        ex,
        &params.combine_config(),
        &part,
        &part_lse,
        &mut out,
        &mut lse,
    )
    .unwrap();
    (out.data().to_vec(), lse.data().to_vec())
}

/// The problem's bf16-rounded rows quantised into a carrier pool (a bf16 cache whose rows hold
/// the FP8 rows, see `tpla_kernels::fp8`), with the problem's block table and lengths; every
/// byte no token owns is 0xff (NaN).
pub fn carrier_from_problem(p: &Problem) -> tpla_runtime::HostPagedCache<bf16> {
    let c = &p.cache;
    let (row, lat) = (p.lat + p.rope, p.lat);
    let mut cache = tpla_runtime::HostPagedCache::<bf16>::new(
        p.batch,
        c.pages_per_seq() * c.page_size(),
        c.page_size(),
        tpla_kernels::fp8::fp8_carrier_row(lat, p.rope),
    )
    .unwrap();
    cache.set_block_table(c.block_table().to_vec()).unwrap();
    cache
        .data_mut()
        .iter_mut()
        .for_each(|x| *x = bf16::from_bits(0xffff));
    for (b, rows) in p.rows.iter().enumerate() {
        for (t, r) in rows.chunks(row).enumerate() {
            let r: Vec<f32> = r.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
            tpla_kernels::fp8::write_fp8_token(&mut cache, b, t, &r, lat).unwrap();
        }
    }
    cache.set_seq_lens(&p.lens).unwrap();
    cache
}
