//! The element-wise steps of a layer on the host in f32: RMSNorm and RoPE. A step runs them on
//! the executor (the DSL kernels of [`tpla_kernels::glue`]); these host functions are the
//! references those kernels are tested against, and [`RopeTable`] builds the cosines and sines
//! the kernels read.

/// `x / sqrt(mean(x²) + eps) · gain`, in place.
pub fn rms_norm(x: &mut [f32], eps: f32, gain: f32) {
    let f = gain / rms(x, eps);
    x.iter_mut().for_each(|v| *v *= f);
}

/// `sqrt(mean(x²) + eps)`.
pub fn rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    (ms + f64::from(eps)).sqrt() as f32
}

/// RoPE on interleaved pairs at position `pos` (as `tpla_model::linalg::rope_in_place`).
pub fn rope(x: &mut [f32], pos: usize, theta: f64) {
    Rope::new(pos, theta, x.len()).apply(x);
}

/// The rotation of one position for `d`-wide vectors, computed once per step (a step's heads
/// and sequences all share the position) instead of `d/2` powers and sines per vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    cs: Vec<(f64, f64)>,
}

impl Rope {
    /// The table for position `pos`, base `theta`, width `d`.
    pub fn new(pos: usize, theta: f64, d: usize) -> Self {
        Rope {
            cs: (0..d / 2)
                .map(|j| {
                    let freq = theta.powf(-((2 * j) as f64) / d as f64);
                    let (s, c) = (pos as f64 * freq).sin_cos();
                    (c, s)
                })
                .collect(),
        }
    }

    /// Rotates `x` (its width must be the table's `d`) in place.
    pub fn apply(&self, x: &mut [f32]) {
        for (p, &(c, s)) in x.chunks_exact_mut(2).zip(&self.cs) {
            let (a, b) = (f64::from(p[0]), f64::from(p[1]));
            p[0] = (a * c - b * s) as f32;
            p[1] = (a * s + b * c) as f32;
        }
    }
}

/// The exact merge of attention states over the same heads: `parts[r]` (one head's output over
/// rank `r`'s tokens) with natural-log sum-exp `lses[r]` gives `Σ_r w_r · parts[r]`,
/// `w_r = exp(lse_r − lse)`, and `lse = log Σ_r exp(lse_r)`; in f64.
pub fn merge(parts: &[&[f32]], lses: &[f32]) -> (Vec<f32>, f32) {
    let m = lses
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let ws: Vec<f64> = lses.iter().map(|&l| (f64::from(l) - m).exp()).collect();
    let total: f64 = ws.iter().sum();
    let n = parts.first().map_or(0, |p| p.len());
    let out = (0..n)
        .map(|i| {
            let v: f64 = parts
                .iter()
                .zip(&ws)
                .map(|(p, w)| w * f64::from(p[i]))
                .sum();
            (v / total) as f32
        })
        .collect();
    (out, (m + total.ln()) as f32)
}

/// The RoPE cosines and sines of positions `0..positions` for `d`-wide vectors, `[positions,
/// d / 2]` each, row-major: the values [`Rope::new`] computes for each position, built once
/// (the device kernels index them by the step's position).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// `cos(pos · θ^(−2j/d))` at `[pos, j]`.
    pub cos: Vec<f32>,
    /// `sin(pos · θ^(−2j/d))` at `[pos, j]`.
    pub sin: Vec<f32>,
    /// Pairs per position (`d / 2`).
    pub pairs: usize,
}

impl RopeTable {
    /// The table of `positions` positions, base `theta`, width `d`.
    pub fn new(positions: usize, theta: f64, d: usize) -> Self {
        let pairs = d / 2;
        let freqs: Vec<f64> = (0..pairs)
            .map(|j| theta.powf(-((2 * j) as f64) / d as f64))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions * pairs),
            Vec::with_capacity(positions * pairs),
        );
        for pos in 0..positions {
            for f in &freqs {
                let (s, c) = (pos as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        RopeTable { cos, sin, pairs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_matches_the_f64_reference_and_norm_is_unit_rms() {
        let mut a = vec![0.3f32, -1.2, 0.7, 2.0];
        let mut b: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
        rope(&mut a, 17, 10000.0);
        tpla_model::linalg::rope_in_place(&mut b, 17, 10000.0);
        for (x, y) in a.iter().zip(&b) {
            assert!((f64::from(*x) - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        let t = RopeTable::new(20, 10000.0, 4);
        let r = Rope::new(17, 10000.0, 4);
        for (j, &(c, s)) in r.cs.iter().enumerate() {
            assert_eq!(t.cos[17 * 2 + j], c as f32);
            assert_eq!(t.sin[17 * 2 + j], s as f32);
        }
        let mut x = vec![3.0f32, 4.0];
        rms_norm(&mut x, 0.0, 2.0);
        assert!((rms(&x, 0.0) - 2.0).abs() < 1e-6);
    }
}
