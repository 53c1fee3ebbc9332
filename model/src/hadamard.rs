//! Randomised Hadamard transform `U = D · H / sqrt(n)` (H Sylvester, D seeded ±1 diagonal).
//!
//! Applied to a row vector c: `c · U` = fwht(c ⊙ signs) / sqrt(n), O(n log n).

use super::error::{ModelError, Result};
use super::linalg::Mat;
use super::synthetic::Gauss;

/// In-place unnormalised fast Walsh–Hadamard transform (Sylvester order): x <- x · H.
pub fn fwht_in_place(x: &mut [f64]) -> Result<()> {
    let n = x.len();
    if !n.is_power_of_two() {
        return Err(ModelError::NotPowerOfTwo(n));
    }
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    Ok(())
}

/// A seeded randomised Hadamard rotation of width n.
#[derive(Clone, Debug)]
pub struct Hadamard {
    /// The ±1 diagonal D.
    pub signs: Vec<f64>,
}

impl Hadamard {
    /// Seeded signs; n must be a power of two.
    pub fn new(n: usize, seed: u64) -> Result<Self> {
        if !n.is_power_of_two() {
            return Err(ModelError::NotPowerOfTwo(n));
        }
        let mut g = Gauss::new(seed ^ 0x4ada_3a4d);
        Ok(Hadamard {
            signs: (0..n).map(|_| g.sign()).collect(),
        })
    }

    /// Width.
    pub fn n(&self) -> usize {
        self.signs.len()
    }

    /// `c · U` for a row vector, fast.
    pub fn apply(&self, c: &[f64]) -> Result<Vec<f64>> {
        if c.len() != self.n() {
            return Err(ModelError::InvalidValue {
                name: "hadamard input",
                detail: format!("length {} != {}", c.len(), self.n()),
            });
        }
        let mut x: Vec<f64> = c.iter().zip(&self.signs).map(|(a, s)| a * s).collect();
        fwht_in_place(&mut x)?;
        let s = (self.n() as f64).powf(-0.5);
        x.iter_mut().for_each(|v| *v *= s);
        Ok(x)
    }

    /// `W · U` for a matrix with n columns (every row transformed fast).
    pub fn apply_rows(&self, w: &Mat) -> Result<Mat> {
        let mut out = Mat::zeros(w.rows, w.cols);
        for r in 0..w.rows {
            let y = self.apply(w.row(r))?;
            out.data[r * w.cols..(r + 1) * w.cols].copy_from_slice(&y);
        }
        Ok(out)
    }

    /// The dense U (n×n), for tests and for folding with a generic matmul.
    pub fn dense(&self) -> Mat {
        let n = self.n();
        let s = (n as f64).powf(-0.5);
        // H[i][j] = (-1)^popcount(i & j) in Sylvester order.
        Mat::from_fn(n, n, |i, j| {
            let h = if (i & j).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            self.signs[i] * h * s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadamard_orthogonal_and_fast_equals_dense() {
        let hd = Hadamard::new(512, 7).unwrap();
        let u = hd.dense();
        let utu = u.t().matmul(&u);
        assert!(utu.max_abs_diff(&Mat::identity(512)) < 1e-12);
        let mut g = Gauss::new(3);
        let c: Vec<f64> = (0..512).map(|_| g.sample()).collect();
        let fast = hd.apply(&c).unwrap();
        let dense = u.vecmat(&c);
        let err = fast
            .iter()
            .zip(&dense)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{err}");
        assert!(matches!(
            Hadamard::new(48, 1),
            Err(ModelError::NotPowerOfTwo(48))
        ));
    }
}
