//! A layer's weights as the device path uses them: `γ` folded, rounded to bf16, and each rank's
//! share cut out as `[heads, in, out]` matrices for [`tpla_kernels::head_proj`].

use tpla_model::reparam::{fold_gamma, Corrections};
use tpla_model::weights::QPath;
use tpla_model::MlaLayer;
use tpla_runtime::half::bf16;
use tpla_runtime::{HostTensor, RuntimeError};

use super::plan::{Form, RankRole};

/// Rounds an f64 value through bf16.
pub fn round_bf16(v: f64) -> f64 {
    f64::from(bf16::from_f64(v).to_f32())
}

/// `layer` with the latent RMSNorm `γ` folded into `W_UK`/`W_UV` (exact for MLA, TPLA.md §3)
/// and every weight rounded to bf16: the layer both the device path and its f64 reference use,
/// so the comparison measures the computation, not the weight rounding.
pub fn prepare(layer: &MlaLayer) -> Result<MlaLayer, RuntimeError> {
    if !matches!(layer.q, QPath::Lora { .. }) {
        return Err(RuntimeError::InvalidInput(format!(
            "tpla::layer runs layers with a low-rank query path (q_lora); `{}` has a direct q_proj",
            layer.cfg.name
        )));
    }
    let mut l = fold_gamma(layer);
    let round =
        |m: &mut tpla_model::linalg::Mat| m.data.iter_mut().for_each(|v| *v = round_bf16(*v));
    if let QPath::Lora { w_dq, q_norm, w_uq } = &mut l.q {
        round(w_dq);
        round(w_uq);
        q_norm.iter_mut().for_each(|v| *v = round_bf16(*v));
    }
    round(&mut l.w_dkv);
    round(&mut l.w_kr);
    l.w_uk.iter_mut().for_each(round);
    l.w_uv.iter_mut().for_each(round);
    round(&mut l.w_o);
    Ok(l)
}

/// One rank's weights on the host, bf16, each `[heads, in, out]`.
pub struct RankWeights {
    /// `[1, D, q_lora + w + rope]`: `W_DQ | W_DKV[:, latent] | W_KR` (one fused down-projection).
    pub down: HostTensor<bf16>,
    /// q RMSNorm `γ` (`q_lora`).
    pub q_norm: Vec<f32>,
    /// `[1, q_lora, heads_r · (nope + rope)]`: `W_UQ` columns of the attention heads.
    pub uq: HostTensor<bf16>,
    /// `[heads_r, nope, w]`: `μ · W_UK[h][latent]ᵀ` (absorption into the latent).
    pub uk: HostTensor<bf16>,
    /// `[uv_heads, w_v, v_head]`: `W_UV[h]` rows of the latent this rank's attention output has.
    pub uv: HostTensor<bf16>,
    /// `[1, out_heads · v_head, D]`: `W_O` rows of the output heads.
    pub o: HostTensor<bf16>,
    /// `q_lora`.
    pub q_lora: usize,
}

fn tensor(shape: &[usize], data: Vec<f64>) -> HostTensor<bf16> {
    let v = data.into_iter().map(bf16::from_f64).collect();
    HostTensor::from_vec(shape, v).expect("sizes agree by construction")
}

/// Cuts `role`'s weights out of a [`prepare`]d layer. `corr` gives μ for TPLA (`None`: μ = 1).
pub fn rank_weights(
    layer: &MlaLayer,
    form: Form,
    role: &RankRole,
    corr: Option<&Corrections>,
) -> Result<RankWeights, RuntimeError> {
    let cfg = &layer.cfg;
    let QPath::Lora { w_dq, q_norm, w_uq } = &layer.q else {
        return Err(RuntimeError::InvalidInput(
            "layer has no q_lora path".into(),
        ));
    };
    let (d, ql, rope, nope, dv) = (cfg.hidden, w_dq.cols, cfg.qk_rope, cfg.qk_nope, cfg.v_head);
    let lat = role.latent.clone();
    let w = lat.len();
    let mu = match (form, corr) {
        (Form::Tpla { groups, .. }, Some(c)) => {
            if c.groups != groups {
                return Err(RuntimeError::InvalidInput(format!(
                    "corrections for {} groups, the form has {groups}",
                    c.groups
                )));
            }
            c.mu[role.group]
        }
        _ => 1.0,
    };
    let mut down = Vec::with_capacity(d * (ql + w + rope));
    for r in 0..d {
        down.extend_from_slice(w_dq.row(r));
        down.extend_from_slice(&layer.w_dkv.row(r)[lat.clone()]);
        down.extend_from_slice(layer.w_kr.row(r));
    }
    let qh = cfg.q_head();
    let (h0, h1) = (role.attn_heads.start, role.attn_heads.end);
    let mut uq = Vec::with_capacity(ql * (h1 - h0) * qh);
    for r in 0..ql {
        uq.extend_from_slice(&w_uq.row(r)[h0 * qh..h1 * qh]);
    }
    let mut uk = Vec::with_capacity((h1 - h0) * nope * w);
    for h in role.attn_heads.clone() {
        for n in 0..nope {
            uk.extend(lat.clone().map(|l| mu * layer.w_uk[h].at(l, n)));
        }
    }
    let mut uv = Vec::new();
    for h in role.uv_heads.clone() {
        for l in lat.clone() {
            uv.extend_from_slice(layer.w_uv[h].row(l));
        }
    }
    let mut o = Vec::new();
    for h in role.out_heads.clone() {
        for r in h * dv..(h + 1) * dv {
            o.extend_from_slice(layer.w_o.row(r));
        }
    }
    let (hv, ho) = (role.uv_heads.len(), role.out_heads.len());
    Ok(RankWeights {
        down: tensor(&[1, d, ql + w + rope], down),
        q_norm: q_norm.iter().map(|&v| v as f32).collect(),
        uq: tensor(&[1, ql, (h1 - h0) * qh], uq),
        uk: tensor(&[h1 - h0, nope, w], uk),
        uv: tensor(&[hv, w, dv], uv),
        o: tensor(&[1, ho * dv, d], o),
        q_lora: ql,
    })
}

