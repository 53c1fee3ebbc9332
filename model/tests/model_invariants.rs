//! Invariants of the TPLA reparameterisation (issue 3 point 4, 5, 7), f64.

use tpla_model::config::{MlaConfig, Preset};
use tpla_model::hadamard::Hadamard;
use tpla_model::layer_ref::{
    mla_decode, mla_entry, tpla_decode, tpla_entry, NormMode, SoftmaxMode,
};
use tpla_model::linalg::{rel_err, Mat};
use tpla_model::pdsep::PdSession;
use tpla_model::reparam::{reparameterise, Corrections, MuConvention, Rotation, Transform};
use tpla_model::shard::{reassemble, shard_all, ShardPlan};
use tpla_model::synthetic::{random_orthogonal, synthetic_hidden, synthetic_layer, Gauss};
use tpla_model::weights::MlaLayer;

fn small(q_lora: Option<usize>) -> MlaConfig {
    MlaConfig::small(Preset::DeepseekV3, 256, 4, q_lora)
}

fn hidden(cfg: &MlaConfig, n: usize, stream: u64) -> Vec<Vec<f64>> {
    let x = synthetic_hidden(cfg.hidden, n, 1, stream);
    (0..n).map(|t| x.row(t).to_vec()).collect()
}

/// Exact MLA outputs at every position of xs.
fn mla_outputs(layer: &MlaLayer, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut cache = Vec::new();
    xs.iter()
        .enumerate()
        .map(|(t, x)| {
            let p = layer.project(x, t);
            cache.push(mla_entry(layer, &p));
            mla_decode(layer, &p, &cache)
        })
        .collect()
}

/// TPLA outputs with every token decode-written.
fn tpla_outputs(
    layer: &MlaLayer,
    corr: &Corrections,
    norm: NormMode,
    sm: SoftmaxMode,
    xs: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    let mut caches = vec![Vec::new(); corr.groups];
    xs.iter()
        .enumerate()
        .map(|(t, x)| {
            let p = layer.project(x, t);
            for (i, c) in caches.iter_mut().enumerate() {
                c.push(tpla_entry(layer, corr, i, norm, &p));
            }
            tpla_decode(layer, corr, sm, &p, &caches)
        })
        .collect()
}

fn max_rel(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| rel_err(x, y))
        .fold(0.0, f64::max)
}

fn calib_latents(layer: &MlaLayer, n: usize) -> Mat {
    let x = synthetic_hidden(layer.cfg.hidden, n, 1, 999);
    x.matmul(&layer.w_dkv)
}

#[test]
fn rotated_exact_mla_equals_unrotated() {
    for q_lora in [Some(128), None] {
        let cfg = small(q_lora);
        let layer = synthetic_layer(&cfg, 5).unwrap();
        let xs = hidden(&cfg, 12, 7);
        let y0 = mla_outputs(&layer, &xs);
        let f = calib_latents(&layer, 600);
        let mut g = Gauss::new(9);
        let us = [
            Rotation::build(Transform::None, 512, 1, None).unwrap().u,
            Rotation::build(Transform::Hadamard, 512, 1, None)
                .unwrap()
                .u,
            Rotation::build(Transform::Pca, 512, 1, Some((&f, "calib")))
                .unwrap()
                .u,
            random_orthogonal(512, &mut g),
        ];
        for u in &us {
            let r = reparameterise(&layer, u);
            assert!(r.kv_norm.iter().all(|&v| v == 1.0));
            let y1 = mla_outputs(&r, &xs);
            let e = max_rel(&y1, &y0);
            assert!(e <= 1e-10, "rotated MLA rel err {e}");
        }
    }
}

#[test]
fn tpla_g1_equals_mla() {
    let cfg = small(Some(128));
    let layer = synthetic_layer(&cfg, 6).unwrap();
    let xs = hidden(&cfg, 10, 8);
    let y0 = mla_outputs(&layer, &xs);
    let r = reparameterise(&layer, &Hadamard::new(512, 3).unwrap().dense());
    for conv in [MuConvention::InverseEnergy, MuConvention::One] {
        let corr = Corrections::uniform(1, conv);
        for norm in [NormMode::LocalCorrected, NormMode::Exact] {
            for sm in [SoftmaxMode::Local, SoftmaxMode::Global] {
                let e = max_rel(&tpla_outputs(&r, &corr, norm, sm, &xs), &y0);
                assert!(e <= 1e-10, "g=1 {norm:?} {sm:?} rel err {e}");
            }
        }
    }
}

#[test]
fn exact_options_give_zero_error_at_every_g() {
    let cfg = small(None);
    let layer = synthetic_layer(&cfg, 7).unwrap();
    let xs = hidden(&cfg, 10, 9);
    let y0 = mla_outputs(&layer, &xs);
    let r = reparameterise(&layer, &Hadamard::new(512, 3).unwrap().dense());
    for g in [2, 4, 8] {
        let corr = Corrections::uniform(g, MuConvention::InverseEnergy);
        let e = max_rel(
            &tpla_outputs(&r, &corr, NormMode::Exact, SoftmaxMode::Global, &xs),
            &y0,
        );
        assert!(e <= 1e-10, "g={g} exact options rel err {e}");
        // The approximation is really active: local norm + local softmax differ from MLA.
        let e2 = max_rel(
            &tpla_outputs(&r, &corr, NormMode::LocalCorrected, SoftmaxMode::Local, &xs),
            &y0,
        );
        assert!(e2 > 1e-6, "g={g} TPLA should differ from MLA");
    }
}

