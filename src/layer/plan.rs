//! Which part of a layer each rank of a tensor-parallel group holds, for each parallel form.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use tpla_runtime::RuntimeError;

/// How the cache of a TPLA rank is normalised (TPLA.md §2 and §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvNorm {
    /// `ĉ_i = c_i / (sqrt(m_i/g) · RMS(c_i))`: local, corrected (no communication).
    Sliced,
    /// `ĉ_i = c_i / RMS(c)`: exact, one scalar all-reduce of Σc² per token.
    Exact,
}

/// Where a TPLA rank's partial output (a sum over the latent groups) is reduced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReduceAt {
    /// After `W_O`: every rank applies `W_UV` and `W_O` to all its attention heads, and one
    /// all-reduce of `[batch, D]` sums the groups' partial outputs (the paper's form).
    #[default]
    Wo,
    /// After `W_UV`: the partial values `[batch, heads, v_head]` are reduce-scattered by heads
    /// over the latent groups, each rank applies `W_O` to its `1/g` of the heads, and the
    /// all-reduce of `[batch, D]` follows. Two collectives, `1/g` of the `W_O` reads.
    Wuv,
}

/// A parallel form of the attention layer over `tp` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "form")]
pub enum Form {
    /// Heads split over the ranks, the whole cache on every rank, all-reduce after `W_O`.
    MlaTp,
    /// `groups` latent groups, every head within a group; with `groups < tp` the `tp / groups`
    /// ranks of a group split the heads. All-reduce after `W_O`, or a reduce-scatter after
    /// `W_UV` first ([`ReduceAt`]).
    Tpla {
        /// Latent groups g (divides `tp` and the latent width).
        groups: usize,
        /// Cache normalisation.
        norm: KvNorm,
        /// Where the groups' partial outputs are reduced.
        #[serde(default)]
        reduce: ReduceAt,
    },
    /// Decode context parallelism: token `t` lives on rank `t mod tp` (token-interleaved, so
    /// every rank holds `⌈len / tp⌉` or `⌊len / tp⌋` tokens of every sequence); every rank
    /// attends with all heads over its tokens; the partial `(out, lse)` states of a rank's head
    /// slice are exchanged and merged exactly; then `W_UV`/`W_O` of that head slice and an
    /// all-reduce.
    Dcp,
}

impl Form {
    /// A short name (`mla-tp`, `tpla-g2`, `tpla-g2-exact`, `tpla-g2-wuv`, `dcp`).
    pub fn name(&self) -> String {
        match self {
            Form::MlaTp => "mla-tp".into(),
            Form::Tpla {
                groups,
                norm,
                reduce,
            } => {
                let norm = match norm {
                    KvNorm::Sliced => "",
                    KvNorm::Exact => "-exact",
                };
                let reduce = match reduce {
                    ReduceAt::Wo => "",
                    ReduceAt::Wuv => "-wuv",
                };
                format!("tpla-g{groups}{norm}{reduce}")
            }
            Form::Dcp => "dcp".into(),
        }
    }

    /// Whether the kv RMSNorm is TPLA's exact one, whose `Σ c²` is summed over the ranks
    /// between the down-projection's norms and the cache row.
    pub fn exact_kv_norm(&self) -> bool {
        matches!(
            self,
            Form::Tpla {
                norm: KvNorm::Exact,
                ..
            }
        )
    }

    /// TPLA with `groups` latent groups and the sliced norm, reduced after `W_O`: the paper's
    /// form.
    pub fn tpla(groups: usize) -> Form {
        Form::Tpla {
            groups,
            norm: KvNorm::Sliced,
            reduce: ReduceAt::Wo,
        }
    }

    /// Whether the form computes exact MLA (TPLA with g > 1 is an approximation).
    pub fn exact(&self) -> bool {
        !matches!(self, Form::Tpla { groups, .. } if *groups > 1)
    }
}

/// What rank `rank` of a group holds and computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankRole {
    /// Rank index.
    pub rank: usize,
    /// Heads it attends with (queries it computes).
    pub attn_heads: Range<usize>,
    /// Latent columns of its cache rows (all of them except under TPLA).
    pub latent: Range<usize>,
    /// Latent group index (0 except under TPLA).
    pub group: usize,
    /// `Some((r, n))`: it holds the tokens `t` with `t mod n == r` (DCP); `None`: all tokens.
    pub tokens: Option<(usize, usize)>,
    /// Heads whose `W_UV` rows it applies (the heads of its latent output).
    pub uv_heads: Range<usize>,
    /// Heads whose `W_O` rows it applies (its `uv_heads`, or under TPLA reduced after `W_UV` its
    /// group's `1/g` of them).
    pub out_heads: Range<usize>,
}

impl RankRole {
    /// Whether the rank's values `[batch, uv_heads, v_head]` are reduce-scattered before `W_O`
    /// (its `W_O` covers fewer heads than its `W_UV`).
    pub fn reduces_values(&self) -> bool {
        self.out_heads != self.uv_heads
    }
}

