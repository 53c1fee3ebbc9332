//! Sharding a reparameterised layer over k devices in g latent groups (TPLA.md §2).
//!
//! Rank r belongs to group `i = r / (k/g)` and head shard `j = r % (k/g)`: it holds latent columns
//! `[i·l/g, (i+1)·l/g)` and heads `[j·H/(k/g), (j+1)·H/(k/g))`. Its weights form an ordinary MLA
//! layer with `H/(k/g)` heads and latent width `l/g`, so one MQA kernel serves every shard:
//! - `w_dkv`: the slice's columns of `W_DKV·U`; `w_kr` and the query down-path replicated;
//!   the query up-projection restricted to the rank's heads;
//! - `w_uk[h]`: μ_i · latent rows of slice i (logit correction folded offline);
//! - `w_uv[h]`: latent rows of slice i; `w_o`: the rows of the rank's heads;
//! - `kv_norm`: the constant `1/sqrt(m_i/g)`, so a plain RMSNorm over the slice *is* the
//!   corrected local RMSNorm `c_i / (sqrt(m_i/g)·RMS(c_i))`.
//!
//! Summing the ranks' outputs (`AllReduce_sum`, no 1/g) gives the TPLA layer output.

use super::config::MlaConfig;
use super::error::{ModelError, Result};
use super::linalg::Mat;
use super::reparam::Corrections;
use super::weights::{MlaLayer, QPath};
use serde::{Deserialize, Serialize};

/// Placement of g latent groups on k devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Latent groups g.
    pub groups: usize,
    /// Devices k.
    pub devices: usize,
    /// Heads H of the full layer.
    pub heads: usize,
    /// Latent width l.
    pub latent: usize,
}

/// What one rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankInfo {
    /// Rank r.
    pub rank: usize,
    /// Latent group i.
    pub group: usize,
    /// Head shard j within the group.
    pub head_shard: usize,
    /// Latent columns [start, end).
    pub latent_range: (usize, usize),
    /// Heads [start, end).
    pub head_range: (usize, usize),
}

impl ShardPlan {
    /// Validate g | l, g | k and (k/g) | H.
    pub fn new(cfg: &MlaConfig, groups: usize, devices: usize) -> Result<Self> {
        let l = cfg.kv_lora_rank;
        if groups == 0 || !l.is_multiple_of(groups) {
            return Err(ModelError::GroupsNotDividingLatent { groups, latent: l });
        }
        if devices == 0 || !devices.is_multiple_of(groups) {
            return Err(ModelError::GroupsNotDividingDevices { groups, devices });
        }
        let shards = devices / groups;
        if !cfg.heads.is_multiple_of(shards) {
            return Err(ModelError::ShardsNotDividingHeads {
                shards,
                heads: cfg.heads,
            });
        }
        Ok(ShardPlan {
            groups,
            devices,
            heads: cfg.heads,
            latent: l,
        })
    }

    /// Head shards per group (k/g).
    pub fn shards_per_group(&self) -> usize {
        self.devices / self.groups
    }

    /// Placement of rank r (r < k).
    pub fn rank(&self, r: usize) -> RankInfo {
        let s = self.shards_per_group();
        let (i, j) = (r / s, r % s);
        let w = self.latent / self.groups;
        let hd = self.heads / s;
        RankInfo {
            rank: r,
            group: i,
            head_shard: j,
            latent_range: (i * w, (i + 1) * w),
            head_range: (j * hd, (j + 1) * hd),
        }
    }

    /// All ranks.
    pub fn ranks(&self) -> Vec<RankInfo> {
        (0..self.devices).map(|r| self.rank(r)).collect()
    }
}

/// The weights of one rank, an ordinary MLA layer of `H/(k/g)` heads and latent `l/g`.
#[derive(Clone, Debug)]
pub struct RankShard {
    /// Placement.
    pub info: RankInfo,
    /// The rank's layer (cfg.heads and cfg.kv_lora_rank are the shard's).
    pub layer: MlaLayer,
}

fn head_cols(w: &Mat, cfg: &MlaConfig, h0: usize, h1: usize) -> Mat {
    let qh = cfg.q_head();
    w.cols_range(h0 * qh, h1 * qh)
}

