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
    let d = x.len();
    for j in 0..d / 2 {
        let freq = theta.powf(-((2 * j) as f64) / d as f64);
        let (s, c) = (pos as f64 * freq).sin_cos();
        let (a, b) = (f64::from(x[2 * j]), f64::from(x[2 * j + 1]));
        x[2 * j] = (a * c - b * s) as f32;
        x[2 * j + 1] = (a * s + b * c) as f32;
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