#[test]
fn rank_shards_reassemble_and_sum_to_tpla() {
    for q_lora in [Some(128), None] {
        let cfg = small(q_lora);
        let layer = synthetic_layer(&cfg, 8).unwrap();
        let f = calib_latents(&layer, 600);
        let rot = Rotation::build(Transform::Pca, 512, 1, Some((&f, "calib"))).unwrap();
        let r = reparameterise(&layer, &rot.u);
        let xs = hidden(&cfg, 8, 10);
        for (g, k) in [(1, 2), (2, 2), (2, 4), (4, 4), (8, 8)] {
            let corr = rot.corrections(g, MuConvention::InverseEnergy).unwrap();
            let plan = ShardPlan::new(&cfg, g, k).unwrap();
            let shards = shard_all(&r, &corr, &plan).unwrap();
            let back = reassemble(&shards, &plan, &cfg, &corr).unwrap();
            assert!(back.w_dkv.max_abs_diff(&r.w_dkv) < 1e-12);
            assert!(back.w_o.max_abs_diff(&r.w_o) < 1e-12);
            for h in 0..cfg.heads {
                assert!(back.w_uk[h].max_abs_diff(&r.w_uk[h]) < 1e-12);
                assert!(back.w_uv[h].max_abs_diff(&r.w_uv[h]) < 1e-12);
            }
            // Each rank runs plain MLA on its shard; the sum of rank outputs is TPLA's y.
            let want = tpla_outputs(&r, &corr, NormMode::LocalCorrected, SoftmaxMode::Local, &xs);
            let mut caches: Vec<Vec<Vec<f64>>> = vec![Vec::new(); k];
            for (t, x) in xs.iter().enumerate() {
                let mut y = vec![0.0; cfg.hidden];
                for (s, c) in shards.iter().zip(caches.iter_mut()) {
                    let p = s.layer.project(x, t);
                    c.push(mla_entry(&s.layer, &p));
                    let yi = mla_decode(&s.layer, &p, c);
                    y.iter_mut().zip(&yi).for_each(|(a, b)| *a += b);
                }
                let e = rel_err(&y, &want[t]);
                assert!(e <= 1e-10, "g={g} k={k} t={t} rank sum vs reference {e}");
            }
        }
    }
}

#[test]
fn pd_sep_prefill_is_exact_and_exact_rms_decode_is_exact() {
    let cfg = small(Some(128));
    let layer = synthetic_layer(&cfg, 9).unwrap();
    let xs = hidden(&cfg, 14, 11);
    let y0 = mla_outputs(&layer, &xs);
    let f = calib_latents(&layer, 600);
    let rot = Rotation::build(Transform::Pca, 512, 1, Some((&f, "calib"))).unwrap();
    let r = reparameterise(&layer, &rot.u);
    let corr = rot.corrections(2, MuConvention::InverseEnergy).unwrap();
    // Prefill only: outputs are exact and the group caches are the exact record's columns.
    let mut s = PdSession::new(&r, &corr, NormMode::LocalCorrected, SoftmaxMode::Local);
    let yp = s.prefill(&xs[..8]);
    assert!(max_rel(&yp, &y0[..8]) <= 1e-10);
    for (t, x) in xs.iter().enumerate().take(8) {
        let p = r.project(x, t);
        let rec = mla_entry(&r, &p);
        let mut joined = s.cache(0)[t][..256].to_vec();
        joined.extend_from_slice(&s.cache(1)[t]);
        assert!(rel_err(&joined, &rec) <= 1e-12);
    }
    // Exact options in decode (exact RMS + global softmax): zero error to rounding.
    let mut s = PdSession::new(&r, &corr, NormMode::Exact, SoftmaxMode::Global);
    s.prefill(&xs[..8]);
    for t in 8..14 {
        let y = s.decode(&xs[t]);
        assert!(rel_err(&y, &y0[t]) <= 1e-10);
    }
    // Exact RMS alone with the global softmax equals the exact path even without prefill.
    let mut s = PdSession::new(&r, &corr, NormMode::Exact, SoftmaxMode::Global);
    for t in 0..6 {
        let y = s.decode(&xs[t]);
        assert!(rel_err(&y, &y0[t]) <= 1e-10);
    }
}

#[test]
fn preset_shaped_deepseek_v2_lite() {
    // Full DeepSeek-V2-Lite dims (D 2048, 16 heads, no q_lora, latent 512).
    let cfg = Preset::DeepseekV2Lite.config();
    let layer = synthetic_layer(&cfg, 1).unwrap();
    let xs = hidden(&cfg, 4, 12);
    let y0 = mla_outputs(&layer, &xs);
    let r = reparameterise(&layer, &Hadamard::new(512, 2).unwrap().dense());
    assert!(max_rel(&mla_outputs(&r, &xs), &y0) <= 1e-10);
    let corr = Corrections::uniform(1, MuConvention::One);
    assert!(
        max_rel(
            &tpla_outputs(&r, &corr, NormMode::LocalCorrected, SoftmaxMode::Local, &xs),
            &y0
        ) <= 1e-10
    );
    let plan = ShardPlan::new(&cfg, 2, 4).unwrap();
    assert_eq!(plan.rank(3).head_range, (8, 16));
    assert_eq!(plan.rank(3).latent_range, (256, 512));
}
