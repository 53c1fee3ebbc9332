//! `tpla convert`: reparameterise a checkpoint (or a synthetic layer) and write per-rank shards.
//!
//! CLI (wired by the `tpla` crate): `tpla convert --preset deepseek-v3|kimi-k2|deepseek-v2-lite
//! [--checkpoint PATH] [--layers 0,1,..] --transform none|hadamard|pca --groups g --devices k
//! [--calib FILE] [--mu one|inverse-energy] [--dtype bf16|f32|f64] [--seed S] --out DIR`.
//!
//! Output: `DIR/rank{r}.safetensors` per rank r (DeepSeek tensor names with the shard's shapes:
//! `kv_a_proj_with_mqa` is `[l/g + 64, D]`, `kv_b_proj` `[H_dev·256, l/g]` with μ_i folded into
//! the UK rows, `kv_a_layernorm` the constant `1/sqrt(m_i/g)`, `q_b_proj`/`q_proj` and `o_proj`
//! restricted to the rank's heads) and `DIR/manifest.json` ([`ConvertManifest`]).
//!
//! Calibration file (`--calib`, safetensors, only with `--transform pca`): per layer
//! `model.layers.N.self_attn.calib_latents` `[n, 512]` (raw latents c = x·W_DKV) or
//! `model.layers.N.self_attn.calib_hidden` `[n, D]` (attention inputs), else one shared `latents`
//! or `hidden_states` tensor; n ≥ 512. PCA of a `--checkpoint` needs it; without `--checkpoint`
//! and without `--calib`, PCA calibrates on the synthetic calibration stream.
//!
//! The output directory is written whole ([`OutputDir`]): a non-empty DIR is refused unless
//! `force`, and then replaced, so no file of an earlier run survives; a failed run changes
//! nothing. Sizes are bounded before any allocation ([`super::limits`]).

use super::config::{MlaConfig, Preset};
use super::error::{ModelError, Result};
use super::fsio::{write_atomic, OutputDir};
use super::limits::{check_convert, check_memory, convert_memory};
use super::linalg::Mat;
use super::progress::Progress;
use super::reparam::{reparameterise, Corrections, MuConvention, Rotation, Transform};
use super::shard::{shard_all, RankInfo, ShardPlan};
use super::synthetic::{synthetic_hidden, synthetic_layer};
use super::tensors::{Checkpoint, OutDtype, TensorWriter};
use super::weights::MlaLayer;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Options of [`convert`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Preset (dims, scale).
    pub preset: Preset,
    /// Override hidden size and heads (small test shapes); `None`: the preset's.
    pub shape: Option<(usize, usize)>,
    /// Source checkpoint (file or directory); `None`: a synthetic layer (seeded).
    pub checkpoint: Option<PathBuf>,
    /// Layers to convert; `None`: every layer in the checkpoint (synthetic: layer 0).
    pub layers: Option<Vec<usize>>,
    /// Latent transform.
    pub transform: Transform,
    /// g latent groups.
    pub groups: usize,
    /// k devices.
    pub devices: usize,
    /// Calibration file for PCA.
    pub calib: Option<PathBuf>,
    /// Seed (Hadamard signs, synthetic layer and calibration).
    pub seed: u64,
    /// μ convention (default [`MuConvention::One`]).
    pub mu: MuConvention,
    /// Output dtype.
    pub dtype: OutDtype,
    /// Output directory (created; written whole, see the module docs).
    pub out_dir: PathBuf,
    /// Replace a non-empty `out_dir` (every file in it is removed).
    pub force: bool,
}

/// Per-layer record of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerManifest {
    /// Layer index.
    pub layer: usize,
    /// Energy fractions, m_i, μ_i.
    pub corrections: Corrections,
}

/// Per-rank record of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankManifest {
    /// Placement.
    pub info: RankInfo,
    /// File name within the output directory.
    pub file: String,
    /// Size of the file in bytes, as written.
    #[serde(default)]
    pub bytes: u64,
}

