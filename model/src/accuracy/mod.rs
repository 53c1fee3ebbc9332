//! The fidelity harness behind `tpla accuracy` (issue 3 point 6).
//!
//! One layer (loaded, or synthetic: [`super::synthetic`]) and one token stream of P + N synthetic
//! hidden states; a separate calibration stream (other seed) fits PCA. For every variant
//! transform {none, hadamard, pca} × g × slicing {exact, norm only, softmax only, both} × μ
//! convention × mode {pd sep: P prefill tokens then N decoded; all decoded}, the layer output y of
//! each evaluated decode step is compared with exact MLA on the *unrotated* layer (an independent
//! code path): relative error `|y - y_mla| / |y_mla|` and cosine. Summaries are taken over the
//! common query window (steps ≥ P) so both modes answer the same queries; the error-vs-decoded
//! curve of "all decoded" also covers the first P steps. All variants share the layer, the seeds
//! and the tokens.
//!
//! Slicing: `exact` = exact RMS (scalar all-reduce) + global softmax (must be 0 to rounding);
//! `norm-only` = corrected local RMSNorm + global softmax; `softmax-only` = exact RMS + local
//! softmax (μ applies); `both` = TPLA as in the paper.
//!
//! Measured (2026-11-26, seed 0, `bench/results/accuracy-2026-11-26.json`; synthetic
//! DeepSeek-V2-Lite-shaped layer; P = 512, N = 1024, stride 16; μ = 1; mean rel. error of y over
//! the 1024 query steps; pd sep / all decoded):
//!
//! | transform | g | norm only | softmax only | both |
//! |---|---|---|---|---|
//! | none | 2 | 9.2e-2 / 1.5e-1 | 6.6e-1 | 6.6e-1 / 6.6e-1 |
//! | none | 8 | 2.8e-1 / 4.8e-1 | 8.1e-1 | 8.1e-1 / 8.5e-1 |
//! | hadamard | 2 | 1.8e-2 / 2.9e-2 | 6.7e-1 | 6.7e-1 / 6.7e-1 |
//! | hadamard | 8 | 5.4e-2 / 9.1e-2 | 9.2e-1 | 9.2e-1 / 9.2e-1 |
//! | pca | 2 | 4.1e-3 / 7.1e-3 | 1.9e-2 | 1.9e-2 / 1.9e-2 |
//! | pca | 4 | 5.9e-3 / 9.8e-3 | 2.9e-2 | 2.9e-2 / 2.9e-2 |
//! | pca | 8 | 7.4e-3 / 1.3e-2 | 3.8e-2 | 3.8e-2 / 3.8e-2 |
//!
//! Cache formats ([`KvCache`], `--kv-caches`): exact MLA and TPLA (`both`) are also evaluated
//! with the cache read back as bf16 and as FP8 (`codegen::kv_format`); 2026-12-04, stride 16,
//! `bench/results/accuracy-2026-12-04-kv.*`: FP8 alone 1.7-1.9e-2, bf16 1.3-1.7e-3; PCA g = 2
//! TPLA 1.9e-2, with FP8 2.6e-2 (the two add in quadrature).
//!
//! Exact options: ≤ 7e-15 everywhere. Caveat: the synthetic latent is strongly low-rank (the top
//! 64 PCA components hold 99.8 % of the calibration energy), which favours PCA; the sliced softmax,
//! not the sliced norm, dominates the error; pd sep only helps the norm part.
//!
//! CLI (wired by the `tpla` crate): `tpla accuracy [--preset deepseek-v2-lite] [--checkpoint PATH
//! --layer N] [--seed S] [--prefill P] [--decode N] [--calib-tokens C] [--stride S]
//! [--transforms none,hadamard,pca] [--groups 2,4,8] [--json FILE] [--png FILE]`.

use super::config::{MlaConfig, Preset};
mod head;

use super::error::Result;
use super::kv_cache::KvCache;
use super::layer_ref::{mla_decode, mla_entry};
use super::limits::check_accuracy;
use super::linalg::{cosine, dot, rel_err, Mat};
use super::progress::Progress;
use super::reparam::{reparameterise, Corrections, MuConvention, Rotation, Transform};
use super::report::decide_mu;
use super::synthetic::{synthetic_hidden, synthetic_layer};
use super::tensors::Checkpoint;
use super::weights::{MlaLayer, TokenProj};
use head::{variant_head, HeadQuery, StoredRows};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Finest latent split the harness evaluates (g must divide it).
pub(crate) const FINE: usize = 8;

