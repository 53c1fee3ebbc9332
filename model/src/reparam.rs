//! Reparameterisation (TPLA.md §3): fold the latent RMSNorm γ, rotate the latent by an orthogonal
//! U folded into W_DKV and the latent rows of W_UK / W_UV, and derive the per-slice corrections
//! m_i (RMS) and μ_i (logits).
//!
//! After [`reparameterise`] the layer computes exactly the same MLA output (to rounding) and its
//! cache holds `RMSNorm_1(c·U)`: `W_DKV <- W_DKV·U`, `W_UK[h], W_UV[h] <- Uᵀ·diag(γ)·W`.
//!
//! Energy fractions e_i per transform: `none` and `hadamard` use e_i = 1/g (m_i = g, the naive
//! local RMSNorm and the Hadamard balance of §3); `pca` uses the calibration eigenvalues.

use super::error::{ModelError, Result};
use super::hadamard::Hadamard;
use super::linalg::Mat;
use super::pca::{energy_fractions, Pca};
use super::weights::MlaLayer;
use serde::{Deserialize, Serialize};

/// Orthogonal transform of the latent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// U = I (γ still folded).
    None,
    /// U = D·H/sqrt(512), seeded signs.
    Hadamard,
    /// U = eigenvectors of the calibration second moment, descending.
    Pca,
}

impl Transform {
    /// Parse `none|hadamard|pca`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Transform::None),
            "hadamard" => Ok(Transform::Hadamard),
            "pca" => Ok(Transform::Pca),
            o => Err(ModelError::UnknownTransform(o.into())),
        }
    }

    /// CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Transform::None => "none",
            Transform::Hadamard => "hadamard",
            Transform::Pca => "pca",
        }
    }
}

/// Logit correction convention under the sliced softmax (TPLA.md §3, open point).
///
/// Default: [`MuConvention::One`], decided on the accuracy harness (`model/examples/accuracy.rs`,
/// results in `bench/results/accuracy-2026-11-26*.json`): synthetic DeepSeek-V2-Lite-shaped layer,
/// P = 512 prefill + N = 1024 decoded tokens, every 16th step, relative error of y vs exact MLA
/// (mean over the same 1024 query steps), TPLA with both slices:
///
/// | transform | g | mode | μ = 1/e_i | μ = 1 |
/// |---|---|---|---|---|
/// | pca | 2 | pd sep | 5.57e-2 | 1.91e-2 |
/// | pca | 2 | all decoded | 3.12e-2 | 1.91e-2 |
/// | pca | 4 | pd sep | 8.23e-2 | 2.89e-2 |
/// | pca | 8 | pd sep | 1.08e-1 | 3.77e-2 |
/// | hadamard | 2 | pd sep | 7.72e-1 | 6.67e-1 |
/// | none | 2 | pd sep | 7.96e-1 | 6.56e-1 |
///
/// μ = 1 had the lower error in all 36 paired comparisons (transform × g × {softmax only, both} ×
/// mode) with seed 0 (geometric-mean error ratio 1/e : 1 = 1.65) and again 36/36 with seed 1
/// (ratio 1.54). μ_i = 1/e_i multiplies each local logit by ≈ 1/e_i (g for uniform energy, up to
/// 1/MIN_ENERGY for a near-empty PCA slice), which sharpens the local softmax away from the full one.
/// Synthetic data only: re-run on real checkpoints before trusting the choice there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MuConvention {
    /// μ_i = 1/e_i ("in the same manner" as m_i, the paper's reading).
    #[serde(rename = "inverse-energy")]
    InverseEnergy,
    /// μ_i = 1 (no logit correction).
    #[default]
    #[serde(rename = "one")]
    One,
}

impl MuConvention {
    /// Parse `inverse-energy|one`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "inverse-energy" | "1/e" => Ok(MuConvention::InverseEnergy),
            "one" | "1" => Ok(MuConvention::One),
            o => Err(ModelError::InvalidValue {
                name: "mu",
                detail: format!("`{o}` (expected inverse-energy or one)"),
            }),
        }
    }

    /// Spelling used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            MuConvention::InverseEnergy => "inverse-energy",
            MuConvention::One => "one",
        }
    }
}

/// Per-slice corrections of g latent groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Corrections {
    /// g.
    pub groups: usize,
    /// Energy fraction e_i of each slice.
    pub energy: Vec<f64>,
    /// RMS correction m_i = 1/e_i: `ĉ_i = c_i / (sqrt(m_i/g)·RMS(c_i))`.
    pub m: Vec<f64>,
    /// Logit correction μ_i (folded into W_UK of slice i).
    pub mu: Vec<f64>,
    /// Which convention produced μ.
    pub mu_convention: MuConvention,
}

