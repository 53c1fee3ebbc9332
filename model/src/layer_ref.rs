//! f64 reference of one layer's decode step: exact absorbed MLA (TPLA.md §1) and TPLA at g latent
//! groups (§2), with the two approximations (sliced RMSNorm, sliced softmax) switchable.
//!
//! A decode step for the query token at position `pos` first appends that token's cache entry,
//! then attends over every entry (positions 0..=pos). The functions here take the cache as given
//! (already holding the query token's entry) so that callers choose how each entry was written
//! (prefill vs decode, see [`super::pdsep`]).

use super::linalg::{dot, rms, softmax_in_place};
use super::reparam::Corrections;
use super::weights::{MlaLayer, TokenProj};
use serde::{Deserialize, Serialize};

/// How a decode-written cache entry of group i is normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormMode {
    /// `c_i / (sqrt(m_i/g)·RMS(c_i))`: TPLA's local corrected RMSNorm.
    LocalCorrected,
    /// `c_i / RMS(c)`: the exact RMS via one scalar all-reduce of Σc² per token.
    Exact,
}

/// How the attention softmax is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoftmaxMode {
    /// Each group takes its own softmax over its partial logits (TPLA; μ_i applies).
    Local,
    /// Partial logits are summed across groups first (exact; μ is not applied).
    Global,
}

/// MLA cache entry `[ĉ | k_pe]` with `ĉ = γ ⊙ c / RMS(c)`.
pub fn mla_entry(layer: &MlaLayer, p: &TokenProj) -> Vec<f64> {
    let r = rms(&p.c, layer.cfg.rms_eps);
    let mut e: Vec<f64> =
        p.c.iter()
            .zip(&layer.kv_norm)
            .map(|(c, g)| g * c / r)
            .collect();
    e.extend_from_slice(&p.k_pe);
    e
}

/// Exact absorbed MLA decode of query token `q` over `cache` (entries `[ĉ | k_pe]`). Returns y (D).
pub fn mla_decode(layer: &MlaLayer, q: &TokenProj, cache: &[Vec<f64>]) -> Vec<f64> {
    let cfg = &layer.cfg;
    let l = cfg.kv_lora_rank;
    let mut vcat = Vec::with_capacity(cfg.heads * cfg.v_head);
    let mut s = vec![0.0; cache.len()];
    for h in 0..cfg.heads {
        let qh = layer.absorb_query(h, &q.q_nope[h]);
        for (t, e) in cache.iter().enumerate() {
            s[t] = cfg.scale * (dot(&qh, &e[..l]) + dot(&q.q_pe[h], &e[l..]));
        }
        softmax_in_place(&mut s);
        let mut o = vec![0.0; l];
        for (t, e) in cache.iter().enumerate() {
            super::linalg::axpy(&mut o, s[t], &e[..l]);
        }
        vcat.extend(layer.w_uv[h].vecmat(&o));
    }
    layer.w_o.vecmat(&vcat)
}

/// Width of one latent slice.
pub fn slice_width(l: usize, g: usize) -> usize {
    l / g
}

/// TPLA cache entry of group i for a decode-written token: `[ĉ_i | k_pe]`.
/// `layer` must be reparameterised (γ folded, rotated).
pub fn tpla_entry(
    layer: &MlaLayer,
    corr: &Corrections,
    i: usize,
    norm: NormMode,
    p: &TokenProj,
) -> Vec<f64> {
    let g = corr.groups;
    let w = slice_width(layer.cfg.kv_lora_rank, g);
    let ci = &p.c[i * w..(i + 1) * w];
    let f = match norm {
        NormMode::LocalCorrected => corr.norm_gain(i) / rms(ci, layer.cfg.rms_eps),
        NormMode::Exact => 1.0 / rms(&p.c, layer.cfg.rms_eps),
    };
    let mut e: Vec<f64> = ci.iter().map(|c| c * f).collect();
    e.extend_from_slice(&p.k_pe);
    e
}

/// Partial output of one head under TPLA: returns `Σ_i O_i · W_UV[h][slice i]` (v_h, 128) for
/// g groups whose caches are `caches[i]` (entries `[ĉ_i | k_pe]`).
pub fn tpla_head(
    layer: &MlaLayer,
    corr: &Corrections,
    softmax: SoftmaxMode,
    h: usize,
    q: &TokenProj,
    caches: &[Vec<Vec<f64>>],
) -> Vec<f64> {
    let cfg = &layer.cfg;
    let g = corr.groups;
    let w = slice_width(cfg.kv_lora_rank, g);
    let qfull = layer.absorb_query(h, &q.q_nope[h]);
    let n = caches[0].len();
    let rope: Vec<f64> = (0..n)
        .map(|t| dot(&q.q_pe[h], &caches[0][t][w..]))
        .collect();
    // Partial latent logits per group.
    let part: Vec<Vec<f64>> = (0..g)
        .map(|i| {
            caches[i]
                .iter()
                .map(|e| dot(&qfull[i * w..(i + 1) * w], &e[..w]))
                .collect()
        })
        .collect();
    let mut v = vec![0.0; cfg.v_head];
    let probs: Vec<Vec<f64>> = match softmax {
        SoftmaxMode::Global => {
            let mut s: Vec<f64> = (0..n)
                .map(|t| cfg.scale * ((0..g).map(|i| part[i][t]).sum::<f64>() + rope[t]))
                .collect();
            softmax_in_place(&mut s);
            vec![s; g]
        }
        SoftmaxMode::Local => (0..g)
            .map(|i| {
                let mut s: Vec<f64> = (0..n)
                    .map(|t| cfg.scale * (corr.mu[i] * part[i][t] + rope[t]))
                    .collect();
                softmax_in_place(&mut s);
                s
            })
            .collect(),
    };
    for i in 0..g {
        let mut o = vec![0.0; w];
        for (t, e) in caches[i].iter().enumerate() {
            super::linalg::axpy(&mut o, probs[i][t], &e[..w]);
        }
        let wv = layer.w_uv[h].rows_range(i * w, (i + 1) * w);
        let vi = wv.vecmat(&o);
        super::linalg::axpy(&mut v, 1.0, &vi);
    }
    v
}

/// TPLA decode over g group caches, every head, y = W_O · concat(v_h) (the all-reduce sum of the
/// per-device partial outputs). `layer` must be reparameterised.
pub fn tpla_decode(
    layer: &MlaLayer,
    corr: &Corrections,
    softmax: SoftmaxMode,
    q: &TokenProj,
    caches: &[Vec<Vec<f64>>],
) -> Vec<f64> {
    let mut vcat = Vec::with_capacity(layer.cfg.heads * layer.cfg.v_head);
    for h in 0..layer.cfg.heads {
        vcat.extend(tpla_head(layer, corr, softmax, h, q, caches));
    }
    layer.w_o.vecmat(&vcat)
}