/// Which approximations are active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Slicing {
    /// Exact RMS (all-reduce) + global softmax: exact MLA.
    Exact,
    /// Corrected local RMSNorm, global softmax.
    NormOnly,
    /// Exact RMS, local softmax.
    SoftmaxOnly,
    /// Both (TPLA).
    Both,
}

impl Slicing {
    fn local_norm(self) -> bool {
        matches!(self, Slicing::NormOnly | Slicing::Both)
    }
    fn local_softmax(self) -> bool {
        matches!(self, Slicing::SoftmaxOnly | Slicing::Both)
    }
    /// Spelling in tables.
    pub fn name(self) -> &'static str {
        match self {
            Slicing::Exact => "exact",
            Slicing::NormOnly => "norm-only",
            Slicing::SoftmaxOnly => "softmax-only",
            Slicing::Both => "both",
        }
    }
}

/// Where cache entries come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// P tokens written by exact prefill, then N decoded.
    PdSep,
    /// Every token written by decode.
    AllDecoded,
}

impl Mode {
    /// Spelling in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::PdSep => "pd-sep",
            Mode::AllDecoded => "all-decoded",
        }
    }
}

/// Options of the harness.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyOptions {
    /// Preset (dims and scale).
    pub preset: Preset,
    /// Override the preset's hidden size and heads (small shapes for tests); `None`: full preset.
    pub shape: Option<(usize, usize)>,
    /// Load the layer from this checkpoint (file or directory) instead of generating it.
    pub checkpoint: Option<PathBuf>,
    /// Layer index in the checkpoint.
    pub layer: usize,
    /// Seed of the synthetic layer, the Hadamard signs and the evaluation stream.
    pub seed: u64,
    /// P: prefill tokens of the pd-sep mode.
    pub prefill_tokens: usize,
    /// N: decoded tokens after the prefill.
    pub decode_tokens: usize,
    /// Calibration tokens (separate stream) for PCA; must be ≥ the latent width.
    pub calib_tokens: usize,
    /// Evaluate every `stride`-th decode step.
    pub stride: usize,
    /// Transforms to evaluate.
    pub transforms: Vec<Transform>,
    /// Group counts to evaluate (each must divide 8 and the latent).
    pub groups: Vec<usize>,
    /// μ conventions to evaluate.
    pub mu: Vec<MuConvention>,
    /// Cache formats evaluated beside f64 for exact MLA (`exact` slicing) and TPLA (`both`):
    /// [`KvCache::Bf16`] and [`KvCache::Fp8`] by default. FP8 rows exist only where a shard's
    /// width is a whole number of 128-column scale groups.
    #[serde(default = "default_kv_caches")]
    pub kv_caches: Vec<KvCache>,
}

fn default_kv_caches() -> Vec<KvCache> {
    vec![KvCache::Bf16, KvCache::Fp8]
}

impl Default for AccuracyOptions {
    fn default() -> Self {
        AccuracyOptions {
            preset: Preset::DeepseekV2Lite,
            shape: None,
            checkpoint: None,
            layer: 0,
            seed: 0,
            prefill_tokens: 512,
            decode_tokens: 1024,
            calib_tokens: 4096,
            stride: 16,
            transforms: vec![Transform::None, Transform::Hadamard, Transform::Pca],
            groups: vec![2, 4, 8],
            mu: vec![MuConvention::InverseEnergy, MuConvention::One],
            kv_caches: default_kv_caches(),
        }
    }
}