fn split(n: usize, parts: usize, i: usize) -> Range<usize> {
    let w = n / parts;
    i * w..(i + 1) * w
}

/// The roles of the `tp` ranks of `form` for a layer of `heads` heads and latent width `lat`, or
/// a typed error when the form does not divide the layer.
pub fn roles(
    form: Form,
    tp: usize,
    heads: usize,
    lat: usize,
) -> Result<Vec<RankRole>, RuntimeError> {
    let bad = |m: String| Err(RuntimeError::InvalidInput(m));
    if tp == 0 {
        return bad("tensor parallelism needs at least one rank".into());
    }
    let (groups, per_group) = match form {
        Form::Tpla { groups, .. } => {
            if groups == 0 || !tp.is_multiple_of(groups) || !lat.is_multiple_of(groups) {
                return bad(format!(
                    "TPLA with g = {groups} needs g to divide tp = {tp} and the latent width {lat}"
                ));
            }
            (groups, tp / groups)
        }
        _ => (1, tp),
    };
    if !heads.is_multiple_of(per_group) {
        return bad(format!(
            "{heads} heads cannot be split over {per_group} ranks ({} with tp = {tp})",
            form.name()
        ));
    }
    if let Form::Tpla {
        reduce: ReduceAt::Wuv,
        ..
    } = form
    {
        if !(heads / per_group).is_multiple_of(groups) {
            return bad(format!(
                "{}: a rank's {} heads cannot be reduce-scattered over g = {groups} groups",
                form.name(),
                heads / per_group
            ));
        }
    }
    Ok((0..tp)
        .map(|rank| {
            let (group, j) = (rank / per_group, rank % per_group);
            let mine = split(heads, per_group, j);
            match form {
                Form::MlaTp => RankRole {
                    rank,
                    attn_heads: mine.clone(),
                    latent: 0..lat,
                    group: 0,
                    tokens: None,
                    uv_heads: mine.clone(),
                    out_heads: mine,
                },
                Form::Tpla { reduce, .. } => {
                    let out_heads = match reduce {
                        ReduceAt::Wo => mine.clone(),
                        // The group's share of its heads, after the reduce-scatter.
                        ReduceAt::Wuv => {
                            let s = split(mine.len(), groups, group);
                            mine.start + s.start..mine.start + s.end
                        }
                    };
                    RankRole {
                        rank,
                        attn_heads: mine.clone(),
                        latent: split(lat, groups, group),
                        group,
                        tokens: None,
                        uv_heads: mine,
                        out_heads,
                    }
                }
                Form::Dcp => RankRole {
                    rank,
                    attn_heads: 0..heads,
                    latent: 0..lat,
                    group: 0,
                    tokens: Some((rank, tp)),
                    uv_heads: mine.clone(),
                    out_heads: mine,
                },
            }
        })
        .collect())
}

/// Tokens of positions `0..len` that rank `r` of `n` holds under token interleaving.
pub fn dcp_tokens(len: usize, r: usize, n: usize) -> usize {
    if r >= len {
        0
    } else {
        (len - r).div_ceil(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpla_below_tp_splits_heads_inside_each_group() {
        let r = roles(
            Form::Tpla {
                groups: 2,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wo,
            },
            4,
            8,
            512,
        )
        .unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|x| (x.attn_heads.clone(), x.latent.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0..4, 0..256),
                (4..8, 0..256),
                (0..4, 256..512),
                (4..8, 256..512)
            ]
        );
        assert!(roles(
            Form::Tpla {
                groups: 3,
                norm: KvNorm::Sliced,
                reduce: ReduceAt::Wo,
            },
            4,
            8,
            512
        )
        .is_err());
        assert!(roles(Form::MlaTp, 3, 8, 512).is_err());
        let d = roles(Form::Dcp, 4, 8, 512).unwrap();
        assert_eq!(
            (d[3].attn_heads.clone(), d[3].out_heads.clone()),
            (0..8, 6..8)
        );
        assert_eq!([0, 1, 2, 3].map(|r| dcp_tokens(10, r, 4)), [3, 3, 2, 2]);
        // Reduced after W_UV: g = 2 at tp 4, heads split in each group, then each rank keeps
        // its group's half of its heads for W_O.
        let wuv = Form::Tpla {
            groups: 2,
            norm: KvNorm::Sliced,
            reduce: ReduceAt::Wuv,
        };
        let r = roles(wuv, 4, 8, 512).unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|x| (x.uv_heads.clone(), x.out_heads.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(0..4, 0..2), (4..8, 4..6), (0..4, 2..4), (4..8, 6..8)]
        );
        assert_eq!(wuv.name(), "tpla-g2-wuv");
        assert!(roles(wuv, 4, 6, 512).is_err(), "3 heads over 2 groups");
        assert!(!roles(Form::tpla(2), 4, 8, 512).unwrap()[0].reduces_values());
        assert_eq!(dcp_tokens(2, 3, 4), 0);
    }
}
