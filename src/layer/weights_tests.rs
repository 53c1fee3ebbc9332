use super::*;
use std::path::PathBuf;
use tpla_model::convert::{convert, ConvertOptions};
use tpla_model::synthetic::synthetic_layer;
use tpla_model::tensors::{OutDtype, TensorWriter};
use tpla_model::{MlaConfig, ModelError, MuConvention, Preset, Transform};

fn small(q_lora: usize) -> MlaConfig {
    MlaConfig::small(Preset::DeepseekV3, 256, 8, Some(q_lora))
}

fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("tpla-weights-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny DeepSeek-named checkpoint (f64, so the round trip is exact) with layer `idx`.
fn write_checkpoint(dir: &std::path::Path, cfg: &MlaConfig, idx: usize) -> MlaLayer {
    let layer = synthetic_layer(cfg, 3).unwrap();
    let mut w = TensorWriter::default();
    layer.store(&mut w, idx);
    w.write(dir.join("model.safetensors"), OutDtype::F64, None)
        .unwrap();
    layer
}

#[test]
fn a_deepseek_named_checkpoint_loads_exactly() {
    let dir = scratch("ck");
    let want = write_checkpoint(&dir, &small(128), 2);
    let (got, from) = load_layer(&dir, &small(128), Some(2)).unwrap();
    assert_eq!(got.w_o.data, want.w_o.data);
    assert_eq!(got.w_dkv.data, want.w_dkv.data);
    assert_eq!(got.w_uk[5].data, want.w_uk[5].data);
    assert_eq!((from.layer, from.transform), (2, None));
    // The prepared layer (γ folded, bf16) is what the device path runs.
    prepare(&got).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shapes_are_checked_against_the_preset_naming_the_tensor() {
    let dir = scratch("shape");
    write_checkpoint(&dir, &small(128), 0);
    // q_lora 64 in the preset, 128 in the file: q_a_proj has the wrong shape.
    let e = load_layer(&dir, &small(64), None).unwrap_err();
    match &e {
        ModelError::WrongShape { name, .. } => {
            assert_eq!(name, "model.layers.0.self_attn.q_a_proj.weight")
        }
        e => panic!("{e:?}"),
    }
    // A layer the file does not hold is a missing tensor, named.
    let e = load_layer(&dir, &small(128), Some(7)).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { name } if name.starts_with("model.layers.7.")),
        "{e:?}"
    );
    // Not a checkpoint at all: an error, not a panic.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").unwrap();
    assert!(load_layer(&junk, &small(128), None).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn convert_to(dir: &std::path::Path, devices: usize) {
    convert(&ConvertOptions {
        preset: Preset::DeepseekV3,
        shape: Some((256, 8)),
        checkpoint: None,
        layers: None,
        transform: Transform::Hadamard,
        groups: devices,
        devices,
        calib: None,
        seed: 5,
        mu: MuConvention::One,
        dtype: OutDtype::F32,
        out_dir: dir.to_path_buf(),
        force: true,
    })
    .unwrap();
}

#[test]
fn tpla_convert_output_loads_with_one_device_and_is_refused_when_sharded() {
    let root = scratch("convert");
    let one = root.join("one");
    convert_to(&one, 1);
    // `tpla convert` small shapes: q_lora = min(1536, hidden).
    let (layer, from) = load_layer(&one, &small(256), None).unwrap();
    assert_eq!(layer.w_o.rows, 8 * 128);
    assert_eq!(from.transform.as_deref(), Some("hadamard"));
    assert_eq!(load_transform(&one).unwrap(), Transform::Hadamard);
    assert_eq!(load_transform(&root).unwrap(), Transform::None);
    assert!(from.path.ends_with(".safetensors"), "{}", from.path);
    // The preset's dims differ from the converted ones: a typed mismatch.
    let e = load_layer(&one, &small(128), None).unwrap_err();
    assert!(matches!(e, ModelError::PresetMismatch { .. }), "{e:?}");
    let two = root.join("two");
    convert_to(&two, 2);
    let e = load_layer(&two, &small(256), None).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidValue { detail, .. } if detail.contains("--devices 1")),
        "{e:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
