//! Typed errors on bad input (issue 3 point 8) and the `convert` round trip.

use tpla_model::config::{MlaConfig, Preset};
use tpla_model::convert::{convert, load_rank_layer, ConvertOptions};
use tpla_model::error::ModelError;
use tpla_model::layer_ref::{
    mla_decode, mla_entry, tpla_decode, tpla_entry, NormMode, SoftmaxMode,
};
use tpla_model::linalg::{rel_err, Mat};
use tpla_model::reparam::{reparameterise, MuConvention, Rotation, Transform};
use tpla_model::shard::ShardPlan;
use tpla_model::synthetic::{synthetic_hidden, synthetic_layer};
use tpla_model::tensors::{Checkpoint, OutDtype, TensorWriter};
use tpla_model::weights::MlaLayer;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tpla-model-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lite_small() -> MlaConfig {
    MlaConfig::small(Preset::DeepseekV2Lite, 128, 2, None)
}

/// Write a small layer, letting `edit` change the tensors, and try to load it with `cfg`.
fn load_edited(
    cfg_file: &MlaConfig,
    cfg_load: &MlaConfig,
    edit: impl Fn(&mut TensorWriter),
) -> Result<MlaLayer, ModelError> {
    let layer = synthetic_layer(cfg_file, 1).unwrap();
    let mut w = TensorWriter::default();
    layer.store(&mut w, 3);
    edit(&mut w);
    let path = tmp("ck").join(format!("{}.safetensors", rand_name()));
    w.write(&path, OutDtype::F32, None).unwrap();
    MlaLayer::load(&Checkpoint::open(&path).unwrap(), cfg_load, 3)
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("f{}", N.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn load_roundtrip_bf16_f32() {
    let cfg = lite_small();
    let l = load_edited(&cfg, &cfg, |_| {}).unwrap();
    let orig = synthetic_layer(&cfg, 1).unwrap();
    assert!(l.w_o.max_abs_diff(&orig.w_o) < 1e-6);
    assert!(l.w_uk[1].max_abs_diff(&orig.w_uk[1]) < 1e-6);
    assert!(l.w_kr.max_abs_diff(&orig.w_kr) < 1e-6);
}

#[test]
fn missing_tensor_is_named() {
    let cfg = lite_small();
    let err = load_edited(&cfg, &cfg, |w| {
        let mut nw = TensorWriter::default();
        std::mem::swap(w, &mut nw);
        // Rebuild without o_proj.
        let layer = synthetic_layer(&lite_small(), 1).unwrap();
        layer.store(w, 3);
        *w = strip(w, "model.layers.3.self_attn.o_proj.weight");
    })
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name == "model.layers.3.self_attn.o_proj.weight"),
        "{err}"
    );
}

fn strip(w: &TensorWriter, name: &str) -> TensorWriter {
    let bytes = w.to_bytes(OutDtype::F64, None).unwrap();
    let path = tmp("strip").join(format!("{}.safetensors", rand_name()));
    std::fs::write(&path, bytes).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let mut out = TensorWriter::default();
    for n in ck.names() {
        if n != name {
            let s = ck.shape(&n).unwrap();
            out.put(n.clone(), s.clone(), ck.read(&n, &s).unwrap());
        }
    }
    out
}