/// The source of [`load_layer`]'s weights, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedFrom {
    /// The file or directory read.
    pub path: String,
    /// The layer index read.
    pub layer: usize,
    /// `tpla convert`'s transform when `path` is its output (`None`: a plain checkpoint).
    pub transform: Option<String>,
}

/// Loads layer `idx` (default: the first layer `tpla convert` wrote, else 0) of DeepSeek-named
/// weights at `path` for the preset `cfg`, checking every tensor's shape against it (a typed
/// [`tpla_model::ModelError`] naming the tensor: `WrongShape`, `MissingTensor`,
/// `PresetMismatch`).
///
/// `path` is either `tpla convert` output (a directory with `manifest.json`; converted with
/// `--devices 1`, so its one file holds the whole, reparameterised layer: this layer shards it
/// itself per form) or a checkpoint (`.safetensors` file or directory of them).
pub fn load_layer(
    path: &std::path::Path,
    cfg: &tpla_model::MlaConfig,
    idx: Option<usize>,
) -> tpla_model::Result<(MlaLayer, LoadedFrom)> {
    use tpla_model::convert::ConvertManifest;
    use tpla_model::tensors::Checkpoint;
    use tpla_model::ModelError;
    let manifest = path.join("manifest.json");
    let (file, idx, transform) = if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest).map_err(|e| ModelError::Io {
            path: manifest.display().to_string(),
            source: e,
        })?;
        let m: ConvertManifest = serde_json::from_str(&text)?;
        if m.devices != 1 || m.ranks.len() != 1 {
            return Err(ModelError::InvalidValue {
                name: "weights",
                detail: format!(
                    "{} holds {} per-rank shards; the layer shards a whole layer itself: convert with `--devices 1`",
                    path.display(),
                    m.ranks.len()
                ),
            });
        }
        let dims = |c: &tpla_model::MlaConfig| {
            (
                c.hidden,
                c.heads,
                c.kv_lora_rank,
                c.qk_rope,
                c.qk_nope,
                c.v_head,
                c.q_lora_rank,
            )
        };
        if dims(&m.config) != dims(cfg) {
            return Err(ModelError::PresetMismatch {
                preset: cfg.name.clone(),
                detail: format!(
                    "{} was converted for {} (hidden, heads, latent, rope, nope, v, q_lora) = {:?}, not {:?}",
                    manifest.display(),
                    m.config.name,
                    dims(&m.config),
                    dims(cfg)
                ),
            });
        }
        let idx = match idx {
            Some(i) => i,
            None => m.layers.first().map_or(0, |l| l.layer),
        };
        (
            path.join(&m.ranks[0].file),
            idx,
            Some(format!("{:?}", m.transform).to_lowercase()),
        )
    } else {
        (path.to_path_buf(), idx.unwrap_or(0), None)
    };
    let layer = MlaLayer::load(&Checkpoint::open(&file)?, cfg, idx)?;
    Ok((
        layer,
        LoadedFrom {
            path: file.display().to_string(),
            layer: idx,
            transform,
        },
    ))
}

/// The latent transform of the weights at `path`: `tpla convert`'s (from its manifest), else
/// none (a plain checkpoint).
pub fn load_transform(path: &std::path::Path) -> tpla_model::Result<tpla_model::Transform> {
    let manifest = path.join("manifest.json");
    if !manifest.is_file() {
        return Ok(tpla_model::Transform::None);
    }
    let text = std::fs::read_to_string(&manifest).map_err(|e| tpla_model::ModelError::Io {
        path: manifest.display().to_string(),
        source: e,
    })?;
    let m: tpla_model::convert::ConvertManifest = serde_json::from_str(&text)?;
    Ok(m.transform)
}

#[cfg(test)]
#[path = "weights_tests.rs"]
mod tests;