/// `manifest.json` of a converted checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConvertManifest {
    /// Preset name.
    pub preset: Preset,
    /// Full-layer dims.
    pub config: MlaConfig,
    /// Transform.
    pub transform: Transform,
    /// Seed.
    pub seed: u64,
    /// g.
    pub groups: usize,
    /// k.
    pub devices: usize,
    /// μ convention.
    pub mu_convention: MuConvention,
    /// Stored dtype.
    pub dtype: OutDtype,
    /// Source ("synthetic" or the checkpoint path).
    pub source: String,
    /// Calibration source, if any.
    pub calib: Option<String>,
    /// Per layer corrections.
    pub layers: Vec<LayerManifest>,
    /// Per rank files.
    pub ranks: Vec<RankManifest>,
}

fn layer_indices(ck: &Checkpoint) -> Vec<usize> {
    let mut v: Vec<usize> = ck
        .names()
        .iter()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .strip_suffix(".self_attn.kv_b_proj.weight")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Calibration latents `[n, l]` of one layer from a calibration file.
pub fn calib_latents(ck: &Checkpoint, path: &str, layer: &MlaLayer, idx: usize) -> Result<Mat> {
    let (d, l) = (layer.cfg.hidden, layer.cfg.kv_lora_rank);
    let p = MlaLayer::prefix(idx);
    let pick = |name: String, width: usize| -> Result<Option<Mat>> {
        if !ck.contains(&name) {
            return Ok(None);
        }
        let s = ck.shape(&name)?;
        if s.len() != 2 || s[1] != width {
            return Err(ModelError::WrongShape {
                name,
                expected: vec![s.first().copied().unwrap_or(0), width],
                got: s,
            });
        }
        Ok(Some(Mat {
            rows: s[0],
            cols: width,
            data: ck.read(&name, &s)?,
        }))
    };
    if let Some(m) = pick(format!("{p}calib_latents"), l)? {
        return Ok(m);
    }
    if let Some(x) = pick(format!("{p}calib_hidden"), d)? {
        return Ok(x.matmul(&layer.w_dkv));
    }
    if let Some(m) = pick("latents".into(), l)? {
        return Ok(m);
    }
    if let Some(x) = pick("hidden_states".into(), d)? {
        return Ok(x.matmul(&layer.w_dkv));
    }
    Err(ModelError::MissingTensor {
        name: format!("{p}calib_latents (or calib_hidden, latents, hidden_states) in {path}"),
    })
}

/// Convert: reparameterise every selected layer, shard for (g, k), write rank files and the
/// manifest. Returns the manifest.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertManifest> {
    convert_with(opts, &())
}