#[test]
fn wrong_shape_is_named() {
    let cfg = lite_small();
    let err = load_edited(&cfg, &cfg, |w| {
        w.put(
            "model.layers.3.self_attn.kv_a_layernorm.weight",
            vec![500],
            vec![1.0; 500],
        )
    })
    .unwrap_err();
    match err {
        ModelError::WrongShape {
            name,
            expected,
            got,
        } => {
            assert_eq!(name, "model.layers.3.self_attn.kv_a_layernorm.weight");
            assert_eq!((expected, got), (vec![512], vec![500]));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn preset_mismatch_both_ways() {
    let direct = lite_small();
    let lora = MlaConfig::small(Preset::DeepseekV3, 128, 2, Some(64));
    let e = load_edited(&direct, &lora, |_| {}).unwrap_err();
    assert!(
        matches!(&e, ModelError::PresetMismatch { detail, .. } if detail.contains("q_proj")),
        "{e}"
    );
    let e = load_edited(&lora, &direct, |_| {}).unwrap_err();
    assert!(
        matches!(&e, ModelError::PresetMismatch { detail, .. } if detail.contains("q_a_proj")),
        "{e}"
    );
}

#[test]
fn too_few_calibration_samples() {
    let f = Mat::zeros(511, 512);
    let e = Rotation::build(Transform::Pca, 512, 0, Some((&f, "calib.safetensors"))).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::TooFewCalibrationSamples {
                samples: 511,
                dims: 512,
                ..
            }
        ),
        "{e}"
    );
    // And through convert with a calibration file.
    let dir = tmp("fewcalib");
    let mut w = TensorWriter::default();
    w.put("latents", vec![100, 512], vec![0.5; 100 * 512]);
    w.write(dir.join("calib.safetensors"), OutDtype::F32, None)
        .unwrap();
    let opts = ConvertOptions {
        preset: Preset::DeepseekV2Lite,
        shape: Some((128, 2)),
        checkpoint: None,
        layers: None,
        transform: Transform::Pca,
        groups: 2,
        devices: 2,
        calib: Some(dir.join("calib.safetensors")),
        seed: 0,
        mu: MuConvention::One,
        dtype: OutDtype::F32,
        out_dir: dir.join("out"),
        force: false,
    };
    assert!(matches!(
        convert(&opts).unwrap_err(),
        ModelError::TooFewCalibrationSamples { samples: 100, .. }
    ));
}

#[test]
fn groups_must_divide_latent_and_devices() {
    let cfg = lite_small();
    assert!(matches!(
        ShardPlan::new(&cfg, 3, 3),
        Err(ModelError::GroupsNotDividingLatent {
            groups: 3,
            latent: 512
        })
    ));
    assert!(matches!(
        ShardPlan::new(&cfg, 4, 2),
        Err(ModelError::GroupsNotDividingDevices {
            groups: 4,
            devices: 2
        })
    ));
    assert!(matches!(
        ShardPlan::new(&cfg, 2, 8),
        Err(ModelError::ShardsNotDividingHeads {
            shards: 4,
            heads: 2
        })
    ));
    let rot = Rotation::build(Transform::Hadamard, 512, 0, None).unwrap();
    assert!(matches!(
        rot.corrections(3, MuConvention::One),
        Err(ModelError::GroupsNotDividingLatent { .. })
    ));
}

#[test]
fn convert_writes_rank_files_that_decode_as_tpla() {
    let dir = tmp("convert");
    let opts = ConvertOptions {
        preset: Preset::DeepseekV2Lite,
        shape: Some((128, 4)),
        checkpoint: None,
        layers: None,
        transform: Transform::Pca,
        groups: 2,
        devices: 4,
        calib: None,
        seed: 5,
        mu: MuConvention::InverseEnergy,
        dtype: OutDtype::F64,
        out_dir: dir.clone(),
        force: false,
    };
    let man = convert(&opts).unwrap();
    assert_eq!(man.ranks.len(), 4);
    assert!(dir.join("manifest.json").exists());
    let cfg = man.config.clone();
    // Rebuild the reference the same way convert documents it.
    let layer = synthetic_layer(&cfg, 5).unwrap();
    let calib = synthetic_hidden(cfg.hidden, 4 * 512, 5, 5 * 7919 + 2).matmul(&layer.w_dkv);
    let rot = Rotation::build(Transform::Pca, 512, 5, Some((&calib, "c"))).unwrap();
    let corr = rot.corrections(2, MuConvention::InverseEnergy).unwrap();
    assert_eq!(corr, man.layers[0].corrections);
    let lr = reparameterise(&layer, &rot.u);
    let ranks: Vec<MlaLayer> = (0..4)
        .map(|r| load_rank_layer(&dir, &man, r, 0).unwrap())
        .collect();
    let xs = synthetic_hidden(cfg.hidden, 6, 5, 77);
    let mut rc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); 4];
    let mut gc: Vec<Vec<Vec<f64>>> = vec![Vec::new(); 2];
    for t in 0..6 {
        let x = xs.row(t);
        let mut y = vec![0.0; cfg.hidden];
        for (rl, c) in ranks.iter().zip(rc.iter_mut()) {
            let p = rl.project(x, t);
            c.push(mla_entry(rl, &p));
            y.iter_mut()
                .zip(mla_decode(rl, &p, c))
                .for_each(|(a, b)| *a += b);
        }
        let p = lr.project(x, t);
        for (i, c) in gc.iter_mut().enumerate() {
            c.push(tpla_entry(&lr, &corr, i, NormMode::LocalCorrected, &p));
        }
        let want = tpla_decode(&lr, &corr, SoftmaxMode::Local, &p, &gc);
        assert!(rel_err(&y, &want) < 1e-10, "t={t}");
    }
}