/// Cut rank `info` out of a reparameterised layer (γ folded, rotated) with the group corrections.
pub fn shard_layer(layer: &MlaLayer, corr: &Corrections, info: RankInfo) -> RankShard {
    let cfg = &layer.cfg;
    let (l0, l1) = info.latent_range;
    let (h0, h1) = info.head_range;
    let mu = corr.mu[info.group];
    let q = match &layer.q {
        QPath::Lora { w_dq, q_norm, w_uq } => QPath::Lora {
            w_dq: w_dq.clone(),
            q_norm: q_norm.clone(),
            w_uq: head_cols(w_uq, cfg, h0, h1),
        },
        QPath::Direct { w_q } => QPath::Direct {
            w_q: head_cols(w_q, cfg, h0, h1),
        },
    };
    let w_uk = (h0..h1)
        .map(|h| {
            let mut m = layer.w_uk[h].rows_range(l0, l1);
            m.data.iter_mut().for_each(|v| *v *= mu);
            m
        })
        .collect();
    let w_uv = (h0..h1).map(|h| layer.w_uv[h].rows_range(l0, l1)).collect();
    let w_o = layer.w_o.rows_range(h0 * cfg.v_head, h1 * cfg.v_head);
    let scfg = MlaConfig {
        name: format!("{}-rank{}", cfg.name, info.rank),
        heads: h1 - h0,
        kv_lora_rank: l1 - l0,
        ..cfg.clone()
    };
    RankShard {
        info,
        layer: MlaLayer {
            cfg: scfg,
            q,
            w_dkv: layer.w_dkv.cols_range(l0, l1),
            w_kr: layer.w_kr.clone(),
            kv_norm: vec![corr.norm_gain(info.group); l1 - l0],
            w_uk,
            w_uv,
            w_o,
        },
    }
}

/// Shard a layer for every rank of the plan.
pub fn shard_all(layer: &MlaLayer, corr: &Corrections, plan: &ShardPlan) -> Result<Vec<RankShard>> {
    if corr.groups != plan.groups {
        return Err(ModelError::InvalidValue {
            name: "corrections",
            detail: format!(
                "computed for g = {}, plan has g = {}",
                corr.groups, plan.groups
            ),
        });
    }
    Ok(plan
        .ranks()
        .into_iter()
        .map(|r| shard_layer(layer, corr, r))
        .collect())
}

/// Reassemble the full reparameterised layer from all ranks (μ divided back out of W_UK).
pub fn reassemble(
    shards: &[RankShard],
    plan: &ShardPlan,
    full_cfg: &MlaConfig,
    corr: &Corrections,
) -> Result<MlaLayer> {
    if shards.len() != plan.devices {
        return Err(ModelError::InvalidValue {
            name: "shards",
            detail: format!("{} shards for k = {}", shards.len(), plan.devices),
        });
    }
    let s = plan.shards_per_group();
    let first_of_group = |i: usize| &shards[i * s];
    let w_dkv = Mat::hcat(
        &(0..plan.groups)
            .map(|i| first_of_group(i).layer.w_dkv.clone())
            .collect::<Vec<_>>(),
    );
    let mut w_uk = Vec::new();
    let mut w_uv = Vec::new();
    let mut o_rows = Vec::new();
    let mut q_cols = Vec::new();
    for j in 0..s {
        let sh = &shards[j];
        for hl in 0..sh.layer.cfg.heads {
            let uk: Vec<Mat> = (0..plan.groups)
                .map(|i| {
                    let mut m = shards[i * s + j].layer.w_uk[hl].clone();
                    m.data.iter_mut().for_each(|v| *v /= corr.mu[i]);
                    m
                })
                .collect();
            w_uk.push(Mat::vcat(&uk));
            w_uv.push(Mat::vcat(
                &(0..plan.groups)
                    .map(|i| shards[i * s + j].layer.w_uv[hl].clone())
                    .collect::<Vec<_>>(),
            ));
        }
        o_rows.push(sh.layer.w_o.clone());
        q_cols.push(match &sh.layer.q {
            QPath::Lora { w_uq, .. } => w_uq.clone(),
            QPath::Direct { w_q } => w_q.clone(),
        });
    }
    let q = match &shards[0].layer.q {
        QPath::Lora { w_dq, q_norm, .. } => QPath::Lora {
            w_dq: w_dq.clone(),
            q_norm: q_norm.clone(),
            w_uq: Mat::hcat(&q_cols),
        },
        QPath::Direct { .. } => QPath::Direct {
            w_q: Mat::hcat(&q_cols),
        },
    };
    Ok(MlaLayer {
        cfg: full_cfg.clone(),
        q,
        w_dkv,
        w_kr: shards[0].layer.w_kr.clone(),
        kv_norm: vec![1.0; plan.latent],
        w_uk,
        w_uv,
        w_o: Mat::vcat(&o_rows),
    })
}
