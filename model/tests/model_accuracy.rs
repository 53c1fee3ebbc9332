//! The accuracy harness agrees with the f64 references, and its exact options give zero error.

use tpla_model::accuracy::{
    harness_config, harness_inputs, run_accuracy, AccuracyOptions, Mode, Slicing,
};
use tpla_model::config::Preset;
use tpla_model::layer_ref::{mla_decode, mla_entry, NormMode, SoftmaxMode};
use tpla_model::linalg::rel_err;
use tpla_model::pdsep::PdSession;
use tpla_model::reparam::{reparameterise, MuConvention, Rotation, Transform};

#[test]
fn harness_matches_reference_and_exact_is_zero() {
    let opts = AccuracyOptions {
        preset: Preset::DeepseekV3,
        shape: Some((256, 2)),
        prefill_tokens: 12,
        decode_tokens: 12,
        calib_tokens: 600,
        stride: 1,
        ..AccuracyOptions::default()
    };
    let rep = run_accuracy(&opts).unwrap();
    assert_eq!(rep.rows.len(), 3 * 3 * 2 * (1 + 1 + 2 + 2));
    for r in rep.rows.iter().filter(|r| r.slicing == Slicing::Exact) {
        assert!(
            r.rel_err_max <= 1e-10,
            "{:?} g={} {:?}: {}",
            r.transform,
            r.groups,
            r.mode,
            r.rel_err_max
        );
    }
    // Rebuild one variant with the reference session: PCA, g = 2, both slices, μ = 1/e.
    let cfg = harness_config(&opts);
    let inp = harness_inputs(&opts, &cfg).unwrap();
    let rot = Rotation::build(Transform::Pca, 512, opts.seed, Some((&inp.calib, "calib"))).unwrap();
    let lr = reparameterise(&inp.layer, &rot.u);
    let corr = rot.corrections(2, MuConvention::InverseEnergy).unwrap();
    let xs: Vec<Vec<f64>> = (0..24).map(|t| inp.xs.row(t).to_vec()).collect();
    let mut cache = Vec::new();
    let y0: Vec<Vec<f64>> = xs
        .iter()
        .enumerate()
        .map(|(t, x)| {
            let p = inp.layer.project(x, t);
            cache.push(mla_entry(&inp.layer, &p));
            mla_decode(&inp.layer, &p, &cache)
        })
        .collect();
    for mode in [Mode::PdSep, Mode::AllDecoded] {
        let mut s = PdSession::new(&lr, &corr, NormMode::LocalCorrected, SoftmaxMode::Local);
        let start = if mode == Mode::PdSep {
            s.prefill(&xs[..12]);
            12
        } else {
            0
        };
        let row = rep
            .rows
            .iter()
            .find(|r| {
                r.transform == Transform::Pca
                    && r.groups == 2
                    && r.slicing == Slicing::Both
                    && r.mode == mode
                    && r.mu == Some(MuConvention::InverseEnergy)
            })
            .unwrap();
        for t in start..24 {
            let e = rel_err(&s.decode(&xs[t]), &y0[t]);
            let (_, he) = row
                .curve
                .iter()
                .find(|(d, _)| *d == t + 1 - start)
                .copied()
                .unwrap();
            assert!(
                (e - he).abs() <= 1e-12 + 1e-6 * e,
                "{mode:?} t={t}: reference {e} harness {he}"
            );
            assert!(e > 1e-8);
        }
    }
    assert!(rep.mu_decision.is_some());
    assert!(!rep.table().is_empty());
}
