//! Test inputs shared by the kernel tests: random (never zero) data, a filled paged cache, and
//! the f64 reference over the same data.

#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use tpla_runtime::half::bf16;
use tpla_runtime::{HostPagedCache, HostTensor};

pub mod fp8;
pub mod mtp;

/// One random decode problem.
pub struct Problem {
    pub batch: usize,
    pub heads: usize,
    pub lat: usize,
    pub rope: usize,
    pub lens: Vec<usize>,
    pub scale: f32,
    /// `[batch, heads, lat + rope]`.
    pub q: Vec<f32>,
    /// Unrounded rows per sequence, `[len, lat + rope]`.
    pub rows: Vec<Vec<f32>>,
    pub cache: HostPagedCache<bf16>,
}

impl Problem {
    /// Random problem; pages are handed out in a shuffled order so the block table matters.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        batch: usize,
        heads: usize,
        lat: usize,
        rope: usize,
        lens: Vec<usize>,
        page_size: usize,
        scale: f32,
    ) -> Problem {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let d = lat + rope;
        let nz = |rng: &mut rand::rngs::StdRng| {
            let v: f32 = rng.gen_range(-1.0..1.0);
            if v.abs() < 1e-3 {
                0.5
            } else {
                v
            }
        };
        // Queries are bf16 in the kernel: keep the rounded values so the reference sees them too.
        let q: Vec<f32> = (0..batch * heads * d)
            .map(|_| bf16::from_f32(nz(&mut rng)).to_f32())
            .collect();
        let max_len = lens.iter().copied().max().unwrap_or(1).max(1);
        let mut cache = HostPagedCache::<bf16>::new(batch, max_len, page_size, d).unwrap();
        let mut table: Vec<i32> = cache.block_table().to_vec();
        for i in (1..table.len()).rev() {
            let j = rng.gen_range(0..=i);
            table.swap(i, j);
        }
        cache.set_block_table(table).unwrap();
        // Poison the whole pool: tokens past a sequence's length must never be read.
        cache.data_mut().iter_mut().for_each(|x| *x = bf16::NAN);
        let mut rows = Vec::new();
        for (b, &len) in lens.iter().enumerate() {
            let r: Vec<f32> = (0..len * d).map(|_| nz(&mut rng)).collect();
            for t in 0..len {
                let row: Vec<bf16> = r[t * d..(t + 1) * d]
                    .iter()
                    .map(|&x| bf16::from_f32(x))
                    .collect();
                cache.write_token(b, t, &row).unwrap();
            }
            rows.push(r);
        }
        cache.set_seq_lens(&lens).unwrap();
        Problem {
            batch,
            heads,
            lat,
            rope,
            lens,
            scale,
            q,
            rows,
            cache,
        }
    }

    pub fn q_tensor(&self) -> HostTensor<bf16> {
        HostTensor::from_f32(&[self.batch, self.heads, self.lat + self.rope], &self.q).unwrap()
    }

    /// f64 reference for sequence `b`; `rounded` feeds the bf16-rounded cache (what the kernel
    /// reads), otherwise the original f32 values.
    pub fn reference(&self, b: usize, rounded: bool) -> tpla_runtime::reference::AttentionOut {
        let d = self.lat + self.rope;
        let q: Vec<f64> = self.q[b * self.heads * d..(b + 1) * self.heads * d]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let rows: Vec<f64> = self.rows[b]
            .iter()
            .map(|&x| {
                if rounded {
                    bf16::from_f32(x).to_f32() as f64
                } else {
                    x as f64
                }
            })
            .collect();
        tpla_runtime::reference::latent_attention(
            &q,
            &rows,
            self.heads,
            self.lat,
            self.rope,
            self.scale as f64,
        )
    }
}

/// Converts a slice to f64.
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
