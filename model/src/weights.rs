//! One MLA attention layer in f64: struct, per-token projections, safetensors load/save by
//! DeepSeek tensor names (`model.layers.N.self_attn.*`).

use super::config::MlaConfig;
use super::error::{ModelError, Result};
use super::linalg::{rms, rope_in_place, Mat};
use super::tensors::{Checkpoint, TensorWriter};

/// The query path of a layer.
#[derive(Clone, Debug)]
pub enum QPath {
    /// `q_a_proj` (D -> q_lora), `q_a_layernorm` γ, `q_b_proj` (q_lora -> H·192).
    Lora {
        /// `[D, q_lora]`.
        w_dq: Mat,
        /// `[q_lora]`.
        q_norm: Vec<f64>,
        /// `[q_lora, H·192]`.
        w_uq: Mat,
    },
    /// `q_proj` (D -> H·192).
    Direct {
        /// `[D, H·192]`.
        w_q: Mat,
    },
}

/// One MLA attention layer, every projection as `[in, out]` (x · W).
#[derive(Clone, Debug)]
pub struct MlaLayer {
    /// Dimensions.
    pub cfg: MlaConfig,
    /// Query path; per head h the output columns `[h·192, h·192+128)` are q_nope, the next 64 q_pe.
    pub q: QPath,
    /// Latent down-projection `[D, 512]` (first 512 outputs of `kv_a_proj_with_mqa`).
    pub w_dkv: Mat,
    /// RoPE key projection `[D, 64]` (last 64 outputs of `kv_a_proj_with_mqa`).
    pub w_kr: Mat,
    /// Latent RMSNorm γ `[512]` (`kv_a_layernorm`); all ones once folded.
    pub kv_norm: Vec<f64>,
    /// Per head `[512, 128]`: latent rows of W_UK (k_nope_h = ĉ · W_UK\[h\]).
    pub w_uk: Vec<Mat>,
    /// Per head `[512, 128]`: latent rows of W_UV (v_h = o_h · W_UV\[h\]).
    pub w_uv: Vec<Mat>,
    /// Output projection `[H·128, D]`.
    pub w_o: Mat,
}

/// Per-token quantities of one layer.
#[derive(Clone, Debug)]
pub struct TokenProj {
    /// Raw latent c = x · W_DKV (512, before RMSNorm).
    pub c: Vec<f64>,
    /// RoPE'd shared key (64).
    pub k_pe: Vec<f64>,
    /// Per head q_nope (128).
    pub q_nope: Vec<Vec<f64>>,
    /// Per head RoPE'd q_pe (64).
    pub q_pe: Vec<Vec<f64>>,
}

impl MlaLayer {
    /// Project one token (hidden x of length D, at position `pos`).
    pub fn project(&self, x: &[f64], pos: usize) -> TokenProj {
        let cfg = &self.cfg;
        let c = self.w_dkv.vecmat(x);
        let mut k_pe = self.w_kr.vecmat(x);
        rope_in_place(&mut k_pe, pos, cfg.rope_theta);
        let q = match &self.q {
            QPath::Lora { w_dq, q_norm, w_uq } => {
                let a = w_dq.vecmat(x);
                let r = rms(&a, cfg.rms_eps);
                let a: Vec<f64> = a.iter().zip(q_norm).map(|(v, g)| g * v / r).collect();
                w_uq.vecmat(&a)
            }
            QPath::Direct { w_q } => w_q.vecmat(x),
        };
        let qh = cfg.q_head();
        let mut q_nope = Vec::with_capacity(cfg.heads);
        let mut q_pe = Vec::with_capacity(cfg.heads);
        for h in 0..cfg.heads {
            let s = &q[h * qh..(h + 1) * qh];
            q_nope.push(s[..cfg.qk_nope].to_vec());
            let mut p = s[cfg.qk_nope..].to_vec();
            rope_in_place(&mut p, pos, cfg.rope_theta);
            q_pe.push(p);
        }
        TokenProj {
            c,
            k_pe,
            q_nope,
            q_pe,
        }
    }

    /// Absorbed query of head h: `Q_h = W_UK[h] · q_nope_h` (512).
    pub fn absorb_query(&self, h: usize, q_nope: &[f64]) -> Vec<f64> {
        let w = &self.w_uk[h];
        (0..w.rows)
            .map(|r| super::linalg::dot(w.row(r), q_nope))
            .collect()
    }

    /// Tensor-name prefix of layer `idx`.
    pub fn prefix(idx: usize) -> String {
        format!("model.layers.{idx}.self_attn.")
    }