/// One variant's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyRow {
    /// Transform.
    pub transform: Transform,
    /// g.
    pub groups: usize,
    /// Slicing.
    pub slicing: Slicing,
    /// Mode.
    pub mode: Mode,
    /// μ convention (only where the softmax is sliced).
    pub mu: Option<MuConvention>,
    /// How the cache stores the latent and RoPE key.
    #[serde(default)]
    pub kv_cache: KvCache,
    /// Mean relative error of y against the same variant on the bf16 cache (FP8 rows only).
    #[serde(default)]
    pub rel_err_vs_bf16_mean: Option<f64>,
    /// Mean relative error of y over steps ≥ P.
    pub rel_err_mean: f64,
    /// Max relative error over steps ≥ P.
    pub rel_err_max: f64,
    /// Mean relative error over the last quarter of the steps.
    pub rel_err_last: f64,
    /// Mean cosine over steps ≥ P.
    pub cosine_mean: f64,
    /// Min cosine over steps ≥ P.
    pub cosine_min: f64,
    /// (tokens decoded, relative error) per evaluated step.
    pub curve: Vec<(usize, f64)>,
}

/// Which μ convention the data favours.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MuDecision {
    /// The convention with lower error in more paired comparisons.
    pub favoured: MuConvention,
    /// Paired comparisons (same transform, g, slicing, mode) won by μ = 1/e.
    pub wins_inverse_energy: usize,
    /// Won by μ = 1.
    pub wins_one: usize,
    /// Geometric mean of err(1/e) / err(1) over the pairs.
    pub geo_mean_ratio: f64,
}

/// Energy fractions per transform and g (from the calibration set, in the rotated basis).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnergyRow {
    /// Transform.
    pub transform: Transform,
    /// g.
    pub groups: usize,
    /// Measured e_i of the calibration latents.
    pub measured: Vec<f64>,
    /// e_i the corrections use.
    pub used: Vec<f64>,
}

/// The harness output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// Options used.
    pub options: AccuracyOptions,
    /// Layer dims.
    pub config: MlaConfig,
    /// "synthetic" or the checkpoint path.
    pub layer_source: String,
    /// Per variant.
    pub rows: Vec<AccuracyRow>,
    /// Energy fractions.
    pub energy: Vec<EnergyRow>,
    /// μ decision (None when fewer than two conventions were evaluated).
    pub mu_decision: Option<MuDecision>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

struct Variant {
    t: usize,
    groups: usize,
    slicing: Slicing,
    mode: Mode,
    mu_conv: Option<MuConvention>,
    corr: Corrections,
    kv: KvCache,
}

struct Prepared {
    layer: MlaLayer,
    c: Vec<Vec<f64>>,
    fine_ss: Vec<[f64; FINE]>,
    inv_rms: Vec<f64>,
}

/// The layer and token streams the harness uses (exposed so tests can rebuild them).
pub struct HarnessInputs {
    /// The original (unrotated) layer.
    pub layer: MlaLayer,
    /// "synthetic" or the checkpoint path.
    pub source: String,
    /// Evaluation hidden states `[P + N, D]`.
    pub xs: Mat,
    /// Calibration latents `c = x·W_DKV` `[calib_tokens, l]` of a separate stream.
    pub calib: Mat,
}

/// Build the harness inputs for `opts` with dims `cfg`: the layer (loaded or `synthetic_layer(cfg,
/// seed)`), the evaluation stream (stream seed `seed·7919 + 1`) and the calibration stream
/// (`seed·7919 + 2`). Hidden states are synthetic even for a loaded layer (no activations ship).
pub fn harness_inputs(opts: &AccuracyOptions, cfg: &MlaConfig) -> Result<HarnessInputs> {
    let (layer, source) = match &opts.checkpoint {
        Some(p) => (
            MlaLayer::load(&Checkpoint::open(p)?, cfg, opts.layer)?,
            p.display().to_string(),
        ),
        None => (synthetic_layer(cfg, opts.seed)?, "synthetic".to_string()),
    };
    let total = opts.prefill_tokens + opts.decode_tokens;
    let xs = synthetic_hidden(
        cfg.hidden,
        total,
        opts.seed,
        opts.seed.wrapping_mul(7919).wrapping_add(1),
    );
    let calib_x = synthetic_hidden(
        cfg.hidden,
        opts.calib_tokens,
        opts.seed,
        opts.seed.wrapping_mul(7919).wrapping_add(2),
    );
    let calib = calib_x.matmul(&layer.w_dkv);
    Ok(HarnessInputs {
        layer,
        source,
        xs,
        calib,
    })
}

/// Dims the harness uses for `opts` (the preset, or its small shape).
pub fn harness_config(opts: &AccuracyOptions) -> MlaConfig {
    let cfg = opts.preset.config();
    match opts.shape {
        Some((d, h)) => MlaConfig::small(opts.preset, d, h, cfg.q_lora_rank.map(|q| q.min(d))),
        None => cfg,
    }
}

