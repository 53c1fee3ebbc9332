//! One head of one variant at one decode step: the harness's inner computation, on the f64 cache
//! or through a quantised cache format ([`KvCache`]).

use super::{Mode, Prepared, Variant, FINE};
use crate::config::MlaConfig;
use crate::kv_cache::KvCache;
use crate::linalg::{axpy, dot, softmax_in_place};
use crate::weights::TokenProj;

/// One head's query at one step: the absorbed query, its RoPE part, and its exact partial
/// logits against the f64 cache (per fine slice, and of the RoPE key).
pub(super) struct HeadQuery<'a> {
    pub(super) qf: &'a [f64],
    pub(super) q_pe: &'a [f64],
    pub(super) fine: &'a [Vec<f64>],
    pub(super) rope: &'a [f64],
}

/// The head's output (`w_uv · o`) of variant `v` at step `n`. With an f64 cache the logits come
/// from the precomputed exact partial products; with a quantised one, each stored row
/// (`f · c_i` and the RoPE key) is read back through the format first.
#[allow(clippy::too_many_arguments)]
pub(super) fn variant_head(
    cfg: &MlaConfig,
    pr: &Prepared,
    v: &Variant,
    q: &HeadQuery,
    proj: &[TokenProj],
    n: usize,
    p_tok: usize,
    h: usize,
) -> Vec<f64> {
    let l = cfg.kv_lora_rank;
    let g = v.groups;
    let w = l / g;
    let per = FINE / g;
    let len = n + 1;
    let quantised = v.kv != KvCache::F64;
    // Norm factor f[i][t]; logit part lp[i][t] = q_i · (f c_i); RoPE logit; stored rows k[i][t].
    let mut f = vec![vec![0.0; len]; g];
    let mut lp = vec![vec![0.0; len]; g];
    let mut stored: Vec<Vec<Vec<f64>>> = vec![Vec::new(); g];
    for t in 0..len {
        let exact = !v.slicing.local_norm() || (v.mode == Mode::PdSep && t < p_tok);
        for i in 0..g {
            f[i][t] = if exact {
                pr.inv_rms[t]
            } else {
                let ss: f64 = pr.fine_ss[t][i * per..(i + 1) * per].iter().sum();
                v.corr.norm_gain(i) / (ss / w as f64 + cfg.rms_eps).sqrt()
            };
            if quantised {
                let row: Vec<f64> = pr.c[t][i * w..(i + 1) * w]
                    .iter()
                    .map(|c| f[i][t] * c)
                    .collect();
                let k = v.kv.read_back_latent(&row);
                lp[i][t] = dot(&q.qf[i * w..(i + 1) * w], &k);
                stored[i].push(k);
            } else {
                let fs: f64 = (i * per..(i + 1) * per).map(|j| q.fine[j][t]).sum();
                lp[i][t] = f[i][t] * fs;
            }
        }
    }
    let rope: Vec<f64> = if quantised {
        (0..len)
            .map(|t| dot(q.q_pe, &v.kv.read_back_rope(&proj[t].k_pe)))
            .collect()
    } else {
        q.rope[..len].to_vec()
    };
    // Softmax weights per group and token.
    let mut s_w = vec![vec![0.0; len]; g];
    if v.slicing.local_softmax() {
        for i in 0..g {
            let mut s: Vec<f64> = (0..len)
                .map(|t| cfg.scale * (v.corr.mu[i] * lp[i][t] + rope[t]))
                .collect();
            softmax_in_place(&mut s);
            s_w[i] = s;
        }
    } else {
        let mut s: Vec<f64> = (0..len)
            .map(|t| cfg.scale * ((0..g).map(|i| lp[i][t]).sum::<f64>() + rope[t]))
            .collect();
        softmax_in_place(&mut s);
        s_w = vec![s; g];
    }
    let mut o = vec![0.0; l];
    for t in 0..len {
        for i in 0..g {
            let out = &mut o[i * w..(i + 1) * w];
            if quantised {
                axpy(out, s_w[i][t], &stored[i][t]);
            } else {
                axpy(out, s_w[i][t] * f[i][t], &pr.c[t][i * w..(i + 1) * w]);
            }
        }
    }
    pr.layer.w_uv[h].vecmat(&o)
}
