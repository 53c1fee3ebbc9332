//! PCA of calibration latents: uncentered second moment `FᵀF` in f64, eigendecomposition with
//! faer, eigenvectors by descending eigenvalue; per-slice energy fractions e_i.

use super::error::{ModelError, Result};
use super::linalg::Mat;

/// Principal basis of the latent.
#[derive(Clone, Debug)]
pub struct Pca {
    /// `[l, l]`, column j = eigenvector of the j-th largest eigenvalue (so `c · basis` = components).
    pub basis: Mat,
    /// Eigenvalues of `FᵀF`, descending.
    pub eigenvalues: Vec<f64>,
}

/// Uncentered second moment `FᵀF` of row samples F `[n, l]`.
pub fn second_moment(f: &Mat) -> Mat {
    f.t().matmul(f)
}

impl Pca {
    /// Fit on calibration latents F `[n, l]` (one sample per row, no RoPE part).
    ///
    /// `source_name` is used in the error when F has fewer rows than columns
    /// ([`ModelError::TooFewCalibrationSamples`]).
    pub fn fit(f: &Mat, source_name: &str) -> Result<Self> {
        let l = f.cols;
        if f.rows < l {
            return Err(ModelError::TooFewCalibrationSamples {
                source_name: source_name.into(),
                samples: f.rows,
                dims: l,
            });
        }
        let m = second_moment(f);
        let fm = faer::Mat::<f64>::from_fn(l, l, |i, j| m.at(i, j));
        let evd = fm
            .self_adjoint_eigen(faer::Side::Lower)
            .map_err(|_| ModelError::Eigen { dims: l })?;
        let u = evd.U();
        let s = evd.S().column_vector();
        // faer returns ascending order: reverse.
        let mut order: Vec<usize> = (0..l).collect();
        order.sort_by(|&a, &b| s[b].partial_cmp(&s[a]).unwrap_or(std::cmp::Ordering::Equal));
        let basis = Mat::from_fn(l, l, |i, j| u[(i, order[j])]);
        let eigenvalues = order.iter().map(|&j| s[j].max(0.0)).collect();
        Ok(Pca { basis, eigenvalues })
    }

    /// Energy fraction of each of g consecutive slices: `e_i = Σ_{slice i} λ / Σ λ`.
    pub fn energy_fractions(&self, g: usize) -> Result<Vec<f64>> {
        energy_fractions(&self.eigenvalues, g)
    }
}

/// Energy fraction of g consecutive slices of per-dimension energies.
pub fn energy_fractions(energy: &[f64], g: usize) -> Result<Vec<f64>> {
    let l = energy.len();
    if g == 0 || !l.is_multiple_of(g) {
        return Err(ModelError::GroupsNotDividingLatent {
            groups: g,
            latent: l,
        });
    }
    let total: f64 = energy.iter().sum();
    let w = l / g;
    Ok((0..g)
        .map(|i| energy[i * w..(i + 1) * w].iter().sum::<f64>() / total.max(f64::MIN_POSITIVE))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::Gauss;

    #[test]
    fn pca_eigenvectors_orthonormal_and_descending() {
        let mut g = Gauss::new(11);
        let l = 64;
        let mut f = g.mat(400, l, 1.0);
        for r in 0..400 {
            for j in 0..l {
                *f.at_mut(r, j) *= 1.0 / (1.0 + j as f64);
            }
        }
        let p = Pca::fit(&f, "test").unwrap();
        let btb = p.basis.t().matmul(&p.basis);
        assert!(btb.max_abs_diff(&Mat::identity(l)) < 1e-10);
        assert!(p.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
        // M·v = λ v for the top vector.
        let m = second_moment(&f);
        let v: Vec<f64> = (0..l).map(|i| p.basis.at(i, 0)).collect();
        let mv = m.t().vecmat(&v);
        let err = mv
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - p.eigenvalues[0] * b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-8 * p.eigenvalues[0]);
        let e = p.energy_fractions(4).unwrap();
        assert!((e.iter().sum::<f64>() - 1.0).abs() < 1e-12 && e[0] > e[3]);
    }

    #[test]
    fn too_few_samples_is_typed_error() {
        let f = Mat::zeros(100, 512);
        match Pca::fit(&f, "calib.safetensors") {
            Err(ModelError::TooFewCalibrationSamples {
                samples: 100,
                dims: 512,
                source_name,
            }) => {
                assert_eq!(source_name, "calib.safetensors")
            }
            other => panic!("{other:?}"),
        }
    }
}