impl Corrections {
    /// Floor of an energy fraction.
    pub const MIN_ENERGY: f64 = 1e-6;

    /// From energy fractions. Fractions are floored at [`Corrections::MIN_ENERGY`] so that an
    /// empty slice (a latent of lower rank than l/g·(g-1)) gives finite corrections.
    pub fn from_energy(energy: Vec<f64>, conv: MuConvention) -> Self {
        let energy: Vec<f64> = energy.iter().map(|e| e.max(Self::MIN_ENERGY)).collect();
        let m: Vec<f64> = energy.iter().map(|e| 1.0 / e).collect();
        let mu = match conv {
            MuConvention::InverseEnergy => m.clone(),
            MuConvention::One => vec![1.0; energy.len()],
        };
        Corrections {
            groups: energy.len(),
            energy,
            m,
            mu,
            mu_convention: conv,
        }
    }

    /// Uniform energy e_i = 1/g.
    pub fn uniform(g: usize, conv: MuConvention) -> Self {
        Self::from_energy(vec![1.0 / g as f64; g], conv)
    }

    /// Local RMS scale of slice i: `1/sqrt(m_i/g)` (multiplies `c_i / RMS(c_i)`).
    pub fn norm_gain(&self, i: usize) -> f64 {
        (self.m[i] / self.groups as f64).sqrt().recip()
    }
}

/// The latent rotation chosen for a layer, with per-dimension energies in the rotated basis.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// Which transform.
    pub transform: Transform,
    /// Seed (Hadamard signs).
    pub seed: u64,
    /// U `[l, l]` (orthogonal).
    pub u: Mat,
    /// Per-dimension energy in the rotated basis (PCA eigenvalues); `None`: assume uniform.
    pub energy: Option<Vec<f64>>,
}

impl Rotation {
    /// Build U. `calib` are calibration latents c = x·W_DKV `[n, l]` (required for PCA).
    pub fn build(
        transform: Transform,
        l: usize,
        seed: u64,
        calib: Option<(&Mat, &str)>,
    ) -> Result<Self> {
        match transform {
            Transform::None => Ok(Rotation {
                transform,
                seed,
                u: Mat::identity(l),
                energy: None,
            }),
            Transform::Hadamard => Ok(Rotation {
                transform,
                seed,
                u: Hadamard::new(l, seed)?.dense(),
                energy: None,
            }),
            Transform::Pca => {
                let (f, name) = calib.ok_or(ModelError::MissingCalibration)?;
                if f.cols != l {
                    return Err(ModelError::InvalidValue {
                        name: "calibration latents",
                        detail: format!("{name}: width {} != latent {l}", f.cols),
                    });
                }
                let p = Pca::fit(f, name)?;
                Ok(Rotation {
                    transform,
                    seed,
                    u: p.basis,
                    energy: Some(p.eigenvalues),
                })
            }
        }
    }

    /// Corrections for g groups under a μ convention.
    pub fn corrections(&self, g: usize, conv: MuConvention) -> Result<Corrections> {
        let l = self.u.rows;
        if g == 0 || !l.is_multiple_of(g) {
            return Err(ModelError::GroupsNotDividingLatent {
                groups: g,
                latent: l,
            });
        }
        Ok(match &self.energy {
            Some(e) => Corrections::from_energy(energy_fractions(e, g)?, conv),
            None => Corrections::uniform(g, conv),
        })
    }
}

/// Fold γ of the latent RMSNorm into the latent rows of W_UK and W_UV (γ becomes all ones).
pub fn fold_gamma(layer: &MlaLayer) -> MlaLayer {
    let mut out = layer.clone();
    for (uk, uv) in out.w_uk.iter_mut().zip(out.w_uv.iter_mut()) {
        for (r, &g) in layer.kv_norm.iter().enumerate() {
            uk.scale_row(r, g);
            uv.scale_row(r, g);
        }
    }
    out.kv_norm = vec![1.0; layer.kv_norm.len()];
    out
}

/// Fold γ, then rotate: `W_DKV·U`, `Uᵀ·diag(γ)·W_UK[h]`, `Uᵀ·diag(γ)·W_UV[h]`.
pub fn reparameterise(layer: &MlaLayer, u: &Mat) -> MlaLayer {
    let mut out = fold_gamma(layer);
    let ut = u.t();
    out.w_dkv = layer.w_dkv.matmul(u);
    out.w_uk = out.w_uk.iter().map(|w| ut.matmul(w)).collect();
    out.w_uv = out.w_uv.iter().map(|w| ut.matmul(w)).collect();
    out
}