    /// Load layer `idx` of a DeepSeek-layout checkpoint for the dims `cfg`.
    ///
    /// Errors: [`ModelError::MissingTensor`], [`ModelError::WrongShape`] (naming the tensor),
    /// [`ModelError::PresetMismatch`] when the query path differs from the preset (q_lora vs none),
    /// [`ModelError::UnsupportedDtype`] for dtypes other than bf16/f16/f32/f64 (e.g. fp8).
    pub fn load(ck: &Checkpoint, cfg: &MlaConfig, idx: usize) -> Result<Self> {
        cfg.validate()?;
        let p = Self::prefix(idx);
        let (d, h, l, r) = (cfg.hidden, cfg.heads, cfg.kv_lora_rank, cfg.qk_rope);
        let (nope, v, qh) = (cfg.qk_nope, cfg.v_head, cfg.q_head());
        let has_lora = ck.contains(&format!("{p}q_a_proj.weight"));
        let has_direct = ck.contains(&format!("{p}q_proj.weight"));
        let q = match cfg.q_lora_rank {
            Some(ql) => {
                if !has_lora && has_direct {
                    return Err(ModelError::PresetMismatch {
                        preset: cfg.name.clone(),
                        detail: format!("file has `{p}q_proj.weight` but the preset uses q_lora (q_a_proj/q_b_proj)"),
                    });
                }
                QPath::Lora {
                    w_dq: ck.read_linear(&format!("{p}q_a_proj.weight"), ql, d)?,
                    q_norm: ck.read(&format!("{p}q_a_layernorm.weight"), &[ql])?,
                    w_uq: ck.read_linear(&format!("{p}q_b_proj.weight"), h * qh, ql)?,
                }
            }
            None => {
                if has_lora && !has_direct {
                    return Err(ModelError::PresetMismatch {
                        preset: cfg.name.clone(),
                        detail: format!("file has `{p}q_a_proj.weight` but the preset has no q_lora (expects q_proj)"),
                    });
                }
                QPath::Direct {
                    w_q: ck.read_linear(&format!("{p}q_proj.weight"), h * qh, d)?,
                }
            }
        };
        let kva = ck.read_linear(&format!("{p}kv_a_proj_with_mqa.weight"), l + r, d)?;
        let kv_norm = ck.read(&format!("{p}kv_a_layernorm.weight"), &[l])?;
        // kv_b_proj: torch [H·(128+128), 512]; per head first 128 rows UK, last 128 UV.
        let kvb = ck.read(&format!("{p}kv_b_proj.weight"), &[h * (nope + v), l])?;
        let kvb = Mat {
            rows: h * (nope + v),
            cols: l,
            data: kvb,
        };
        let mut w_uk = Vec::with_capacity(h);
        let mut w_uv = Vec::with_capacity(h);
        for hh in 0..h {
            let base = hh * (nope + v);
            w_uk.push(kvb.rows_range(base, base + nope).t());
            w_uv.push(kvb.rows_range(base + nope, base + nope + v).t());
        }
        let w_o = ck.read_linear(&format!("{p}o_proj.weight"), d, h * v)?;
        Ok(MlaLayer {
            cfg: cfg.clone(),
            q,
            w_dkv: kva.cols_range(0, l),
            w_kr: kva.cols_range(l, l + r),
            kv_norm,
            w_uk,
            w_uv,
            w_o,
        })
    }

    /// Add this layer's tensors under `model.layers.{idx}.self_attn.` in DeepSeek layout.
    pub fn store(&self, w: &mut TensorWriter, idx: usize) {
        let p = Self::prefix(idx);
        match &self.q {
            QPath::Lora { w_dq, q_norm, w_uq } => {
                w.put_linear(format!("{p}q_a_proj.weight"), w_dq);
                w.put(
                    format!("{p}q_a_layernorm.weight"),
                    vec![q_norm.len()],
                    q_norm.clone(),
                );
                w.put_linear(format!("{p}q_b_proj.weight"), w_uq);
            }
            QPath::Direct { w_q } => w.put_linear(format!("{p}q_proj.weight"), w_q),
        }
        w.put_linear(
            format!("{p}kv_a_proj_with_mqa.weight"),
            &Mat::hcat(&[self.w_dkv.clone(), self.w_kr.clone()]),
        );
        w.put(
            format!("{p}kv_a_layernorm.weight"),
            vec![self.kv_norm.len()],
            self.kv_norm.clone(),
        );
        let mut rows = Vec::new();
        for (uk, uv) in self.w_uk.iter().zip(&self.w_uv) {
            rows.push(uk.t());
            rows.push(uv.t());
        }
        let kvb = Mat::vcat(&rows);
        w.put(
            format!("{p}kv_b_proj.weight"),
            vec![kvb.rows, kvb.cols],
            kvb.data,
        );
        w.put_linear(format!("{p}o_proj.weight"), &self.w_o);
    }
}
