//! MLA layer dimensions and the three presets of TPLA.md §1.
//!
//! Softmax scale: DeepSeek's modelling code takes `q_head_dim^-0.5` (192^-0.5) and, when the
//! config has YaRN `rope_scaling` with `mscale_all_dim`, multiplies by `mscale²` where
//! `mscale = 0.1 · mscale_all_dim · ln(factor) + 1` (for factor > 1).
//! - DeepSeek-V3: factor 40, mscale_all_dim 1.0 -> mscale 1.36889, scale ≈ 0.135234.
//! - Kimi-K2: same MLA code; its published config uses YaRN factor 32, mscale_all_dim 1.0 and
//!   rope_theta 50000 (taken from the public config as remembered, not re-checked here: verify
//!   against the checkpoint's `config.json`) -> scale ≈ 0.130504.
//! - DeepSeek-V2-Lite: factor 40, mscale_all_dim 0.707 -> mscale 1.26080, scale ≈ 0.114720.
//!
//! RoPE: the references apply plain RoPE (θ = rope_theta) on interleaved pairs (2j, 2j+1) of the
//! 64-d rope part, as DeepSeek checkpoints store it. The YaRN frequency ramp is not applied; it
//! changes which rotation each position gets but not the MLA-vs-TPLA comparison, because the RoPE
//! logit is computed in full by both.

use super::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// YaRN attention-temperature factor: `0.1 · mscale_all_dim · ln(factor) + 1` (1 if factor ≤ 1).
pub fn yarn_mscale(factor: f64, mscale_all_dim: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale_all_dim * factor.ln() + 1.0
    }
}

/// Named presets with the dims of TPLA.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    /// DeepSeek-V3: D 7168, 128 heads, q_lora 1536.
    #[serde(rename = "deepseek-v3")]
    DeepseekV3,
    /// Kimi-K2: D 7168, 64 heads, q_lora 1536.
    #[serde(rename = "kimi-k2")]
    KimiK2,
    /// DeepSeek-V2-Lite: D 2048, 16 heads, no q_lora.
    #[serde(rename = "deepseek-v2-lite")]
    DeepseekV2Lite,
}

impl Preset {
    /// Parse the CLI spelling (`deepseek-v3`, `kimi-k2`, `deepseek-v2-lite`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "deepseek-v3" => Ok(Preset::DeepseekV3),
            "kimi-k2" => Ok(Preset::KimiK2),
            "deepseek-v2-lite" => Ok(Preset::DeepseekV2Lite),
            other => Err(ModelError::UnknownPreset(other.to_string())),
        }
    }

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Preset::DeepseekV3 => "deepseek-v3",
            Preset::KimiK2 => "kimi-k2",
            Preset::DeepseekV2Lite => "deepseek-v2-lite",
        }
    }

    /// Full layer dimensions of the preset.
    pub fn config(self) -> MlaConfig {
        let base = MlaConfig {
            name: self.name().to_string(),
            hidden: 7168,
            heads: 128,
            q_lora_rank: Some(1536),
            kv_lora_rank: 512,
            qk_nope: 128,
            qk_rope: 64,
            v_head: 128,
            layers: 61,
            rope_theta: 10000.0,
            scale: 192f64.powf(-0.5) * yarn_mscale(40.0, 1.0).powi(2),
            rms_eps: 1e-6,
        };
        match self {
            Preset::DeepseekV3 => base,
            Preset::KimiK2 => MlaConfig {
                heads: 64,
                rope_theta: 50000.0,
                scale: 192f64.powf(-0.5) * yarn_mscale(32.0, 1.0).powi(2),
                ..base
            },
            Preset::DeepseekV2Lite => MlaConfig {
                hidden: 2048,
                heads: 16,
                q_lora_rank: None,
                layers: 27,
                scale: 192f64.powf(-0.5) * yarn_mscale(40.0, 0.707).powi(2),
                ..base
            },
        }
    }
}

/// Dimensions and constants of one MLA attention layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlaConfig {
    /// Preset name, or a free name for test shapes.
    pub name: String,
    /// Hidden size D.
    pub hidden: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Query low-rank width (`None`: a direct `q_proj`).
    pub q_lora_rank: Option<usize>,
    /// Latent width (kv_lora_rank, 512 in all presets).
    pub kv_lora_rank: usize,
    /// Per-head no-RoPE query/key width (128).
    pub qk_nope: usize,
    /// RoPE width (64), one key shared by all heads.
    pub qk_rope: usize,
    /// Per-head value width (128).
    pub v_head: usize,
    /// Layers in the full model.
    pub layers: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Softmax scale (the model's, never 1/sqrt(576)).
    pub scale: f64,
    /// RMSNorm epsilon of the latent norm.
    pub rms_eps: f64,
}

impl MlaConfig {
    /// A preset's shape with a smaller hidden size and head count, for fast tests. The latent,
    /// head and RoPE widths stay those of the preset.
    pub fn small(preset: Preset, hidden: usize, heads: usize, q_lora_rank: Option<usize>) -> Self {
        MlaConfig {
            name: format!("{}-small", preset.name()),
            hidden,
            heads,
            q_lora_rank,
            ..preset.config()
        }
    }

    /// Width of one head's query (nope + rope).
    pub fn q_head(&self) -> usize {
        self.qk_nope + self.qk_rope
    }

    /// Check the sizes are usable (non-zero, RoPE width even).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope", self.qk_nope),
            ("v_head", self.v_head),
        ] {
            if v == 0 {
                return Err(ModelError::InvalidValue {
                    name,
                    detail: "must be > 0".into(),
                });
            }
        }
        if !self.qk_rope.is_multiple_of(2) {
            return Err(ModelError::InvalidValue {
                name: "qk_rope",
                detail: format!("{} is odd", self.qk_rope),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_v3_scale_matches_tpla_md() {
        let c = Preset::DeepseekV3.config();
        assert!((c.scale - 0.1352).abs() < 1e-4, "{}", c.scale);
        assert_eq!((c.hidden, c.heads, c.q_lora_rank), (7168, 128, Some(1536)));
        let l = Preset::DeepseekV2Lite.config();
        assert_eq!((l.hidden, l.heads, l.q_lora_rank), (2048, 16, None));
        assert!((l.scale - 0.11472).abs() < 1e-4, "{}", l.scale);
        assert_eq!(Preset::KimiK2.config().heads, 64);
        assert!(Preset::parse("gpt").is_err());
    }
}
