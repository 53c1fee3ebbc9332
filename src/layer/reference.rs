//! The f64 references a [`super::TpLayer`] is checked against: exact absorbed MLA (TPLA.md §1)
//! for MLA-TP and DCP, and TPLA at g groups (§2) for TPLA, over the whole token history.

use tpla_model::layer_ref::{
    mla_decode, mla_entry, tpla_decode, tpla_entry, NormMode, SoftmaxMode,
};
use tpla_model::weights::TokenProj;
use tpla_model::{Corrections, MlaLayer, MuConvention};

use super::plan::{Form, KvNorm};

/// Layer outputs of every step of every sequence: `xs[b][t]` is sequence `b`'s hidden state at
/// position `t`; the result `[t][b]` is the output `D` of step `t` (attending over `0..=t`).
/// `layer` must be the same [`super::weights::prepare`]d layer the device path ran.
pub fn reference_steps(
    layer: &MlaLayer,
    form: Form,
    corr: Option<&Corrections>,
    xs: &[Vec<Vec<f64>>],
) -> Vec<Vec<Vec<f64>>> {
    let steps = xs.first().map_or(0, Vec::len);
    let projs: Vec<Vec<TokenProj>> = xs
        .iter()
        .map(|seq| {
            seq.iter()
                .enumerate()
                .map(|(t, x)| layer.project(x, t))
                .collect()
        })
        .collect();
    (0..steps)
        .map(|t| {
            projs
                .iter()
                .map(|p| match form {
                    Form::MlaTp | Form::Dcp => {
                        let cache: Vec<Vec<f64>> =
                            p[..=t].iter().map(|q| mla_entry(layer, q)).collect();
                        mla_decode(layer, &p[t], &cache)
                    }
                    // Where the groups' outputs are reduced changes only the rounding order.
                    Form::Tpla { groups, norm, .. } => {
                        let uniform = Corrections::uniform(groups, MuConvention::One);
                        let corr = corr.unwrap_or(&uniform);
                        let mode = match norm {
                            KvNorm::Sliced => NormMode::LocalCorrected,
                            KvNorm::Exact => NormMode::Exact,
                        };
                        let caches: Vec<Vec<Vec<f64>>> = (0..groups)
                            .map(|i| {
                                p[..=t]
                                    .iter()
                                    .map(|q| tpla_entry(layer, corr, i, mode, q))
                                    .collect()
                            })
                            .collect();
                        tpla_decode(layer, corr, SoftmaxMode::Local, &p[t], &caches)
                    }
                })
                .collect()
        })
        .collect()
}