/// Run the harness.
pub fn run_accuracy(opts: &AccuracyOptions) -> Result<AccuracyReport> {
    run_accuracy_with(opts, &())
}

/// [`run_accuracy`], reporting progress (one unit per evaluated step).
pub fn run_accuracy_with(
    opts: &AccuracyOptions,
    progress: &dyn Progress,
) -> Result<AccuracyReport> {
    let start = std::time::Instant::now();
    let cfg = harness_config(opts);
    let l = cfg.kv_lora_rank;
    check_accuracy(opts, &cfg)?;
    let HarnessInputs {
        layer,
        source,
        xs,
        calib,
    } = harness_inputs(opts, &cfg)?;
    let total = opts.prefill_tokens + opts.decode_tokens;

    let proj: Vec<TokenProj> = (0..total)
        .into_par_iter()
        .map(|t| layer.project(xs.row(t), t))
        .collect();
    let exact_cache: Vec<Vec<f64>> = proj.iter().map(|p| mla_entry(&layer, p)).collect();

    // Per transform: reparameterised layer and rotated latents.
    let mut prepared = Vec::new();
    let mut variants = Vec::new();
    let mut energy = Vec::new();
    for (ti, &tr) in opts.transforms.iter().enumerate() {
        let rot = Rotation::build(tr, l, opts.seed, Some((&calib, "calibration stream")))?;
        let lr = reparameterise(&layer, &rot.u);
        let c_raw = Mat {
            rows: total,
            cols: l,
            data: proj.iter().flat_map(|p| p.c.iter().cloned()).collect(),
        };
        let c_rot = c_raw.matmul(&rot.u);
        let c: Vec<Vec<f64>> = (0..total).map(|t| c_rot.row(t).to_vec()).collect();
        let fw = l / FINE;
        let fine_ss = c
            .iter()
            .map(|ct| {
                std::array::from_fn(|j| dot(&ct[j * fw..(j + 1) * fw], &ct[j * fw..(j + 1) * fw]))
            })
            .collect();
        let inv_rms = c
            .iter()
            .map(|ct| 1.0 / super::linalg::rms(ct, cfg.rms_eps))
            .collect();
        let rc = calib.matmul(&rot.u);
        let diag: Vec<f64> = (0..l)
            .map(|j| (0..rc.rows).map(|r| rc.at(r, j).powi(2)).sum())
            .collect();
        for &g in &opts.groups {
            let used = rot.corrections(g, MuConvention::One)?.energy;
            energy.push(EnergyRow {
                transform: tr,
                groups: g,
                measured: super::pca::energy_fractions(&diag, g)?,
                used,
            });
            for mode in [Mode::PdSep, Mode::AllDecoded] {
                for slicing in [
                    Slicing::Exact,
                    Slicing::NormOnly,
                    Slicing::SoftmaxOnly,
                    Slicing::Both,
                ] {
                    let convs: Vec<Option<MuConvention>> = if slicing.local_softmax() {
                        opts.mu.iter().map(|&m| Some(m)).collect()
                    } else {
                        vec![None]
                    };
                    // Cache formats: f64 everywhere; the quantised ones for MLA and TPLA.
                    let mut kvs = vec![KvCache::F64];
                    if matches!(slicing, Slicing::Exact | Slicing::Both) {
                        for &k in &opts.kv_caches {
                            if !kvs.contains(&k) && k.holds_width(l / g) {
                                kvs.push(k);
                            }
                        }
                    }
                    for mu_conv in convs {
                        let corr = rot.corrections(g, mu_conv.unwrap_or(MuConvention::One))?;
                        for &kv in &kvs {
                            variants.push(Variant {
                                t: ti,
                                groups: g,
                                slicing,
                                mode,
                                mu_conv,
                                corr: corr.clone(),
                                kv,
                            });
                        }
                    }
                }
            }
        }
        prepared.push(Prepared {
            layer: lr,
            c,
            fine_ss,
            inv_rms,
        });
    }

    // The bf16-cache variant each FP8 variant is also compared with.
    let bf16_sibling: Vec<Option<usize>> = variants
        .iter()
        .map(|v| {
            (v.kv == KvCache::Fp8).then(|| {
                variants.iter().position(|b| {
                    b.kv == KvCache::Bf16
                        && (b.t, b.groups, b.slicing, b.mode, b.mu_conv)
                            == (v.t, v.groups, v.slicing, v.mode, v.mu_conv)
                })
            })?
        })
        .collect();
    let steps: Vec<usize> = (0..total).filter(|n| (n + 1) % opts.stride == 0).collect();
    let p_tok = opts.prefill_tokens;
    progress.start("evaluating decode steps", steps.len() as u64);
    // For each step: (rel, cos, rel vs the bf16 cache) per variant (NaN where a pd-sep variant
    // has no decoded token yet, or where there is no bf16 sibling).
    let results: Vec<Vec<(f64, f64, f64)>> = steps
        .par_iter()
        .map(|&n| {
            let q = &proj[n];
            let y_ref = mla_decode(&layer, q, &exact_cache[..=n]);
            let mut vcats: Vec<Vec<f64>> =
                vec![Vec::with_capacity(cfg.heads * cfg.v_head); variants.len()];
            for (ti, pr) in prepared.iter().enumerate() {
                let queries: Vec<HeadQuery> = (0..cfg.heads)
                    .map(|h| HeadQuery::new(&cfg, pr, q, &proj, n, h))
                    .collect();
                for (vi, v) in variants.iter().enumerate().filter(|(_, v)| v.t == ti) {
                    if v.mode == Mode::PdSep && n < p_tok {
                        continue;
                    }
                    let stored = StoredRows::new(&cfg, pr, v, &proj, n, p_tok);
                    for (h, query) in queries.iter().enumerate() {
                        vcats[vi].extend(variant_head(&cfg, pr, v, &stored, query, h));
                    }
                }
            }
            let ys: Vec<Option<Vec<f64>>> = variants
                .iter()
                .enumerate()
                .map(|(vi, v)| {
                    let skipped = v.mode == Mode::PdSep && n < p_tok;
                    (!skipped).then(|| prepared[v.t].layer.w_o.vecmat(&vcats[vi]))
                })
                .collect();
            let r = ys
                .iter()
                .enumerate()
                .map(|(vi, y)| match y {
                    None => (f64::NAN, f64::NAN, f64::NAN),
                    Some(y) => {
                        let vs_bf16 = bf16_sibling[vi]
                            .and_then(|b| ys[b].as_ref())
                            .map_or(f64::NAN, |yb| rel_err(y, yb));
                        (rel_err(y, &y_ref), cosine(y, &y_ref), vs_bf16)
                    }
                })
                .collect();
            progress.inc(1);
            r
        })
        .collect();
    progress.finish();

    let mut rows = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        let mut curve = Vec::new();
        let (mut rs, mut cs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
        for (si, &n) in steps.iter().enumerate() {
            let (r, c, b) = results[si][vi];
            if r.is_nan() {
                continue;
            }
            let decoded = match v.mode {
                Mode::PdSep => n + 1 - p_tok,
                Mode::AllDecoded => n + 1,
            };
            curve.push((decoded, r));
            if n >= p_tok {
                rs.push(r);
                cs.push(c);
                if !b.is_nan() {
                    bs.push(b);
                }
            }
        }
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
        let last = &rs[rs.len() - (rs.len() / 4).max(1).min(rs.len())..];
        rows.push(AccuracyRow {
            transform: opts.transforms[v.t],
            groups: v.groups,
            slicing: v.slicing,
            mode: v.mode,
            mu: v.mu_conv,
            kv_cache: v.kv,
            rel_err_vs_bf16_mean: (!bs.is_empty()).then(|| mean(&bs)),
            rel_err_mean: mean(&rs),
            rel_err_max: rs.iter().cloned().fold(0.0, f64::max),
            rel_err_last: mean(last),
            cosine_mean: mean(&cs),
            cosine_min: cs.iter().cloned().fold(1.0, f64::min),
            curve,
        });
    }
    let mu_decision = decide_mu(&rows);
    Ok(AccuracyReport {
        options: opts.clone(),
        config: cfg,
        layer_source: source,
        rows,
        energy,
        mu_decision,
        seconds: start.elapsed().as_secs_f64(),
    })
}
