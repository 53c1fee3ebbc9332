//! The element-wise steps of a layer, on the host in f32: RMSNorm, RoPE, splitting the query.
//! They are small next to the projections and attention (a few values per head per token); the
//! timing reports them apart as "host".

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
        let mut x = vec![3.0f32, 4.0];
        rms_norm(&mut x, 0.0, 2.0);
        assert!((rms(&x, 0.0) - 2.0).abs() < 1e-6);
    }
}
