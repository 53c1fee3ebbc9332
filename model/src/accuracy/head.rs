//! One variant at one decode step: what its cache holds ([`StoredRows`], once per variant and
//! step) and each head's output from it ([`variant_head`]), on the f64 cache or through a
//! quantised cache format ([`KvCache`]).

use super::{Mode, Prepared, Variant, FINE};
use crate::config::MlaConfig;
use crate::kv_cache::KvCache;
use crate::linalg::{axpy, dot, softmax_in_place};
use crate::weights::TokenProj;

/// One head's query at one step: the absorbed query, its RoPE part, and its exact partial
/// logits against the f64 cache (per fine slice, and of the RoPE key).
pub(super) struct HeadQuery {
    pub(super) qf: Vec<f64>,
    pub(super) q_pe: Vec<f64>,
    pub(super) fine: Vec<Vec<f64>>,
    pub(super) rope: Vec<f64>,
}

impl HeadQuery {
    /// Head `h` of query token `q` against tokens `0..=n` of the rotated cache `pr`.
    pub(super) fn new(
        cfg: &MlaConfig,
        pr: &Prepared,
        q: &TokenProj,
        proj: &[TokenProj],
        n: usize,
        h: usize,
    ) -> Self {
        let fw = cfg.kv_lora_rank / FINE;
        let qf = pr.layer.absorb_query(h, &q.q_nope[h]);
        let rope = (0..=n).map(|t| dot(&q.q_pe[h], &proj[t].k_pe)).collect();
        let fine = (0..FINE)
            .map(|j| {
                (0..=n)
                    .map(|t| dot(&qf[j * fw..(j + 1) * fw], &pr.c[t][j * fw..(j + 1) * fw]))
                    .collect()
            })
            .collect();
        HeadQuery {
            qf,
            q_pe: q.q_pe[h].clone(),
            fine,
            rope,
        }
    }
}

/// What variant `v`'s cache holds for tokens `0..=n`, the same for every head: the norm factor
/// `f[i][t]` of group `i`'s slice and, with a quantised format, the read-back rows `f · c_i`
/// and RoPE keys.
pub(super) struct StoredRows {
    f: Vec<Vec<f64>>,
    /// `[g][t]` read-back latent slices (empty for the f64 cache).
    latent: Vec<Vec<Vec<f64>>>,
    /// `[t]` read-back RoPE keys (empty for the f64 cache).
    rope: Vec<Vec<f64>>,
}

impl StoredRows {
    /// The rows of variant `v` at step `n` (`p_tok` prefill tokens in the pd-sep mode).
    pub(super) fn new(
        cfg: &MlaConfig,
        pr: &Prepared,
        v: &Variant,
        proj: &[TokenProj],
        n: usize,
        p_tok: usize,
    ) -> Self {
        let (g, len) = (v.groups, n + 1);
        let w = cfg.kv_lora_rank / g;
        let per = FINE / g;
        let quantised = v.kv != KvCache::F64;
        let mut f = vec![vec![0.0; len]; g];
        let mut latent: Vec<Vec<Vec<f64>>> = vec![Vec::new(); g];
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
                    latent[i].push(v.kv.read_back_latent(&row));
                }
            }
        }
        let rope = if quantised {
            (0..len)
                .map(|t| v.kv.read_back_rope(&proj[t].k_pe))
                .collect()
        } else {
            Vec::new()
        };
        StoredRows { f, latent, rope }
    }
}

/// Head `h`'s output (`w_uv · o`) of variant `v` over its stored rows `k`. With an f64 cache the
/// logits come from the query's precomputed exact partial products; with a quantised one from
/// the read-back rows.
pub(super) fn variant_head(
    cfg: &MlaConfig,
    pr: &Prepared,
    v: &Variant,
    k: &StoredRows,
    q: &HeadQuery,
    h: usize,
) -> Vec<f64> {
    let l = cfg.kv_lora_rank;
    let g = v.groups;
    let w = l / g;
    let per = FINE / g;
    let len = k.f[0].len();
    let quantised = v.kv != KvCache::F64;
    // Logit part lp[i][t] = q_i · (f c_i), and the RoPE logit.
    let lp: Vec<Vec<f64>> = (0..g)
        .map(|i| {
            (0..len)
                .map(|t| {
                    if quantised {
                        dot(&q.qf[i * w..(i + 1) * w], &k.latent[i][t])
                    } else {
                        let fs: f64 = (i * per..(i + 1) * per).map(|j| q.fine[j][t]).sum();
                        k.f[i][t] * fs
                    }
                })
                .collect()
        })
        .collect();
    let rope: Vec<f64> = if quantised {
        k.rope.iter().map(|kr| dot(&q.q_pe, kr)).collect()
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
                axpy(out, s_w[i][t], &k.latent[i][t]);
            } else {
                axpy(out, s_w[i][t] * k.f[i][t], &pr.c[t][i * w..(i + 1) * w]);
            }
        }
    }
    pr.layer.w_uv[h].vecmat(&o)
}
