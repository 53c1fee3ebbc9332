//! A plain Rust (rustc -O) latent decode: the yardstick the JIT-compiled kernel is measured
//! against in `tpla bench --backend cpu`.
//!
//! The same math as the DSL kernel (absorbed MLA decode, online softmax, value = latent part of
//! the row), written the way one would without a tile compiler: one task per (sequence, head),
//! a loop over the sequence's tokens reading each bf16 row through the block table.

use rayon::prelude::*;
use tpla_runtime::half::bf16;
use tpla_runtime::HostPagedCache;

/// `out[b, h, :]` = softmax(scale · q\[b,h\]·kᵀ) · V over every token of sequence `b`.
/// `q` is `[batch, heads, lat + rope]`; `out` is `[batch, heads, lat]`.
pub fn plain_decode(
    pool: &rayon::ThreadPool,
    q: &[f32],
    cache: &HostPagedCache<bf16>,
    heads: usize,
    lat: usize,
    scale: f32,
    out: &mut [f32],
) {
    let d = cache.row();
    let lens = cache.seq_lens();
    pool.install(|| {
        out.par_chunks_mut(lat).enumerate().for_each(|(bh, o)| {
            let (b, h) = (bh / heads, bh % heads);
            let qh = &q[(b * heads + h) * d..(b * heads + h + 1) * d];
            let mut m = f32::NEG_INFINITY;
            let mut l = 0.0f32;
            o.iter_mut().for_each(|x| *x = 0.0);
            let mut row = vec![0.0f32; d];
            for t in 0..lens[b].max(0) as usize {
                let raw = cache.token(b, t).expect("lengths were validated");
                for (r, x) in row.iter_mut().zip(raw) {
                    *r = x.to_f32();
                }
                let s: f32 = qh.iter().zip(&row).map(|(a, c)| a * c).sum::<f32>() * scale;
                let m_new = m.max(s);
                let alpha = (m - m_new).exp();
                let p = (s - m_new).exp();
                l = l * alpha + p;
                for (x, v) in o.iter_mut().zip(&row[..lat]) {
                    *x = *x * alpha + p * v;
                }
                m = m_new;
            }
            if l > 0.0 {
                o.iter_mut().for_each(|x| *x /= l);
            }
        })
    });
}
