//! `--max-rel-err`: TPLA's expected output error for `g` groups, taken from the accuracy harness
//! ([`tpla_model::run_accuracy`]) on its synthetic layer of the run's preset (small shapes,
//! hidden 256 and 8 heads, so it takes well under a second), not from the layer's own check.
//!
//! The figure is TPLA with both approximations (sliced norm and local softmax, μ = 1), the
//! worst of the harness's two cache modes (pd-sep and all-decoded), for the latent transform of
//! the weights being run (`none` for synthetic weights, the `tpla convert` transform for
//! converted ones). On the harness's synthetic layers PCA is near exact (their latents are
//! low-rank by construction), so taking the best transform would admit TPLA everywhere.

use tpla_model::accuracy::{AccuracyOptions, Slicing};
use tpla_model::{MuConvention, Preset, Transform};

/// The harness's figure for one `g`.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorBudget {
    /// Latent groups.
    pub groups: usize,
    /// The latent transform.
    pub transform: Transform,
    /// The mean relative error of the layer output against exact MLA (worst mode).
    pub rel_err: f64,
}

/// The harness options this figure uses.
pub fn options(preset: Preset, groups: usize, transform: Transform, seed: u64) -> AccuracyOptions {
    AccuracyOptions {
        preset,
        shape: Some((256, 8)),
        checkpoint: None,
        layer: 0,
        seed,
        prefill_tokens: 64,
        decode_tokens: 64,
        calib_tokens: 512,
        stride: 8,
        transforms: vec![transform],
        groups: vec![groups],
        mu: vec![MuConvention::One],
        kv_caches: vec![],
    }
}

/// Runs the harness for `g` groups and `transform` on `preset`'s synthetic layer.
pub fn tpla_error(
    preset: Preset,
    groups: usize,
    transform: Transform,
    seed: u64,
) -> tpla_model::Result<ErrorBudget> {
    let report = tpla_model::run_accuracy(&options(preset, groups, transform, seed))?;
    let rel_err = report
        .rows
        .iter()
        .filter(|r| r.slicing == Slicing::Both && r.groups == groups && r.transform == transform)
        .map(|r| r.rel_err_mean)
        .reduce(f64::max)
        .ok_or_else(|| tpla_model::ModelError::InvalidValue {
            name: "groups",
            detail: format!("the accuracy harness reported no TPLA row for g = {groups}"),
        })?;
    Ok(ErrorBudget {
        groups,
        transform,
        rel_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure is the harness's own (the same rows of its report), more groups cost more
    /// error, and a rotation lowers it.
    #[test]
    fn the_budget_is_the_harness_figure_for_the_weights_transform() {
        let b2 = tpla_error(Preset::DeepseekV3, 2, Transform::None, 0).unwrap();
        let report =
            tpla_model::run_accuracy(&options(Preset::DeepseekV3, 2, Transform::None, 0)).unwrap();
        let modes: Vec<f64> = report
            .rows
            .iter()
            .filter(|r| r.slicing == Slicing::Both)
            .map(|r| r.rel_err_mean)
            .collect();
        assert_eq!(modes.len(), 2, "pd-sep and all-decoded");
        assert_eq!(b2.rel_err, modes.iter().copied().fold(0.0, f64::max));
        let b8 = tpla_error(Preset::DeepseekV3, 8, Transform::None, 0).unwrap();
        assert!(b8.rel_err > b2.rel_err, "{b8:?} vs {b2:?}");
        let h2 = tpla_error(Preset::DeepseekV3, 2, Transform::Hadamard, 0).unwrap();
        assert!(h2.rel_err < b2.rel_err, "{h2:?} vs {b2:?}");
        // g must divide the harness's 8 heads' groups: a typed error, not a panic.
        assert!(tpla_error(Preset::DeepseekV3, 3, Transform::None, 0).is_err());
    }
}