/// [`convert`], reporting progress (three units per layer, then one per rank file).
pub fn convert_with(opts: &ConvertOptions, progress: &dyn Progress) -> Result<ConvertManifest> {
    let cfg = match opts.shape {
        Some((d, h)) => MlaConfig::small(
            opts.preset,
            d,
            h,
            opts.preset.config().q_lora_rank.map(|q| q.min(d)),
        ),
        None => opts.preset.config(),
    };
    check_convert(opts, &cfg)?;
    let plan = ShardPlan::new(&cfg, opts.groups, opts.devices)?;
    let out = OutputDir::prepare(&opts.out_dir, opts.force)?;
    let ck = match &opts.checkpoint {
        Some(p) => Some(Checkpoint::open(p)?),
        None => None,
    };
    let calib_ck = match &opts.calib {
        Some(p) => Some(Checkpoint::open(p)?),
        None => None,
    };
    let calib_name = opts.calib.as_ref().map(|p| p.display().to_string());
    let mut layers = match (&opts.layers, &ck) {
        (Some(v), _) => v.clone(),
        (None, Some(c)) => layer_indices(c),
        (None, None) => vec![0],
    };
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Err(ModelError::PresetMismatch {
            preset: cfg.name.clone(),
            detail: "no `model.layers.N.self_attn.kv_b_proj.weight` in the checkpoint".into(),
        });
    }
    check_memory(
        &format!(
            "converting {} layer(s) of {} for {} devices",
            layers.len(),
            cfg.name,
            opts.devices
        ),
        convert_memory(&cfg, &plan, layers.len()),
        "convert fewer --layers per run, or lower --devices",
    )?;
    let mut writers: Vec<TensorWriter> =
        (0..opts.devices).map(|_| TensorWriter::default()).collect();
    let mut lm = Vec::new();
    // Three units per layer: loaded (or generated), rotation built, reparameterised and sharded.
    progress.start("reparameterising layers", 3 * layers.len() as u64);
    for &idx in &layers {
        let layer = match &ck {
            Some(c) => MlaLayer::load(c, &cfg, idx)?,
            None => synthetic_layer(&cfg, opts.seed.wrapping_add(idx as u64))?,
        };
        let calib = if opts.transform == Transform::Pca {
            Some(match (&calib_ck, &ck) {
                (Some(c), _) => calib_latents(c, calib_name.as_deref().unwrap_or(""), &layer, idx)?,
                (None, None) => synthetic_hidden(
                    cfg.hidden,
                    4 * cfg.kv_lora_rank,
                    opts.seed,
                    opts.seed.wrapping_mul(7919).wrapping_add(2),
                )
                .matmul(&layer.w_dkv),
                (None, Some(_)) => return Err(ModelError::MissingCalibration),
            })
        } else {
            None
        };
        let src = calib_name
            .clone()
            .unwrap_or_else(|| "synthetic calibration stream".into());
        progress.inc(1);
        let rot = Rotation::build(
            opts.transform,
            cfg.kv_lora_rank,
            opts.seed,
            calib.as_ref().map(|m| (m, src.as_str())),
        )?;
        progress.inc(1);
        let corr = rot.corrections(opts.groups, opts.mu)?;
        let lr = reparameterise(&layer, &rot.u);
        for (w, sh) in writers.iter_mut().zip(shard_all(&lr, &corr, &plan)?) {
            sh.layer.store(w, idx);
        }
        lm.push(LayerManifest {
            layer: idx,
            corrections: corr,
        });
        progress.inc(1);
    }
    progress.finish();
    progress.start("writing rank files", opts.devices as u64);
    let mut ranks = Vec::new();
    for (r, w) in writers.iter().enumerate() {
        let file = format!("rank{r}.safetensors");
        let info = plan.rank(r);
        let mut meta = std::collections::HashMap::new();
        meta.insert("tpla.rank".to_string(), r.to_string());
        meta.insert("tpla.group".to_string(), info.group.to_string());
        meta.insert(
            "tpla.transform".to_string(),
            opts.transform.name().to_string(),
        );
        let path = out.staged(&file);
        w.write(&path, opts.dtype, Some(meta))?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| ModelError::io(&path, e))?
            .len();
        ranks.push(RankManifest { info, file, bytes });
        progress.inc(1);
    }
    progress.finish();
    let manifest = ConvertManifest {
        preset: opts.preset,
        config: cfg,
        transform: opts.transform,
        seed: opts.seed,
        groups: opts.groups,
        devices: opts.devices,
        mu_convention: opts.mu,
        dtype: opts.dtype,
        source: opts
            .checkpoint
            .as_ref()
            .map_or("synthetic".into(), |p| p.display().to_string()),
        calib: calib_name,
        layers: lm,
        ranks,
    };
    write_atomic(
        &out.staged("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    out.commit()?;
    Ok(manifest)
}

/// Load rank r's layer `idx` written by [`convert`] (dims from the manifest).
pub fn load_rank_layer(
    dir: &std::path::Path,
    manifest: &ConvertManifest,
    rank: usize,
    idx: usize,
) -> Result<MlaLayer> {
    let rm = manifest.ranks.get(rank).ok_or(ModelError::InvalidValue {
        name: "rank",
        detail: format!("{rank} >= k = {}", manifest.devices),
    })?;
    let info = rm.info;
    let cfg = MlaConfig {
        name: format!("{}-rank{}", manifest.config.name, rank),
        heads: info.head_range.1 - info.head_range.0,
        kv_lora_rank: info.latent_range.1 - info.latent_range.0,
        ..manifest.config.clone()
    };
    MlaLayer::load(&Checkpoint::open(dir.join(&rm.file))?, &cfg, idx)
}
