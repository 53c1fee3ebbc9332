//! Host-side data of the emulation harness (`support/emu.rs` includes it and re-exports it):
//! aligned host buffers, kernel arguments and their launch descriptors, the CPU backend run,
//! output comparisons, random inputs and paged pools.
#![allow(dead_code)]
#![allow(clippy::needless_range_loop)]

use half::bf16;
use tpla_codegen::cpu::{abi, CpuKernel};
use tpla_codegen::ir::*;
use tpla_codegen::launch::{check_launch, ArgDesc};

// ------------------------------------------------------------------------------------ buffers

/// Host bytes with 16-byte alignment.
#[derive(Clone)]
pub struct Bytes {
    words: Vec<u128>,
    /// Bytes in use.
    pub len: usize,
}

impl Bytes {
    pub fn new(len: usize) -> Bytes {
        Bytes {
            words: vec![0; len.div_ceil(16)],
            len,
        }
    }
    pub fn from_f32(v: &[f32]) -> Bytes {
        let mut b = Bytes::new(v.len() * 4);
        b.bytes_mut()
            .copy_from_slice(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
        b
    }
    pub fn from_i32(v: &[i32]) -> Bytes {
        let mut b = Bytes::new(v.len() * 4);
        b.bytes_mut()
            .copy_from_slice(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
        b
    }
    pub fn from_bf16(v: &[f32]) -> Bytes {
        let mut b = Bytes::new(v.len() * 2);
        b.bytes_mut().copy_from_slice(
            &v.iter()
                .flat_map(|x| bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect::<Vec<_>>(),
        );
        b
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
    pub fn ptr(&self) -> *const u8 {
        self.words.as_ptr() as *const u8
    }
    pub fn f32s(&self) -> Vec<f32> {
        self.bytes()
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    pub fn i32s(&self) -> Vec<i32> {
        self.bytes()
            .chunks(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    pub fn bf16s(&self) -> Vec<f32> {
        self.bytes()
            .chunks(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect()
    }
    /// Decodes as `dtype` to f32 for comparisons.
    pub fn values(&self, dtype: DType) -> Vec<f32> {
        match dtype {
            DType::F32 => self.f32s(),
            DType::BF16 => self.bf16s(),
            DType::I32 => self.i32s().iter().map(|&x| x as f32).collect(),
            DType::Bool => self.bytes().iter().map(|&x| x as f32).collect(),
        }
    }
}

#[derive(Clone)]
pub enum HostArg {
    Tensor {
        dtype: DType,
        shape: Vec<usize>,
        data: Bytes,
    },
    Paged {
        dtype: DType,
        row: usize,
        data: Bytes,
        block_table: Vec<i32>,
        seq_lens: Vec<i32>,
        page_size: usize,
        pages_per_seq: usize,
        num_pages: usize,
        /// The split table of a `chunked` cache (`KV_CHUNKS = 1`).
        chunks: Option<Vec<i32>>,
    },
    F32(f32),
    #[allow(dead_code)]
    // no emulated kernel takes an i32 scalar yet; the ABI plumbing stays tested by compile
    I32(i32),
}

pub fn descs<'a>(k: &Kernel, args: &'a [HostArg]) -> Vec<ArgDesc<'a>> {
    args.iter()
        .zip(&k.params)
        .map(|(a, p)| {
            let writable = match p.kind {
                ParamKind::Tensor { writable, .. } | ParamKind::Paged { writable, .. } => writable,
                _ => false,
            };
            match a {
                HostArg::Tensor { dtype, shape, .. } => ArgDesc::Tensor {
                    dtype: *dtype,
                    shape,
                    writable,
                },
                HostArg::Paged {
                    dtype,
                    row,
                    block_table,
                    seq_lens,
                    page_size,
                    pages_per_seq,
                    num_pages,
                    chunks,
                    ..
                } => ArgDesc::Paged {
                    dtype: *dtype,
                    num_pages: *num_pages,
                    page_size: *page_size,
                    row: *row,
                    batch: seq_lens.len(),
                    pages_per_seq: *pages_per_seq,
                    block_table: Some(block_table),
                    seq_lens: Some(seq_lens),
                    writable,
                    chunks: chunks.is_some(),
                    format: match p.kind {
                        ParamKind::Paged { format, .. } => format,
                        _ => PagedFormat::Plain,
                    },
                },
                HostArg::F32(v) => ArgDesc::F32(*v),
                HostArg::I32(v) => ArgDesc::I32(*v),
            }
        })
        .collect()
}

/// Runs the kernel with the CPU backend; returns the args with outputs written.
pub fn run_cpu(k: &Kernel, args: &[HostArg]) -> Vec<HostArg> {
    let mut args = args.to_vec();
    let plan = check_launch(k, &descs(k, &args)).expect("launch check");
    let ck = CpuKernel::compile(k).expect("cpu compile");
    let mut slots = Vec::new();
    let tables: Vec<(Bytes, Bytes, Option<Bytes>)> = args
        .iter()
        .map(|a| match a {
            HostArg::Paged {
                block_table,
                seq_lens,
                chunks,
                ..
            } => (
                Bytes::from_i32(block_table),
                Bytes::from_i32(seq_lens),
                chunks.as_deref().map(Bytes::from_i32),
            ),
            _ => (Bytes::new(0), Bytes::new(0), None),
        })
        .collect();
    for (a, (bt, sl, _)) in args.iter_mut().zip(&tables) {
        match a {
            HostArg::Tensor { shape, data, .. } => abi::push_tensor(&mut slots, data.ptr(), shape),
            HostArg::Paged {
                data,
                page_size,
                pages_per_seq,
                num_pages,
                seq_lens,
                ..
            } => abi::push_paged(
                &mut slots,
                data.ptr(),
                bt.ptr() as *const i32,
                sl.ptr() as *const i32,
                *page_size,
                *pages_per_seq,
                *num_pages,
                seq_lens.len(),
            ),
            HostArg::F32(v) => abi::push_f32(&mut slots, *v),
            HostArg::I32(v) => abi::push_i32(&mut slots, *v),
        }
    }
    let mut scratch = vec![0u128; ck.scratch_bytes().div_ceil(16) + 1];
    // The split table slot follows the 7 paged slots (only chunked caches have one).
    let mut at = 0;
    for (p, (_, _, ch)) in k.params.iter().zip(&tables) {
        at += abi::slots_for(p);
        if let Some(ch) = ch {
            slots.insert(at - 1, ch.ptr() as usize as u64);
        }
    }
    for z in 0..plan.grid[2] {
        for y in 0..plan.grid[1] {
            for x in 0..plan.grid[0] {
                // SAFETY: slots follow the CPU ABI for buffers that outlive the call and match the
                // launch check; scratch is 16-byte aligned and large enough.
                unsafe {
                    let s = std::slice::from_raw_parts_mut(
                        scratch.as_mut_ptr() as *mut u8,
                        scratch.len() * 16,
                    );
                    ck.run_program(&slots, &plan.dims, [x as i64, y as i64, z as i64], s);
                }
            }
        }
    }
    args
}

// ------------------------------------------------------------------------------------ comparisons

pub fn cty(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::BF16 => "tpla_bf16",
        DType::I32 => "int",
        DType::Bool => "unsigned char",
    }
}

/// Max |a - b| over the outputs of param `p`, with both as f32.
/// bf16 outputs may differ by one rounding step (2^-8 relative) on top of that.
pub fn max_diff(a: &HostArg, b: &HostArg) -> f32 {
    let (x, y, dt) = match (a, b) {
        (
            HostArg::Tensor {
                dtype, data: d1, ..
            },
            HostArg::Tensor { data: d2, .. },
        ) => (d1.values(*dtype), d2.values(*dtype), *dtype),
        (
            HostArg::Paged {
                dtype, data: d1, ..
            },
            HostArg::Paged { data: d2, .. },
        ) => (d1.values(*dtype), d2.values(*dtype), *dtype),
        _ => return 0.0,
    };
    let ulp = if dt == DType::BF16 { 1.0 / 128.0 } else { 0.0 };
    x.iter()
        .zip(&y)
        .map(|(p, q)| {
            if p.is_nan() || q.is_nan() {
                if p.is_nan() && q.is_nan() {
                    0.0
                } else {
                    f32::INFINITY
                }
            } else if p == q {
                0.0
            } else {
                ((p - q).abs() - ulp * p.abs().max(q.abs())).max(0.0)
            }
        })
        .fold(0.0, f32::max)
}
// ------------------------------------------------------------------------------------ inputs

pub struct Rng(pub u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect()
}

/// A paged cache with shuffled pages.
pub fn paged(
    rng: &mut Rng,
    row: usize,
    seq_lens: &[i32],
    page_size: usize,
    poison_out: bool,
) -> HostArg {
    let pages_per_seq = seq_lens
        .iter()
        .map(|&l| (l as usize).div_ceil(page_size))
        .max()
        .unwrap_or(0)
        .max(1)
        + 1;
    let num_pages = seq_lens.len() * pages_per_seq + 3;
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        let j = rng.below(i + 1);
        perm.swap(i, j);
    }
    let block_table: Vec<i32> = perm[..seq_lens.len() * pages_per_seq].to_vec();
    let vals = if poison_out {
        vec![f32::NAN; num_pages * page_size * row]
    } else {
        rng.vec(num_pages * page_size * row)
    };
    HostArg::Paged {
        dtype: DType::BF16,
        row,
        data: Bytes::from_bf16(&vals),
        block_table,
        seq_lens: seq_lens.to_vec(),
        page_size,
        pages_per_seq,
        num_pages,
        chunks: None,
    }
}
