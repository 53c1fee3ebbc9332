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

/// What [`run_against_reference`] saw.
#[derive(Clone, Debug)]
pub struct ReferenceRun {
    /// The worst relative error of any token's output (infinite where an output is not finite).
    pub worst: f64,
    /// Every step's output, `[batch · query_len, D]` row-major.
    pub outputs: Vec<Vec<f32>>,
    /// Every step's per-rank times.
    pub times: Vec<Vec<super::RankTimes>>,
}

/// Steps `tl` through the token sequences `xs` (`xs[b][t]`, as [`reference_steps`]),
/// `query_len` tokens per sequence a step (sequence-major rows), and compares every token's
/// output with the reference's one-token decode at its position (the causal mask among a
/// step's new tokens makes the two the same computation). `layer` and `corr` must be the ones
/// `tl` was built from; the token count must be a multiple of the query length.
pub fn run_against_reference<X: tpla_runtime::Executor, C: tpla_runtime::AllReduce<X>>(
    tl: &mut super::TpLayer<X, C>,
    layer: &MlaLayer,
    corr: Option<&Corrections>,
    xs: &[Vec<Vec<f64>>],
) -> Result<ReferenceRun, tpla_runtime::RuntimeError> {
    let (sq, d) = (tl.query_len(), layer.cfg.hidden);
    let tokens = xs.first().map_or(0, Vec::len);
    if !tokens.is_multiple_of(sq) {
        return Err(tpla_runtime::RuntimeError::InvalidInput(format!(
            "{tokens} tokens are not whole steps of {sq}"
        )));
    }
    let want = reference_steps(layer, tl.form(), corr, xs);
    let mut run = ReferenceRun {
        worst: 0.0,
        outputs: Vec::new(),
        times: Vec::new(),
    };
    for k in 0..tokens / sq {
        let x: Vec<f32> = xs
            .iter()
            .flat_map(|seq| {
                seq[k * sq..(k + 1) * sq]
                    .iter()
                    .flatten()
                    .map(|&v| v as f32)
            })
            .collect();
        let x = tpla_runtime::HostTensor::from_vec(&[xs.len() * sq, d], x)
            .map_err(|e| tpla_runtime::RuntimeError::InvalidInput(e.to_string()))?;
        let (y, times) = tl.step(&x)?;
        for (row, got) in y.data().chunks(d).enumerate() {
            let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
            let e = tpla_model::linalg::rel_err(&got, &want[k * sq + row % sq][row / sq]);
            run.worst = if e.is_finite() {
                run.worst.max(e)
            } else {
                f64::INFINITY
            };
        }
        run.outputs.push(y.data().to_vec());
        run.times.push(times);
    }
    Ok(run)
}
